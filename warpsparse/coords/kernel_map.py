"""`KernelMap`: who feeds whom through which kernel offset, with lazily built layouts."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class PairList:
    """Pairs of a map grouped by offset (CSR by offset).

    ``in_idx[bounds[k]:bounds[k+1]]`` feed ``out_idx[...]`` through offset ``k``. The device tensors are built
    without host reads; :attr:`counts` reads the bounds.
    """

    in_idx: torch.Tensor  # [P] int32
    out_idx: torch.Tensor  # [P] int32
    bounds: torch.Tensor  # [K+1] int64 on the map's device

    @cached_property
    def counts(self) -> tuple[int, ...]:
        """The per-offset pair counts on the host (one host read, on first use)."""
        return tuple(torch.diff(self.bounds).tolist())

    @property
    def offset_of_pair(self) -> torch.Tensor:
        """The offset of every pair ([P] int64), expanded from :attr:`bounds` at each use (not kept: 8 bytes a
        pair) without a host read."""
        offsets = torch.arange(self.bounds.numel() - 1, device=self.bounds.device)
        return torch.repeat_interleave(offsets, torch.diff(self.bounds), output_size=self.in_idx.numel())


def offset_mask(nbr: torch.Tensor) -> torch.Tensor:
    """Per row of a neighbour table [N, K], the int64 bitmask of its present columns (``nbr >= 0``); bit 62 also
    stands for every column past 62."""
    if nbr.device.type == "cuda":
        from warpsparse.coords.triton_maps import row_mask
        return row_mask(nbr)
    valid = nbr >= 0
    low = min(nbr.shape[1], 62)
    bits = torch.ones(low, dtype=torch.int64, device=nbr.device) << torch.arange(low, device=nbr.device)
    mask = (valid[:, :low].long() * bits).sum(dim=1)
    if nbr.shape[1] > 62:
        mask |= valid[:, 62:].any(dim=1).long() << 62
    return mask


def mask_order(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Rows ordered by their ``width``-bit masks (stable, int32): rows with the same pattern sit together."""
    for narrow in (torch.int16, torch.int32):  # masks of few bits fit a narrower key: fewer radix passes
        if width < torch.iinfo(narrow).bits:
            mask = mask.to(narrow)
            break
    return torch.argsort(mask, stable=True).to(torch.int32)


