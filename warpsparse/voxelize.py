"""`voxelize`: merge points into voxel sites."""
from __future__ import annotations

from typing import Sequence

import torch

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.keys import MAX_EXTENT, key_radix, pack, unpack
from warpsparse.algorithms.explicit.common import accumulation_dtype
from warpsparse.sparse_tensor import SparseTensor, batch_arg, first_row, shape_arg

REDUCTIONS = ("mean", "sum", "max", "min")


def voxelize(points: torch.Tensor, voxel_size: float | Sequence[float], *, batch: torch.Tensor | None = None,
             origin: Sequence[float] | torch.Tensor | None = None, reduce: str = "mean",
             batch_size: int | None = None, spatial_shape: Sequence[int] | None = None) -> SparseTensor:
    """Voxelize ``points`` [N, 3+F] (xyz then features) into a :class:`SparseTensor`.

    Site = floor((xyz - origin) / voxel_size); ``origin`` defaults to the per-axis minimum, so every site is
    non-negative. Features are the ``reduce`` ("mean", "sum", "max", "min") of the points' features in each
    voxel, or of their xyz when F == 0. ``batch`` [N] gives each point's batch index (default 0).
    ``batch_size`` and ``spatial_shape`` fix the tensor's batch size and grid (so that batch items without
    points, and grids of the same size from batch to batch, are kept); by default they are the smallest that
    hold the sites (batch size 1 and grid (1, 1, 1) without points).
    """
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise TypeError(f"points must be a floating-point tensor, got {getattr(points, 'dtype', type(points))}")
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape [N, 3+F], got {tuple(points.shape)}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    size = _finite_values(voxel_size, "voxel_size", points, (1, 3))
    if not bool((size > 0).all()):
        raise ValueError(f"voxel_size must be a positive number or 3 positive numbers, got {voxel_size!r}")
    size = size.reshape(-1).expand(3)
    xyz = points[:, :3]
    feats = points[:, 3:] if points.shape[1] > 3 else xyz
    if batch is not None and (not isinstance(batch, torch.Tensor) or batch.shape != (points.shape[0],)
                              or batch.is_floating_point() or batch.dtype == torch.bool):
        raise ValueError(f"batch must be an integer tensor of shape [{points.shape[0]}], got "
                         f"{getattr(batch, 'dtype', type(batch).__name__)} {tuple(getattr(batch, 'shape', ()))}")
    given = None if origin is None else _finite_values(origin, "origin", points, (3,))
    fixed_shape, fixed_batch = shape_arg(spatial_shape), batch_arg(batch_size)
    if points.shape[0] == 0:  # nothing to voxelize: no sites
        empty = torch.zeros((0, 4), dtype=torch.int32, device=points.device)
        return SparseTensor(feats[:0], empty, fixed_shape or (1, 1, 1), fixed_batch or 1)
    row = first_row(~torch.isfinite(xyz).all(dim=1))
    if row is not None:
        raise ValueError(f"points must have finite xyz; row {row} is {xyz[row].tolist()}")
    base = xyz.min(dim=0).values if given is None else given
    cell = torch.floor((xyz - base) / size)
    row = first_row((cell > MAX_EXTENT).any(dim=1))
    if row is not None:
        raise ValueError(f"point row {row} at {xyz[row].tolist()} lies {cell[row].max().item():.3g} voxels from "
                         f"origin {base.tolist()}: coordinates are stored as int32, at most 2**31 - 1; use larger "
                         "voxels or split the scene")
    cell = cell.long()
    row = first_row((cell < 0).any(dim=1))
    if row is not None:
        raise ValueError(f"point row {row} at {xyz[row].tolist()} lies below origin {base.tolist()}; pass an "
                         "origin at or below every point")
    if batch is None:
        b = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    else:
        b = batch.to(points.device).long()
        row = first_row(b < 0)
        if row is not None:
            raise ValueError(f"batch indices must be non-negative; row {row} is {int(b[row])}")
    coords = torch.cat([b[:, None], cell], dim=1)
    hi = coords.max(dim=0).values.tolist()
    shape = fixed_shape or (hi[1] + 1, hi[2] + 1, hi[3] + 1)
    batches = fixed_batch or hi[0] + 1
    if hi[0] >= batches:
        raise ValueError(f"batch_size {batches}: the batch indices go up to {hi[0]}")
    row = None if fixed_shape is None else first_row((cell >= torch.tensor(shape, device=cell.device)).any(dim=1))
    if row is not None:
        raise ValueError(f"point row {row} at {xyz[row].tolist()} falls in voxel {cell[row].tolist()}, outside "
                         f"spatial_shape {shape}; pass a larger spatial_shape (or origin and voxel_size that fit)")
    radix = key_radix(shape, batches)
    uniq, inverse = torch.unique(pack(coords, radix), return_inverse=True)
    index = inverse[:, None].expand(-1, feats.shape[1])
    red = "amax" if reduce == "max" else "amin" if reduce == "min" else reduce
    wide = feats.to(accumulation_dtype(feats.dtype)) if reduce in ("mean", "sum") else feats  # half sums overflow
    out = wide.new_zeros(uniq.numel(), feats.shape[1]).scatter_reduce(0, index, wide, red, include_self=False)
    out = out.to(feats.dtype)
    sites = CoordSet(unpack(uniq, radix), shape, batches)  # unique and in range by construction
    return SparseTensor.from_coord_set(out, sites, {})


def _finite_values(value: object, name: str, points: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
    """``value`` as a tensor of ``points``' dtype and device holding one of ``counts`` finite numbers;
    ``ValueError`` naming ``name`` otherwise."""
    want = " or ".join(f"{n} number{'s' if n > 1 else ''}" for n in counts)
    try:
        out = torch.as_tensor(value, dtype=points.dtype, device=points.device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be {want}, got {value!r}") from None
    if out.numel() not in counts or not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be {want} (finite), got {value!r}")
    return out.reshape(-1)
