"""Timing of candidate runs (CUDA events on GPU, perf_counter on CPU) and the output check against the reference."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch

_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-9}
_TF32_TOLERANCE = 5e-3
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def tolerance(dtype: torch.dtype, tf32: bool) -> float:
    """Largest relative Frobenius error accepted for outputs of ``dtype``."""
    if dtype == torch.float32 and tf32:
        return _TF32_TOLERANCE
    return _TOLERANCE.get(dtype, 2e-2)


def output_error(out: object, ref: torch.Tensor, tol: float) -> str | None:
    """``None`` if ``out`` matches ``ref`` within ``tol`` (relative Frobenius error), else why not.

    Non-finite values must sit exactly where the reference has them.
    """
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    if out.shape != ref.shape or out.dtype != ref.dtype or out.device != ref.device:
        return (f"returned {out.dtype} {tuple(out.shape)} on {out.device}, "
                f"expected {ref.dtype} {tuple(ref.shape)} on {ref.device}")
    work = torch.promote_types(ref.dtype, torch.float32)
    o, r = out.to(work), ref.to(work)
    finite = torch.isfinite(r)
    if not bool(torch.equal(torch.isfinite(o), finite)):
        return "non-finite values where the reference has none (or the reverse)"
    if not bool(finite.all()):
        if not bool(torch.equal(o[~finite].nan_to_num(), r[~finite].nan_to_num())):
            return "non-finite values differ from the reference"
        o, r = o[finite], r[finite]
    diff = float(torch.linalg.vector_norm(o - r))
    scale = float(torch.linalg.vector_norm(r))
    err = diff / scale if scale > 0 else diff
    if not err <= tol:
        return f"relative error {err:.3g} exceeds {tol:g}"
    return None


def poison(out: object, *protected: torch.Tensor) -> None:
    """Fill a float output with NaN before it is freed, so a later candidate cannot pass on stale memory.

    Outputs sharing storage with a ``protected`` tensor (an input returned as is) are left alone.
    """
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.numel() == 0:
        return
    ptr = out.untyped_storage().data_ptr()
    if any(p.numel() and p.untyped_storage().data_ptr() == ptr for p in protected):
        return
    out.fill_(float("nan"))


def snapshot(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


def unchanged(t: torch.Tensor, snap: torch.Tensor) -> bool:
    """Bitwise equality of ``t`` and its snapshot (NaN-safe)."""
    bits = _BITS.get(t.element_size())
    if bits is None or t.is_complex():
        return bool(torch.equal(t, snap))
    return bool(torch.equal(t.detach().contiguous().view(bits), snap.contiguous().view(bits)))


def time_round_robin(fns: Sequence[Callable[[], object]], device: torch.device, rounds: int) -> list[list[float]]:
    """Milliseconds of ``rounds`` runs of every function, interleaved (one sync at the end on GPU)."""
    if device.type == "cuda":
        events = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                   for _ in range(rounds)] for _ in fns]
        for r in range(rounds):
            for fn, evs in zip(fns, events):
                evs[r][0].record()
                fn()
                evs[r][1].record()
        torch.cuda.synchronize(device)
        return [[start.elapsed_time(end) for start, end in evs] for evs in events]
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, samples):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return samples


def median(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))
