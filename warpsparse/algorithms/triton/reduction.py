"""Finishing a weight gradient from per-chunk partial sums: a deterministic, ordered segment sum."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from warpsparse.triton_launch import cdiv, fast_launch

_BLOCK = 1024


@fast_launch(precompilable=True)
@triton.jit
def segment_sum_kernel(ws_ptr, out_ptr, bounds_ptr, n_elem, BLOCK: tl.constexpr):
    """``out[g] = sum_{c in bounds[g]:bounds[g+1]} ws[c]`` in order, cast to ``out``'s dtype."""
    g = tl.program_id(0)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = e < n_elem
    lo = tl.load(bounds_ptr + g)
    hi = tl.load(bounds_ptr + g + 1)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(lo, hi):
        acc += tl.load(ws_ptr + c * n_elem + e, mask=ok, other=0.0)
    tl.store(out_ptr + g.to(tl.int64) * n_elem + e, acc.to(out_ptr.dtype.element_ty), mask=ok)


def segment_sum(ws: torch.Tensor, bounds: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Sum the partials ``ws`` [chunks, ...] group by group (``bounds`` [G+1] int64) into ``out`` [G, ...]."""
    groups = out.shape[0]
    n_elem = out[0].numel() if groups else 0
    if groups and n_elem:
        segment_sum_kernel[(groups, cdiv(n_elem, _BLOCK))](ws, out, bounds, n_elem, BLOCK=_BLOCK,
                                                                   num_warps=4)
    return out
