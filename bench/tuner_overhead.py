"""Hot-path cost of the tuner on CPU: a dispatch on a cache hit versus calling the algorithm directly.

The dispatch is ``dispatch_unchecked``, what a conv layer calls (the public ``dispatch`` adds its operand checks).

The algorithm is a stub that returns a preallocated tensor, so the difference is pure dispatch overhead
(mode resolution, signature, bucketed key, table lookup). Also reports the first-call tuning time of one
explicit_gemm layer. Usage: python bench/tuner_overhead.py [--calls N]
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import torch

os.environ.setdefault("WARPCONVNET_BENCHMARK_CACHE_DIR", tempfile.mkdtemp(prefix="warpsparse-bench-"))

from warpsparse.algorithms import registry  # noqa: E402
from warpsparse.algorithms.base import CONV_OPS, Algorithm, Op  # noqa: E402
from warpsparse.coords.coord_set import CoordSet  # noqa: E402
from warpsparse.coords.geometry import submanifold_geometry  # noqa: E402
from warpsparse.coords.maps import build_kernel_map  # noqa: E402
from warpsparse.tuner import reset  # noqa: E402
from warpsparse.tuner.dispatcher import dispatch_unchecked as dispatch  # noqa: E402


class _Stub(Algorithm):
    name = "explicit_gemm"
    ops = CONV_OPS

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    def run(self, op, params, a, b, kmap, bias=None, relu=False):  # noqa: ANN001, ANN201
        return self.out


def _layer(n: int, channels: int, extent: int = 48):
    xyz = torch.unique(torch.randint(0, extent, (n, 3)), dim=0)
    coords = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int()
    src = CoordSet(coords, (extent,) * 3, 1)
    kmap, _ = build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), (extent,) * 3, out=src, kind="subm")
    return kmap, torch.randn(len(xyz), channels), torch.randn(27, channels, channels)


def _best_per_call(fn, calls: int, rounds: int = 7) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    kmap, x, w = _layer(4000, 32)
    real = dict(registry._REGISTRY)
    stub = _Stub(torch.empty(kmap.num_out, 32))
    registry._REGISTRY.clear()
    registry.register(stub)
    try:
        reset(save=False)
        os.environ["WARPCONVNET_TUNE_BUDGET_MS"] = "50"
        dispatch(Op.CONV_FWD, x, w, kmap)  # tunes once
        direct = _best_per_call(lambda: stub.run(Op.CONV_FWD, {}, x, w, kmap), args.calls)
        for label, algo in (("algo=None (env)", None), ("algo='explicit_gemm'", "explicit_gemm"),
                            ("algo=['explicit_gemm']", ["explicit_gemm"])):
            dispatch(Op.CONV_FWD, x, w, kmap, algo)
            hit = _best_per_call(lambda: dispatch(Op.CONV_FWD, x, w, kmap, algo), args.calls)
            print(f"cache hit, {label:24s}: {hit - direct:6.2f} us dispatch overhead per call "
                  f"({hit:.2f} us total, {direct:.2f} us stub)")
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(real)
        os.environ.pop("WARPCONVNET_TUNE_BUDGET_MS", None)
    reset(save=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    dispatch(Op.CONV_FWD, x, w, kmap, "explicit_gemm")
    first = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    dispatch(Op.CONV_FWD, x, w, kmap, "explicit_gemm")
    again = (time.perf_counter() - t0) * 1e3
    print(f"explicit_gemm layer N={kmap.num_out} C=32->32 K=27 on CPU: first call (tuning) {first:.0f} ms, "
          f"next call {again:.2f} ms")
    reset(save=False)


if __name__ == "__main__":
    main()
