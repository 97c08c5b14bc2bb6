"""Per-layer benchmark: one conv layer C->C on the bundled scan at 0.1 m, on a GPU.

    python3 bench/layers.py [--channels 16 32 64 128 256] [--dtypes fp16 fp32] [--layers subm down]
                            [--algos explicit_gemm implicit_gemm cupy_implicit_gemm] [--jobs 12] [--out DIR]

Layers: ``subm`` (SubM 3x3x3) and ``down`` (3x3x3 stride 2 padding 1). For each layer, channel count and dtype:

- every registered conv algorithm that applies, best-tuned: each op (forward, input gradient, weight
  gradient) at every parameter point (``--default-only`` algorithms: their default point), checked against
  ``explicit_gemm`` and timed; forward+backward is the sum of the three best times (kernel level);
- warpsparse modules (``SubMConv3d`` / ``SparseConv3d``, AUTO: the first call tunes within the tuner's
  budget) and spconv 2.3.8 modules (``algo=MaskImplicitGemm``), call to call, forward and forward+backward;
  submanifold maps are cached on both sides, strided maps are built in every call on both sides (spconv
  reuses only submanifold maps);
- cuBLAS dense GEMM ``[P, C] @ [C, C]`` over the layer's pair count P, the ceiling.

Every parameter point is compiled ahead in ``--jobs`` worker processes (Triton's and CuPy's disk caches),
then timed with ``triton.testing.do_bench`` (CUDA events, median). Writes ``layers.json`` (every point's time
and the :func:`bench.timing.environment` record) to ``--out`` (default ``$OUT`` or ``bench/results``) after
every layer, the tuner's log (``tuner.log``) and a profile of the 64-channel fp16 module step, and prints a
Markdown table last. ``--ncu-target`` runs only the 256-channel fp16 forward at its best swept point, for
Nsight Compute.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import logging
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import environment, versions  # noqa: E402
import warpsparse  # noqa: E402
import warpsparse.algorithms.triton  # noqa: E402,F401  (registers the Triton algorithms)
from warpsparse.algorithms import Op, Signature, registry  # noqa: E402
from warpsparse.coords.coord_set import CoordSet  # noqa: E402
from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry  # noqa: E402
from warpsparse.coords.kernel_map import KernelMap  # noqa: E402
from warpsparse.coords.maps import build_kernel_map  # noqa: E402

try:
    import warpsparse.algorithms.cupy  # noqa: E402,F401  (registers the CuPy algorithms where present)
except ImportError:
    pass

SCAN = Path(__file__).resolve().parents[1] / "warpsparse" / "data" / "waymo-scan-spconv.npz"
VOXEL = 0.1
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OPS = (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD)
TOL = {torch.float16: 1e-2, torch.bfloat16: 4e-2, torch.float32: 1e-4}
GEOMETRY = {"subm": submanifold_geometry((3, 3, 3), (1, 1, 1)),
            "down": ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))}


def scan_sites() -> CoordSet:
    """The scan voxelized as floor((xyz - min) / 0.1 m), unique, batch 0, on CUDA."""
    xyz = torch.from_numpy(np.load(SCAN)["pc"][:, :3].astype(np.float32)).cuda()
    grid = torch.unique(torch.floor((xyz - xyz.min(0).values) / VOXEL).int(), dim=0)
    coords = torch.cat([torch.zeros_like(grid[:, :1]), grid], 1).contiguous()
    return CoordSet(coords, tuple(int(v) + 1 for v in grid.max(0).values.tolist()), 1)  # type: ignore[arg-type]


_MAPS: dict[str, KernelMap] = {}


def layer_map(layer: str) -> KernelMap:
    if layer not in _MAPS:
        src = scan_sites()
        geom = GEOMETRY[layer]
        if layer == "subm":
            _MAPS[layer] = build_kernel_map(src, geom, src.spatial_shape, out=src, kind="subm")[0]
        else:
            _MAPS[layer] = build_kernel_map(src, geom, geom.output_shape(src.spatial_shape))[0]
    return _MAPS[layer]


def operands(op: Op, kmap: KernelMap, c: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(kmap.num_in, c, device="cuda", generator=g).to(dtype)
    w = (torch.randn(kmap.kernel_volume, c, c, device="cuda", generator=g) / (9 * c) ** 0.5).to(dtype)
    dy = torch.randn(kmap.num_out, c, device="cuda", generator=g).to(dtype)
    return {Op.CONV_FWD: (x, w), Op.CONV_DGRAD: (dy, w), Op.CONV_WGRAD: (x, dy)}[op]


def median_ms(fn: Callable[[], Any], quick: bool = False) -> float:
    return float(do_bench(fn, warmup=5 if quick else 20, rep=20 if quick else 80, return_mode="median"))


@dataclass(frozen=True)
class Case:
    layer: str
    c: int
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.layer} {self.c}->{self.c} {self.dtype}"


def candidates(case: Case, op: Op, algos: list[str],
               default_only: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """(algorithm, params) of every applying algorithm's points for ``op`` of ``case`` (only the default
    point of the algorithms in ``default_only``)."""
    kmap = layer_map(case.layer)
    a, b = operands(op, kmap, case.c, DTYPES[case.dtype])
    sig = Signature.of(op, a, b, kmap)
    out = []
    for name in algos:
        try:
            alg = registry.get(name)
        except KeyError:
            continue
        if alg.applies_to(sig) is None:
            points = [alg.default_params(sig)] if name in default_only else alg.param_space(sig).points()
            out.extend((name, dict(p)) for p in points)
    return out


def _compile_one(item: tuple[str, int, str, str, str, str]) -> str | None:
    """Worker: run one (case, op, algorithm, params) once so its kernel lands in the disk caches."""
    layer, c, dtype, op, name, params = item
    try:
        kmap = layer_map(layer)
        a, b = operands(Op(op), kmap, c, DTYPES[dtype])
        registry.get(name).run(Op(op), json.loads(params), a, b, kmap)
        torch.cuda.synchronize()
        return None
    except Exception as exc:  # noqa: BLE001 - reported, the main process records the failure again
        return f"{type(exc).__name__}: {exc}"


def precompile(cases: list[Case], algos: list[str], default_only: tuple[str, ...], jobs: int) -> None:
    items = [(c.layer, c.c, c.dtype, op.value, name, json.dumps(p)) for c in cases for op in OPS
             for name, p in candidates(c, op, algos, default_only) if name != "explicit_gemm"]
    print(f"compiling {len(items)} points in {jobs} processes", flush=True)
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        failed = sum(r is not None for r in pool.map(_compile_one, items, chunksize=4))
    print(f"compiled ({failed} failed)", flush=True)


def sweep(case: Case, op: Op, algos: list[str], default_only: tuple[str, ...]) -> list[dict[str, Any]]:
    """Check and time every point of every applying algorithm; the records, best first per algorithm."""
    kmap = layer_map(case.layer)
    dtype = DTYPES[case.dtype]
    a, b = operands(op, kmap, case.c, dtype, seed=1)
    explicit = registry.get("explicit_gemm")
    ref = explicit.run(op, explicit.default_params(Signature.of(op, a, b, kmap)), a.float(), b.float(), kmap)
    records = []
    for name, params in candidates(case, op, algos, default_only):
        alg = registry.get(name)
        rec: dict[str, Any] = {"algo": name, "params": params}
        try:
            out = alg.run(op, params, a, b, kmap)
            err = float((out.float() - ref).norm() / ref.norm())
            rec["error"] = err
            if not err <= TOL[dtype]:
                rec["failed"] = f"relative error {err:.3g}"
            else:
                rec["ms"] = median_ms(lambda: alg.run(op, params, a, b, kmap), quick=True)
        except Exception as exc:  # noqa: BLE001
            rec["failed"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        records.append(rec)
    # re-time each algorithm's two leaders with longer runs
    for name in algos:
        mine = sorted((r for r in records if r["algo"] == name and "ms" in r), key=lambda r: r["ms"])[:2]
        for r in mine:
            alg = registry.get(name)
            r["ms"] = median_ms(lambda: alg.run(op, r["params"], a, b, kmap))
    return records


def best(records: list[dict[str, Any]], algo: str) -> dict[str, Any] | None:
    ok = [r for r in records if r["algo"] == algo and "ms" in r]
    return min(ok, key=lambda r: r["ms"]) if ok else None


def import_spconv() -> Any:
    try:
        import spconv.pytorch as spconv  # type: ignore[import-not-found]
        return spconv
    except Exception as exc:  # noqa: BLE001
        print(f"spconv not importable: {type(exc).__name__}: {exc}")
        return None


def module_times(case: Case, spconv: Any, profile: Path | None = None) -> dict[str, Any]:
    """Module call to call, forward and forward+backward: warpsparse with AUTO (first call tunes) and spconv
    with MaskImplicitGemm. Submanifold maps are built by the first call and reused on both sides; spconv
    reuses no strided maps, so for ``down`` both sides build their maps in every call."""
    sites = scan_sites()
    dtype = DTYPES[case.dtype]
    c = case.c
    fresh = case.layer == "down"
    feats = torch.randn(sites.num_points, c, device="cuda", dtype=dtype)
    out: dict[str, Any] = {"maps_in_call": fresh}

    def timed(forward: Callable[[torch.Tensor], torch.Tensor], prefix: str) -> None:
        leaf = feats.clone().requires_grad_(True)
        y = forward(leaf)  # builds maps, tunes
        grad = torch.randn_like(y)
        y.backward(grad)
        forward(leaf).backward(grad)  # the backward's tuning
        with torch.no_grad():
            out[f"{prefix}_fwd_ms"] = median_ms(lambda: forward(feats))
        out[f"{prefix}_fwdbwd_ms"] = median_ms(lambda: forward(leaf).backward(grad))
        if profile is not None and prefix == "ws_auto":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    forward(leaf).backward(grad)
                torch.cuda.synchronize()
            profile.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))

    if case.layer == "subm":
        conv = warpsparse.nn.SubMConv3d(c, c, 3, bias=False)
    else:
        conv = warpsparse.nn.SparseConv3d(c, c, 3, stride=2, padding=1, bias=False)
    conv = conv.cuda().to(dtype)
    base = warpsparse.SparseTensor(feats, sites.coords, spatial_shape=sites.spatial_shape)

    def run_warpsparse(f: torch.Tensor) -> torch.Tensor:
        x = warpsparse.SparseTensor(f, sites.coords, spatial_shape=sites.spatial_shape) if fresh else \
            base.replace(features=f)
        return conv(x).features

    timed(run_warpsparse, "ws_auto")
    if spconv is not None:
        key = None if fresh else "k"
        if case.layer == "subm":
            sconv = spconv.SubMConv3d(c, c, 3, bias=False, indice_key=key, algo=spconv.ConvAlgo.MaskImplicitGemm)
        else:
            sconv = spconv.SparseConv3d(c, c, 3, stride=2, padding=1, bias=False, indice_key=key,
                                        algo=spconv.ConvAlgo.MaskImplicitGemm)
        sconv = sconv.cuda().to(dtype)
        sx = spconv.SparseConvTensor(feats, sites.coords, list(sites.spatial_shape), 1)
        if not fresh:
            sx.indice_dict = dict(sconv(sx).indice_dict)  # maps built once, reused by every timed call

        def run_spconv(f: torch.Tensor) -> torch.Tensor:
            x = spconv.SparseConvTensor(f, sites.coords, list(sites.spatial_shape), 1) if fresh else \
                sx.replace_feature(f)
            return sconv(x).features

        timed(run_spconv, "spconv")
    return out


def host_us(case: Case) -> float:
    """Host time of one tuned `implicit_gemm` forward launch (mean over back-to-back calls, no sync)."""
    kmap = layer_map(case.layer)
    a, b = operands(Op.CONV_FWD, kmap, case.c, DTYPES[case.dtype])
    alg = registry.get("implicit_gemm")
    params = alg.default_params(Signature.of(Op.CONV_FWD, a, b, kmap))
    for _ in range(10):
        alg.run(Op.CONV_FWD, params, a, b, kmap)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(200):
        alg.run(Op.CONV_FWD, params, a, b, kmap)
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / 200 * 1e6


def ncu_target(out: Path) -> None:
    """One forward of subm 256->256 fp16 at its best swept point and at the default (for ncu)."""
    best = json.loads((out / "layers.json").read_text())["rows"]
    row = next(r for r in best if r["label"] == "subm 256->256 fp16")
    kmap = layer_map("subm")
    a, b = operands(Op.CONV_FWD, kmap, 256, torch.float16)
    alg = registry.get("implicit_gemm")
    for params in (row["implicit_gemm_conv_fwd_params"], alg.default_params(Signature.of(Op.CONV_FWD, a, b, kmap))):
        print("ncu point", params, flush=True)
        alg.run(Op.CONV_FWD, params, a, b, kmap)
    torch.cuda.synchronize()


def dense_ms(pairs: int, c: int, dtype: torch.dtype) -> float:
    a = torch.randn(pairs, c, device="cuda", dtype=dtype)
    w = torch.randn(c, c, device="cuda", dtype=dtype)
    return median_ms(lambda: a @ w)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: times in ms (medians); ratios are spconv time over ours, "of dense" is dense time over ours."""
    cols = [("spconv fwd", "spconv_fwd_ms"), ("AUTO fwd", "ws_auto_fwd_ms"),
            ("implicit_gemm fwd", "implicit_gemm_fwd_ms"), ("cupy fwd", "cupy_implicit_gemm_fwd_ms"),
            ("explicit fwd", "explicit_gemm_fwd_ms"), ("dense GEMM", "dense_ms")]
    fb_cols = [("spconv f+b", "spconv_fwdbwd_ms"), ("AUTO f+b", "ws_auto_fwdbwd_ms"),
               ("implicit_gemm f+b", "implicit_gemm_fwdbwd_ms")]
    ratios = [("AUTO/spconv fwd", "spconv_fwd_ms", "ws_auto_fwd_ms"),
              ("implicit/spconv fwd", "spconv_fwd_ms", "implicit_gemm_fwd_ms"),
              ("implicit of dense", "dense_ms", "implicit_gemm_fwd_ms"),
              ("AUTO/spconv f+b", "spconv_fwdbwd_ms", "ws_auto_fwdbwd_ms"),
              ("implicit/spconv f+b", "spconv_fwdbwd_ms", "implicit_gemm_fwdbwd_ms")]
    names = ["layer", "P"] + [c[0] for c in cols + fb_cols] + [r[0] for r in ratios]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        cells = [r["label"] + (" (maps in call)" if r.get("maps_in_call") else ""), str(r["pairs"])]
        cells += ["-" if r.get(k) is None else f"{r[k]:.3f}" for _, k in cols + fb_cols]
        for name, num, den in ratios:
            a, b = r.get(num), r.get(den)
            if r.get("maps_in_call") and name.startswith("implicit/"):
                a = None  # kernel times exclude the map build that this row's module times include
            cells.append("-" if a is None or b is None else
                         (f"{100 * a / b:.0f}%" if name.endswith("dense") else f"{a / b:.2f}x"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--down-channels", type=int, nargs="*", default=[64])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "fp32"], choices=sorted(DTYPES))
    ap.add_argument("--algos", nargs="+", default=["explicit_gemm", "implicit_gemm", "cupy_implicit_gemm"])
    ap.add_argument("--default-only", nargs="*", default=["cupy_implicit_gemm"],
                    help="algorithms timed at their default point only (AUTO still tunes them)")
    ap.add_argument("--jobs", type=int, default=min(14, os.cpu_count() or 1))
    ap.add_argument("--no-modules", action="store_true", help="skip the module-level timings")
    ap.add_argument("--ncu-target", action="store_true",
                    help="only run the subm 256 fp16 forward at its best swept point (from --out) for ncu")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ncu_target:
        ncu_target(out)
        return
    logging.basicConfig(filename=out / "tuner.log", level=logging.INFO)
    default_only = tuple(args.default_only)
    cases = [Case("subm", c, d) for d in args.dtypes for c in args.channels]
    cases += [Case("down", c, d) for d in args.dtypes for c in args.down_channels]
    if args.jobs > 1:
        precompile(cases, args.algos, default_only, args.jobs)
    spconv = None if args.no_modules else import_spconv()
    env = environment(torch.device("cuda"))
    meta: dict[str, Any] = {"tune_budget_ms": os.environ.get("WARPCONVNET_TUNE_BUDGET_MS", "default")}
    rows: list[dict[str, Any]] = []
    sweeps: list[dict[str, Any]] = []
    for case in cases:
        kmap = layer_map(case.layer)
        row: dict[str, Any] = {"label": case.label, "layer": case.layer, "c": case.c, "dtype": case.dtype,
                               "n_in": kmap.num_in, "n_out": kmap.num_out, "pairs": kmap.num_pairs}
        for op in OPS:
            records = sweep(case, op, args.algos, default_only)
            sweeps.append({"case": case.label, "op": op.value, "records": records})
            for name in args.algos:
                b = best(records, name)
                if b is not None:
                    row[f"{name}_{op.value}_ms"] = b["ms"]
                    row[f"{name}_{op.value}_params"] = b["params"]
        for name in args.algos:
            times = [row.get(f"{name}_{op.value}_ms") for op in OPS]
            if all(t is not None for t in times):
                row[f"{name}_fwd_ms"] = times[0]
                row[f"{name}_fwdbwd_ms"] = sum(times)  # type: ignore[arg-type]
        row["dense_ms"] = dense_ms(kmap.num_pairs, case.c, DTYPES[case.dtype])
        if case == Case("subm", 32, "fp16"):
            meta["implicit_gemm_host_us"] = host_us(case)
        if not args.no_modules:
            profile = out / "profile_subm64_fp16.txt" if case == Case("subm", 64, "fp16") else None
            try:
                row.update(module_times(case, spconv, profile))
            except Exception:  # noqa: BLE001 - keep the kernel-level results
                row["module_error"] = traceback.format_exc(limit=3)
                print(row["module_error"])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_params")}), flush=True)
        (out / "layers.json").write_text(json.dumps({"environment": env, "meta": meta, "rows": rows, "sweeps": sweeps},
                                                    indent=1))
    print(f"\nversions: {versions(env)}; {meta}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
