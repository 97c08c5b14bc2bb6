"""Triton kernels compiled for a Hopper GPU (sm_90) on any machine, and the registers each variant takes.

Host code runs on CPU tensors with every ``fast_launch`` launch recorded instead of run (:func:`recording`);
:func:`compile_request` turns a recorded launch into what Triton's compiler takes, with the specialization a
real launch of those arguments gets when asked (16-byte aligned pointers and multiples of 16 marked divisible,
ints equal to 1 made constants); :func:`resources` reads the registers and stack bytes (spills) of a compiled
kernel with Triton's own ``cuobjdump``. ``tests/triton_compile_probe.py`` and ``bench/tiles.py --sm90`` use it.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from typing import Any, Callable, Iterator

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from warpsparse import triton_launch

TARGET = GPUTarget("cuda", 90, 32)
OPTIONS = ("num_warps", "num_stages")
_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64",
          torch.int32: "*i32", torch.int64: "*i64", torch.int8: "*i8", torch.bool: "*i1"}

Launch = tuple[Any, tuple[Any, ...], dict[str, Any]]  # (jitted function, positional arguments, keyword arguments)


@contextlib.contextmanager
def recording(then: Callable[[Launch], None] | None = None) -> Iterator[list[Launch]]:
    """Inside, launches of ``fast_launch`` kernels are appended to the yielded list instead of run (their outputs
    stay unwritten, unless ``then``, called with each recorded launch, writes them)."""
    calls: list[Launch] = []
    launch = triton_launch.FastLaunch.launch

    def record(self: triton_launch.FastLaunch, grid: tuple[int, ...], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> None:
        calls.append((self.fn, args, kwargs))
        if then is not None:
            then(calls[-1])

    triton_launch.FastLaunch.launch = record  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        triton_launch.FastLaunch.launch = launch  # type: ignore[method-assign]


def arg_type(value: Any) -> str:
    """Triton's type name of a (non-constexpr) kernel argument."""
    if isinstance(value, torch.Tensor):
        return _TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def _divisible(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return type(value) is int and value % 16 == 0


def compile_request(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    specialize: bool = False) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attributes, options) of one recorded launch, as Triton's compiler takes them;
    with ``specialize``, as a launch of these argument values specializes (parameters not listed in the
    kernel's ``do_not_specialize``)."""
    values = dict(zip(fn.arg_names, args)) | {k: v for k, v in kwargs.items() if k not in OPTIONS}
    plain = set(fn.do_not_specialize) if specialize else set(fn.arg_names)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = values[param.name]
        if param.is_constexpr or (param.name not in plain and type(value) is int and value == 1):
            signature[param.name], constexprs[param.name] = "constexpr", value
        else:
            signature[param.name] = arg_type(value)
            if param.name not in plain and _divisible(value):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, {k: kwargs[k] for k in OPTIONS if k in kwargs}


def compile_launch(fn: Any, signature: dict, constexprs: dict, attrs: dict, options: dict) -> Any:
    """The kernel of one :func:`compile_request`, compiled for :data:`TARGET`."""
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options)


def resources(kernel: Any) -> dict[str, int]:
    """Registers per thread and stack bytes per thread (register spills) of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        report = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", cubin.name],
                                capture_output=True, text=True, check=True).stdout
    registers, stack = (re.search(rf"{name}:(\d+)", report) for name in ("REG", "STACK"))
    if registers is None or stack is None:
        raise RuntimeError(f"cuobjdump printed no register or stack count: {report[-500:]}")
    return {"registers": int(registers.group(1)), "stack_bytes": int(stack.group(1))}
