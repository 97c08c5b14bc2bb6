"""What the Triton algorithms share: when they apply, dot precision, device limits and tile helpers."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterable

import torch

from warpsparse.algorithms.base import ParamSpace, Signature, tf32_allowed
from warpsparse.triton_launch import cdiv, pow2_at_least

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set now (Triton then runs kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels_interpreted(kernel: Any) -> bool:
    """Whether ``kernel`` was decorated in interpreter mode (``TRITON_INTERPRET=1`` before the import)."""
    return type(kernel).__name__ == "InterpretedFunction"


def unsupported(sig: Signature, kernel: Any) -> str | None:
    """Why the Triton kernels (``kernel`` is one of them) cannot run ``sig``, or ``None`` when they can."""
    if sig.device_type == "cpu":
        if not interpreting():
            return "Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)"
        if not kernels_interpreted(kernel):
            return "TRITON_INTERPRET=1 was set after warpsparse was imported; set it before the import"
    elif sig.device_type != "cuda":
        return f"Triton kernels do not run on device type {sig.device_type!r}"
    if sig.dtype == torch.float64:
        return "fp64 runs on explicit"
    if sig.dtype not in SUPPORTED_DTYPES:
        return f"dtype {sig.dtype} is not supported (float16, bfloat16, float32)"
    return None


def dot_precision(a: torch.Tensor) -> str:
    """``tl.dot`` input precision: exact fp32 unless TF32 is allowed for CUDA matmuls (ignored for halves)."""
    if a.dtype == torch.float32 and not (a.is_cuda and tf32_allowed()):
        return "ieee"
    return "tf32"


def upcast_dots(a: torch.Tensor) -> bool:
    """The interpreter multiplies bf16 tiles as raw integers: there the kernels upcast them to fp32 (exact)."""
    return a.dtype == torch.bfloat16 and not a.is_cuda


@functools.lru_cache(maxsize=None)
def _cuda_limits(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 99 * 1024
    return props.multi_processor_count, smem


def device_limits(device_type: str) -> tuple[int, int]:
    """(multiprocessor count, shared memory bytes per block) of the current device; nominal on CPU."""
    if device_type == "cuda" and torch.cuda.is_available():
        return _cuda_limits(torch.cuda.current_device())
    return 8, 99 * 1024


def chunk_lengths(work: int, tiles: int, step: int, sms: int) -> tuple[int, ...]:
    """Power-of-two chunk lengths (of ``work`` items, per program and tile) for about 4 and 16 waves of
    programs over ``sms`` multiprocessors, at least 4 steps of ``step`` each."""
    return tuple(dict.fromkeys(max(pow2_at_least(cdiv(work * tiles, waves * sms)), 4 * step) for waves in (4, 16)))


def channel_tiles(c: int, widest: int = 128) -> tuple[int, ...]:
    """Tile widths worth trying along a channel dimension of ``c``: never much wider than ``c``.

    Under 16 channels the narrow tile (FMA path) competes with the 16-wide tensor-core tile.
    """
    full = min(pow2_at_least(c), widest)
    if full < 16:
        return (full, 16)
    return tuple(sorted({max(16, full // 2) if c > 32 else full, full}))


def rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` with unit stride along channels (a copy only when needed)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def explicit_space(points: Iterable[dict[str, Any]]) -> ParamSpace:
    """A :class:`ParamSpace` whose points are exactly ``points`` (all with the same names).

    The choices per name are the values that occur; the constraint keeps the listed combinations.
    """
    listed = list(points)
    if not listed:
        return ParamSpace({"empty": ()})  # a choice without values: no points
    names = list(listed[0])
    keep = {tuple(p[n] for n in names) for p in listed}
    choices = {n: tuple(dict.fromkeys(p[n] for p in listed)) for n in names}
    constraint: Callable[[dict[str, Any]], bool] = lambda p: tuple(p[n] for n in names) in keep
    return ParamSpace(choices, constraint)
