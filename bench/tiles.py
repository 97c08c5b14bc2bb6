"""Tile points of the Triton forward kernel on the scan's submanifold map: their times and the MMA instructions
each compiled variant issues.

    python3 bench/tiles.py [--channels 128 256] [--dtype fp16] [--out DIR] [--sm90]

For each channel count: the mask-sorted, one-group ``implicit_gemm`` forward points of the parameter space with
64-channel reduction tiles, plus tiles beyond the space (:data:`EXTRA`), each checked against ``explicit_gemm``
and timed with triton's ``do_bench`` (median). Then, per compiled variant of ``propagate_gather_kernel``, its
tile, warps, stages, registers, spilled registers, shared memory and the PTX counts of Hopper's warpgroup MMA
(``wgmma.mma_async``), the older ``mma.sync`` and ``cp.async`` copies. Writes ``tiles.json`` and prints both
tables (Markdown). Needs CUDA.

With ``--sm90`` it needs no GPU: each point (the space as on an H100) is compiled for sm_90 on this machine, with
the specialization a real launch gets, and its registers, stack bytes (spilled registers) and MMA counts are
listed (``tiles_sm90.json``). The compiler is this machine's Triton, which may differ from the GPU machine's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.layers import DTYPES, layer_map, median_ms, operands  # noqa: E402
from bench.sm90 import compile_launch, compile_request, recording, resources  # noqa: E402
from bench.timing import environment  # noqa: E402
from warpsparse.algorithms import Op, Signature, registry  # noqa: E402
from warpsparse.algorithms.triton import conv_kernels, implicit_gemm  # noqa: E402
from warpsparse.coords.coord_set import CoordSet  # noqa: E402
from warpsparse.coords.geometry import submanifold_geometry  # noqa: E402
from warpsparse.coords.kernel_map import KernelMap  # noqa: E402
from warpsparse.coords.maps import build_kernel_map  # noqa: E402

#: (BLOCK_M, BLOCK_N, num_warps, num_stages) tried beside the space's points (kept where BLOCK_N <= channels)
EXTRA = ((64, 128, 8, 3), (128, 128, 8, 4), (128, 128, 4, 3), (128, 256, 8, 3), (64, 256, 8, 3), (64, 128, 4, 4),
         (256, 128, 8, 3))


def points(a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> list[dict[str, Any]]:
    """The space's mask-sorted one-group gather points with BLOCK_K 64 for the forward ``(a, b)`` over ``kmap``,
    then :data:`EXTRA` (no repeats)."""
    sig = Signature.of(Op.CONV_FWD, a, b, kmap)
    c = sig.c_out
    listed = [p for p in registry.get("implicit_gemm").param_space(sig).points()
              if p["mode"] == "gather" and p["sorted"] and p["offset_groups"] == 1 and p["BLOCK_K"] == 64]
    base = dict(mode="gather", sorted=True, offset_groups=1, BLOCK_K=64)
    listed += [dict(base, BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s) for m, n, w, s in EXTRA if n <= c]
    unique = {json.dumps(p, sort_keys=True): p for p in listed}
    return list(unique.values())


def time_points(c: int, dtype: torch.dtype) -> list[dict[str, Any]]:
    """Each point's median ms and relative error against ``explicit_gemm`` (fastest first)."""
    kmap = layer_map("subm")
    a, b = operands(Op.CONV_FWD, kmap, c, dtype)
    reference = registry.get("explicit_gemm")
    want = reference.run(Op.CONV_FWD, reference.default_params(Signature.of(Op.CONV_FWD, a, b, kmap)),
                         a.float(), b.float(), kmap)
    algo = registry.get("implicit_gemm")
    rows = []
    for p in points(a, b, kmap):
        got = algo.run(Op.CONV_FWD, p, a, b, kmap).float()
        error = float((got - want).norm() / want.norm())
        rows.append({"channels": c, **p, "ms": median_ms(lambda: algo.run(Op.CONV_FWD, p, a, b, kmap)),
                     "rel_error": error})
    return sorted(rows, key=lambda r: r["ms"])


def instructions(kernel: Any) -> dict[str, int]:
    """PTX counts of a compiled kernel's warpgroup MMAs, ``mma.sync`` and ``cp.async`` copies, and its shared
    memory bytes."""
    ptx = kernel.asm.get("ptx", "")
    return {"shared_bytes": kernel.metadata.shared, "wgmma": ptx.count("wgmma.mma_async"),
            "mma_sync": ptx.count("mma.sync"), "cp_async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca")}


