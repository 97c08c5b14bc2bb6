"""Kernel-map construction in Triton on the coordinate hash tables of :mod:`warpsparse.coords.triton_hash`.

Given the output sites, a map is filled output-driven: for each output site and kernel offset the one input
position it reads is computed and looked up in the input set's table (``nbr`` and the row bitmask in one pass,
no device sync). Without given outputs they are found first: every (input, offset) lane that can reach an
output inserts the output's key into a fresh table (deduplicating) and records itself as a candidate first
lane of that key; the lanes that are first for their key are counted with a scan and numbered in lane order,
so outputs come out in the order of the first (input row, offset) reaching them, like the PyTorch builder's,
without sorting. The output and pair counts, packed in one word, are the one host read. The lanes then fill
``nbr`` input-driven (each lane is one pair; no lookups). That table is then dropped: it is sized for every
lane, and its slots hold lane numbers; the output set builds its own coordinate table (packed where its keys
allow, and smaller) when the next layer queries it.

A conv that sends only a few lanes to each output skips the output table: a transposed one with few positions
per residue of the stride (e.g. 3x3x3 stride 2: at most 8 lanes per output), or a regular one whose inputs each
reach one output (e.g. 2x2x2 stride 2, pooling windows: 8 inputs per output). The lanes reaching a lane's output
are known from its position, so each lane looks their inputs up in the (much smaller) input table and learns
the first of them, its output's owner; owners are numbered with the same scan.

A centred-symmetric (submanifold) map of 3 to 729 offsets (up to 9x9x9) onto its own sites and grid is filled
with half the lookups: the site found at offset ``k`` of site ``i`` also has ``i`` at the mirrored offset
``K-1-k``.

A transposed conv whose kernel positions fall in distinct residues of the stride (``d*(k-1) < s``, no padding,
every output inside the grid; e.g. 2x2x2 stride 2) sends every lane to its own output: the outputs are the lanes
in order and each row of ``nbr`` holds one pair, so that map needs no table, no count and no host read.

Along an axis, a regular conv links input ``i`` and output ``o`` through kernel position ``t`` by
``i = o*s + t*d - p`` and a transposed conv by ``o = i*s + t*d - p``: going from the side that is multiplied
("multiply") is a product, going the other way ("divide") needs ``s`` to divide the difference.

Sizes, grid extents and table parameters are not specialized on (``do_not_specialize``): one compile of each
kernel serves every level of a network.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, Triple
from warpsparse.coords.keys import key_radix
from warpsparse.coords.triton_hash import (HashTable, Launch, coord_table, find_keys, insert_keys,
                                           pack_key, require_runnable)
from warpsparse.triton_launch import cdiv, fast_launch, pow2_at_least

MAP = Launch(256, 2)  # lanes = output rows x padded offsets per program of the map and row-mask kernels
DISCOVER = Launch(128, 4)  # (input, kernel position) lanes per program of the output discovery and ownership
ROWS = Launch(1024, 4)  # plain per-element kernels: numbering outputs, reversing maps
PAIRS = Launch(2048, 4)  # table entries (rows x a tile of up to 32 offsets) per program of the pair-list kernels
_MAX_LANES = 2**31 - 2**15  # lane indices of the last program (at most 2**14 lanes each) stay int32


@triton.jit
def _relate(x, t, S: tl.constexpr, D: tl.constexpr, P: tl.constexpr, lim, MULTIPLY: tl.constexpr):
    """The coordinate linked to ``x`` through kernel position ``t`` along one axis, and whether it is in
    ``[0, lim)`` (``MULTIPLY``: ``x*S + t*D - P``; else ``(x + P - t*D) / S`` when that divides)."""
    if MULTIPLY:
        y = x * S + t * D - P
        ok = (y >= 0) & (y < lim)
    else:
        num = x + P - t * D
        ok = (num >= 0) & (num % S == 0)
        y = tl.where(ok, num, 0) // S
        ok = ok & (y < lim)
    return y, ok


@triton.jit
def _kernel_position(x, j, K: tl.constexpr, S: tl.constexpr, D: tl.constexpr, P: tl.constexpr,
                     M: tl.constexpr, MULTIPLY: tl.constexpr):
    """The ``j``-th kernel position along one axis that can link ``x`` (``>= K`` when there is none).

    Dividing, only positions ``t`` with ``S | x + P - t*D`` count; they are one residue ``r`` modulo
    ``M = S / gcd(S, D)``, found by trying ``t < M``.
    """
    if MULTIPLY:
        t = j
    else:
        r = tl.zeros_like(x) + K
        for c in tl.static_range(M):
            r = tl.where((x + P - c * D) % S == 0, c, r)
        t = r + j * M
    return t


@triton.jit
def _row_bits(found, k, KV: tl.constexpr):
    """Per row of ``found`` [R, KP], the int64 mask of offsets present (bit 62 stands for every offset >= 62)."""
    one = tl.full(found.shape, 1, tl.int64)
    low = tl.where(found & (k < 62)[None, :], one << tl.where(k < 62, k, 0).to(tl.int64)[None, :], 0)
    bits = tl.sum(low, axis=1)
    if KV > 62:
        high = tl.max(tl.where(found & (k >= 62)[None, :], 1, 0), axis=1)
        bits = bits | (high.to(tl.int64) << 62)
    return bits


@fast_launch
@triton.jit(do_not_specialize=["n_out", "shift", "hmask", "in0", "in1", "in2", "lim0", "lim1",
                             "lim2"])
def _map_kernel(nbr_ptr, mask_ptr, count_ptr, out_ptr, n_out, slots_ptr, shift, hmask, in0, in1, in2,
                lim0, lim1, lim2, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
                D2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, MULTIPLY: tl.constexpr,
                PACKED: tl.constexpr, ROWS: tl.constexpr, KP: tl.constexpr):
    """``nbr[o, k]`` = the input row at the position output ``o`` reads through offset ``k``, row masks, and the
    pairs counted into ``count``."""
    KV: tl.constexpr = K0 * K1 * K2
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < n_out
    row64 = rows.to(tl.int64)  # 4 * rows passes 2**31 past 2**29 outputs, rows * KV far sooner
    b = tl.load(out_ptr + 4 * row64, mask=live, other=0)
    o0 = tl.load(out_ptr + 4 * row64 + 1, mask=live, other=0)
    o1 = tl.load(out_ptr + 4 * row64 + 2, mask=live, other=0)
    o2 = tl.load(out_ptr + 4 * row64 + 3, mask=live, other=0)
    inside = live & (o0 < lim0) & (o1 < lim1) & (o2 < lim2)
    k = tl.arange(0, KP)
    x0, ok0 = _relate(o0[:, None], (k // (K1 * K2))[None, :], S0, D0, P0, in0, MULTIPLY)
    x1, ok1 = _relate(o1[:, None], ((k // K2) % K1)[None, :], S1, D1, P1, in1, MULTIPLY)
    x2, ok2 = _relate(o2[:, None], (k % K2)[None, :], S2, D2, P2, in2, MULTIPLY)
    valid = inside[:, None] & (k < KV)[None, :] & ok0 & ok1 & ok2
    src = find_keys(slots_ptr, pack_key(b[:, None], x0, x1, x2, in0, in1, in2), valid, shift, hmask, PACKED)
    dst = row64[:, None] * KV + k[None, :]
    tl.store(nbr_ptr + dst, src.to(tl.int32), mask=live[:, None] & (k < KV)[None, :])
    tl.store(mask_ptr + rows, _row_bits(src >= 0, k, KV), mask=live)
    tl.atomic_add(count_ptr, tl.sum(tl.sum((src >= 0).to(tl.int64), axis=1), axis=0))


@fast_launch
@triton.jit(do_not_specialize=["n", "shift", "hmask", "in0", "in1", "in2"])
def _half_map_kernel(nbr_ptr, mask_ptr, count_ptr, coords_ptr, n, slots_ptr, shift, hmask, in0, in1, in2, delta_ptr,
                     K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, PACKED: tl.constexpr, ROWS: tl.constexpr,
                     HP: tl.constexpr):
    """A centred-symmetric (submanifold) map from half the lookups: site ``j`` found at offset ``k`` before the
    centre of site ``i`` gives ``nbr[i, k] = j`` and its mirror ``nbr[j, K-1-k] = i``; ``nbr[i, centre] = i``.
    ``nbr`` comes filled with -1 and the masks with 0 (both OR-ed in here); pairs are counted into ``count``.
    Offset ``k``'s displacement along axis ``a`` is ``delta[a * HP + k]`` (:func:`_half_deltas`)."""
    KV: tl.constexpr = K0 * K1 * K2
    HALF: tl.constexpr = KV // 2
    CENTRE: tl.constexpr = HALF if HALF < 62 else 62
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = rows < n
    row64 = rows.to(tl.int64)
    b = tl.load(coords_ptr + 4 * row64, mask=live, other=0)
    x0 = tl.load(coords_ptr + 4 * row64 + 1, mask=live, other=0)[:, None]
    x1 = tl.load(coords_ptr + 4 * row64 + 2, mask=live, other=0)[:, None]
    x2 = tl.load(coords_ptr + 4 * row64 + 3, mask=live, other=0)[:, None]
    k = tl.arange(0, HP)
    y0 = x0 + tl.load(delta_ptr + k)[None, :]
    y1 = x1 + tl.load(delta_ptr + HP + k)[None, :]
    y2 = x2 + tl.load(delta_ptr + 2 * HP + k)[None, :]
    valid = (live[:, None] & (k < HALF)[None, :] & (y0 >= 0) & (y0 < in0) & (y1 >= 0) & (y1 < in1) & (y2 >= 0)
             & (y2 < in2))
    j = find_keys(slots_ptr, pack_key(b[:, None], y0, y1, y2, in0, in1, in2), valid, shift, hmask, PACKED)
    found = j >= 0
    j64 = j.to(tl.int64)
    tl.store(nbr_ptr + row64[:, None] * KV + k[None, :], j.to(tl.int32), mask=live[:, None] & (k < HALF)[None, :])
    tl.store(nbr_ptr + row64 * KV + HALF, rows, mask=live)
    mirror = KV - 1 - k
    tl.store(nbr_ptr + j64 * KV + mirror[None, :], (rows[:, None] + 0 * j).to(tl.int32), mask=found)
    one = tl.full(j.shape, 1, tl.int64)
    tl.atomic_or(mask_ptr + j64, one << tl.minimum(mirror, 62).to(tl.int64)[None, :], mask=found)
    centre = tl.full(rows.shape, 1, tl.int64) << CENTRE
    tl.atomic_or(mask_ptr + rows, _row_bits(found, k, KV) | centre, mask=live)
    pairs = 2 * tl.sum(tl.sum(found.to(tl.int64), axis=1), axis=0) + tl.sum(live.to(tl.int64), axis=0)
    tl.atomic_add(count_ptr, pairs)