@dataclass(eq=False)
class KernelMap:
    """A convolution's neighbour table from ``num_in`` input sites to ``num_out`` output sites.

    ``nbr[o, k]`` is the input row feeding output row ``o`` through kernel offset ``k`` (``-1`` for none),
    ``k = (i0 * k1 + i1) * k2 + i2``. For every ``(input, offset)`` there is at most one output, so the
    reverse table is well defined. Layouts the algorithms need are built on first use and cached.

    ``kind`` names the geometry (``"subm"``, ``"conv"``, ``"transposed"``, ...); ``symmetric`` marks maps
    whose reverse is the forward table with offsets mirrored (submanifold maps with centred kernels).
    A builder that computed the row masks or the pair count on the way passes them as ``_mask`` and
    ``_pair_count`` (a device tensor, or an int when the host knows it: then reading it costs no sync). On CUDA
    the layouts are built by Triton kernels without host reads beyond :attr:`num_pairs`.
    """

    nbr: torch.Tensor
    num_in: int
    kernel_size: Triple
    kind: str = "conv"
    stride: Triple = (1, 1, 1)
    symmetric: bool = False
    _reverse: "KernelMap | None" = field(default=None, repr=False)
    _mask: torch.Tensor | None = field(default=None, repr=False)
    _pair_count: torch.Tensor | int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.nbr.dim() != 2 or self.nbr.dtype != torch.int32:
            raise ValueError(f"nbr must be an int32 [N_out, K] tensor, got {self.nbr.dtype} {tuple(self.nbr.shape)}")
        if self.nbr.shape[1] != self.kernel_volume:
            raise ValueError(f"nbr has {self.nbr.shape[1]} columns but kernel {self.kernel_size} has volume "
                             f"{self.kernel_volume}")

    @property
    def num_out(self) -> int:
        return self.nbr.shape[0]

    @property
    def kernel_volume(self) -> int:
        k0, k1, k2 = self.kernel_size
        return k0 * k1 * k2

    @property
    def device(self) -> torch.device:
        return self.nbr.device

    @cached_property
    def pairs(self) -> PairList:
        """Per-offset pair lists: on CUDA from Triton kernels without a host read beyond :attr:`num_pairs`, which
        they must agree with (the map's sites are distinct, as :class:`~warpsparse.SparseTensor` checks)."""
        if self.device.type == "cuda":
            from warpsparse.coords.triton_maps import pair_lists
            return PairList(*pair_lists(self.nbr, self.num_pairs))
        # offset-major order: transpose so pairs of one offset are contiguous
        valid_t = (self.nbr >= 0).t()  # [K, N_out]
        bounds = torch.zeros(self.kernel_volume + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(valid_t.sum(dim=1), 0, out=bounds[1:])
        offset_of_pair, out_idx = valid_t.nonzero().t()
        return PairList(self.nbr.t()[offset_of_pair, out_idx], out_idx.to(torch.int32), bounds)

    @cached_property
    def num_pairs(self) -> int:
        """Total pairs (one host read per map, none when the builder knew the count on the host)."""
        if self._pair_count is not None:
            return int(self._pair_count)
        return int((self.nbr >= 0).sum())

    def reversed(self) -> "KernelMap":
        """The map from outputs back to inputs (``nbr_T[N_in, K]``), same offset numbering; cached."""
        if self._reverse is None and self.symmetric:
            self._reverse = _MirroredMap(self)
        elif self._reverse is None:
            if self.device.type == "cuda":
                from warpsparse.coords.triton_maps import reverse_table
                nbr_t = reverse_table(self.nbr, self.num_in)
            else:
                nbr_t = torch.full((self.num_in, self.kernel_volume), -1, dtype=torch.int32, device=self.device)
                p = self.pairs
                nbr_t[p.in_idx, p.offset_of_pair] = p.out_idx
            self._reverse = KernelMap(nbr_t, self.num_out, self.kernel_size, kind=f"{self.kind}_reversed",
                                      stride=self.stride, _reverse=self)
        return self._reverse

    @property
    def mirror_of(self) -> "KernelMap | None":
        """The symmetric map whose reverse this is (its table with offsets mirrored), else ``None``."""
        return None

    @cached_property
    def mask(self) -> torch.Tensor:
        """Per output row, the int64 bitmask of offsets present (see :func:`offset_mask`)."""
        return self._mask if self._mask is not None else offset_mask(self.nbr)

    @cached_property
    def sorted_order(self) -> torch.Tensor:
        """Output rows ordered by :attr:`mask` (int32), so rows with the same pattern sit together."""
        return mask_order(self.mask, self.kernel_volume)

    @cached_property
    def sorted_nbr(self) -> torch.Tensor:
        """``nbr`` rows in :attr:`sorted_order` ([N_out, K] int32, contiguous)."""
        return self.nbr.index_select(0, self.sorted_order.long()).contiguous()


class _MirroredMap(KernelMap):
    """The reverse of a symmetric map: the source's table with offsets mirrored, made only when something reads
    :attr:`nbr`. The Triton gather kernels read the source's table with offsets flipped and never do; the packed
    kernels, the CuPy and explicit algorithms, :attr:`mask` and :attr:`pairs` (and ``repr``) do."""

    def __init__(self, source: KernelMap) -> None:
        self._source = source
        self.num_in, self.kernel_size, self.kind = source.num_out, source.kernel_size, f"{source.kind}_reversed"
        self.stride, self.symmetric, self._reverse = source.stride, True, source
        self._mask, self._pair_count = None, source._pair_count

    @property
    def mirror_of(self) -> KernelMap:
        return self._source

    @cached_property
    def nbr(self) -> torch.Tensor:  # type: ignore[override]
        return self._source.nbr.flip(1).contiguous()

    @cached_property
    def sorted_order(self) -> torch.Tensor:  # type: ignore[override]
        """The source's order: mirroring the offsets keeps equal masks equal."""
        return self._source.sorted_order

    @cached_property
    def sorted_nbr(self) -> torch.Tensor:  # type: ignore[override]
        return self._source.sorted_nbr.flip(1)

    @property
    def num_out(self) -> int:
        return self._source.num_in

    @property
    def device(self) -> torch.device:
        return self._source.device

    @property
    def num_pairs(self) -> int:  # type: ignore[override]
        return self._source.num_pairs
