"""Triton kernels of the implicit-GEMM convolution.

Propagation (forward, and input gradient over the reversed map with the weight transposed through its
strides) is output stationary: a program owns ``BLOCK_M`` rows of the result and ``BLOCK_N`` of its channels,
gathers source rows through the neighbour table and accumulates in fp32; every result row is stored once per
pass (one pass per offset group: later passes add into fp32 partial sums).
The weight gradient reduces over pairs (per-offset chunks of the pair list) or over output rows (the packed
form for few input channels) and leaves partial sums in a workspace or adds them atomically. Row counts are
not specialized on, so the levels of a network share compiled kernels; nor is the forward epilogue (bias,
ReLU: runtime flags), so a conv with a bias runs the kernels its tuning compiled.
"""
from __future__ import annotations

import triton
import triton.language as tl

from warpsparse.triton_launch import fast_launch


@triton.jit
def mac(acc, a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` in fp32: tensor cores through ``tl.dot``, or FMA for tiles narrower than 16."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        acc += tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    return acc


@triton.jit
def result_rows(rows, row_ok, order_ptr, SORTED: tl.constexpr):
    """The map rows (of the table and of the result) that a block's rows ``rows`` stand for, as int64: through
    ``order`` when the block walks mask-sorted rows."""
    if SORTED:
        rows = tl.load(order_ptr + rows, mask=row_ok, other=0)
    return rows.to(tl.int64)


@triton.jit
def store_rows(y_ptr, part_ptr, acc, dst, row_ok, cols, col_ok, stride_y, bias_ptr, has_bias, relu,
               PARTIAL: tl.constexpr):
    """Store ``acc`` (plus ``bias`` where ``has_bias``, then ReLU where ``relu``: the epilogue, in fp32) into
    result rows ``dst`` (:func:`result_rows`) of ``y``, or of ``part`` where ``PARTIAL`` (``part`` has ``y``'s
    strides)."""
    at = dst[:, None] * stride_y + cols[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    if has_bias != 0:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if relu != 0:
        acc = tl.maximum(acc, 0.0)
    if PARTIAL:
        tl.store(part_ptr + at, acc.to(part_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(y_ptr + at, acc.to(y_ptr.dtype.element_ty), mask=ok)


@fast_launch(precompilable=True)
@triton.jit(do_not_specialize=["n_rows", "flip", "has_bias", "relu"])
def propagate_gather_kernel(
        x_ptr, w_ptr, y_ptr, part_ptr, bias_ptr, nbr_ptr, order_ptr, count_ptr, active_ptr,
        n_rows, c_red, c_n, kvol, flip, stride_x, stride_wk, stride_wr, stride_wn, stride_y, has_bias, relu,
        SORTED: tl.constexpr, ACCUMULATE: tl.constexpr, PARTIAL: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr):
    """``y[o] = sum_k x[nbr[o, k]] @ w[k]`` looping over the offsets the row block uses (see
    :class:`~warpsparse.algorithms.triton.layouts.BlockOffsets`), ``BLOCK_K`` channels at a time; the
    epilogue adds ``bias`` and applies ReLU. A pass of one column group of several starts from the partial sums
    in ``part`` (fp32) where ``ACCUMULATE`` and leaves its sums there where ``PARTIAL``; blocks that use no
    offset then leave their rows as they are. Both are compile-time flags: the partial sums' load and store as
    runtime branches made wide tiles spill registers (128 x 256 on 8 warps, fp16), also in one-pass calls."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    dst = result_rows(rows, row_ok, order_ptr, SORTED)
    table_rows = dst * kvol
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < c_n
    ck = tl.arange(0, BLOCK_K)
    chunks = tl.cdiv(c_red, BLOCK_K)
    steps = tl.load(count_ptr + pid_m) * chunks
    block = pid_m.to(tl.int64) * kvol
    if ACCUMULATE:
        acc = tl.load(part_ptr + dst[:, None] * stride_y + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                      other=0.0).to(tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(steps):
        j = step // chunks
        c = (step - j * chunks) * BLOCK_K + ck
        c_ok = c < c_red
        col = tl.load(active_ptr + block + j)
        k = col + flip * (kvol - 1 - 2 * col)
        src = tl.load(nbr_ptr + table_rows + col, mask=row_ok, other=-1)
        a = tl.load(x_ptr + src.to(tl.int64)[:, None] * stride_x + c[None, :],
                    mask=(src >= 0)[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(w_ptr + k * stride_wk + c[:, None] * stride_wr + cols[None, :] * stride_wn,
                    mask=c_ok[:, None] & col_ok[None, :], other=0.0)
        acc = mac(acc, a, b, USE_DOT, PRECISION, UPCAST)
    if (steps > 0) | (not (ACCUMULATE and PARTIAL)):
        store_rows(y_ptr, part_ptr, acc, dst, row_ok, cols, col_ok, stride_y, bias_ptr, has_bias, relu, PARTIAL)


@fast_launch(precompilable=True)
@triton.jit(do_not_specialize=["n_rows", "has_bias", "relu"])
def propagate_packed_kernel(
        x_ptr, w_ptr, y_ptr, bias_ptr, nbr_ptr, n_rows, c_red, c_n, kvol, stride_x, stride_wk, stride_wr,
        stride_wn, stride_y, has_bias, relu, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        USE_DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """The same product with offsets and channels packed into one reduction index ``r = k * c_red + c``, so
    a few source channels do not leave most of each tile empty."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    dst = rows.to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < c_n
    red = kvol * c_red
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, red, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K)
        r_ok = r < red
        k = r // c_red
        c = r - k * c_red
        src = tl.load(nbr_ptr + dst[:, None] * kvol + k[None, :], mask=row_ok[:, None] & r_ok[None, :], other=-1)
        a = tl.load(x_ptr + src.to(tl.int64) * stride_x + c[None, :], mask=src >= 0, other=0.0)
        b = tl.load(w_ptr + k[:, None] * stride_wk + c[:, None] * stride_wr + cols[None, :] * stride_wn,
                    mask=r_ok[:, None] & col_ok[None, :], other=0.0)
        acc = mac(acc, a, b, USE_DOT, PRECISION, UPCAST)
    store_rows(y_ptr, y_ptr, acc, dst, row_ok, cols, col_ok, stride_y, bias_ptr, has_bias, relu, False)


@triton.jit
def split_rows(split, rows_per_split, n_rows):
    """``[lo, hi)``: the table rows of one split."""
    lo = split * rows_per_split
    return lo, tl.minimum(lo + rows_per_split, n_rows)


@triton.jit
def put_partial(out_ptr, acc, within, ok, atomic_base, store_base, ATOMIC: tl.constexpr):
    """A weight-gradient tile: added atomically at ``atomic_base`` or stored at ``store_base`` (a workspace slot)."""
    if ATOMIC:
        tl.atomic_add(out_ptr + atomic_base + within, acc, mask=ok)
    else:
        tl.store(out_ptr + store_base + within, acc, mask=ok)


@fast_launch(precompilable=True)
@triton.jit
def wgrad_pairs_kernel(
        x_ptr, dy_ptr, out_ptr, in_idx_ptr, out_idx_ptr, start_ptr, stop_ptr, offset_ptr,
        c_in, c_out, stride_x, stride_dy,
        ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        USE_DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Chunk ``c`` of offset ``k``: ``sum_p x[in_p]^T dy[out_p]`` over its pairs, a ``BLOCK_M x BLOCK_N`` tile
    of ``dW[k]``; into ``out[c]`` (workspace) or atomically into ``out[k]``."""
    chunk = tl.program_id(0)
    ci = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    co = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_ok = ci < c_in
    co_ok = co < c_out
    start = tl.load(start_ptr + chunk)
    stop = tl.load(stop_ptr + chunk)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(start, stop, BLOCK_K):
        p = p0 + tl.arange(0, BLOCK_K)
        p_ok = p < stop
        i = tl.load(in_idx_ptr + p, mask=p_ok, other=0).to(tl.int64)
        o = tl.load(out_idx_ptr + p, mask=p_ok, other=0).to(tl.int64)
        xt = tl.load(x_ptr + i[None, :] * stride_x + ci[:, None], mask=p_ok[None, :] & ci_ok[:, None], other=0.0)
        g = tl.load(dy_ptr + o[:, None] * stride_dy + co[None, :], mask=p_ok[:, None] & co_ok[None, :], other=0.0)
        acc = mac(acc, xt, g, USE_DOT, PRECISION, UPCAST)
    tile = c_in * c_out
    k = tl.load(offset_ptr + chunk) if ATOMIC else 0
    if stop > start:  # the chunks past the last are empty: their partials are never read
        put_partial(out_ptr, acc, ci[:, None] * c_out + co[None, :], ci_ok[:, None] & co_ok[None, :], k * tile,
                    chunk.to(tl.int64) * tile, ATOMIC)


@fast_launch(precompilable=True)
@triton.jit(do_not_specialize=["n_rows"])
def wgrad_packed_kernel(
        x_ptr, dy_ptr, out_ptr, nbr_ptr, n_rows, rows_per_split, c_in, c_out, kvol, stride_x, stride_dy,
        ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        USE_DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``dW`` viewed as ``[K * c_in, c_out]``: rows ``j = k * c_in + c`` reduce ``x[nbr[o, k], c] dy[o]`` over
    the output rows of split ``s``; into ``out[s]`` (workspace) or atomically into ``out``."""
    j = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    j_ok = j < kvol * c_in
    co_ok = co < c_out
    k = j // c_in
    ci = j - k * c_in
    lo, hi = split_rows(split, rows_per_split, n_rows)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(lo, hi, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K)
        r_ok = r < hi
        src = tl.load(nbr_ptr + r.to(tl.int64)[None, :] * kvol + k[:, None], mask=r_ok[None, :] & j_ok[:, None],
                      other=-1)
        xt = tl.load(x_ptr + src.to(tl.int64) * stride_x + ci[:, None], mask=src >= 0, other=0.0)
        g = tl.load(dy_ptr + r.to(tl.int64)[:, None] * stride_dy + co[None, :], mask=r_ok[:, None] & co_ok[None, :],
                    other=0.0)
        acc = mac(acc, xt, g, USE_DOT, PRECISION, UPCAST)
    put_partial(out_ptr, acc, j[:, None] * c_out + co[None, :], j_ok[:, None] & co_ok[None, :], 0,
                split.to(tl.int64) * kvol * c_in * c_out, ATOMIC)


@fast_launch(precompilable=True)
@triton.jit(do_not_specialize=["n_rows"])
def wgrad_rows_kernel(
        x_ptr, dy_ptr, out_ptr, nbr_ptr, order_ptr, n_rows, rows_per_split, c_in, c_out, kvol, stride_x,
        stride_dy, ATOMIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        USE_DOT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Offset ``k``, split ``s``: ``sum_o x[nbr[o, k]]^T dy[o]`` over the split's rows of the mask-sorted
    table (``order``), skipping steps where no row uses ``k``; a tile of ``dW[k]`` into ``out[s]`` (workspace)
    or atomically into ``out``. Needs no pair list."""
    k = tl.program_id(0)
    split = tl.program_id(1)
    tiles_n = tl.cdiv(c_out, BLOCK_N)
    ci = (tl.program_id(2) // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    co = (tl.program_id(2) % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_ok = ci < c_in
    co_ok = co < c_out
    lo, hi = split_rows(split, rows_per_split, n_rows)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(lo, hi, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K)
        r_ok = r < hi
        o = tl.load(order_ptr + r, mask=r_ok, other=0).to(tl.int64)
        src = tl.load(nbr_ptr + o * kvol + k, mask=r_ok, other=-1)
        if tl.max(src, axis=0) >= 0:
            used = src >= 0
            xt = tl.load(x_ptr + src.to(tl.int64)[None, :] * stride_x + ci[:, None],
                         mask=used[None, :] & ci_ok[:, None], other=0.0)
            g = tl.load(dy_ptr + o[:, None] * stride_dy + co[None, :], mask=used[:, None] & co_ok[None, :],
                        other=0.0)
            acc = mac(acc, xt, g, USE_DOT, PRECISION, UPCAST)
    put_partial(out_ptr, acc, (k * c_in + ci[:, None]) * c_out + co[None, :], ci_ok[:, None] & co_ok[None, :], 0,
                split.to(tl.int64) * kvol * c_in * c_out, ATOMIC)