_FIRST = tl.constexpr(2**62)  # a slot's value during discovery: _FIRST - (the smallest lane reaching it)


@fast_launch
@triton.jit(do_not_specialize=["n_lanes", "shift", "hmask", "lim0", "lim1", "lim2"])
def _discover_kernel(coords_ptr, n_lanes, slots_ptr, shift, hmask, lane_slot_ptr, lim0, lim1, lim2,
                     K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                     S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
                     D2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                     M0: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr,
                     B2: tl.constexpr, MULTIPLY: tl.constexpr, BLOCK: tl.constexpr):
    """Insert the output of every (input, usable kernel position) lane, keep the smallest lane per output in
    its slot's value, and store each lane's slot (``-1``: the lane reaches no output)."""
    J: tl.constexpr = B0 * B1 * B2
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    row = (lanes // J).to(tl.int64)
    j = lanes % J
    b = tl.load(coords_ptr + 4 * row, mask=live, other=0)
    c0 = tl.load(coords_ptr + 4 * row + 1, mask=live, other=0)
    c1 = tl.load(coords_ptr + 4 * row + 2, mask=live, other=0)
    c2 = tl.load(coords_ptr + 4 * row + 3, mask=live, other=0)
    t0 = _kernel_position(c0, j // (B1 * B2), K0, S0, D0, P0, M0, MULTIPLY)
    t1 = _kernel_position(c1, (j // B2) % B1, K1, S1, D1, P1, M1, MULTIPLY)
    t2 = _kernel_position(c2, j % B2, K2, S2, D2, P2, M2, MULTIPLY)
    y0, ok0 = _relate(c0, t0, S0, D0, P0, lim0, MULTIPLY)
    y1, ok1 = _relate(c1, t1, S1, D1, P1, lim1, MULTIPLY)
    y2, ok2 = _relate(c2, t2, S2, D2, P2, lim2, MULTIPLY)
    valid = live & ok0 & ok1 & ok2 & (t0 < K0) & (t1 < K1) & (t2 < K2)
    slot, _ = insert_keys(slots_ptr, pack_key(b, y0, y1, y2, lim0, lim1, lim2), valid, shift, hmask)
    tl.atomic_max(slots_ptr + 2 * slot + 1, lanes.to(tl.int64) * -1 + _FIRST, mask=valid, sem="relaxed")
    tl.store(lane_slot_ptr + lanes, tl.where(valid, slot, -1).to(lane_slot_ptr.dtype.element_ty), mask=live)


@fast_launch
@triton.jit(do_not_specialize=["n_lanes"])
def _first_lane_kernel(lane_slot_ptr, slots_ptr, first_ptr, stats_ptr, n_lanes, BLOCK: tl.constexpr):
    """``first[lane]`` = 1 where the lane is the smallest reaching its output, else 0; the lanes counted into
    ``stats`` (:func:`_count_lanes`)."""
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    slot = tl.load(lane_slot_ptr + lanes, mask=live, other=-1)
    held = tl.load(slots_ptr + 2 * slot.to(tl.int64) + 1, mask=slot >= 0, other=0)
    first = (slot >= 0) & (held == lanes.to(tl.int64) * -1 + _FIRST)
    tl.store(first_ptr + lanes, first.to(tl.int32), mask=live)
    _count_lanes(stats_ptr, slot >= 0, first)


@triton.jit
def _count_lanes(stats_ptr, hit, first):
    """Add the lanes that reach an output (the pairs) and the first lanes of their outputs (the outputs) to
    ``stats``, packed as ``pairs << 32 | outputs`` (one atomic; both stay below 2**31, :data:`_MAX_LANES`)."""
    packed = (tl.sum(hit.to(tl.int64), axis=0) << 32) + tl.sum(first.to(tl.int64), axis=0)
    tl.atomic_add(stats_ptr, packed, sem="relaxed")


def _read_counts(stats: torch.Tensor) -> tuple[int, int]:
    """``(pairs, outputs)`` from the counts :func:`_count_lanes` packed into ``stats`` (the one host read)."""
    return divmod(int(stats), 2**32)


@fast_launch
@triton.jit(do_not_specialize=["n_lanes", "s0", "s1", "s2"])
def _number_kernel(lane_slot_ptr, first_ptr, rank_ptr, slots_ptr, coords_ptr, n_lanes, s0, s1, s2,
                   BLOCK: tl.constexpr):
    """Output ``rank[lane] - 1`` for every first lane: store it as its slot's value and unpack its key (radix
    ``s``) into the coordinates."""
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    first = live & (tl.load(first_ptr + lanes, mask=live, other=0) != 0)
    slot = tl.load(lane_slot_ptr + lanes, mask=first, other=0).to(tl.int64)
    out = tl.load(rank_ptr + lanes, mask=first, other=1).to(tl.int64) - 1
    key = tl.load(slots_ptr + 2 * slot, mask=first, other=0)
    tl.store(slots_ptr + 2 * slot + 1, out, mask=first)
    x2 = key % s2
    key = key // s2
    x1 = key % s1
    key = key // s1
    tl.store(coords_ptr + 4 * out, (key // s0).to(tl.int32), mask=first)
    tl.store(coords_ptr + 4 * out + 1, (key % s0).to(tl.int32), mask=first)
    tl.store(coords_ptr + 4 * out + 2, x1.to(tl.int32), mask=first)
    tl.store(coords_ptr + 4 * out + 3, x2.to(tl.int32), mask=first)


@fast_launch
@triton.jit(do_not_specialize=["n_lanes"])
def _fill_lanes_kernel(coords_ptr, lane_slot_ptr, slots_ptr, nbr_ptr, n_lanes,
                       K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                       S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
                       D2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                       M0: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr,
                       B2: tl.constexpr, MULTIPLY: tl.constexpr, BLOCK: tl.constexpr):
    """``nbr[output of lane, offset of lane] = input row of lane`` for every lane that reaches an output (its
    slot's value is the output row, after numbering)."""
    J: tl.constexpr = B0 * B1 * B2
    KV: tl.constexpr = K0 * K1 * K2
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    slot = tl.load(lane_slot_ptr + lanes, mask=live, other=-1).to(tl.int64)
    hit = slot >= 0
    row = (lanes // J).to(tl.int64)
    j = lanes % J
    t0 = _kernel_position(tl.load(coords_ptr + 4 * row + 1, mask=hit, other=0), j // (B1 * B2), K0, S0, D0, P0,
                          M0, MULTIPLY)
    t1 = _kernel_position(tl.load(coords_ptr + 4 * row + 2, mask=hit, other=0), (j // B2) % B1, K1, S1, D1, P1,
                          M1, MULTIPLY)
    t2 = _kernel_position(tl.load(coords_ptr + 4 * row + 3, mask=hit, other=0), j % B2, K2, S2, D2, P2, M2,
                          MULTIPLY)
    out = tl.load(slots_ptr + 2 * slot + 1, mask=hit, other=0)
    tl.store(nbr_ptr + out * KV + (t0 * K1 + t1) * K2 + t2, row.to(tl.int32), mask=hit)


@triton.jit
def _store_moved(dst, src, k, mask, K1: tl.constexpr, K2: tl.constexpr, S0: tl.constexpr, S1: tl.constexpr,
                 S2: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, P0: tl.constexpr,
                 P1: tl.constexpr, P2: tl.constexpr, MULTIPLY: tl.constexpr):
    """Store at ``dst`` the site at ``src`` (batch, x0, x1, x2) linked through kernel offset ``k`` (see
    :func:`_relate`; the caller knows the link exists)."""
    tl.store(dst, tl.load(src, mask=mask, other=0), mask=mask)
    y0, _ = _relate(tl.load(src + 1, mask=mask, other=0), k // (K1 * K2), S0, D0, P0, 0, MULTIPLY)
    y1, _ = _relate(tl.load(src + 2, mask=mask, other=0), k // K2 % K1, S1, D1, P1, 0, MULTIPLY)
    y2, _ = _relate(tl.load(src + 3, mask=mask, other=0), k % K2, S2, D2, P2, 0, MULTIPLY)
    tl.store(dst + 1, y0.to(tl.int32), mask=mask)
    tl.store(dst + 2, y1.to(tl.int32), mask=mask)
    tl.store(dst + 3, y2.to(tl.int32), mask=mask)


@fast_launch
@triton.jit(do_not_specialize=["n"])
def _spread_kernel(coords_ptr, out_ptr, nbr_ptr, n, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                   S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
                   D2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, KP: tl.constexpr,
                   ROWS: tl.constexpr):
    """Output ``r`` is input ``i = r // KV`` moved by kernel position ``k = r % KV`` (coordinates
    ``x*S + t*D - P``) and its only pair is ``nbr[r, k] = i``."""
    KV: tl.constexpr = K0 * K1 * K2
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    live = r < n * KV
    i = r // KV
    k = r - i * KV
    _store_moved(out_ptr + r * 4, coords_ptr + i * 4, k, live, K1, K2, S0, S1, S2, D0, D1, D2, P0, P1, P2, True)
    j = tl.arange(0, KP)
    pair = tl.where(j[None, :] == k[:, None], i[:, None].to(tl.int32), -1)
    tl.store(nbr_ptr + r[:, None] * KV + j[None, :], pair, mask=live[:, None] & (j < KV)[None, :])


@triton.jit
def _lane_position(lanes, coords_ptr, live, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                   S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
                   D2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, M0: tl.constexpr,
                   M1: tl.constexpr, M2: tl.constexpr, MULTIPLY: tl.constexpr):
    """Input row and kernel position ``(t0, t1, t2)`` of each lane of :func:`owned_map`: ``K`` lanes per row of
    a transposed conv, one per row of a regular conv (its only usable position, ``>= K`` when none)."""
    KV: tl.constexpr = K0 * K1 * K2
    L: tl.constexpr = KV if MULTIPLY else 1
    row = lanes // L
    src = coords_ptr + 4 * row.to(tl.int64)
    c0 = tl.load(src + 1, mask=live, other=0)
    c1 = tl.load(src + 2, mask=live, other=0)
    c2 = tl.load(src + 3, mask=live, other=0)
    if MULTIPLY:
        k = lanes % KV
        t0, t1, t2 = k // (K1 * K2), (k // K2) % K1, k % K2
    else:
        t0 = _kernel_position(c0, 0, K0, S0, D0, P0, M0, False)
        t1 = _kernel_position(c1, 0, K1, S1, D1, P1, M1, False)
        t2 = _kernel_position(c2, 0, K2, S2, D2, P2, M2, False)
    return row, src, c0, c1, c2, t0, t1, t2


@fast_launch
@triton.jit(do_not_specialize=["n_lanes", "shift", "hmask", "in0", "in1", "in2", "lim0", "lim1", "lim2"])
def _owner_kernel(coords_ptr, n_lanes, slots_ptr, shift, hmask, owner_ptr, first_ptr, stats_ptr, in0, in1, in2,
                  lim0, lim1, lim2, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, S0: tl.constexpr,
                  S1: tl.constexpr, S2: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
                  P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, M0: tl.constexpr, M1: tl.constexpr,
                  M2: tl.constexpr, B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, MULTIPLY: tl.constexpr,
                  PACKED: tl.constexpr, BLOCK: tl.constexpr):
    """``owner[lane]``: the smallest lane reaching the output of lane ``(row, t)`` (``-1``: none inside the
    grid), and ``first[lane]`` = 1 where that is the lane itself; the lanes counted into ``stats``
    (:func:`_count_lanes`).

    Transposed, the other lanes reaching ``x*S + t*D - P`` are ``(x + (t - u)*D/S, u)`` for the positions ``u``
    in ``t``'s residue modulo ``M`` (``B`` per axis); regular (one lane per input), they are ``(x + (u - t)*D,
    u)`` for every position ``u``. Their inputs are looked up in the input table; the smallest lane wins.
    """
    KV: tl.constexpr = K0 * K1 * K2
    L: tl.constexpr = KV if MULTIPLY else 1
    N0: tl.constexpr = B0 if MULTIPLY else K0
    N1: tl.constexpr = B1 if MULTIPLY else K1
    N2: tl.constexpr = B2 if MULTIPLY else K2
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    row, src, c0, c1, c2, t0, t1, t2 = _lane_position(lanes, coords_ptr, live, K0, K1, K2, S0, S1, S2, D0, D1, D2,
                                                      P0, P1, P2, M0, M1, M2, MULTIPLY)
    b = tl.load(src, mask=live, other=0)
    _, ok0 = _relate(c0, t0, S0, D0, P0, lim0, MULTIPLY)
    _, ok1 = _relate(c1, t1, S1, D1, P1, lim1, MULTIPLY)
    _, ok2 = _relate(c2, t2, S2, D2, P2, lim2, MULTIPLY)
    valid = live & ok0 & ok1 & ok2 & (t0 < K0) & (t1 < K1) & (t2 < K2)
    best = lanes
    for c in tl.static_range(N0 * N1 * N2):
        if MULTIPLY:
            u0 = t0 % M0 + (c // (N1 * N2)) * M0
            u1 = t1 % M1 + (c // N2 % N1) * M1
            u2 = t2 % M2 + (c % N2) * M2
            x0 = c0 + (t0 - u0) * D0 // S0  # exact: M divides t - u
            x1 = c1 + (t1 - u1) * D1 // S1
            x2 = c2 + (t2 - u2) * D2 // S2
        else:
            u0 = tl.zeros_like(t0) + c // (N1 * N2)
            u1 = tl.zeros_like(t1) + c // N2 % N1
            u2 = tl.zeros_like(t2) + c % N2
            x0 = c0 + (u0 - t0) * D0
            x1 = c1 + (u1 - t1) * D1
            x2 = c2 + (u2 - t2) * D2
        other = valid & (u0 < K0) & (u1 < K1) & (u2 < K2) & ((u0 != t0) | (u1 != t1) | (u2 != t2)) & \
            (x0 >= 0) & (x0 < in0) & (x1 >= 0) & (x1 < in1) & (x2 >= 0) & (x2 < in2)
        r = find_keys(slots_ptr, pack_key(b, x0, x1, x2, in0, in1, in2), other, shift, hmask, PACKED)
        lane = r * L + ((u0 * K1 + u1) * K2 + u2 if MULTIPLY else 0)
        best = tl.where((r >= 0) & (lane < best), lane, best).to(lanes.dtype)
    owner = tl.where(valid, best, -1)
    tl.store(owner_ptr + lanes, owner, mask=live)
    first = valid & (owner == lanes)
    tl.store(first_ptr + lanes, first.to(tl.int32), mask=live)
    _count_lanes(stats_ptr, valid, first)


@fast_launch
@triton.jit(do_not_specialize=["n_lanes"])
def _owned_fill_kernel(coords_ptr, owner_ptr, rank_ptr, nbr_ptr, out_ptr, n_lanes, K0: tl.constexpr,
                       K1: tl.constexpr, K2: tl.constexpr, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                       D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr,
                       P2: tl.constexpr, M0: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr,
                       MULTIPLY: tl.constexpr, BLOCK: tl.constexpr):
    """``nbr[rank[owner] - 1, t] = row`` for every lane ``(row, t)`` inside the grid, the output coordinates
    from its owner."""
    KV: tl.constexpr = K0 * K1 * K2
    lanes = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = lanes < n_lanes
    owner = tl.load(owner_ptr + lanes, mask=live, other=-1)
    hit = owner >= 0
    out = tl.load(rank_ptr + owner, mask=hit, other=1).to(tl.int64) - 1
    row, src, _, _, _, t0, t1, t2 = _lane_position(lanes, coords_ptr, hit, K0, K1, K2, S0, S1, S2, D0, D1, D2,
                                                   P0, P1, P2, M0, M1, M2, MULTIPLY)
    k = (t0 * K1 + t1) * K2 + t2
    tl.store(nbr_ptr + out * KV + k, row, mask=hit)
    _store_moved(out_ptr + 4 * out, src, k, hit & (owner == lanes), K1, K2, S0, S1, S2, D0, D1, D2, P0, P1, P2,
                 MULTIPLY)


@fast_launch
@triton.jit(do_not_specialize=["n"])
def _row_mask_kernel(nbr_ptr, mask_ptr, n, KV: tl.constexpr, ROWS: tl.constexpr, KP: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    k = tl.arange(0, KP)
    live = rows < n
    v = tl.load(nbr_ptr + rows.to(tl.int64)[:, None] * KV + k[None, :], mask=live[:, None] & (k < KV)[None, :],
                other=-1)
    tl.store(mask_ptr + rows, _row_bits(v >= 0, k, KV), mask=live)


@fast_launch
@triton.jit(do_not_specialize=["n"])
def _reverse_kernel(nbr_ptr, rev_ptr, n, KV: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = idx // KV < n
    v = tl.load(nbr_ptr + idx, mask=live, other=-1)
    tl.store(rev_ptr + v.to(tl.int64) * KV + idx % KV, (idx // KV).to(tl.int32), mask=v >= 0)


@triton.jit
def _table_tile(nbr_ptr, block, c0, n, KV: tl.constexpr, ROWS: tl.constexpr, KC: tl.constexpr):
    """``(rows, columns, entries)``: block ``block``'s ``ROWS`` rows of the table, columns ``c0`` to ``c0 + KC``
    (-1 outside the table)."""
    rows = block * ROWS + tl.arange(0, ROWS)
    k = c0 + tl.arange(0, KC)
    v = tl.load(nbr_ptr + rows[:, None] * KV + k[None, :], mask=(rows < n)[:, None] & (k < KV)[None, :], other=-1)
    return rows, k, v


@fast_launch
@triton.jit(do_not_specialize=["n"])
def _column_counts_kernel(nbr_ptr, counts_ptr, n, KV: tl.constexpr, ROWS: tl.constexpr, KC: tl.constexpr):
    """Per block of ``ROWS`` table rows, the present entries of each column (``counts[block, k]``), ``KC``
    columns at a time."""
    block = tl.program_id(0).to(tl.int64)
    for c0 in range(0, KV, KC):
        _, k, v = _table_tile(nbr_ptr, block, c0, n, KV, ROWS, KC)
        tl.store(counts_ptr + block * KV + k, tl.sum((v >= 0).to(tl.int32), axis=0), mask=k < KV)


@fast_launch
@triton.jit(do_not_specialize=["n", "num_pairs"])
def _pair_fill_kernel(nbr_ptr, start_ptr, in_ptr, out_ptr, n, num_pairs, KV: tl.constexpr, ROWS: tl.constexpr,
                      KC: tl.constexpr):
    """Each present entry ``nbr[o, k]`` of a block of rows written at its place in column ``k``'s run of the
    pair lists: the block's start there (``start[block, k]``) plus the present entries above it in the block."""
    block = tl.program_id(0).to(tl.int64)
    for c0 in range(0, KV, KC):
        rows, k, v = _table_tile(nbr_ptr, block, c0, n, KV, ROWS, KC)
        present = (v >= 0).to(tl.int32)
        start = tl.load(start_ptr + block * KV + k, mask=k < KV, other=0)
        at = start[None, :] + (tl.cumsum(present, axis=0) - present)
        write = (present > 0) & (at < num_pairs)
        tl.store(in_ptr + at, v, mask=write)
        tl.store(out_ptr + at, (rows[:, None] + 0 * k[None, :]).to(tl.int32), mask=write)


def _geometry_args(geom: ConvGeometry) -> dict[str, int]:
    (k0, k1, k2), (s0, s1, s2), (d0, d1, d2), (p0, p1, p2) = geom.kernel_size, geom.stride, geom.dilation, \
        geom.padding
    return dict(K0=k0, K1=k1, K2=k2, S0=s0, S1=s1, S2=s2, D0=d0, D1=d1, D2=d2, P0=p0, P1=p1, P2=p2)


def _residues(geom: ConvGeometry) -> tuple[Triple, Triple]:
    """Per axis, the period ``M = s / gcd(s, d)`` of the kernel positions that link one site on the divided
    side (those ``t`` with ``s | x + p - t*d``: one residue modulo ``M``) and their most per site,
    ``B = ceil(k / M)``."""
    period = tuple(s // math.gcd(s, d) for s, d in zip(geom.stride, geom.dilation))
    most = tuple(-(-k // m) for k, m in zip(geom.kernel_size, period))
    return period, most  # type: ignore[return-value]


def _reach_per_axis(geom: ConvGeometry) -> tuple[Triple, Triple]:
    """Per axis, the residue period ``M`` of usable kernel positions and their most per input site ``B``.

    Transposed: every position reaches an output (``M = 1``, ``B = k``). Regular: :func:`_residues`.
    """
    return ((1, 1, 1), geom.kernel_size) if geom.transposed else _residues(geom)


def _check_lanes(n: int, per_site: int) -> int:
    """``n * per_site`` (input sites x kernel positions: one lane each); ``ValueError`` past :data:`_MAX_LANES`."""
    lanes = n * per_site
    if lanes > _MAX_LANES:
        raise ValueError(f"{n} input sites x {per_site} kernel positions = {lanes} lanes, more than the "
                         f"{_MAX_LANES} one map build supports; split the batch")
    return lanes


def discover_map(src: CoordSet, geom: ConvGeometry, out_shape: Triple) -> tuple[torch.Tensor, int, CoordSet]:
    """``(nbr, pair count, output set)`` of ``geom`` from ``src`` to every output site of ``out_shape`` some
    input reaches, the sites in the order of the first (input row, offset) reaching each.

    Lanes are (input row, usable kernel position) in increasing order of both, so lane order is (row, offset)
    order. The one host read is the output and pair counts, after the outputs are numbered; the lanes then fill
    ``nbr``.
    """
    require_runnable(src.device)
    radix = key_radix(out_shape, src.batch_size)  # ValueError past 2**62 keys; the radix is out_shape itself
    period, most = _reach_per_axis(geom)
    per_site = most[0] * most[1] * most[2]
    lanes = _check_lanes(src.num_points, per_site)
    bound = min(lanes, src.batch_size * math.prod(out_shape))
    dev = src.device
    table = HashTable.allocate(bound, dev)
    table.reserve(bound)
    coords = torch.empty((bound, 4), dtype=torch.int32, device=dev)
    reach = dict(**_geometry_args(geom), M0=period[0], M1=period[1], M2=period[2], B0=most[0], B1=most[1],
                 B2=most[2], MULTIPLY=geom.transposed)
    m = pairs = 0
    if lanes:
        slot_type = torch.int32 if table.capacity < 2**31 else torch.int64
        lane_slot = torch.empty(lanes, dtype=slot_type, device=dev)
        first = torch.empty(lanes, dtype=torch.int32, device=dev)
        stats = torch.zeros(1, dtype=torch.int64, device=dev)
        in_coords = src.coords.contiguous()
        block = DISCOVER.lanes_on(dev)
        _discover_kernel[(cdiv(lanes, block),)](in_coords, lanes, table.slots, *table.probe_args, lane_slot, *radix,
                                                **reach, BLOCK=block, num_warps=DISCOVER.warps)
        block = ROWS.lanes_on(dev)
        grid = (cdiv(lanes, block),)
        _first_lane_kernel[grid](lane_slot, table.slots, first, stats, lanes, BLOCK=block, num_warps=ROWS.warps)
        rank = torch.cumsum(first, 0, dtype=torch.int32)
        _number_kernel[grid](lane_slot, first, rank, table.slots, coords, lanes, *radix, BLOCK=block,
                             num_warps=ROWS.warps)
        pairs, m = _read_counts(stats)
    nbr = torch.full((m, geom.kernel_volume), -1, dtype=torch.int32, device=dev)
    if m:
        _fill_lanes_kernel[grid](in_coords, lane_slot, table.slots, nbr, lanes, **reach, BLOCK=block,
                                 num_warps=ROWS.warps)
    coords = coords[:m] if 2 * m >= bound else coords[:m].clone()  # do not keep a mostly unused buffer alive
    return nbr, pairs, CoordSet(coords, out_shape, src.batch_size)


def _map_rows(kv: int, device: torch.device) -> tuple[int, int]:
    """(padded offsets, output rows) per program of the map and row-mask kernels."""
    kp = pow2_at_least(kv)
    return kp, max(1, MAP.lanes_on(device) // kp)


def fill_map(src: CoordSet, geom: ConvGeometry, out_shape: Triple,
             out: CoordSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``nbr[N_out, K]`` (int32), the row masks (int64) and the pair count ([1] int64 on the device) of ``geom``
    from ``src`` to the sites of ``out``.

    Outputs outside ``out_shape`` get no inputs. Queries ``src``'s table (built on first use); no host read.
    """
    require_runnable(src.device)
    if out.device != src.device:
        raise ValueError(f"output sites are on {out.device} but input sites on {src.device}")
    table = coord_table(src)
    kv = geom.kernel_volume
    n_out = out.num_points
    if out is src and half_mapped(geom) and tuple(out_shape) == tuple(src.spatial_shape):
        return _half_map(src, geom, table)
    nbr = torch.empty((n_out, kv), dtype=torch.int32, device=src.device)
    mask = torch.empty(n_out, dtype=torch.int64, device=src.device)
    count = torch.zeros(1, dtype=torch.int64, device=src.device)
    if n_out:
        kp, rows = _map_rows(kv, src.device)
        _map_kernel[(cdiv(n_out, rows),)](
            nbr, mask, count, out.coords.contiguous(), n_out, table.slots, *table.probe_args, *src.spatial_shape,
            *out_shape, **_geometry_args(geom), MULTIPLY=not geom.transposed, PACKED=table.packed, ROWS=rows, KP=kp,
            num_warps=MAP.warps)
    return nbr, mask, count


# Larger kernels take the full map kernel. The half kernel reads its offsets' displacements from a table: compiled
# for sm_90 by Triton 3.6, computing them as ``k % K2`` in the kernel (7x7x7 in one row of 256 lanes on 2 warps,
# or 9x9x9 in 1024 lanes) looked some offsets up 3 sites off along the last axis; the table kernel is checked on a
# GPU from 3x3x3 to 9x9x9 (tests/test_triton_maps.py::test_half_map_kernel_on_gpu).
HALF_MAP_MAX_OFFSETS = 729


@functools.lru_cache(maxsize=64)
def _half_deltas(kernel_size: Triple, dilation: Triple, hp: int, device: torch.device) -> torch.Tensor:
    """``[3 * hp]`` int32: per axis, offset ``k``'s displacement (``(i_a - (K_a - 1) // 2) * dilation_a``), for
    ``k < hp`` in the offset order ``k = (i0 * K1 + i1) * K2 + i2``."""
    k0, k1, k2 = kernel_size
    k = torch.arange(hp)
    index = torch.stack([k // (k1 * k2), k // k2 % k1, k % k2])
    centre = torch.tensor([(k0 - 1) // 2, (k1 - 1) // 2, (k2 - 1) // 2])[:, None]
    return ((index - centre) * torch.tensor(dilation)[:, None]).to(torch.int32).flatten().to(device)


def half_mapped(geom: ConvGeometry) -> bool:
    """Whether :func:`fill_map` builds ``geom``'s map onto its own sites (and grid) from half the lookups: a
    centred-symmetric regular geometry of 3 to :data:`HALF_MAP_MAX_OFFSETS` offsets."""
    return geom.centred_symmetric and not geom.transposed and 1 < geom.kernel_volume <= HALF_MAP_MAX_OFFSETS


def _half_map(src: CoordSet, geom: ConvGeometry, table: HashTable
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`fill_map` of a centred-symmetric geometry onto ``src`` itself: half the offsets looked up, the
    other half mirrored (:func:`_half_map_kernel`)."""
    n, kv = src.num_points, geom.kernel_volume
    nbr = torch.full((n, kv), -1, dtype=torch.int32, device=src.device)
    zeros = torch.zeros(n + 2, dtype=torch.int64, device=src.device)  # the count and the masks: one fill
    count, mask = zeros[:1], zeros[2:]  # both 16-byte aligned for any n: one kernel specialization, not two
    if n:
        hp = pow2_at_least(kv // 2)
        rows = max(1, MAP.lanes_on(src.device) // hp)
        _half_map_kernel[(cdiv(n, rows),)](
            nbr, mask, count, src.coords.contiguous(), n, table.slots, *table.probe_args, *src.spatial_shape,
            _half_deltas(geom.kernel_size, geom.dilation, hp, src.device), K0=geom.kernel_size[0],
            K1=geom.kernel_size[1], K2=geom.kernel_size[2], PACKED=table.packed, ROWS=rows, HP=hp,
            num_warps=MAP.warps)
    return nbr, mask, count


def disjoint_lanes(geom: ConvGeometry, in_shape: Triple, out_shape: Triple) -> bool:
    """Whether every (input site, kernel position) of transposed ``geom`` reaches a distinct output site inside
    ``out_shape`` (positions in distinct residues of the stride, no padding)."""
    return geom.transposed and all(
        d * (k - 1) < s and p == 0 and (n - 1) * s + d * (k - 1) < o
        for n, k, s, p, d, o in zip(in_shape, geom.kernel_size, geom.stride, geom.padding, geom.dilation, out_shape))


def spread_map(src: CoordSet, geom: ConvGeometry, out_shape: Triple) -> tuple[torch.Tensor, int, CoordSet]:
    """``(nbr, pair count, output set)`` of a :func:`disjoint_lanes` geometry: output ``i*K + k`` is input ``i``
    moved by kernel position ``k`` (the lane order, as :func:`discover_map` numbers them). Every lane is a pair,
    so the count is known here: neither the build nor the map's :attr:`~KernelMap.num_pairs` reads the device."""
    n, kv = src.num_points, geom.kernel_volume
    _check_lanes(n, kv)
    dev = src.device
    require_runnable(dev)
    key_radix(out_shape, src.batch_size)  # the output set's keys must fit (ValueError past 2**62), as discovery's
    out_coords = torch.empty((n * kv, 4), dtype=torch.int32, device=dev)
    nbr = torch.empty((n * kv, kv), dtype=torch.int32, device=dev)
    if n:
        kp = pow2_at_least(kv)
        rows = max(1, ROWS.lanes_on(dev) // kp)
        _spread_kernel[(cdiv(n * kv, rows),)](src.coords.contiguous(), out_coords, nbr, n, **_geometry_args(geom),
                                              KP=kp, ROWS=rows, num_warps=ROWS.warps)
    return nbr, n * kv, CoordSet(out_coords, out_shape, src.batch_size)


OWNED_MAX_CANDIDATES = 8  # most lanes sharing one output for which owned_map beats discovery (7 lookups)


def _owned_reach(geom: ConvGeometry) -> tuple[Triple, Triple, int]:
    """``(M, B, lanes per input)`` of :func:`owned_map`: the residue periods and most positions per input site
    of :func:`_residues`, and ``K`` for a transposed conv, 1 for a regular one."""
    period, most = _residues(geom)
    return period, most, geom.kernel_volume if geom.transposed else 1


def owned_lanes(geom: ConvGeometry) -> bool:
    """Whether ``geom`` sends at most :data:`OWNED_MAX_CANDIDATES` lanes to one output, so that
    :func:`owned_map` applies: a transposed conv with ``ceil(k / (s / gcd(s, d)))`` positions per axis (e.g. 8
    for 3x3x3 stride 2), or a regular conv whose inputs each reach at most one output (``k <= s / gcd(s, d)`` per axis,
    e.g. 2x2x2 stride 2) with a kernel of at most that many positions."""
    most = _residues(geom)[1]
    if geom.transposed:
        return math.prod(most) <= OWNED_MAX_CANDIDATES
    return most == (1, 1, 1) and geom.kernel_volume <= OWNED_MAX_CANDIDATES


def owned_map(src: CoordSet, geom: ConvGeometry, out_shape: Triple) -> tuple[torch.Tensor, int, CoordSet]:
    """``(nbr, pair count, output set)`` of an :func:`owned_lanes` geometry, the same as :func:`discover_map`'s,
    without an output table: each lane finds the smallest lane reaching its output (its owner) by looking the
    few other inputs reaching it up in the input set's table (built on first use; L2-sized where the output
    table would not be), owners are numbered with a scan in lane order, and the lanes fill ``nbr``. The one
    host read is the output and pair counts. The output set builds its own table when something queries it."""
    require_runnable(src.device)
    key_radix(out_shape, src.batch_size)  # the output set's keys must fit (ValueError past 2**62)
    period, most, per_site = _owned_reach(geom)
    lanes = _check_lanes(src.num_points, per_site)
    dev = src.device
    m = pairs = 0
    reach = dict(**_geometry_args(geom), M0=period[0], M1=period[1], M2=period[2], MULTIPLY=geom.transposed)
    if lanes:
        table = coord_table(src)
        owner = torch.empty(lanes, dtype=torch.int32, device=dev)
        first = torch.empty(lanes, dtype=torch.int32, device=dev)
        stats = torch.zeros(1, dtype=torch.int64, device=dev)
        in_coords = src.coords.contiguous()
        block = DISCOVER.lanes_on(dev)
        _owner_kernel[(cdiv(lanes, block),)](in_coords, lanes, table.slots, *table.probe_args, owner, first, stats,
                                             *src.spatial_shape, *out_shape, **reach, B0=most[0], B1=most[1],
                                             B2=most[2], PACKED=table.packed, BLOCK=block, num_warps=DISCOVER.warps)
        rank = torch.cumsum(first, 0, dtype=torch.int32)
        pairs, m = _read_counts(stats)
    coords = torch.empty((m, 4), dtype=torch.int32, device=dev)
    nbr = torch.full((m, geom.kernel_volume), -1, dtype=torch.int32, device=dev)
    if m:
        block = ROWS.lanes_on(dev)
        _owned_fill_kernel[(cdiv(lanes, block),)](in_coords, owner, rank, nbr, coords, lanes, **reach,
                                                  BLOCK=block, num_warps=ROWS.warps)
    return nbr, pairs, CoordSet(coords, out_shape, src.batch_size)


def build_kernel_map_triton(src: CoordSet, geom: ConvGeometry, out_shape: Triple, out: CoordSet | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | int, CoordSet]:
    """``(nbr, row masks, pair count, output set)``: the output sites are ``out`` or, when ``None``, discovered
    (then the row masks are ``None``: the map computes them if something needs them)."""
    if out is None:
        if disjoint_lanes(geom, src.spatial_shape, out_shape):
            build = spread_map
        else:
            build = owned_map if owned_lanes(geom) else discover_map
        nbr, count, out = build(src, geom, out_shape)
        return nbr, None, count, out
    nbr, mask, pairs = fill_map(src, geom, out_shape, out)
    return nbr, mask, pairs, out


def row_mask(nbr: torch.Tensor) -> torch.Tensor:
    """The int64 bitmask of present offsets per row of ``nbr`` (bit 62 stands for every offset >= 62)."""
    require_runnable(nbr.device)
    n, kv = nbr.shape
    mask = torch.empty(n, dtype=torch.int64, device=nbr.device)
    if n:
        kp, rows = _map_rows(kv, nbr.device)
        _row_mask_kernel[(cdiv(n, rows),)](nbr.contiguous(), mask, n, KV=kv, ROWS=rows, KP=kp,
                                                  num_warps=MAP.warps)
    return mask


def reverse_table(nbr: torch.Tensor, num_in: int) -> torch.Tensor:
    """``nbr_T[num_in, K]`` with ``nbr_T[nbr[o, k], k] = o`` (``-1`` elsewhere); no host read."""
    require_runnable(nbr.device)
    n, kv = nbr.shape
    rev = torch.full((num_in, kv), -1, dtype=torch.int32, device=nbr.device)
    if n:
        block = ROWS.lanes_on(nbr.device)
        _reverse_kernel[(cdiv(n * kv, block),)](nbr.contiguous(), rev, n, KV=kv, BLOCK=block,
                                                       num_warps=ROWS.warps)
    return rev


def pair_lists(nbr: torch.Tensor, num_pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(in_idx, out_idx, bounds)`` of :class:`~warpsparse.coords.kernel_map.PairList`: the present entries of
    ``nbr`` column by column, by row within a column (int32), and the columns' runs (int64 [K+1]). No host read
    (``num_pairs`` must be the table's count; entries past it are not written); besides the lists, only the
    per-block column counts and starts (12 bytes per block and column)."""
    require_runnable(nbr.device)
    n, kv = nbr.shape
    dev = nbr.device
    kc = min(pow2_at_least(kv), 32)
    rows = max(1, PAIRS.lanes_on(dev) // kc)
    blocks = cdiv(n, rows)
    counts = torch.empty((blocks, kv), dtype=torch.int32, device=dev)
    bounds = torch.zeros(kv + 1, dtype=torch.int64, device=dev)
    in_idx = torch.empty(num_pairs, dtype=torch.int32, device=dev)
    out_idx = torch.empty(num_pairs, dtype=torch.int32, device=dev)
    if n:
        table = nbr.contiguous()
        _column_counts_kernel[(blocks,)](table, counts, n, KV=kv, ROWS=rows, KC=kc, num_warps=PAIRS.warps)
        starts = torch.cumsum(counts, 0, dtype=torch.int64)
        torch.cumsum(starts[-1], 0, out=bounds[1:])
        starts.sub_(counts).add_(bounds[:-1])  # each block's place in each column
        _pair_fill_kernel[(blocks,)](table, starts, in_idx, out_idx, n, num_pairs, KV=kv, ROWS=rows, KC=kc,
                                     num_warps=PAIRS.warps)
    return in_idx, out_idx, bounds
