"""CuPy glue: lazy import, CUDA sources, NVRTC compilation cache, and launches on PyTorch's stream.

CuPy is optional: nothing here imports it before a kernel is needed, and :func:`unavailable_reason` says
why it cannot be used. Each instantiation is compiled once per process and device (CuPy also caches the
binary on disk, under ``CUPY_CACHE_DIR``); launches pass raw pointers straight to ``cuLaunchKernel`` on
PyTorch's current stream.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy
import torch

from warpsparse.algorithms.cupy.configs import NOMINAL_DEVICE, DeviceInfo

NVRTC_OPTIONS = ("-std=c++17",)
FAMILIES = ("common", "gemm", "depthwise")
_HERE = Path(__file__).parent
_DEFAULT_SMEM = 48 * 1024

_cupy: Any = None
_cupy_error: str | None = None
_functions: dict[tuple[str, int], Any] = {}
_compiling: dict[tuple[str, int], threading.Lock] = {}  # one lock per kernel being compiled


def unavailable_reason() -> str | None:
    """None when CuPy imports, else a short reason (the import is tried once per process)."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy
        except ImportError:
            _cupy_error = "CuPy is not installed (pip install warpsparse[cupy])"
        except Exception as exc:  # a broken CUDA install surfaces here, not only as ImportError
            _cupy_error = f"CuPy failed to import ({type(exc).__name__}: {exc})"
        else:
            _cupy = cupy
    return _cupy_error


def cupy() -> Any:
    """The cupy module; ``RuntimeError`` saying why when it is unavailable."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    return _cupy


@functools.lru_cache(maxsize=None)
def source(family: str) -> str:
    """CUDA source of a kernel family: ``"common"`` is common.cuh, ``"gemm"`` and ``"depthwise"`` append
    gemm.cu or depthwise.cu to it."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    common = (_HERE / "common.cuh").read_text()
    return common if family == "common" else common + "\n" + (_HERE / f"{family}.cu").read_text()


def device_info(index: int | None = None) -> DeviceInfo:
    """Capability, shared memory per block and SM count of CUDA device ``index`` (current when None);
    a nominal H100 when there is no CUDA device."""
    if not torch.cuda.is_available():
        return NOMINAL_DEVICE
    return _device_info(torch.cuda.current_device() if index is None else index)


@functools.lru_cache(maxsize=None)
def _device_info(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    smem = int(getattr(props, "shared_memory_per_block_optin", 0) or _DEFAULT_SMEM)
    return DeviceInfo((props.major, props.minor), smem, props.multi_processor_count)


def function(family: str, name: str, device: int, dynamic_smem: int = 0) -> Any:
    """The compiled kernel ``name`` (a C++ name expression) of ``family`` on ``device``; compiled on first use,
    once even when several threads ask for it at the same time."""
    key = (name, device)
    fn = _functions.get(key)
    if fn is None:
        with _compiling.setdefault(key, threading.Lock()):  # dict.setdefault is atomic under the GIL
            fn = _functions.get(key)
            if fn is None:
                fn = _functions[key] = _compile(family, name, device, dynamic_smem)
    return fn


def _compile(family: str, name: str, device: int, dynamic_smem: int) -> Any:
    cp = cupy()
    with cp.cuda.Device(device):
        module = cp.RawModule(code=source(family), options=NVRTC_OPTIONS, name_expressions=(name,))
        try:
            raw = module.get_function(name)
        except cp.cuda.compiler.CompileException as exc:
            raise RuntimeError(f"NVRTC could not compile {name}: {exc}") from exc
        if dynamic_smem:  # static + dynamic may pass 48 KB even when the dynamic part alone does not
            raw.max_dynamic_shared_size_bytes = dynamic_smem
        return raw.kernel


def _compile_in_worker(item: tuple[str, str, int, int]) -> str | None:
    try:
        function(*item)
    except Exception as exc:  # reported to the parent, which skips this instantiation
        return f"{type(exc).__name__}: {exc}"
    return None


def precompile(items: Iterable[tuple[str, str, int]], device: int = 0,
               workers: int | None = None) -> dict[str, str]:
    """Compile ``(family, name, dynamic_smem)`` instantiations in parallel processes (filling CuPy's disk
    cache), then load them here, so that timing a whole parameter space compiles nothing.

    Returns the instantiations that failed to compile, with the error (a run selecting one raises it).
    """
    todo = [(f, n, device, smem) for f, n, smem in dict.fromkeys(items) if (n, device) not in _functions]
    workers = min(workers or os.cpu_count() or 1, len(todo))
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            errors = list(pool.map(_compile_in_worker, todo))
    else:
        errors = [_compile_in_worker(item) for item in todo]
    failed = {item[1]: err for item, err in zip(todo, errors) if err is not None}
    for item in todo:
        if item[1] not in failed:
            function(*item)
    return failed


class _ArgBuffers(threading.local):
    """Per-thread kernel-parameter buffers: one int64 slot per argument and the array of slot addresses
    that cuLaunchKernel reads (it copies the values before returning, so a buffer is reused at once)."""

    def __init__(self) -> None:
        self.by_count: dict[int, tuple[numpy.ndarray, numpy.ndarray, int]] = {}

    def get(self, n: int) -> tuple[numpy.ndarray, int]:
        entry = self.by_count.get(n)
        if entry is None:
            values = numpy.zeros(n, dtype=numpy.int64)
            slots = values.ctypes.data + 8 * numpy.arange(n, dtype=numpy.uint64)
            entry = self.by_count[n] = (values, slots, int(slots.ctypes.data))
        return entry[0], entry[2]


_args = _ArgBuffers()


def _current_stream(device: int) -> int:
    return torch.cuda.current_stream(device).cuda_stream


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", _current_stream)


def launch(fn: Any, grid: int | tuple[int, ...], block: tuple[int, ...], args: Sequence[int], device: int,
           smem: int = 0) -> None:
    """Launch ``fn`` on PyTorch's current stream of ``device``.

    ``args`` are Python ints: device pointers (:func:`ptr`) and integers, each in a 64-bit slot whose low
    bytes the kernel reads for 32-bit parameters (little-endian). No copies, no CuPy stream objects.
    """
    values, kargs = _args.get(len(args))
    values[:] = args
    gx, gy, gz = (grid, 1, 1) if isinstance(grid, int) else (tuple(grid) + (1, 1))[:3]
    bx, by, bz = (tuple(block) + (1, 1))[:3]
    _driver().launchKernel(fn.ptr, gx, gy, gz, bx, by, bz, smem, _raw_stream(device), kargs, 0)


@functools.lru_cache(maxsize=None)
def _driver() -> Any:
    cupy()
    from cupy_backends.cuda.api import driver
    return driver


def ptr(t: torch.Tensor | None) -> int:
    """A kernel argument for a tensor's data (null for None), without any copy."""
    return 0 if t is None else t.data_ptr()
