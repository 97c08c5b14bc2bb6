"""Dispatch of one op to an algorithm (placeholder: the first applicable candidate, default parameters)."""
from __future__ import annotations

import enum
from typing import Any, Sequence, Union

import torch

from warpsparse.algorithms import registry
from warpsparse.algorithms.base import Op, Signature
from warpsparse.coords.kernel_map import KernelMap

AlgoSpec = Union[None, str, enum.Enum, Sequence[Union[str, enum.Enum]]]


def dispatch(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, algo: AlgoSpec = None) -> torch.Tensor:
    """Run ``op(a, b, kmap)`` with an algorithm allowed by ``algo`` (None/AUTO: any)."""
    names: list[Any]
    if algo is None:
        names = [x.name for x in registry.algorithms_for(op)]
    elif isinstance(algo, (str, enum.Enum)):
        names = [algo]
    else:
        names = list(algo)
    names = [n.value if isinstance(n, enum.Enum) else n for n in names]
    if "auto" in names:
        names = [x.name for x in registry.algorithms_for(op)]
    sig = Signature.of(op, a, b, kmap)
    for name in names:
        alg = registry.get(name)
        if alg.applies_to(sig) is None:
            return alg.run(op, alg.default_params(sig), a, b, kmap)
    raise ValueError(f"no algorithm among {names} applies to {op.value}")
