"""`SparseTensor`: features on sparse 3D sites, with the kernel-map caches of its coordinate set."""
from __future__ import annotations

import operator
from typing import Any, Sequence

import torch

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.keys import key_radix, pack
from warpsparse.coords.triton_hash import coord_table


def _check_coords(coords: torch.Tensor, features: torch.Tensor) -> None:
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"coords must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must have shape [N, 4] (batch, x0, x1, x2), got {tuple(coords.shape)}")
    if coords.is_floating_point() or coords.is_complex() or coords.dtype == torch.bool:
        raise TypeError(f"coords must be an integer tensor, got {coords.dtype}")
    if coords.shape[0] != features.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but coords has {coords.shape[0]}; they must match")
    if coords.device != features.device:
        raise ValueError(f"coords are on {coords.device} but features on {features.device}; put both on one device")


#: the feature dtypes the convolutions, pooling and normalisation layers support
FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_features(features: torch.Tensor) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dtype not in FEATURE_DTYPES:
        raise TypeError(f"features must be float16, bfloat16, float32 or float64, got {features.dtype}")
    if features.layout != torch.strided:
        raise TypeError(f"features must be a dense (strided) tensor, got layout {features.layout}")
    if features.dim() != 2:
        raise ValueError(f"features must have shape [N, C], got {tuple(features.shape)}")


def first_row(bad: torch.Tensor) -> int | None:
    """The index of the first ``True`` of the row flags ``bad`` (one host read), ``None`` when there is none."""
    rows = bad.nonzero()
    return int(rows[0]) if rows.numel() else None


def shape_arg(spatial_shape: Sequence[int] | None) -> tuple[int, int, int] | None:
    """A ``spatial_shape`` argument as 3 ints (``None`` stays ``None``); a clear error otherwise."""
    if spatial_shape is None:
        return None
    try:
        if isinstance(spatial_shape, (str, bytes)):
            raise TypeError
        shape = tuple(operator.index(s) for s in spatial_shape)
    except TypeError:
        raise TypeError(f"spatial_shape must be 3 positive ints, got {spatial_shape!r}") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(f"spatial_shape must be 3 positive ints, got {spatial_shape!r}")
    return shape  # type: ignore[return-value]


def batch_arg(batch_size: int | None) -> int | None:
    """A ``batch_size`` argument as an int (``None`` stays ``None``); a clear error otherwise."""
    if batch_size is None:
        return None
    try:
        batches = operator.index(batch_size)
    except TypeError:
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}") from None
    if batches <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batches


def _repeats(sites: CoordSet) -> torch.Tensor:
    """How many rows repeat another row's site (a device scalar). On CUDA the set's hash table, which its
    kernel maps need anyway, counts them as it is built; elsewhere the packed keys are sorted."""
    if sites.device.type == "cuda":
        count = torch.zeros(1, dtype=torch.int32, device=sites.device)
        coord_table(sites, repeats=count)
        return count[0]
    keys = torch.sort(pack(sites.coords, key_radix(sites.spatial_shape, sites.batch_size))).values
    return (keys[1:] == keys[:-1]).sum()


def _validate_sites(coords: torch.Tensor, spatial_shape: Sequence[int] | None, batch_size: int | None,
                    device: torch.device) -> CoordSet:
    """The checked site set of ``coords`` on ``device`` (range, uniqueness), with the default shape and batch
    size filled in: one host read when both are given, two when one is inferred from the coordinates."""
    shape, batches = shape_arg(spatial_shape), batch_arg(batch_size)
    sites = coords.to(device=device, dtype=torch.int32).contiguous()
    if coords.shape[0] == 0:
        if shape is None or batches is None:
            raise ValueError("an empty SparseTensor needs spatial_shape and batch_size")
        key_radix(shape, batches)
        return CoordSet(sites, shape, batches)
    c = coords.long()
    parts = [c.min(dim=0).values, c.max(dim=0).values]
    candidate = None
    if shape is not None and batches is not None:  # counted now; only read if the range check passes
        candidate = CoordSet(sites, shape, batches)
        parts.append(_repeats(candidate).to(c.device, torch.int64).view(1))
    stats = torch.cat(parts).tolist()
    lo, hi = stats[:4], stats[4:8]
    if min(lo) < 0:
        bad = first_row((c < 0).any(dim=1))
        raise ValueError(f"coords must be non-negative; row {bad} is {c[bad].tolist()}")
    shape = shape or (hi[1] + 1, hi[2] + 1, hi[3] + 1)
    batches = batches or hi[0] + 1
    key_radix(shape, batches)  # the int32 coordinates and int64 keys must hold them
    if hi[0] >= batches or any(h >= s for h, s in zip(hi[1:], shape)):
        outside = (c >= torch.tensor([batches, *shape], device=coords.device)).any(dim=1)
        bad = first_row(outside)
        raise ValueError(f"coords row {bad} = {c[bad].tolist()} lies outside batch_size={batches}, "
                         f"spatial_shape={shape}")
    result = candidate or CoordSet(sites, shape, batches)
    repeats = stats[8] if candidate is not None else int(_repeats(result))
    if repeats:
        keys, order = torch.sort(pack(c, key_radix(shape, batches)), stable=True)
        row = int(order[1:][keys[1:] == keys[:-1]].min())
        raise ValueError(f"coords hold {repeats} duplicate site(s); the first repeated one is row {row} = "
                         f"{c[row].tolist()}. Merge points into sites with warpsparse.voxelize")
    return result


