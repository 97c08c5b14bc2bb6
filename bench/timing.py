"""Timing shared by the benchmarks (medians of CUDA-event or perf_counter timings) and the environment record."""
from __future__ import annotations

import datetime
import hashlib
import importlib
import importlib.metadata
import math
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from warpsparse.algorithms.base import tf32_allowed
from warpsparse.tuner.timing import time_round_robin

REPO = Path(__file__).resolve().parents[1]
SCAN_FILE = REPO / "warpsparse" / "data" / "waymo-scan-spconv.npz"


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    reps: int

    @staticmethod
    def of(samples: Sequence[float]) -> "Timing":
        if not samples:
            raise ValueError("no timing samples")
        ordered = sorted(samples)

        def at(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return Timing(float(statistics.median(ordered)), at(0.2), at(0.8), ordered[0], len(ordered))

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def sync(device: torch.device) -> None:
    """Wait for ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Sequence[Callable[[], object]], device: torch.device, rounds: int,
                isolate: bool = True) -> list[list[float]]:
    """Milliseconds of ``rounds`` runs of every function, interleaved round by round.

    On CUDA each run is bracketed by CUDA events; ``isolate`` synchronizes before every run, so each starts on
    an idle device (the latency of one module call, host work included); without it runs go back to back
    (kernel throughput). On CPU, ``perf_counter`` around each run.
    """
    if device.type != "cuda" or not isolate:
        return time_round_robin(fns, device, rounds)
    events = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rounds)]
              for _ in fns]
    sync(device)
    for r in range(rounds):
        for fn, evs in zip(fns, events):
            sync(device)
            evs[r][0].record()
            fn()
            evs[r][1].record()
    sync(device)
    return [[start.elapsed_time(end) for start, end in evs] for evs in events]


def measure(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, target_s: float = 1.0,
            min_reps: int = 5, max_reps: int = 50, isolate: bool = True) -> Timing:
    """Median timing of ``fn()`` after ``warmup`` calls; the number of reps aims at ``target_s`` seconds."""
    for _ in range(max(warmup - 1, 0)):
        fn()
    if warmup > 0:
        last = interleaved([fn], device, 1, isolate)[0][0]
    else:
        last = 0.0
    reps = min_reps if last <= 0 else int(target_s * 1e3 / last)
    reps = max(min_reps, min(max_reps, reps))
    return Timing.of(interleaved([fn], device, reps, isolate)[0])


#: host calls that wait for the device
SYNC_EVENTS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"})


def call_profile(fn: Callable[[], object], device: torch.device, calls: int = 3, top: int = 12) -> dict[str, Any]:
    """Where the time of ``fn()`` goes, per call, from ``torch.profiler``.

    ``gpu_ms`` and ``kernels``: summed CUDA kernel time and the ``top`` kernels with their share (CUDA only);
    compared with the call's wall time they show how long the device sits idle. ``host_op_ms`` and
    ``host_ops``: self CPU time of the traced operators and runtime calls (waiting in a sync included);
    ``syncs``: host waits for the device; ``cuda_mallocs``: calls to ``cudaMalloc``.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    kernels: dict[str, list[float]] = {}
    host: dict[str, list[float]] = {}
    for e in prof.key_averages():
        on_device = e.device_type == torch.autograd.DeviceType.CUDA
        us = getattr(e, "self_device_time_total", None) if on_device else e.self_cpu_time_total
        if us is None:  # older torch
            us = getattr(e, "self_cuda_time_total", 0.0)
        slot = (kernels if on_device else host).setdefault(e.key, [0.0, 0.0])
        slot[0] += us / 1e3
        slot[1] += e.count
    harness_sync = host.get("cudaDeviceSynchronize")
    if harness_sync is not None:  # the sync that closes the profiled calls
        harness_sync[1] -= 1

    def ranked(table: dict[str, list[float]], total: float) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: -kv[1][0])[:top]
        return [{"name": name[:120], "ms": ms / calls, "share": ms / total if total else 0.0, "count": n / calls}
                for name, (ms, n) in rows]

    host_total = sum(v[0] for v in host.values())
    out: dict[str, Any] = {
        "calls": calls, "host_op_ms": host_total / calls, "host_ops": ranked(host, host_total),
        "syncs": sum(host[k][1] for k in SYNC_EVENTS if k in host) / calls,
        "cuda_mallocs": host.get("cudaMalloc", [0.0, 0.0])[1] / calls}
    if cuda:
        gpu_total = sum(v[0] for v in kernels.values())
        out.update(gpu_ms=gpu_total / calls, kernels=ranked(kernels, gpu_total))
    return out


def wall(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, device work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def per_call(fn: Callable[[], object], device: torch.device, calls: int, warmup: int = 1) -> float:
    """Mean seconds per call of ``calls`` back-to-back calls of ``fn`` (after ``warmup`` calls): the device is
    synchronized around the loop, not between calls, so host launch overhead counts where it is not hidden."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or not denominator > 0 or not math.isfinite(numerator):
        return None
    return numerator / denominator


# ---------------------------------------------------------------------------------------------------------------
# environment record


def _version(module: str, *dists: str, import_it: bool = False) -> str | None:
    for name in dists or (module,):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found = sys.modules.get(module)
    if found is None and import_it:
        try:
            found = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a missing or broken package has no version
            return None
    version = getattr(found, "__version__", None)
    return str(version) if version is not None else None


def _driver_version() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True)
        return done.stdout.strip().splitlines()[0].strip() or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        if commit and git("status", "--porcelain", "--untracked-files=no"):
            commit += "-dirty"
        return commit or None
    except (OSError, subprocess.SubprocessError):
        return None


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Who measured: date, GPU (model, capability, SMs, memory, driver), CPU, library versions, data checksum."""
    import warpsparse
    from warpsparse.algorithms import registry

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "warpsparse": warpsparse.__version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "triton": _version("triton", "triton", "pytorch-triton", import_it=True),
        "cupy": _version("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"),
        "spconv": _version("spconv", "spconv-cu126", "spconv-cu124", "spconv-cu121", "spconv-cu118", "spconv"),
        "cumm": _version("cumm", "cumm-cu126", "cumm-cu124", "cumm-cu121", "cumm-cu118", "cumm"),
        "numpy": _version("numpy"),
        "algorithms": registry.names(),
        "allow_tf32_matmul": tf32_allowed(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "scan_file": SCAN_FILE.name,
        "scan_sha256": _sha256(SCAN_FILE),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=_driver_version())
    else:
        env.update(gpu=None, driver=None)
    return env


def versions(env: dict[str, Any]) -> str:
    """One line of an :func:`environment` record: the GPU (or CPU) and driver, then the torch (CUDA runtime),
    triton, cupy and spconv versions, ``-`` where absent."""
    gpu = env.get("gpu") or f"CPU ({env.get('cpu')})"
    return (f"{gpu}, driver {env.get('driver') or '-'}; torch {env.get('torch')} "
            f"(CUDA {env.get('cuda_runtime') or '-'}), triton {env.get('triton') or '-'}, "
            f"cupy {env.get('cupy') or '-'}, spconv {env.get('spconv') or '-'}")
