"""Cheap repeated launches of Triton kernels, and the host-side grid arithmetic they use.

``kernel[grid](...)`` of a ``@triton.jit`` function binds and specializes every argument in Python before it
looks up the compiled kernel (tens of microseconds per launch). :func:`fast_launch` wraps a kernel so that
a launch looks up the compiled kernel under a key at least as fine as Triton's own specialization (each
constexpr value; per tensor its dtype and 16-byte alignment; per int whether it is 1, a multiple of 16 and
its width; the launch options and the device) and hands it straight to the compiled kernel's launcher on
the current stream. The first launch of every key goes through Triton's own path, which compiles and
returns the kernel to remember. While a launch hook is installed (``triton.knobs.runtime``, e.g. a
profiler), launches go through the compiled kernel's own runner so that the hooks see every launch.

:func:`precompiling` lets the tuner compile many parameter points at once: inside it, launches of kernels
marked ``precompilable`` only queue their compilation on a thread pool and run nothing (Triton's compiler holds
the GIL for part of its work, so the threads overlap only partly: bench/README.md measures it).
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, Callable, Hashable, Iterable, Iterator, NamedTuple

import torch
from triton import knobs
from triton.runtime._async_compile import AsyncCompileMode
from triton.runtime.driver import driver

_precompiling: ContextVar[bool] = ContextVar("warpsparse_precompiling", default=False)  # per thread


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host ints (``triton.cdiv`` costs a JIT-function call on newer Triton)."""
    return -(-a // b)


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1); a plain host function, unlike Triton's."""
    return 1 << max(n - 1, 0).bit_length()


def _arg_keys(args: Iterable[Any]) -> list[Any]:
    """Per non-constexpr argument, what Triton may specialize a kernel on (finer is safe, coarser would not be):
    an int's equality to 1, divisibility by 16 and width; a tensor's dtype and 16-byte alignment; the type of a
    bool, float or ``None``; any other value itself. One comprehension, ints (the most) tested first."""
    return [(a == 1, a & 15 == 0, -2**31 <= a < 2**31, a < 2**63) if type(a) is int
            else (a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, torch.Tensor)
            else type(a) if a is None or type(a) is bool or type(a) is float
            else (type(a), a) for a in args]


def _hooked() -> bool:
    """Whether a launch hook is installed (Triton's hook chains, or a plain hook on older knobs)."""
    runtime = knobs.runtime
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    return bool(getattr(enter, "calls", enter)) or bool(getattr(leave, "calls", leave))


def _stream_of(device: int) -> int:
    """The raw current stream of ``device``, as Triton's own runner reads it."""
    return driver.active.get_current_stream(device)


class _Entry(NamedTuple):
    kernel: Any  # the CompiledKernel
    tail: tuple[str, ...]  # parameters passed by keyword, in signature order


@contextlib.contextmanager
def precompiling(workers: int) -> Iterator[None]:
    """Launches of ``precompilable`` kernels from this thread inside only compile them, ``workers`` at a time;
    leaving waits for every compilation. Other threads launch as usual. Their outputs are left unwritten;
    compile errors are dropped here and surface at the kernel's next real launch."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="warpsparse-compile") as pool, \
            AsyncCompileMode(pool, ignore_errors=True):
        token = _precompiling.set(True)
        try:
            yield
        finally:
            _precompiling.reset(token)


class FastLaunch:
    """A jitted kernel whose launches skip Triton's per-call argument binding once compiled.

    A ``precompilable`` kernel's results are never cached by the host code, so :func:`precompiling` may skip
    running it.
    """

    def __init__(self, fn: Any, precompilable: bool = False) -> None:
        self.fn = fn
        self.precompilable = precompilable
        self.arg_names: tuple[str, ...] = tuple(fn.arg_names)
        self.constexpr: tuple[bool, ...] = tuple(bool(p.is_constexpr) for p in fn.params)
        #: how many leading parameters are not constexpr: positional arguments within them need no per-argument test
        self.plain = self.constexpr.index(True) if True in self.constexpr else len(self.constexpr)
        self.compiled: dict[Hashable, _Entry] = {}

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid: tuple[int, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        device = torch.cuda.current_device()
        plain = self.plain
        if len(args) <= plain:
            key = device, *kwargs.items(), *_arg_keys(args)
        else:
            key = device, *kwargs.items(), *_arg_keys(args[:plain]), *(
                value if constexpr else _arg_keys((value,))[0]
                for value, constexpr in zip(args[plain:], self.constexpr[plain:]))
        entry = self.compiled.get(key)
        if self.precompilable and _precompiling.get():
            if entry is None:
                self.fn.warmup(*args, grid=grid, **kwargs)  # queued on the pool by Triton's async compile mode
            return None
        if entry is None:
            kernel = self.fn[grid](*args, **kwargs)  # Triton's own path: binds, compiles if needed, launches
            tail = self.arg_names[len(args):]
            if all(name in kwargs for name in tail) and hasattr(kernel, "packed_metadata"):  # not pending
                self.compiled[key] = _Entry(kernel, tail)
            return kernel
        kernel = entry.kernel
        full = (*args, *map(kwargs.__getitem__, entry.tail))
        g0, g1, g2 = (*grid, 1, 1)[:3]
        if _hooked():
            kernel[(g0, g1, g2)](*full)
        else:
            kernel.run(g0, g1, g2, _stream_of(device), kernel.function, kernel.packed_metadata, None, None, None,
                       *full)
        return kernel


def fast_launch(fn: Any = None, *, precompilable: bool = False) -> Any:
    """``fn`` wrapped in :class:`FastLaunch` (``@fast_launch`` or ``@fast_launch(precompilable=True)``);
    interpreted kernels (``TRITON_INTERPRET=1``) are returned as is."""
    if fn is None:
        return lambda f: fast_launch(f, precompilable=precompilable)
    if type(fn).__name__ == "InterpretedFunction":
        return fn
    return FastLaunch(fn, precompilable)
