"""Containers and feature-wise layers that take SparseTensors: Sequential, norms, activations, ToDense."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from warpsparse.sparse_tensor import SparseTensor


class _Featurewise:
    """Mixin: applied to a SparseTensor, the wrapped torch layer acts on its features."""

    def forward(self, x: Any) -> Any:
        if isinstance(x, SparseTensor):
            return x.replace(super().forward(x.features))  # type: ignore[misc]
        return super().forward(x)  # type: ignore[misc]


class BatchNorm(_Featurewise, nn.BatchNorm1d):
    """BatchNorm over the features [N, C] of a SparseTensor."""


class LayerNorm(_Featurewise, nn.LayerNorm):
    """LayerNorm over the channels of a SparseTensor."""


class ReLU(_Featurewise, nn.ReLU):
    """ReLU on a SparseTensor's features."""


class LeakyReLU(_Featurewise, nn.LeakyReLU):
    """LeakyReLU on a SparseTensor's features."""


class GELU(_Featurewise, nn.GELU):
    """GELU on a SparseTensor's features."""


class SiLU(_Featurewise, nn.SiLU):
    """SiLU on a SparseTensor's features."""


class Dropout(_Featurewise, nn.Dropout):
    """Dropout on a SparseTensor's features."""


class Linear(_Featurewise, nn.Linear):
    """Per-site linear layer on a SparseTensor's features."""


class SparseSequential(nn.Sequential):
    """Sequential that passes SparseTensors along; plain torch layers get the features of a SparseTensor."""

    def forward(self, x: Any) -> Any:
        for module in self:
            if isinstance(x, SparseTensor) and type(module).__module__.startswith("torch.nn"):
                x = x.replace(module(x.features))
            else:
                x = module(x)
        return x


class ToDense(nn.Module):
    """SparseTensor -> dense [B, C, D0, D1, D2]."""

    def forward(self, x: SparseTensor) -> torch.Tensor:
        if not isinstance(x, SparseTensor):
            raise TypeError(f"ToDense takes a warpsparse.SparseTensor, got {type(x).__name__}")
        return x.dense()
