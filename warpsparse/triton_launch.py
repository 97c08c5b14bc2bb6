"""Cheap repeated launches of Triton kernels.

``kernel[grid](...)`` of a ``@triton.jit`` function binds and specializes every argument in Python before it
looks up the compiled kernel (tens of microseconds per launch). :func:`fast_launch` wraps a kernel so that
a launch looks up the compiled kernel under a key at least as fine as Triton's own specialization (each
constexpr value; per tensor its dtype and 16-byte alignment; per int whether it is 1, a multiple of 16 and
its width; the launch options and the device) and launches it directly. The first launch of every key goes
through Triton's own path, which compiles and returns the kernel to remember.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import torch


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


class FastLaunch:
    """A jitted kernel whose launches skip Triton's per-call argument binding once compiled."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.arg_names: tuple[str, ...] = tuple(fn.arg_names)
        self.constexpr: tuple[bool, ...] = tuple(bool(p.is_constexpr) for p in fn.params)
        self.compiled: dict[Hashable, Any] = {}

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """Device, keyword values (constexprs and launch options, by value) and the specialization of each
        positional argument."""
        return torch.cuda.current_device(), *kwargs.items(), *map(_spec, args, self.constexpr)

    def launch(self, grid: tuple[int, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self._key(args, kwargs)
        kernel = self.compiled.get(key)
        if kernel is None:
            kernel = self.fn[grid](*args, **kwargs)  # Triton's own path: binds, compiles if needed, launches
            complete = all(name in kwargs for name in self.arg_names[len(args):])
            if complete and hasattr(kernel, "packed_metadata"):  # a compiled kernel, not a pending compilation
                self.compiled[key] = kernel
            return kernel
        kernel[(*grid, 1, 1)[:3]](*args, *map(kwargs.__getitem__, self.arg_names[len(args):]))
        return kernel


def fast_launch(fn: Any) -> Any:
    """``fn`` wrapped in :class:`FastLaunch`; interpreted kernels (``TRITON_INTERPRET=1``) are returned as is."""
    if type(fn).__name__ == "InterpretedFunction":
        return fn
    return FastLaunch(fn)
