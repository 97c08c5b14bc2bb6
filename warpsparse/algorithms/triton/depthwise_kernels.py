"""Triton kernels of the depthwise convolution (one weight per offset and channel).

Propagation is output stationary like the implicit GEMM, with per-channel products instead of a tile
product; the weight gradient reduces per-offset chunks of the pair list.
"""
from __future__ import annotations

import triton
import triton.language as tl

from warpsparse.algorithms.triton.conv_kernels import result_rows, store_rows
from warpsparse.triton_launch import fast_launch


@fast_launch(precompilable=True)
@triton.jit(do_not_specialize=["flip", "has_bias", "relu"])  # one compile serves maps, mirrored reverses, epilogues
def dw_propagate_kernel(
        x_ptr, w_ptr, y_ptr, bias_ptr, nbr_ptr, order_ptr, count_ptr, active_ptr, n_rows, c, kvol, flip, stride_x,
        stride_w, stride_y, has_bias, relu, SORTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """``y[o] = sum_k x[nbr[o, k]] * w[k]`` over the offsets the row block uses, then the epilogue."""
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    dst = result_rows(rows, row_ok, order_ptr, SORTED)
    table_rows = dst * kvol
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < c
    block = pid_m.to(tl.int64) * kvol
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for j in range(tl.load(count_ptr + pid_m)):
        col = tl.load(active_ptr + block + j)
        k = col + flip * (kvol - 1 - 2 * col)
        src = tl.load(nbr_ptr + table_rows + col, mask=row_ok, other=-1)
        xv = tl.load(x_ptr + src.to(tl.int64)[:, None] * stride_x + cols[None, :],
                     mask=(src >= 0)[:, None] & col_ok[None, :], other=0.0)
        wv = tl.load(w_ptr + k * stride_w + cols, mask=col_ok, other=0.0)
        acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    store_rows(y_ptr, y_ptr, acc, dst, row_ok, cols, col_ok, stride_y, bias_ptr, has_bias, relu, False)


@fast_launch(precompilable=True)
@triton.jit
def dw_wgrad_kernel(
        x_ptr, dy_ptr, out_ptr, in_idx_ptr, out_idx_ptr, start_ptr, stop_ptr, offset_ptr, c, stride_x,
        stride_dy, ATOMIC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Chunk ``q`` of offset ``k``: ``sum_p x[in_p] * dy[out_p]``; into ``out[q]`` or atomically ``out[k]``."""
    chunk = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < c
    start = tl.load(start_ptr + chunk)
    stop = tl.load(stop_ptr + chunk)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for p0 in range(start, stop, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < stop
        i = tl.load(in_idx_ptr + p, mask=p_ok, other=0).to(tl.int64)
        o = tl.load(out_idx_ptr + p, mask=p_ok, other=0).to(tl.int64)
        ok = p_ok[:, None] & col_ok[None, :]
        xv = tl.load(x_ptr + i[:, None] * stride_x + cols[None, :], mask=ok, other=0.0)
        g = tl.load(dy_ptr + o[:, None] * stride_dy + cols[None, :], mask=ok, other=0.0)
        acc += xv.to(tl.float32) * g.to(tl.float32)
    total = tl.sum(acc, axis=0)
    if stop > start:  # the chunks past the last are empty: their partials are never read
        if ATOMIC:
            k = tl.load(offset_ptr + chunk)
            tl.atomic_add(out_ptr + k * c + cols, total, mask=col_ok)
        else:
            tl.store(out_ptr + chunk.to(tl.int64) * c + cols, total, mask=col_ok)
