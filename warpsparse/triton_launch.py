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
marked ``precompilable`` only queue their compilation on a thread pool (Triton's compiler releases the GIL,
so the compilations run side by side) and run nothing.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, Callable, Hashable, Iterator, NamedTuple

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


def _spec(value: Any, constexpr: bool) -> Hashable:
    """What Triton may specialize a kernel on for one argument (finer is safe, coarser would not be)."""
    if constexpr:
        return value
    kind = type(value)
    if kind is torch.Tensor or isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if kind is int:
        return value == 1, value % 16 == 0, -2**31 <= value < 2**31, value < 2**63
    if kind is bool or kind is float or value is None:
        return kind
    return kind, value


def _hooked() -> bool:
    """Whether a launch hook is installed (Triton's hook chains, or a plain hook on older knobs)."""
    runtime = knobs.runtime
    return any(bool(getattr(hook, "calls", hook)) for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


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
        self.compiled: dict[Hashable, _Entry] = {}

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid: tuple[int, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        device = torch.cuda.current_device()
        key = device, *kwargs.items(), *map(_spec, args, self.constexpr)
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
