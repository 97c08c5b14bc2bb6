"""Triton max pooling over a kernel map: each window's max and arg-max row in one pass, and the gradient
scattered back to the arg-max rows."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from warpsparse.triton_launch import cdiv, fast_launch, pow2_at_least

BLOCK_M = 64


@fast_launch
@triton.jit
def _max_pool_kernel(x_ptr, nbr_ptr, y_ptr, src_ptr, n, c, kvol, stride_x, BLOCK_M: tl.constexpr,
                     BLOCK_C: tl.constexpr, STORE_SRC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < n
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < c
    best = tl.full((BLOCK_M, BLOCK_C), float("-inf"), dtype=tl.float32)
    arg = tl.full((BLOCK_M, BLOCK_C), -1, dtype=tl.int32)
    for k in range(kvol):
        idx = tl.load(nbr_ptr + rows.to(tl.int64) * kvol + k, mask=live, other=-1)
        v = tl.load(x_ptr + idx.to(tl.int64)[:, None] * stride_x + cols[None, :],
                    mask=(idx >= 0)[:, None] & col_ok[None, :], other=float("-inf")).to(tl.float32)
        better = (v > best) | ((arg < 0) & (idx >= 0)[:, None])  # the first present row starts the window
        best = tl.where(better, v, best)
        arg = tl.where(better, idx[:, None], arg)
    out = tl.where(arg >= 0, best, 0.0)
    offs = rows.to(tl.int64)[:, None] * c + cols[None, :]
    ok = live[:, None] & col_ok[None, :]
    tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=ok)
    if STORE_SRC:
        tl.store(src_ptr + offs, arg, mask=ok)


@fast_launch
@triton.jit
def _scatter_rows_kernel(g_ptr, src_ptr, dx_ptr, n, c, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rows < n)[:, None] & (cols < c)[None, :]
    offs = rows.to(tl.int64)[:, None] * c + cols[None, :]
    src = tl.load(src_ptr + offs, mask=ok, other=-1)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.atomic_add(dx_ptr + src.to(tl.int64) * c + cols[None, :], g, mask=ok & (src >= 0))


def _grid(n: int, c: int) -> tuple[tuple[int, int], int]:
    block_c = min(pow2_at_least(max(c, 1)), 64)
    return (cdiv(n, BLOCK_M), cdiv(c, block_c)), block_c


def max_pool_forward(x: torch.Tensor, nbr: torch.Tensor,
                     with_source: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(y, src)``: per output row and channel the max over the present rows of ``nbr[o]`` and, if
    ``with_source`` (else ``None``), the row that holds it (``src`` int32; 0 and -1 for a row without inputs)."""
    n, kvol = nbr.shape
    c = x.shape[1]
    x = x if x.stride(-1) == 1 else x.contiguous()
    y = torch.empty(n, c, dtype=x.dtype, device=x.device)
    src = torch.empty(n, c, dtype=torch.int32, device=x.device) if with_source else None
    if n and c:
        grid, block_c = _grid(n, c)
        _max_pool_kernel[grid](x, nbr.contiguous(), y, y if src is None else src, n, c, kvol, x.stride(0),
                               BLOCK_M=BLOCK_M, BLOCK_C=block_c, STORE_SRC=with_source, num_warps=4)
    return y, src


def max_pool_backward(grad: torch.Tensor, src: torch.Tensor, num_in: int) -> torch.Tensor:
    """The input gradient: ``grad[o, c]`` added to row ``src[o, c]`` (fp32 sums, in ``grad``'s dtype)."""
    n, c = src.shape
    dx = torch.zeros(num_in, c, dtype=torch.float32, device=grad.device)
    if n and c:
        grid, block_c = _grid(n, c)
        _scatter_rows_kernel[grid](grad.contiguous(), src, dx, n, c, BLOCK_M=BLOCK_M, BLOCK_C=block_c,
                                   num_warps=4)
    return dx.to(grad.dtype)