def compiled_variants() -> list[dict[str, Any]]:
    """Per compiled ``propagate_gather_kernel`` variant: its tile (the keyword arguments of its launch key),
    launch options, registers and PTX instruction counts."""
    out = []
    for key, entry in conv_kernels.propagate_gather_kernel.compiled.items():
        kernel = entry.kernel
        named = dict(item for item in key if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str))
        out.append({"tile": [named.get(k) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")],
                    "num_warps": kernel.metadata.num_warps, "num_stages": kernel.metadata.num_stages,
                    "registers": getattr(kernel, "n_regs", None), "spilled": getattr(kernel, "n_spills", None),
                    **instructions(kernel)})
    return out


@contextlib.contextmanager
def as_on_h100() -> Iterator[None]:
    """Inside, ``implicit_gemm`` sizes its space for an H100 (132 multiprocessors, 227 KB of shared memory a
    block) and launches the kernels a GPU runs (no bf16 upcast, which only the interpreter needs), whatever the
    device."""
    limits, upcast = implicit_gemm.device_limits, implicit_gemm.upcast_dots
    implicit_gemm.device_limits = lambda device_type: (132, 227 * 1024)
    implicit_gemm.upcast_dots = lambda a: False
    try:
        yield
    finally:
        implicit_gemm.device_limits, implicit_gemm.upcast_dots = limits, upcast


def sm90_variants(channels: list[int], dtype: torch.dtype) -> list[dict[str, Any]]:
    """Per channel count and point of :func:`points`: the forward kernel compiled for sm_90 on this machine, with
    a launch's specialization: registers, stack bytes and :func:`instructions` (call it :func:`as_on_h100`)."""
    gen = torch.Generator().manual_seed(0)
    flat = torch.randperm(16 ** 3, generator=gen)[:600]
    coords = torch.stack([torch.zeros_like(flat), flat // 256, flat // 16 % 16, flat % 16], 1).int()
    sites = CoordSet(coords, (16, 16, 16), 1)
    kmap = build_kernel_map(sites, submanifold_geometry((3, 3, 3), (1, 1, 1)), sites.spatial_shape, sites,
                            "subm")[0]
    algo, out = registry.get("implicit_gemm"), []
    for c in channels:
        a, b = torch.randn(kmap.num_in, c).to(dtype), torch.randn(kmap.kernel_volume, c, c).to(dtype)
        for p in points(a, b, kmap):
            with recording() as calls:
                algo.run(Op.CONV_FWD, p, a, b, kmap)
            fn, args, kwargs = next(call for call in calls if call[0] is conv_kernels.propagate_gather_kernel.fn)
            kernel = compile_launch(fn, *compile_request(fn, args, kwargs, specialize=True))
            out.append({"channels": c, **p, **resources(kernel), **instructions(kernel)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    ap.add_argument("--sm90", action="store_true", help="compile each point for sm_90 here (no GPU needed) and "
                    "list its registers and spills instead of timing it")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sm90:
        with as_on_h100():
            compiled = sm90_variants(args.channels, DTYPES[args.dtype])
        (out / "tiles_sm90.json").write_text(json.dumps({"dtype": args.dtype, "variants": compiled}, indent=1))
        print("| channels | BLOCK_M x BLOCK_N x BLOCK_K | warps | stages | registers | stack bytes | wgmma | mma.sync |\n"
              "|---|---|---|---|---|---|---|---|")
        for v in compiled:
            print(f"| {v['channels']} | {v['BLOCK_M']} x {v['BLOCK_N']} x {v['BLOCK_K']} | {v['num_warps']} | "
                  f"{v['num_stages']} | {v['registers']} | {v['stack_bytes']} | "
                  f"{v['wgmma']} | {v['mma_sync']} |")
        return
    if not torch.cuda.is_available():
        sys.exit("bench/tiles.py needs a CUDA device (or --sm90)")
    timed = [row for c in args.channels for row in time_points(c, DTYPES[args.dtype])]
    variants = compiled_variants()
    (out / "tiles.json").write_text(json.dumps({"environment": environment(torch.device("cuda")), "dtype": args.dtype,
                                                "points": timed, "variants": variants}, indent=1))
    print("| channels | BLOCK_M x BLOCK_N | warps | stages | ms | rel. error |\n|---|---|---|---|---|---|")
    for r in timed:
        print(f"| {r['channels']} | {r['BLOCK_M']} x {r['BLOCK_N']} | {r['num_warps']} | {r['num_stages']} | "
              f"{r['ms']:.3f} | {r['rel_error']:.1e} |")
    print("\n| tile (M x N x K) | warps | stages | registers | spilled | shared bytes | wgmma | mma.sync | cp.async |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        print(f"| {' x '.join(map(str, v['tile']))} | {v['num_warps']} | {v['num_stages']} | {v['registers']} | "
              f"{v['spilled']} | {v['shared_bytes']} | {v['wgmma']} | {v['mma_sync']} | {v['cp_async']} |")


if __name__ == "__main__":
    main()
