"""Kernel-map build time on the bundled scan: Triton builder vs PyTorch builder vs spconv's indice generation.

    python3 bench/maps.py [--out DIR] [--sweep]

Voxelizes the scan at 0.1 m and 0.05 m (batch 1) and times, per geometry, the median of
``triton.testing.do_bench`` (CUDA events, L2 flushed before each call; the median of three rounds that time
every column in turn) of:

- ``triton``: ``build_kernel_map`` with the Triton builder on a fresh site set (hash table built in the call),
  and ``triton+sort`` adding the mask sort (``KernelMap.sorted_order``); for subm also with the table cached;
- ``torch+sort``: the PyTorch builder plus the mask sort;
- ``spconv igemm``: spconv's ``get_indice_pairs_implicit_gemm`` (MaskImplicitGemm, forward only: its maps,
  masks and mask argsort), and ``spconv native``: ``get_indice_pairs`` (pair lists).

Writes ``maps.json`` (the rows and the :func:`bench.timing.environment` record) to ``--out`` and prints a
Markdown table. ``--sweep`` first picks the launch settings of the Triton kernels (the fastest of a few per
kernel family, used for the table) and writes a per-kernel profile.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import environment, per_call, versions  # noqa: E402
from warpsparse.coords import triton_hash, triton_maps  # noqa: E402
from warpsparse.coords.triton_hash import Launch  # noqa: E402
from warpsparse.coords.coord_set import CoordSet  # noqa: E402
from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry  # noqa: E402
from warpsparse.coords.maps import build_kernel_map  # noqa: E402

SETTINGS = {"INSERT": triton_hash, "COORD_LOAD": triton_hash, "MAP": triton_maps, "DISCOVER": triton_maps}
SCAN = Path(__file__).resolve().parents[1] / "warpsparse" / "data" / "waymo-scan-spconv.npz"
VOXELS = (0.1, 0.05)


def voxelize(voxel: float) -> CoordSet:
    """floor((xyz - min) / voxel), unique, batch 0."""
    pc = torch.from_numpy(np.load(SCAN)["pc"]).cuda()
    grid = torch.unique(torch.floor((pc - pc.min(0).values) / voxel).int(), dim=0)
    coords = torch.cat([torch.zeros_like(grid[:, :1]), grid], 1).contiguous()
    shape = tuple(int(v) + 1 for v in grid.max(0).values.tolist())
    return CoordSet(coords, shape, 1)  # type: ignore[arg-type]


def apply(setting: dict[str, Any]) -> None:
    """Set module-level launch settings (names of :data:`SETTINGS`)."""
    for name, value in setting.items():
        setattr(SETTINGS[name], name, value)


ROUNDS = 3  # every timer of a row is timed once per round, in turn: drift between them cancels out


def median_ms(fn: Callable[[], Any]) -> float:
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def wall_ms(fn: Callable[[], Any], reps: int = 50) -> float:
    """Mean wall time of back-to-back calls (warm L2; host launch overhead included)."""
    return per_call(fn, torch.device("cuda"), reps) * 1e3


def triton_build(src: CoordSet, geom: ConvGeometry, out_shape, subm: bool, sort: bool,
                 cached: bool = False) -> Callable[[], Any]:
    """A call building the map from a fresh copy of ``src`` (or from ``src`` with its table, ``cached``)."""
    def run() -> None:
        s = src if cached else CoordSet(src.coords, src.spatial_shape, src.batch_size)
        kmap, _ = build_kernel_map(s, geom, out_shape, s if subm else None, builder="triton")
        if sort:
            kmap.sorted_order
    return run


def torch_build(src: CoordSet, geom: ConvGeometry, out_shape, subm: bool) -> Callable[[], Any]:
    def run() -> None:
        kmap, _ = build_kernel_map(src, geom, out_shape, src if subm else None, builder="torch")
        kmap.sorted_order
    return run


def spconv_calls(src: CoordSet, geom: ConvGeometry, subm: bool) -> dict[str, Callable[[], Any]]:
    """spconv's indice generation for the same sites and geometry (empty when spconv is missing)."""
    try:
        from spconv.core import ConvAlgo
        from spconv.pytorch import ops
    except ImportError:
        return {}
    args = (src.coords, src.batch_size, list(src.spatial_shape))
    geo = (list(geom.kernel_size), list(geom.stride), list(geom.padding), list(geom.dilation), [0, 0, 0])
    return {
        "spconv igemm": lambda: ops.get_indice_pairs_implicit_gemm(*args, ConvAlgo.MaskImplicitGemm, *geo, subm=subm,
                                                                   transpose=geom.transposed, is_train=False),
        "spconv native": lambda: ops.get_indice_pairs(*args, ConvAlgo.Native, *geo, subm=subm,
                                                      transpose=geom.transposed),
    }


