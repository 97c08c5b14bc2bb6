"""Shared fixtures of the tuner tests: an isolated cache dir, small real kernel maps, fake algorithms."""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest
import torch

from warpsparse.algorithms import registry
from warpsparse.algorithms.base import CONV_OPS, DEPTHWISE_OPS, Algorithm, Op, ParamSpace, Params, Signature, epilogue
from warpsparse.algorithms.explicit import ExplicitDepthwise, ExplicitGemm
from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.coords.maps import build_kernel_map
from warpsparse.tuner import modes, reset, store
from warpsparse.tuner.modes import ENV_VARS
from warpsparse.tuner.search import BUDGET_ENV, WORKERS_ENV

ALL_ENV_VARS = sorted({v for vs in ENV_VARS.values() for v in vs} | {BUDGET_ENV, WORKERS_ENV})


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Any:
    """A private cache dir, no algorithm-mode variables, no tuning budget (what a test checks must not depend on
    the machine's load; tests of the budget set their own), and a tuner with nothing in memory."""
    path = tmp_path / "cache"
    monkeypatch.setenv(store.CACHE_DIR_ENV, str(path))
    for var in ALL_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(BUDGET_ENV, "inf")
    monkeypatch.setattr(store, "_warned", set())
    monkeypatch.setattr(modes, "_warned", set())
    monkeypatch.setattr(modes, "_parsed", {})
    reset(save=False)
    yield path
    reset(save=False)


def use_registry(monkeypatch, *algos: Algorithm) -> None:
    """Make ``algos`` the whole registry for one test."""
    monkeypatch.setattr(registry, "_REGISTRY", {a.name: a for a in algos})


def random_map(n: int = 80, extent: int = 7, kernel: int = 3, stride: int = 1, subm: bool = True) -> KernelMap:
    """A kernel map over ``n`` random sites (fresh each call) of one batch in an ``extent``^3 grid."""
    xyz = torch.unique(torch.randint(0, extent, (n, 3)), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    src = CoordSet(coords, (extent,) * 3, 1)
    if subm:
        geom = submanifold_geometry((kernel,) * 3, (1, 1, 1))
        return build_kernel_map(src, geom, (extent,) * 3, out=src, kind="subm")[0]
    geom = ConvGeometry((kernel,) * 3, (stride,) * 3)
    return build_kernel_map(src, geom, geom.output_shape((extent,) * 3), kind="conv")[0]


def operands(op: Op, kmap: KernelMap, c_in: int = 4, c_out: int = 5,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random ``(a, b)`` of the right shapes for ``op`` on ``kmap``."""
    k, n_in, n_out = kmap.kernel_volume, kmap.num_in, kmap.num_out
    shapes = {
        Op.CONV_FWD: ((n_in, c_in), (k, c_in, c_out)), Op.CONV_DGRAD: ((n_out, c_out), (k, c_in, c_out)),
        Op.CONV_WGRAD: ((n_in, c_in), (n_out, c_out)), Op.DW_FWD: ((n_in, c_in), (k, c_in)),
        Op.DW_DGRAD: ((n_out, c_in), (k, c_in)), Op.DW_WGRAD: ((n_in, c_in), (n_out, c_in)),
    }[op]
    return torch.randn(*shapes[0], dtype=dtype), torch.randn(*shapes[1], dtype=dtype)


def truth(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """The reference result (explicit algorithm, default parameters)."""
    alg = ExplicitDepthwise() if op.depthwise else ExplicitGemm()
    return alg.run(op, {}, a, b, kmap)


class Fake(Algorithm):
    """An algorithm with a controlled cost (sleep, in ms, per parameter point) and behaviour.

    ``behaviour``: ``correct``, ``wrong`` (off by 10%), ``raise``, ``mutate`` (scales its input in place),
    ``partial`` (leaves half the output rows unwritten).
    """

    def __init__(self, name: str, cost_ms: float | Callable[[Params], float] = 0.0, behaviour: str = "correct",
                 ops: frozenset[Op] = CONV_OPS | DEPTHWISE_OPS, space: dict[str, tuple] | None = None,
                 not_for: str | None = None, estimate: Callable[[Params], float | None] | None = None) -> None:
        self.name = name
        self.ops = ops
        self.cost = cost_ms if callable(cost_ms) else (lambda p, c=cost_ms: c)
        self.behaviour = behaviour
        self.space = space or {}
        self.not_for = not_for
        self.estimate = estimate
        self.calls: list[dict] = []

    def applies_to(self, sig: Signature) -> str | None:
        return super().applies_to(sig) or self.not_for

    def param_space(self, sig: Signature) -> ParamSpace:
        return ParamSpace(self.space)

    def estimate_cost(self, sig: Signature, params: Params) -> float | None:
        return None if self.estimate is None else self.estimate(params)

    def run(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap,
            bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        self.calls.append(dict(params))
        time.sleep(self.cost(params) / 1e3)
        if self.behaviour == "raise":
            raise RuntimeError("out of resources: shared memory")
        out = epilogue(truth(op, a, b, kmap), bias, relu)
        if self.behaviour == "wrong":
            return out * 1.1
        if self.behaviour == "mutate":
            a.mul_(2.0)
        if self.behaviour == "partial":
            res = torch.empty_like(out)
            res[: out.shape[0] // 2] = out[: out.shape[0] // 2]
            return res
        return out
