"""SubM 3x3x3 C->C layer on the bundled scan at 0.1 m: `cupy_implicit_gemm` at its best parameter point vs
`explicit_gemm` at its best, forward and forward+backward (forward + input gradient + weight gradient).

    python3 bench/cupy_layers.py [--channels 16 32 64 128 256] [--dtypes fp16 fp32 tf32] [--out DIR] [--profile]

Every parameter point of each op is compiled ahead in parallel processes, checked once against the
explicit algorithm (fp64 / fp32 reference), and timed with ``triton.testing.do_bench`` (CUDA events, L2
flushed, median); explicit_gemm is timed at each of its points too. The host time of a cache-hit call is
the median over bursts of 10 calls of the 32-channel fp16 forward, each burst started on an idle GPU.
Prints a Markdown table; ``--out`` also writes ``cupy_layers.json`` (the rows and the
:func:`bench.timing.environment` record).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import environment  # noqa: E402
import warpsparse.algorithms  # noqa: E402,F401  (registers the explicit algorithms)
import warpsparse.algorithms.cupy  # noqa: E402,F401  (registers the CuPy algorithms)
from warpsparse.algorithms import registry  # noqa: E402
from warpsparse.algorithms.base import Op, Signature  # noqa: E402
from warpsparse.algorithms.cupy import runtime  # noqa: E402
from warpsparse.coords.coord_set import CoordSet  # noqa: E402
from warpsparse.coords.geometry import submanifold_geometry  # noqa: E402
from warpsparse.coords.kernel_map import KernelMap  # noqa: E402
from warpsparse.coords.maps import build_kernel_map  # noqa: E402

SCAN = Path(__file__).resolve().parents[1] / "warpsparse" / "data" / "waymo-scan-spconv.npz"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "tf32": torch.float32}
OPS = (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD)
TOL = {"fp16": 1e-2, "bf16": 4e-2, "fp32": 1e-3, "tf32": 1e-2}


def scan_map(voxel: float = 0.1) -> KernelMap:
    """The SubM 3x3x3 map of the scan voxelized as floor((xyz - min) / voxel), unique."""
    pc = torch.from_numpy(np.load(SCAN)["pc"]).cuda()
    grid = torch.unique(torch.floor((pc - pc.min(0).values) / voxel).int(), dim=0)
    coords = torch.cat([torch.zeros_like(grid[:, :1]), grid], 1).contiguous()
    cs = CoordSet(coords, tuple(int(v) + 1 for v in grid.max(0).values.tolist()), 1)  # type: ignore[arg-type]
    kmap, _ = build_kernel_map(cs, submanifold_geometry((3, 3, 3), (1, 1, 1)), cs.spatial_shape, out=cs,
                               kind="subm", builder="torch")
    return kmap


def operands(op: Op, kmap: KernelMap, c: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(kmap.num_in, c, device="cuda", dtype=dtype)
    w = (torch.randn(kmap.kernel_volume, c, c, device="cuda") / (27 * c) ** 0.5).to(dtype)
    dy = torch.randn(kmap.num_out, c, device="cuda", dtype=dtype)
    return {Op.CONV_FWD: (x, w), Op.CONV_DGRAD: (dy, w), Op.CONV_WGRAD: (x, dy)}[op]


def median_ms(fn: Callable[[], Any]) -> float:
    return float(do_bench(fn, warmup=5, rep=25, return_mode="median"))


def best_point(name: str, op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, ref: torch.Tensor,
               tol: float) -> tuple[dict[str, Any], float, int]:
    """(fastest correct point, its median ms, points timed) of algorithm ``name`` for ``op``."""
    algo = registry.get(name)
    best, best_ms, n = None, float("inf"), 0
    for params in algo.param_space(Signature.of(op, a, b, kmap)).points():
        try:
            out = algo.run(op, params, a, b, kmap)
        except Exception as exc:  # a point that cannot run is reported and skipped, as the tuner does
            print(f"  FAILED {name} {op.value} {params}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        err = (out.float() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
        if not err <= tol:
            print(f"  WRONG {name} {op.value} {params}: relative error {err:.3g}")
            continue
        ms = median_ms(lambda: algo.run(op, params, a, b, kmap))
        n += 1
        if ms < best_ms:
            best, best_ms = params, ms
    if best is None:
        raise RuntimeError(f"no correct point of {name} for {op.value}")
    return best, best_ms, n


def host_us(op: Op, params: dict[str, Any], a: torch.Tensor, b: torch.Tensor, kmap: KernelMap,
            profile: bool = False) -> float:
    """Median host microseconds per cache-hit call, over bursts of 10 calls each started on an idle GPU (so
    no launch ever waits for the device); ``profile``: also print where the host time goes."""
    algo = registry.get("cupy_implicit_gemm")

    def burst() -> None:
        for _ in range(10):
            algo.run(op, params, a, b, kmap)

    burst()
    samples = []
    for _ in range(50):
        torch.cuda.synchronize()
        start = time.perf_counter()
        burst()
        samples.append((time.perf_counter() - start) / 10 * 1e6)
    torch.cuda.synchronize()
    if profile:
        prof = cProfile.Profile()
        for _ in range(30):
            torch.cuda.synchronize()
            prof.runcall(burst)
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return sorted(samples)[len(samples) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "fp32"], choices=sorted(DTYPES),
                        help="tf32: float32 with torch.backends.cuda.matmul.allow_tf32 set")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile", action="store_true", help="profile the host side of a cache-hit call")
    args = parser.parse_args()

    kmap = scan_map()
    print(f"{torch.cuda.get_device_name()}: {kmap.num_out} sites, {kmap.num_pairs} pairs")
    cupy_algo = registry.get("cupy_implicit_gemm")
    jobs = [(d, c) for d in args.dtypes for c in args.channels]
    start = time.perf_counter()
    items = []
    for label, c in jobs:
        for op in OPS:
            sig = Signature(op, kmap.num_in, kmap.num_out, c, c, 27, DTYPES[label], "cuda", kmap.num_pairs,
                            label == "tf32")
            items += cupy_algo.instantiations(sig)
    failed = runtime.precompile(items)
    print(f"compiled {len(set(items))} instantiations in {time.perf_counter() - start:.1f} s")
    for name, err in failed.items():
        print(f"  COMPILE FAILED {name}: {err[:2000]}")

    rows = []
    for label, c in jobs:
        dtype = DTYPES[label]
        torch.backends.cuda.matmul.allow_tf32 = label == "tf32"  # the explicit path's cuBLAS follows it too
        row: dict[str, Any] = {"dtype": label, "channels": c}
        chosen = {}
        for op in OPS:
            a, b = operands(op, kmap, c, dtype)
            wide = torch.float64 if dtype == torch.float32 else torch.float32
            ref = registry.get("explicit_gemm").run(op, {}, a.to(wide), b.to(wide), kmap).float()
            for name in ("cupy_implicit_gemm", "explicit_gemm"):
                params, ms, n = best_point(name, op, a, b, kmap, ref, TOL[label])
                row[f"{name}:{op.value}"] = {"ms": ms, "params": params, "points": n}
                chosen[(name, op)] = (params, a, b)
        for name in ("cupy_implicit_gemm", "explicit_gemm"):
            algo = registry.get(name)
            calls = [(op,) + chosen[(name, op)] for op in OPS]
            row[f"{name}:fwd"] = row[f"{name}:conv_fwd"]["ms"]
            row[f"{name}:fwd+bwd"] = median_ms(lambda: [algo.run(op, p, a, b, kmap) for op, p, a, b in calls])
        row["tflops_fwd"] = 2 * kmap.num_pairs * c * c / row["cupy_implicit_gemm:fwd"] / 1e9
        if c == 32 and label == "fp16":
            params, a, b = chosen[("cupy_implicit_gemm", Op.CONV_FWD)]
            row["host_us_fwd"] = host_us(Op.CONV_FWD, params, a, b, kmap, profile=args.profile)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items()}, default=str))

    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"\n{torch.cuda.get_device_name()}, SubM 3x3x3 C->C on the scan at 0.1 m ({kmap.num_out} sites), "
          f"median ms (do_bench, L2 flushed)\n")
    print("| dtype | C | cupy fwd | explicit fwd | speedup | cupy fwd+bwd | explicit fwd+bwd | speedup | "
          "cupy fwd TFLOP/s | best cupy fwd point |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cf, ef = r["cupy_implicit_gemm:fwd"], r["explicit_gemm:fwd"]
        cb, eb = r["cupy_implicit_gemm:fwd+bwd"], r["explicit_gemm:fwd+bwd"]
        p = r["cupy_implicit_gemm:conv_fwd"]["params"]
        point = f"{p['engine']} {p['block_m']}x{p['block_n']}x{p['block_k']} w{p['warps']} s{p['stages']}" \
                f"{' sorted' if p['sorted'] else ''}"
        print(f"| {r['dtype']} | {r['channels']} | {cf:.3f} | {ef:.3f} | {ef / cf:.2f}x | {cb:.3f} | {eb:.3f} | "
              f"{eb / cb:.2f}x | {r['tflops_fwd']:.1f} | {point} |")
    host = [r["host_us_fwd"] for r in rows if "host_us_fwd" in r]
    if host:
        print(f"\ncache-hit host time of the 32-channel fp16 forward: {host[0]:.1f} us per call")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {"environment": environment(torch.device("cuda")), "rows": rows}
        (args.out / "cupy_layers.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