class SparseTensor:
    """Features [N, C] on N distinct sites ``coords`` [N, 4] = (batch, x0, x1, x2) of a 3D grid.

    Tensors made by convolutions share their coordinate set (with its cached kernel maps) and the
    ``indice_key`` store of the network they came from.
    """

    def __init__(self, features: torch.Tensor, coords: torch.Tensor, spatial_shape: Sequence[int] | None = None,
                 batch_size: int | None = None) -> None:
        _check_features(features)
        _check_coords(coords, features)
        self._init(features, _validate_sites(coords, spatial_shape, batch_size, features.device), {})

    def _init(self, features: torch.Tensor, coord_set: CoordSet, indice_store: dict[str, Any]) -> None:
        self._features = features
        self.coord_set = coord_set
        self.indice_store = indice_store

    @property
    def features(self) -> torch.Tensor:
        """The features [N, C]; assigning new ones checks them as :meth:`replace` does."""
        return self._features

    @features.setter
    def features(self, features: torch.Tensor) -> None:
        self._features = self._checked_replacement(features)

    @classmethod
    def from_coord_set(cls, features: torch.Tensor, coord_set: CoordSet,
                       indice_store: dict[str, Any]) -> "SparseTensor":
        """A tensor on an existing (already validated) coordinate set, sharing an ``indice_key`` store."""
        out = cls.__new__(cls)
        out._init(features, coord_set, indice_store)
        return out

    @property
    def coords(self) -> torch.Tensor:
        return self.coord_set.coords

    @property
    def indices(self) -> torch.Tensor:
        """spconv's name for :attr:`coords`."""
        return self.coord_set.coords

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.coord_set.spatial_shape

    @property
    def batch_size(self) -> int:
        return self.coord_set.batch_size

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def dtype(self) -> torch.dtype:
        return self.features.dtype

    @property
    def num_points(self) -> int:
        return self.features.shape[0]

    @property
    def num_channels(self) -> int:
        return self.features.shape[1]

    def replace(self, features: torch.Tensor) -> "SparseTensor":
        """Same sites (and caches), new features [N, C']."""
        return SparseTensor.from_coord_set(self._checked_replacement(features), self.coord_set, self.indice_store)

    def replace_feature(self, features: torch.Tensor) -> "SparseTensor":
        """spconv's name for :meth:`replace`."""
        return self.replace(features)

    def _checked_replacement(self, features: torch.Tensor) -> torch.Tensor:
        _check_features(features)
        n = self.coord_set.num_points
        if features.shape[0] != n or features.device != self.device:
            raise ValueError(f"replacement features must have {n} rows on {self.device}, got "
                             f"{tuple(features.shape)} on {features.device}")
        return features

    def to(self, *args: Any, **kwargs: Any) -> "SparseTensor":
        """Like ``Tensor.to``; a device move copies the coordinates (and starts fresh map caches)."""
        features = self.features.to(*args, **kwargs)
        if features.device == self.device:
            return self.replace(features)
        cs = self.coord_set
        moved = CoordSet(cs.coords.to(features.device), cs.spatial_shape, cs.batch_size)
        return SparseTensor.from_coord_set(features, moved, {})

    def dense(self) -> torch.Tensor:
        """The dense grid [B, C, D0, D1, D2] (differentiable in the features)."""
        b, c = self.batch_size, self.num_channels
        grid = self.features.new_zeros((b, *self.spatial_shape, c))
        idx = self.coords.long()
        grid = grid.index_put((idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]), self.features)
        return grid.permute(0, 4, 1, 2, 3).contiguous()

    def __repr__(self) -> str:
        return (f"SparseTensor(num_points={self.num_points}, num_channels={self.num_channels}, "
                f"spatial_shape={self.spatial_shape}, batch_size={self.batch_size}, dtype={self.dtype}, "
                f"device={self.device})")
