"""Sparse pooling modules."""
from __future__ import annotations

import torch
from torch import nn

from warpsparse.coords.geometry import Triple, triple
from warpsparse.nn.functional.sparse_pool import global_avg_pool, global_max_pool, sparse_avg_pool3d, sparse_max_pool3d
from warpsparse.sparse_tensor import SparseTensor


class _WindowPool(nn.Module):
    def __init__(self, kernel_size: int | Triple, stride: int | Triple | None = None, padding: int | Triple = 0,
                 dilation: int | Triple = 1) -> None:
        super().__init__()
        self.kernel_size = triple(kernel_size, "kernel_size", 1)  # bad values fail here, not at the first call
        self.stride = self.kernel_size if stride is None else triple(stride, "stride", 1)
        self.padding, self.dilation = triple(padding, "padding", 0), triple(dilation, "dilation", 1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class SparseMaxPool3d(_WindowPool):
    """Max over the active inputs of each window."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_max_pool3d(x, self.kernel_size, self.stride, self.padding, self.dilation)


class SparseAvgPool3d(_WindowPool):
    """Mean over the active inputs of each window."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_avg_pool3d(x, self.kernel_size, self.stride, self.padding, self.dilation)


class SparseGlobalMaxPool(nn.Module):
    """Per batch item, the max over its sites: [B, C]."""

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return global_max_pool(x)


class SparseGlobalAvgPool(nn.Module):
    """Per batch item, the mean over its sites: [B, C]."""

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return global_avg_pool(x)
