"""Containers and feature-wise layers that take SparseTensors: Sequential, norms, activations, ToDense."""
from __future__ import annotations

import functools
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


def takes_features(module: nn.Module) -> bool:
    """Whether :class:`SparseSequential` hands ``module`` a SparseTensor's features rather than the SparseTensor:
    a torch layer (or a subclass of one, parametrized or compiled), but no warpsparse module and no other module
    (a user's block that takes SparseTensors)."""
    module = _uncompiled(module)
    # a class is hashable (mypy takes nn.Module's __hash__ signature for the class's own)
    route = _route_of(type(module))  # type: ignore[arg-type]
    if route == "children" and isinstance(module, nn.Sequential):  # always a Sequential: this narrows the type
        return all(takes_features(child) for child in module)
    return route == "features"


def _uncompiled(module: nn.Module) -> nn.Module:
    """The module that ``torch.compile`` wrapped (its ``_orig_mod``), else ``module``; without the cost of
    ``nn.Module.__getattr__`` failing on every other module."""
    return module._modules.get("_orig_mod", module)  # type: ignore[return-value]


@functools.cache
def _route_of(cls: type) -> str:
    """``"features"``, ``"sparse"`` or ``"children"`` (a torch Sequential: as its layers) for modules of ``cls``;
    cached per class, as :class:`SparseSequential` asks at every call."""
    mro = [c for c in cls.__mro__ if c.__module__ != "torch.nn.utils.parametrize"]  # a parametrized module's own
    if any(c.__module__.startswith("warpsparse.") for c in mro):
        return "sparse"
    if issubclass(cls, nn.Sequential):
        return "children"
    return "features" if any(c.__module__.startswith("torch.nn.") and c is not nn.Module for c in mro) else "sparse"


class SparseSequential(nn.Sequential):
    """Sequential that passes SparseTensors along. Torch layers (``nn.Linear``, ``nn.ReLU``, ... and their
    subclasses) get the features of a SparseTensor, every other module the SparseTensor; a ``nn.Sequential``
    inside is routed the same way, layer by layer."""

    def forward(self, x: Any) -> Any:
        return _route(self, x)


def _route(layers: nn.Sequential, x: Any) -> Any:
    for module in layers:
        inner = _uncompiled(module)
        if not isinstance(x, SparseTensor):
            x = module(x)
        elif takes_features(module):
            x = x.replace(module(x.features))
        elif isinstance(inner, nn.Sequential) and not isinstance(inner, SparseSequential):  # layer by layer
            x = _route(inner, x)
        else:
            x = module(x)
    return x


class ToDense(nn.Module):
    """SparseTensor -> dense [B, C, D0, D1, D2]."""

    def forward(self, x: SparseTensor) -> torch.Tensor:
        if not isinstance(x, SparseTensor):
            raise TypeError(f"ToDense takes a warpsparse.SparseTensor, got {type(x).__name__}")
        return x.dense()
