"""Who measures: device identity and software versions, computed once per process (per device)."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import sys
from pathlib import Path

import torch

from warpsparse.cache_schema import DeviceInfo, Versions


def _version(module: str, *dists: str) -> str | None:
    """The version of ``module`` if imported, else of the first installed distribution among ``dists``."""
    found = getattr(sys.modules.get(module), "__version__", None)
    if found:
        return str(found)
    for name in dists:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


@functools.lru_cache(maxsize=None)
def _device_info(device_type: str, index: int | None) -> DeviceInfo:
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo(type="cuda", name=props.name, capability=f"{props.major}.{props.minor}",
                          sm_count=props.multi_processor_count)
    if device_type == "cpu":
        return DeviceInfo(type="cpu", name=_cpu_model(), threads=torch.get_num_threads())
    raise ValueError(f"tuning supports cpu and cuda devices, got device type {device_type!r}")


def device_info(device: torch.device) -> DeviceInfo:
    """Identity of ``device`` (GPU name, capability, SM count; or CPU model and torch thread count)."""
    if device.type == "cuda":
        return _device_info("cuda", device.index if device.index is not None else torch.cuda.current_device())
    return _device_info(device.type, None)


ALGORITHMS = Path(__file__).resolve().parents[1] / "algorithms"


def sources_digest(root: Path = ALGORITHMS) -> str:
    """A digest of the Python and CUDA sources under ``root`` (names and contents): it changes with any edit of
    an algorithm or kernel, which a version number does not tell in an editable checkout."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cu", ".cuh")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def versions() -> Versions:
    """Versions of warpsparse (with :func:`sources_digest`), torch, triton, cupy and CUDA in this process."""
    return Versions(warpsparse=_version("warpsparse", "warpsparse") or "0+unknown", torch=torch.__version__,
                    triton=_version("triton", "triton", "pytorch-triton"),
                    cupy=_version("cupy", "cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x"),
                    cuda=torch.version.cuda, sources=sources_digest())