def cases(level: CoordSet) -> list[tuple[str, CoordSet, ConvGeometry, tuple, bool]]:
    """(name, input sites, geometry, output grid, subm) per geometry; transposed convs start from the 2x2x2/2
    output, as in a U-Net decoder."""
    down2 = ConvGeometry((2, 2, 2), (2, 2, 2))
    down3 = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
    coarse_shape = down2.output_shape(level.spatial_shape)
    _, coarse = build_kernel_map(level, down2, coarse_shape, builder="torch")
    up2 = ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True)
    up3 = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), transposed=True)
    return [
        ("subm 3x3x3", level, submanifold_geometry((3, 3, 3), (1, 1, 1)), level.spatial_shape, True),
        ("conv 2x2x2/2", level, down2, coarse_shape, False),
        ("conv 3x3x3/2", level, down3, down3.output_shape(level.spatial_shape), False),
        ("transposed 2x2x2/2", coarse, up2, up2.output_shape(coarse_shape), False),
        ("transposed 3x3x3/2", coarse, up3, up3.output_shape(coarse_shape), False),
    ]


def measure(voxel: float) -> list[dict[str, Any]]:
    level = voxelize(voxel)
    rows = []
    for name, src, geom, out_shape, subm in cases(level):
        kmap, out = build_kernel_map(src, geom, out_shape, src if subm else None, builder="triton")
        ref, ref_out = build_kernel_map(src, geom, out_shape, src if subm else None, builder="torch")
        same = all(torch.equal(x, y) for x, y in
                   ((kmap.nbr, ref.nbr), (kmap.mask, ref.mask), (out.coords, ref_out.coords)))
        row: dict[str, Any] = dict(voxel=voxel, case=name, n_in=src.num_points, n_out=out.num_points,
                                   pairs=kmap.num_pairs, equal_to_torch=same)
        timers = {"triton": triton_build(src, geom, out_shape, subm, sort=False),
                  "triton+sort": triton_build(src, geom, out_shape, subm, sort=True)}
        if subm:
            timers["triton+sort cached table"] = triton_build(src, geom, out_shape, subm, sort=True, cached=True)
        timers["torch+sort"] = torch_build(src, geom, out_shape, subm)
        for label, call in spconv_calls(src, geom, subm).items():
            try:
                res = call()
                row[f"{label} n_out"] = int(res[0].shape[0])
                timers[label] = call
            except Exception as exc:  # spconv may not support a variant: record why
                row[f"{label} error"] = f"{type(exc).__name__}: {exc}"[:200]
        times: dict[str, list[float]] = {}
        for _ in range(ROUNDS):
            for label, call in timers.items():
                times.setdefault(label, []).append(median_ms(call))
                times.setdefault(f"{label} wall", []).append(wall_ms(call))
        row.update({label: float(np.median(ms)) for label, ms in times.items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def sweep() -> dict[str, Any]:
    """Pick launch settings one kernel family at a time on the 0.1 m scan, keeping the fastest of each: table
    inserts (coordinate-table build); the map kernels with the table load (subm 3x3x3 build with its table, and
    the transposed 3x3x3/2 map onto given outputs, scored relative to the first setting); the discovery
    (conv 3x3x3/2 build). Returns every timing and the choice."""
    level = voxelize(0.1)
    subm = submanifold_geometry((3, 3, 3), (1, 1, 1))
    down = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
    _, coarse, up, up_shape, _ = cases(level)[4]
    _, upsampled = build_kernel_map(coarse, up, up_shape, builder="torch")

    def fresh_table() -> None:
        triton_hash.coord_table(CoordSet(level.coords, level.spatial_shape, level.batch_size))

    def given_map() -> None:
        triton_maps.fill_map(coarse, up, up_shape, upsampled)

    stages: list[tuple[str, list[dict[str, Any]], list[Callable[[], Any]]]] = [
        ("INSERT", [dict(INSERT=Launch(b, w)) for b, w in ((128, 4), (256, 4), (256, 8), (512, 8))], [fresh_table]),
        ("MAP", [dict(MAP=Launch(b, w), COORD_LOAD=load) for b, w, load in
                 itertools.product((128, 256, 512, 1024), (2, 4), (0.25, 0.125))],
         [triton_build(level, subm, level.spatial_shape, True, sort=False), given_map]),
        ("DISCOVER", [dict(DISCOVER=Launch(b, w)) for b, w in ((128, 4), (256, 4), (512, 4), (1024, 4))],
         [triton_build(level, down, down.output_shape(level.spatial_shape), False, sort=False)]),
    ]
    timings: list[dict[str, Any]] = []
    for stage, settings, calls in stages:
        first: list[float] = []
        best: tuple[float, dict[str, Any]] | None = None
        for setting in settings:
            apply(setting)
            coarse.cache.clear()  # rebuilt with this setting's table load
            ms = [float(do_bench(call, warmup=25, rep=100, return_mode="median")) for call in calls]
            first = first or ms
            score = sum(t / f for t, f in zip(ms, first))
            timings.append(dict(stage=stage, ms=ms, score=score, **{k: str(v) for k, v in setting.items()}))
            print(json.dumps(timings[-1]), flush=True)
            if best is None or score < best[0]:
                best = (score, setting)
        assert best is not None
        apply(best[1])
    coarse.cache.clear()
    chosen = {name: str(getattr(module, name)) for name, module in SETTINGS.items()}
    print("chosen:", json.dumps(chosen), flush=True)
    return dict(timings=timings, chosen=chosen)


def profile(path: Path) -> None:
    """Per-kernel GPU time of each Triton build at 0.1 m (torch profiler), written to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    level = voxelize(0.1)
    with path.open("w") as f:
        for name, src, geom, out_shape, subm in cases(level):
            call = triton_build(src, geom, out_shape, subm, sort=True)
            call()
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    call()
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=40)
            f.write(f"== {name} (20 calls)\n{table}\n")


def fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))


def markdown(rows: list[dict[str, Any]], gpu: str, date: str, suffix: str = "") -> str:
    """The results table; ``suffix=" wall"`` gives the back-to-back wall times instead of the medians.

    Speed-ups (> 1: the Triton builder is faster) pair like with like: spconv's native pairs against the
    Triton build, spconv's implicit-GEMM maps (with their mask argsort) against the build plus mask sort.
    """
    cols = ["triton", "triton+sort", "triton+sort cached table", "torch+sort", "spconv igemm", "spconv native"]
    what = "mean wall time of back-to-back calls" if suffix else "median of `triton.testing.do_bench`, L2 flushed"
    lines = [f"Map build time, ms ({what}), {gpu}, {date}.", "",
             "| voxel | case | N_in | N_out | same as torch | " + " | ".join(cols)
             + " | native / triton | igemm / triton+sort |",
             "|---|---|---:|---:|:-:|" + "---:|" * (len(cols) + 2)]

    def ratio(r: dict[str, Any], a: str, b: str) -> str:
        return f"{r[a + suffix] / r[b + suffix]:.2f}" if a + suffix in r else "-"

    for r in rows:
        lines.append(f"| {r['voxel']} m | {r['case']} | {r['n_in']} | {r['n_out']} | "
                     f"{'yes' if r['equal_to_torch'] else 'NO'} | "
                     + " | ".join(fmt(r.get(c + suffix)) for c in cols)
                     + f" | {ratio(r, 'spconv native', 'triton')} | {ratio(r, 'spconv igemm', 'triton+sort')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/maps.py needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(torch.device("cuda"))
    result: dict[str, Any] = {"environment": env}
    if args.sweep:
        result["sweep"] = sweep()
        profile(args.out / "profile.txt")
    result["rows"] = [r for v in VOXELS for r in measure(v)]
    (args.out / "maps.json").write_text(json.dumps(result, indent=1))
    print(markdown(result["rows"], env["gpu"], env["date"]))
    print()
    print(markdown(result["rows"], env["gpu"], env["date"], suffix=" wall"))
    print(f"\nversions: {versions(env)}")

if __name__ == "__main__":
    main()
