"""Convolution geometry: argument normalisation, kernel offsets and output grid sizes."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from warpsparse.coords.keys import MAX_EXTENT

Triple = tuple[int, int, int]


def triple(value: int | tuple[int, ...] | list[int], name: str, minimum: int = 0) -> Triple:
    """Normalise an int or 3-sequence argument (each value from ``minimum`` to :data:`MAX_EXTENT`), with a clear
    error naming ``name``."""
    if type(value) is int and minimum <= value <= MAX_EXTENT:  # the common cases, checked first
        return value, value, value
    if type(value) is tuple and len(value) == 3:
        a, b, c = value
        if type(a) is int and type(b) is int and type(c) is int and min(a, b, c) >= minimum \
                and max(a, b, c) <= MAX_EXTENT:
            return value  # type: ignore[return-value]
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of 3 ints, got {value!r}")
    if isinstance(value, int):
        out = (value, value, value)
    elif isinstance(value, (tuple, list, torch.Size)) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        out = (int(value[0]), int(value[1]), int(value[2]))
    else:
        raise TypeError(f"{name} must be an int or a tuple of 3 ints, got {value!r}")
    if any(v < minimum for v in out):
        raise ValueError(f"{name} must be >= {minimum} on every axis, got {out}")
    if any(v > MAX_EXTENT for v in out):
        raise ValueError(f"{name} must be at most 2**31 - 1 on every axis (coordinates are int32), got {out}")
    return out


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel size, stride, padding and dilation of a convolution, and whether it is transposed.

    A regular conv relates input ``i`` and output ``o`` through offset ``k`` by ``i = o*s + k*d - p``, a
    transposed conv by ``o = i*s + k*d - p`` (PyTorch's ``conv3d`` / ``conv_transpose3d``).
    """

    kernel_size: Triple
    stride: Triple = (1, 1, 1)
    padding: Triple = (0, 0, 0)
    dilation: Triple = (1, 1, 1)
    transposed: bool = False

    @property
    def kernel_volume(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]

    def offsets(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[K, 3] int64 kernel positions times dilation, in offset order ``k = (i0*k1 + i1)*k2 + i2``."""
        axes = [torch.arange(k, device=device) * d for k, d in zip(self.kernel_size, self.dilation)]
        grid = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([g.reshape(-1) for g in grid], dim=1)

    def output_shape(self, in_shape: Triple) -> Triple:
        """The dense output grid that PyTorch's conv3d / conv_transpose3d gives for ``in_shape``."""
        out = []
        for n, k, s, p, d in zip(in_shape, self.kernel_size, self.stride, self.padding, self.dilation):
            if self.transposed:
                out.append((n - 1) * s - 2 * p + d * (k - 1) + 1)
            else:
                out.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
        if any(v <= 0 for v in out):
            raise ValueError(f"{self} gives an empty output grid {tuple(out)} for input grid {tuple(in_shape)}")
        return tuple(out)  # type: ignore[return-value]

    @property
    def centred_symmetric(self) -> bool:
        """Stride 1, odd kernel, padding ``d*(k-1)/2``: the submanifold geometry, whose map is symmetric."""
        return (self.stride == (1, 1, 1) and all(k % 2 == 1 for k in self.kernel_size)
                and all(p == d * (k - 1) // 2 for k, p, d in zip(self.kernel_size, self.padding, self.dilation)))


@functools.lru_cache(maxsize=256)
def submanifold_geometry(kernel_size: Triple, dilation: Triple) -> ConvGeometry:
    """Geometry of a submanifold conv: odd kernel, same-padding; ``ValueError`` for even kernels."""
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(f"submanifold convolution needs odd kernel sizes, got kernel_size={kernel_size}")
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))
    return ConvGeometry(kernel_size, (1, 1, 1), padding, dilation)  # type: ignore[arg-type]
