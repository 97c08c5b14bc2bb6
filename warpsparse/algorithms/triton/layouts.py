"""Per-map layouts the Triton kernels read, built on first use with device ops and cached on the map.

Nothing here reads device memory back to the host: sizes come from the map's shape and from the host copy of
the per-offset pair counts that :attr:`KernelMap.pairs` keeps.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from warpsparse.coords.kernel_map import KernelMap

_CACHE: "weakref.WeakKeyDictionary[KernelMap, dict[Any, Any]]" = weakref.WeakKeyDictionary()


def _cached(kmap: KernelMap, key: Any, build: Callable[[], Any]) -> Any:
    per_map = _CACHE.get(kmap)
    if per_map is None:
        per_map = _CACHE[kmap] = {}
    value = per_map.get(key)
    if value is None:
        value = per_map[key] = build()
    return value


@dataclass(frozen=True)
class BlockOffsets:
    """Result rows in blocks of ``block_m`` and, per block, the offsets at least one of its rows uses.

    Table rows are ``kmap.sorted_order`` when sorted (``order``; ``None``: rows in map order). Block ``b``
    uses ``count[b]`` offsets, ``active[b, :count[b]]`` in increasing order, and ``sources[b, j]`` holds the
    source row of each of its ``block_m`` rows through offset ``active[b, j]`` (-1: none), so a program
    reads each offset's sources as one contiguous vector.
    """

    order: torch.Tensor | None  # [N] int32
    count: torch.Tensor  # [blocks] int32
    active: torch.Tensor  # [blocks, K] int32
    sources: torch.Tensor  # [blocks, K, block_m] int32


def block_offsets(kmap: KernelMap, sort: bool, block_m: int) -> BlockOffsets:
    """The :class:`BlockOffsets` of ``kmap`` for row blocks of ``block_m`` (mask-sorted rows when ``sort``)."""

    def build() -> BlockOffsets:
        nbr = kmap.sorted_nbr if sort else kmap.nbr
        n, k = nbr.shape
        blocks = -(-n // block_m)
        table = torch.full((blocks * block_m, k), -1, dtype=torch.int32, device=nbr.device)
        table[:n] = nbr
        by_block = table.view(blocks, block_m, k).transpose(1, 2)  # [blocks, K, block_m]
        active_mask = (by_block >= 0).any(dim=2)
        count = active_mask.sum(dim=1, dtype=torch.int32)
        active = torch.sort((~active_mask).to(torch.uint8), dim=1, stable=True).indices
        sources = torch.gather(by_block, 1, active[:, :, None].expand(-1, -1, block_m)).contiguous()
        return BlockOffsets(kmap.sorted_order if sort else None, count, active.to(torch.int32).contiguous(),
                            sources)

    return _cached(kmap, ("block_offsets", sort, block_m), build)


@dataclass(frozen=True)
class PairChunks:
    """The pair list cut into chunks of at most ``chunk`` pairs that never straddle two offsets.

    Chunk ``c`` covers pairs ``start[c]:stop[c]`` of offset ``offset[c]``; the chunks of offset ``k`` are
    ``bounds[k]:bounds[k+1]``.
    """

    start: torch.Tensor  # [C] int64
    stop: torch.Tensor  # [C] int64
    offset: torch.Tensor  # [C] int64
    bounds: torch.Tensor  # [K+1] int64
    num_chunks: int


def pair_chunks(kmap: KernelMap, chunk: int) -> PairChunks:
    """The :class:`PairChunks` of ``kmap`` for chunks of ``chunk`` pairs."""

    def build() -> PairChunks:
        pairs = kmap.pairs
        dev = kmap.device
        k = kmap.kernel_volume
        num_chunks = sum(-(-n // chunk) for n in pairs.counts)
        per_offset = (pairs.bounds[1:] - pairs.bounds[:-1] + chunk - 1) // chunk
        bounds = torch.zeros(k + 1, dtype=torch.int64, device=dev)
        torch.cumsum(per_offset, 0, out=bounds[1:])
        offset = torch.repeat_interleave(torch.arange(k, device=dev), per_offset, output_size=num_chunks)
        start = pairs.bounds[offset] + (torch.arange(num_chunks, device=dev) - bounds[offset]) * chunk
        stop = torch.minimum(start + chunk, pairs.bounds[offset + 1])
        return PairChunks(start, stop, offset, bounds, num_chunks)

    return _cached(kmap, ("pair_chunks", chunk), build)


def split_bounds(kmap: KernelMap, splits: int) -> torch.Tensor:
    """``[0, splits]`` on the map's device: one group holding every split (for the segment reduction)."""
    return _cached(kmap, ("split_bounds", splits),
                   lambda: torch.arange(2, dtype=torch.int64, device=kmap.device) * splits)


def pair_indices(kmap: KernelMap) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous int32 copies of the pair list's ``in_idx`` and ``out_idx`` (offset-major order)."""
    return _cached(kmap, "pair_indices", lambda: (kmap.pairs.in_idx.to(torch.int32).contiguous(),
                                                  kmap.pairs.out_idx.to(torch.int32).contiguous()))
