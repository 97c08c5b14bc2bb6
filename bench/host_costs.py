"""Host cost of the pieces of one tuned SubM layer, on a small input so that the GPU waits on the host.

    python bench/host_costs.py [--sites 4000] [--channels 64] [--dtype float16] [--calls 300] [--maps 20]

Each row is the wall time per call of a loop of ``--calls`` calls (device synchronized before and after the
loop): a bare Triton launch, a tensor allocation, the dispatched forward, input-gradient and weight-gradient
ops on a cached map, the module's forward, and its forward+backward; spconv's layer beside it when importable.
Then, on the full scan, the wall time of each layout a fresh submanifold map needs, built step by step on
``--maps`` fresh maps (what the tuner's ``setup_ms`` constants stand for).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warpsparse  # noqa: E402
from bench import networks as nets  # noqa: E402
from bench.timing import per_call  # noqa: E402
from warpsparse import nn as wnn  # noqa: E402
from warpsparse.algorithms.base import Op  # noqa: E402
from warpsparse.algorithms.triton.layouts import block_offsets, pair_chunks  # noqa: E402
from warpsparse.coords.coord_set import CoordSet  # noqa: E402
from warpsparse.coords.geometry import submanifold_geometry  # noqa: E402
from warpsparse.coords.maps import build_kernel_map  # noqa: E402
from warpsparse.coords.triton_maps import row_mask  # noqa: E402
from warpsparse.tuner.dispatcher import dispatch_unchecked as dispatch  # noqa: E402  (what a layer calls)


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    """Wall microseconds per call of ``calls`` back-to-back calls (after three warm-up calls)."""
    return per_call(fn, torch.device("cuda"), calls, warmup=3) * 1e6


def fwd_bwd(layer: torch.nn.Module, x: object, grad: torch.Tensor) -> Callable[[], None]:
    """One forward+backward of ``layer`` (a sparse conv module of either library) on ``x`` from ``grad``."""
    def step() -> None:
        layer.weight.grad = None
        layer(x).features.backward(grad)
    return step


def layout_steps_us(scan: nets.ScanInput, maps: int = 20) -> list[tuple[str, float]]:
    """Wall microseconds per fresh 3x3x3 submanifold map of the scan for the map and then each layout, added
    one at a time (each step's time minus the previous step's)."""
    geom = submanifold_geometry((3, 3, 3), (1, 1, 1))
    steps: list[tuple[str, Callable[[object], object]]] = [
        ("map (table, nbr, masks)", lambda km: None),
        ("+ pair count (host read)", lambda km: km.num_pairs),
        ("+ mask sort", lambda km: km.sorted_order),
        ("+ row blocks of 64 (sorted)", lambda km: block_offsets(km, True, 64)),
        ("+ pair list", lambda km: km.pairs),
        ("+ pair chunks", lambda km: pair_chunks(km, 256)),
    ]
    out, previous = [], 0.0
    for i, (name, _) in enumerate(steps):
        def fresh() -> None:
            src = CoordSet(scan.coords, scan.spatial_shape, scan.batch_size)
            kmap = build_kernel_map(src, geom, src.spatial_shape, src, "subm")[0]
            for _, step in steps[:i + 1]:
                step(kmap)

        total = per_call_us(fresh, maps)
        out.append((name, total - previous))
        previous = total
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4000)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--maps", type=int, default=20, help="fresh maps per layout step")
    args = parser.parse_args()
    dev = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    c = args.channels
    scan = nets.load_input(0.1, dev)
    keep = torch.randperm(scan.num_sites, device=dev)[:args.sites].sort().values
    coords = scan.coords[keep].contiguous()
    feats = torch.randn(coords.shape[0], c, device=dev, dtype=dtype)
    x = warpsparse.SparseTensor(feats.requires_grad_(), coords, scan.spatial_shape, 1)
    layer = wnn.SubMConv3d(c, c, 3, bias=False, indice_key="k").to(dev, dtype)
    y = layer(x)  # tunes and builds the map
    grad = torch.randn_like(y.features)
    y.features.backward(grad)
    kmap = x.indice_store["k"].kmap
    rows: list[tuple[str, float]] = []
    nbr = torch.full((64, 27), -1, dtype=torch.int32, device=dev)
    rows.append(("Triton launch (row_mask of 64 rows)", per_call_us(lambda: row_mask(nbr), args.calls)))
    rows.append(("torch.empty", per_call_us(lambda: torch.empty(1000, 64, device=dev, dtype=dtype), args.calls)))
    w = layer.weight.detach()
    f = feats.detach()
    rows.append(("dispatch fwd", per_call_us(lambda: dispatch(Op.CONV_FWD, f, w, kmap), args.calls)))
    rows.append(("dispatch dgrad", per_call_us(lambda: dispatch(Op.CONV_DGRAD, grad, w, kmap), args.calls)))
    rows.append(("dispatch wgrad", per_call_us(lambda: dispatch(Op.CONV_WGRAD, f, grad, kmap), args.calls)))
    with torch.no_grad():
        rows.append(("module fwd (no grad)", per_call_us(lambda: layer(x), args.calls)))
    rows.append(("module fwd+bwd", per_call_us(fwd_bwd(layer, x, grad), args.calls)))
    rows.append(("module fwd (grad)", per_call_us(lambda: layer(x), args.calls)))
    kept = layer(x).features
    rows.append(("backward of a kept graph", per_call_us(lambda: kept.backward(grad, retain_graph=True), args.calls)))
    with torch.autograd.set_multithreading_enabled(False):
        rows.append(("backward of a kept graph, caller's thread",
                     per_call_us(lambda: kept.backward(grad, retain_graph=True), args.calls)))
    leaf = torch.randn(16, device=dev, requires_grad=True)
    rows.append(("autograd baseline: (leaf * 2).sum() fwd+bwd", per_call_us(lambda: (leaf * 2).sum().backward(),
                                                                           args.calls)))
    spconv, _ = nets.import_spconv()
    if spconv is not None:
        sp_layer = spconv.SubMConv3d(c, c, 3, bias=False, indice_key="k").to(dev, dtype)
        sp_x = spconv.SparseConvTensor(feats, coords, list(scan.spatial_shape), 1)
        sp_layer(sp_x)
        with torch.no_grad():
            rows.append(("spconv module fwd (no grad)", per_call_us(lambda: sp_layer(sp_x), args.calls)))
        rows.append(("spconv module fwd+bwd", per_call_us(fwd_bwd(sp_layer, sp_x, grad), args.calls)))
    print(f"{coords.shape[0]} sites, C={c}, {args.dtype}, {args.calls} calls each")
    for name, us in rows:
        print(f"{name:45s} {us:9.1f} us")
    print(f"fresh submanifold maps of the scan ({scan.num_sites} sites), wall time per map")
    for name, us in layout_steps_us(scan, args.maps):
        print(f"{name:45s} {us:9.1f} us")


if __name__ == "__main__":
    main()
