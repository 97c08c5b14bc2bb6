"""`voxelize`: merge points into voxel sites."""
from __future__ import annotations

from typing import Sequence

import torch

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.keys import key_radix, pack, unpack
from warpsparse.sparse_tensor import SparseTensor

REDUCTIONS = ("mean", "sum", "max", "min")


def voxelize(points: torch.Tensor, voxel_size: float | Sequence[float], *, batch: torch.Tensor | None = None,
             origin: Sequence[float] | torch.Tensor | None = None, reduce: str = "mean") -> SparseTensor:
    """Voxelize ``points`` [N, 3+F] (xyz then features) into a :class:`SparseTensor`.

    Site = floor((xyz - origin) / voxel_size); ``origin`` defaults to the per-axis minimum, so every site is
    non-negative. Features are the ``reduce`` ("mean", "sum", "max", "min") of the points' features in each
    voxel, or of their xyz when F == 0. ``batch`` [N] gives each point's batch index (default 0).
    """
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise TypeError(f"points must be a floating-point tensor, got {getattr(points, 'dtype', type(points))}")
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape [N, 3+F], got {tuple(points.shape)}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    size = torch.as_tensor(voxel_size, dtype=points.dtype, device=points.device)
    if size.numel() not in (1, 3) or not bool((size > 0).all()):
        raise ValueError(f"voxel_size must be a positive number or 3 positive numbers, got {voxel_size!r}")
    size = size.reshape(-1).expand(3)
    xyz = points[:, :3]
    feats = points[:, 3:] if points.shape[1] > 3 else xyz
    if points.shape[0] == 0:
        raise ValueError("points is empty: there is nothing to voxelize")
    if origin is None:
        base = xyz.min(dim=0).values
    else:
        base = torch.as_tensor(origin, dtype=points.dtype, device=points.device)
    cell = torch.floor((xyz - base) / size).long()
    if (cell < 0).any():
        raise ValueError("some points lie below origin; pass an origin at or below every point")
    if batch is None:
        b = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    else:
        if batch.shape != (points.shape[0],) or batch.is_floating_point():
            raise ValueError(f"batch must be an integer tensor of shape [{points.shape[0]}], got "
                             f"{batch.dtype} {tuple(batch.shape)}")
        b = batch.to(points.device).long()
        if (b < 0).any():
            raise ValueError("batch indices must be non-negative")
    coords = torch.cat([b[:, None], cell], dim=1)
    hi = coords.max(dim=0).values.tolist()
    shape = (hi[1] + 1, hi[2] + 1, hi[3] + 1)
    radix = key_radix(shape, hi[0] + 1)
    uniq, inverse = torch.unique(pack(coords, radix), return_inverse=True)
    index = inverse[:, None].expand(-1, feats.shape[1])
    red = "amax" if reduce == "max" else "amin" if reduce == "min" else reduce
    out = feats.new_zeros(uniq.numel(), feats.shape[1]).scatter_reduce(0, index, feats, red, include_self=False)
    sites = CoordSet(unpack(uniq, radix), shape, hi[0] + 1)  # unique and in range by construction
    return SparseTensor.from_coord_set(out, sites, {})
