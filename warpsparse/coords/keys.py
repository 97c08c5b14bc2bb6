"""Packing (batch, x0, x1, x2) coordinates into sortable int64 keys (mixed radix, batch-major)."""
from __future__ import annotations

import torch

MAX_KEY_SPACE = 1 << 62
MAX_EXTENT = 2**31 - 1  # coordinates are int32: the batch size and every grid extent stay at or below this


def key_radix(spatial_shape: tuple[int, int, int], batch_size: int) -> tuple[int, int, int]:
    """Radices for :func:`pack`; ``ValueError`` when an extent passes :data:`MAX_EXTENT` or batch x grid does not
    fit in 62 bits."""
    s0, s1, s2 = (int(s) for s in spatial_shape)
    if max(s0, s1, s2, batch_size) > MAX_EXTENT:
        raise ValueError(
            f"batch_size {batch_size} x spatial_shape {tuple(spatial_shape)}: coordinates are stored as int32, so "
            "the batch size and every grid extent must be at most 2**31 - 1")
    if batch_size * s0 * s1 * s2 > MAX_KEY_SPACE:
        raise ValueError(
            f"batch_size {batch_size} x spatial_shape {tuple(spatial_shape)} has "
            f"{batch_size * s0 * s1 * s2} sites, more than the 2**62 that int64 keys can address; "
            "use a coarser grid or a smaller batch")
    return s0, s1, s2


def pack(coords: torch.Tensor, radix: tuple[int, int, int]) -> torch.Tensor:
    """Keys of ``coords`` [..., 4] (batch, x0, x1, x2), all in range, as int64."""
    c = coords.long()
    s0, s1, s2 = radix
    return ((c[..., 0] * s0 + c[..., 1]) * s1 + c[..., 2]) * s2 + c[..., 3]


def unpack(keys: torch.Tensor, radix: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 coordinates [..., 4]."""
    s0, s1, s2 = radix
    x2 = keys % s2
    rest = keys // s2
    x1 = rest % s1
    rest = rest // s1
    x0 = rest % s0
    b = rest // s0
    return torch.stack([b, x0, x1, x2], dim=-1).to(torch.int32)
