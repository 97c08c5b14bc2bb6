"""Where a network's first call spends its time, and what its peak memory holds.

    python bench/first_call.py [--network spconv_net] [--device cuda] [--voxel-size 0.1] [--width-divisor 1]
                               [--memory]

Run it in a fresh process on empty caches (point ``WARPCONVNET_BENCHMARK_CACHE_DIR``, ``TRITON_CACHE_DIR`` and
``CUPY_CACHE_DIR`` at empty folders) to see the cost of a first call. It times the first forward+backward call
(fp16; MinkUNet under autocast) and splits it: per tuned signature its wall time and candidates; the tuner's
phases (side-by-side precompilation, checked first runs, timing, the reference); Triton compilations on the
calling thread (by kernel) and on the compile threads; CuPy compilations. ``--memory`` then lists, for one tuned
forward and one forward+backward, the allocations alive at the peak grouped by the library line that made them.
"""
from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import networks as nets  # noqa: E402
from warpsparse.tuner import search  # noqa: E402

Totals = collections.Counter


class Recorder:
    """Wraps the tuner's phases and the compilers with timers (this process only)."""

    def __init__(self) -> None:
        self.seconds: Totals[str] = collections.Counter()
        self.counts: Totals[str] = collections.Counter()
        self.signatures: list[dict[str, Any]] = []
        self.main_compiles: Totals[str] = collections.Counter()

    def _add(self, key: str, seconds: float) -> None:
        self.seconds[key] += seconds
        self.counts[key] += 1

    def wrap(self, owner: Any, name: str, key: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._add(key, time.perf_counter() - start)
        setattr(owner, name, timed)

    def install(self) -> None:
        for method, key in (("precompile", "precompile (wall)"), ("_run_reference", "reference"),
                            ("check", "checked first runs"), ("measure", "checked first runs + timing"),
                            ("retime", "re-timing the leaders")):
            self.wrap(search._Session, method, key)
        benchmark = search.benchmark

        def per_signature(op: Any, a: Any, b: Any, kmap: Any, sig: Any, *rest: Any) -> Any:
            start = time.perf_counter()
            new = benchmark(op, a, b, kmap, sig, *rest)
            ok = collections.Counter(r.algorithm for r in new.values() if r.status == "ok")
            self.signatures.append(dict(seconds=time.perf_counter() - start, op=sig.op.value, c_in=sig.c_in,
                                        c_out=sig.c_out, n_out=sig.n_out,
                                        status=dict(collections.Counter(r.status for r in new.values())),
                                        timed=dict(ok)))
            return new
        search.benchmark = per_signature
        self._wrap_triton()
        try:
            from warpsparse.algorithms.cupy import runtime
        except ImportError:
            return
        self.wrap(runtime, "_compile", "CuPy compilations")

    def _wrap_triton(self) -> None:
        import triton.compiler as compiler
        original = compiler.compile

        def timed(src: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(src, *args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                if threading.current_thread().name.startswith("warpsparse"):
                    self._add("Triton compilations on the compile threads (summed)", seconds)
                else:
                    self._add("Triton compilations on the calling thread", seconds)
                    self.main_compiles[getattr(getattr(src, "fn", None), "__name__", "?")] += seconds
        compiler.compile = timed  # JIT functions bind it on their first launch

    def report(self, first_call_s: float) -> None:
        tuned = sum(s["seconds"] for s in self.signatures)
        print(f"first call {first_call_s:.2f} s; {len(self.signatures)} signatures tuned in {tuned:.2f} s")
        for key, seconds in self.seconds.most_common():
            print(f"  {key:55s} {seconds:7.2f} s  ({self.counts[key]})")
        print("Triton compilations on the calling thread, by kernel:")
        for name, seconds in self.main_compiles.most_common():
            print(f"  {name:40s} {seconds:6.2f} s")
        print("signatures in call order (seconds, op, channels, outputs, statuses, timed per algorithm):")
        for s in self.signatures:
            print(f"  {s['seconds']:6.2f}  {s['op']:10s} {s['c_in']:>4d}->{s['c_out']:<4d} {s['n_out']:>7d}  "
                  f"{s['status']}  {s['timed']}")


def peak_allocations(fn: Callable[[], object], label: str) -> None:
    """Run ``fn`` once and print the allocations alive at its peak, by the library line that made them."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=500_000)
    try:
        fn()
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    live: dict[int, dict[str, Any]] = {}
    now = top = 0
    at_top: dict[int, dict[str, Any]] = {}
    for trace in snapshot["device_traces"]:
        for event in trace:
            if event["action"] == "alloc":
                live[event["addr"]] = event
                now += event["size"]
                if now > top:
                    top, at_top = now, dict(live)
            elif event["action"] == "free_completed":  # blocks from before the call count when freed too
                now -= event["size"]
                live.pop(event["addr"], None)
    groups: Totals[str] = collections.Counter()
    for event in at_top.values():
        frames = [f for f in event.get("frames", []) if "/warpsparse/" in f["filename"] or "/bench/" in f["filename"]]
        where = f"{Path(frames[0]['filename']).name}:{frames[0]['line']} {frames[0]['name']}" if frames else "other"
        groups[where] += event["size"]
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(f"{label}: peak {peak:.1f} MiB above the start; alive at the peak:")
    for where, size in groups.most_common(20):
        print(f"  {size / 2**20:8.2f} MiB  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="spconv_net", choices=sorted(nets.NETWORKS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--voxel-size", type=float, default=0.1)
    parser.add_argument("--width-divisor", type=int, default=1, help="divide the network's channels by this")
    parser.add_argument("--memory", action="store_true", help="also list what the peaks of tuned calls hold")
    args = parser.parse_args()
    device = torch.device(args.device)
    recorder = Recorder()
    recorder.install()
    inp = nets.load_input(args.voxel_size, device)
    warm = torch.ones(64, 64, device=device)
    (warm @ warm).sum().item()  # device context and BLAS handles exist before the timed call
    precision = nets.Precision.of(torch.float16 if device.type == "cuda" else torch.float32,
                                  amp=args.network == "minkunet")
    backend = nets.WarpsparseBackend("auto")
    model = nets.build(args.network, backend, precision, device, width_divisor=args.width_divisor)
    call = nets.NetworkCall(model, backend, inp, precision, backward=True)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    recorder.report(time.perf_counter() - start)
    if args.memory and device.type == "cuda":
        forward = nets.NetworkCall(model, backend, inp, precision, backward=False)
        forward()
        peak_allocations(forward, "forward")
        peak_allocations(call, "forward+backward")


if __name__ == "__main__":
    main()
