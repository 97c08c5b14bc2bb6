"""Compile every Triton kernel warpsparse launches for a Hopper GPU, on a machine without one.

Run as a script with ``TRITON_INTERPRET`` unset (``tests/test_triton_compile.py`` does): the host code of the
map builders, layouts, convolutions and pooling runs on CPU tensors with every launch recorded instead of
run, then each recorded (kernel, argument types, constexprs, launch options) is compiled with Triton's
compiler for ``cuda:90`` (one thread per CPU). Prints one line per compiled kernel and exits non-zero on the
first failure.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import torch

from bench.sm90 import TARGET, Launch, compile_launch, compile_request, recording
from warpsparse.algorithms.base import Op, Signature
from warpsparse.coords import triton_hash, triton_maps
from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry
from warpsparse.coords.maps import build_kernel_map


def _fill_stats(launch: Launch) -> None:
    """As if every lane were a pair and its own output, so that the map fills after a discovery launch too."""
    fn, args, _ = launch
    values = dict(zip(fn.arg_names, args))
    if "stats_ptr" in values:
        n = values["n_lanes"]
        values["stats_ptr"].fill_(n << 32 | n)


def exercise() -> None:
    """Run the host side of every kernel family on CPU tensors (launches recorded, not run)."""
    from warpsparse.algorithms.triton import depthwise, implicit_gemm, pooling

    torch.manual_seed(0)
    flat = torch.randperm(2 * 8 * 8 * 8)[:300]
    coords = torch.stack([flat // 512, flat // 64 % 8, flat // 8 % 8, flat % 8], 1).int()
    src = CoordSet(coords, (8, 8, 8), 2)
    subm = submanifold_geometry((3, 3, 3), (1, 1, 1))
    down = ConvGeometry((2, 2, 2), (2, 2, 2))
    table = triton_hash.coord_table(src)
    triton_hash.coord_table(CoordSet(coords, (8, 8, 8), 2), repeats=torch.zeros(1, dtype=torch.int32))
    table.lookup(torch.arange(4))
    triton_hash.HashTable.allocate(16, "cpu").insert(torch.arange(4))
    triton_hash.HashTable.allocate(16, "cpu", packed=True).insert(torch.arange(4))
    huge = CoordSet(coords, (1 << 16, 1 << 16, 1 << 16), 2)  # keys past 2**31: an unpacked table
    for sites in (src, huge):
        triton_maps.fill_map(sites, subm, sites.spatial_shape, sites)  # symmetric: half the lookups
        copy = CoordSet(sites.coords, sites.spatial_shape, sites.batch_size)
        triton_maps.fill_map(sites, subm, sites.spatial_shape, copy)  # other output sets: the full map kernel
    triton_maps.discover_map(src, down, down.output_shape(src.spatial_shape))
    up3 = ConvGeometry((3, 3, 3), (2, 2, 2), transposed=True)
    triton_maps.owned_map(src, up3, up3.output_shape(src.spatial_shape))
    triton_maps.owned_map(huge, up3, up3.output_shape(huge.spatial_shape))  # an unpacked input table
    triton_maps.owned_map(src, down, down.output_shape(src.spatial_shape))  # regular: one lane per input
    up = ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True)
    triton_maps.spread_map(src, up, up.output_shape(src.spatial_shape))
    kmap = build_kernel_map(src, subm, src.spatial_shape, src, "subm", builder="torch")[0]
    triton_maps.reverse_table(kmap.nbr, kmap.num_in)
    triton_maps.row_mask(kmap.nbr)
    triton_maps.pair_lists(kmap.nbr, kmap.num_pairs)
    n = kmap.num_in
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for c_in, c_out in ((3, 32), (64, 64)):
            x, w = torch.randn(n, c_in).to(dtype), torch.randn(27, c_in, c_out).to(dtype)
            dy = torch.randn(n, c_out).to(dtype)
            algo = implicit_gemm.TritonImplicitGemm()
            for op, a, b in ((Op.CONV_FWD, x, w), (Op.CONV_DGRAD, dy, w), (Op.CONV_WGRAD, x, dy)):
                sig = Signature.of(op, a, b, kmap)
                seen: set[tuple[Any, ...]] = set()
                for params in [algo.default_params(sig), *algo.param_space(sig).points()]:
                    kind = (params["mode"], params.get("sorted"), params.get("deterministic"),
                            params.get("offset_groups", 1) > 1)
                    if kind not in seen:  # one point per kernel form keeps the compile count small
                        seen.add(kind)
                        algo.run(op, params, a, b, kmap)
                        if op == Op.CONV_FWD:  # and its fused bias + ReLU epilogue
                            algo.run(op, params, a, b, kmap, torch.randn(c_out).to(dtype), True)
        dw = depthwise.TritonImplicitDepthwise()
        x, w = torch.randn(n, 16).to(dtype), torch.randn(27, 16).to(dtype)
        for op, a, b in ((Op.DW_FWD, x, w), (Op.DW_DGRAD, x, w), (Op.DW_WGRAD, x, x)):
            dw.run(op, dw.default_params(Signature.of(op, a, b, kmap)), a, b, kmap)
        dw.run(Op.DW_FWD, dw.default_params(Signature.of(Op.DW_FWD, x, w, kmap)), x, w, kmap,
               torch.randn(16).to(dtype), True)
        y, source = pooling.max_pool_forward(x, kmap.nbr)
        pooling.max_pool_backward(y, source.zero_(), n)


def unspecialized_names_exist(fn: Any) -> str | None:
    """Triton ignores ``do_not_specialize`` names that are not parameters: a misspelling would silently bring
    back one compile per size. ``None``, or what is wrong."""
    wrong = [name for name in fn.do_not_specialize if isinstance(name, str) and name not in fn.arg_names]
    return f"{fn.__name__}: do_not_specialize names {wrong} are not parameters" if wrong else None


def main() -> int:
    for module in (triton_hash, triton_maps):
        module.require_runnable = lambda device: None  # type: ignore[attr-defined]
    triton_hash.INTERPRETER_LANES = 1  # the map and table kernels' GPU launch sizes, not the interpreter's
    with recording(_fill_stats) as calls:
        exercise()
    for problem in filter(None, map(unspecialized_names_exist, {fn for fn, _, _ in calls})):
        print(f"FAILED {problem}", flush=True)
        return 1
    requests: dict[str, tuple[Any, dict, dict, dict, dict]] = {}
    for fn, args, kwargs in calls:
        signature, constexprs, attrs, options = compile_request(fn, args, kwargs)
        requests.setdefault(f"{fn.__name__} {signature} {sorted(constexprs.items())} {options}",
                            (fn, signature, constexprs, attrs, options))

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # ptxas runs as a process: threads overlap it
        pending = {pool.submit(compile_launch, *request): line for line, request in requests.items()}
        for future in as_completed(pending):
            fn, _, constexprs, _, options = requests[pending[future]]
            if future.exception() is not None:  # report which kernel failed, then stop
                print(f"FAILED {pending[future]}: {type(future.exception()).__name__}: {future.exception()}",
                      flush=True)
                pool.shutdown(cancel_futures=True)
                return 1
            print(f"compiled {fn.__name__} {sorted(constexprs.items())} {options}", flush=True)
    print(f"{len(requests)} kernel variants of {len({c[0].__name__ for c in calls})} kernels compiled for {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
