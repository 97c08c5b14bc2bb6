"""Per-map layouts the Triton kernels read, built on first use with device ops and cached on the map.

Nothing here reads device memory back to the host: sizes come from the map's shape and its pair count.
"""
from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
import triton
import triton.language as tl

from warpsparse.coords.kernel_map import KernelMap, mask_order, offset_mask
from warpsparse.triton_launch import cdiv, fast_launch, pow2_at_least

_CACHE: "weakref.WeakKeyDictionary[KernelMap, dict[Any, Any]]" = weakref.WeakKeyDictionary()


def _cached(kmap: KernelMap, key: Any, build: Callable[[], Any]) -> Any:
    per_map = _CACHE.get(kmap)
    if per_map is None:
        per_map = _CACHE[kmap] = {}
    value = per_map.get(key)
    if value is None:
        value = per_map[key] = build()
    return value


@dataclass(frozen=True)
class BlockOffsets:
    """Result rows in blocks of ``block_m`` and, per block, the columns of ``table`` at least one of its rows uses.

    Table rows are ``order`` (``None``: rows in map order). Block ``b`` uses ``count[b]`` columns,
    ``active[b, :count[b]]`` (increasing; entries past ``count[b]`` are unset), and reads its rows' sources from
    ``table`` [N, K]. Column ``c`` multiplies weight offset ``c``, or ``K - 1 - c`` where ``flip`` is 1: the
    reverse of a symmetric map reads its source's table with offsets mirrored. A layout of one column group
    (:func:`group_columns`) counts only that group's columns.
    """

    table: torch.Tensor  # [N, K] int32
    order: torch.Tensor | None  # [N] int32
    count: torch.Tensor  # [blocks] int32
    active: torch.Tensor  # [blocks, K] int32
    flip: int


def group_columns(kvol: int, group: int, groups: int) -> tuple[int, int]:
    """Columns ``[lo, hi)`` of group ``group`` when the ``kvol`` offsets are cut into ``groups`` even runs."""
    return group * kvol // groups, (group + 1) * kvol // groups


def _group_order(kmap: KernelMap, lo: int, hi: int) -> torch.Tensor:
    """Output rows ordered by the mask of columns ``[lo, hi)`` alone (the map's mask sort for every column;
    cached on the map: the layouts of every block size share it)."""
    if (lo, hi) == (0, kmap.kernel_volume):
        return kmap.sorted_order

    def build() -> torch.Tensor:
        if hi <= 62:  # exact bits of the map's mask
            mask = (kmap.mask >> lo) & ((1 << (hi - lo)) - 1)
        else:
            mask = offset_mask(kmap.nbr[:, lo:hi])
        return mask_order(mask, hi - lo)

    return _cached(kmap, ("group_order", lo, hi), build)


@fast_launch
@triton.jit(do_not_specialize=["n", "lo", "hi"])
def _block_offsets_kernel(nbr_ptr, order_ptr, count_ptr, active_ptr, n, lo, hi, KV: tl.constexpr,
                          SORTED: tl.constexpr, BLOCK_M: tl.constexpr, KP: tl.constexpr):
    """One row block: the offsets in ``[lo, hi)`` any of its rows uses, compacted in increasing order."""
    b = tl.program_id(0)
    rows = b * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < n
    if SORTED:
        rows = tl.load(order_ptr + rows, mask=live, other=0)
    k = tl.arange(0, KP)
    mine = (k >= lo) & (k < hi)
    tile = tl.load(nbr_ptr + rows.to(tl.int64)[:, None] * KV + k[None, :], mask=live[:, None] & mine[None, :],
                   other=-1)
    used = tl.max(tile, axis=0) >= 0
    slot = tl.cumsum(used.to(tl.int32), axis=0) - 1
    tl.store(count_ptr + b, tl.sum(used.to(tl.int32), axis=0))
    tl.store(active_ptr + b.to(tl.int64) * KV + slot, k, mask=used)


def block_offsets(kmap: KernelMap, sort: bool, block_m: int, group: int = 0, groups: int = 1) -> BlockOffsets:
    """The :class:`BlockOffsets` of ``kmap`` for row blocks of ``block_m`` over the columns of ``group`` of
    ``groups`` (:func:`group_columns`; rows sorted by those columns' mask when ``sort``): one kernel launch over
    the table; the reverse of a symmetric map is its source's, flipped (built once)."""

    def build() -> BlockOffsets:
        source = kmap.mirror_of
        if source is not None:
            # the reverse of a symmetric map is its source with offsets mirrored (k -> K-1-k), rows in the same
            # order: the source's layout (built now if the source has none) serves with its offsets flipped
            return dataclasses.replace(block_offsets(source, sort, block_m, group, groups), flip=1)
        n, k = kmap.num_out, kmap.kernel_volume
        lo, hi = group_columns(k, group, groups)
        dev = kmap.device
        blocks = -(-n // block_m)
        order = _group_order(kmap, lo, hi) if sort else None
        table = kmap.nbr.contiguous()
        count = torch.empty(blocks, dtype=torch.int32, device=dev)
        active = torch.empty((blocks, k), dtype=torch.int32, device=dev)
        if blocks:
            _block_offsets_kernel[(blocks,)](table, count if order is None else order, count, active, n, lo, hi,
                                             KV=k, SORTED=sort, BLOCK_M=block_m, KP=pow2_at_least(k), num_warps=4)
        return BlockOffsets(table, order, count, active, 0)

    return _cached(kmap, ("block_offsets", sort, block_m, group, groups), build)


@dataclass(frozen=True)
class PairChunks:
    """The pair list cut into chunks of at most ``chunk`` pairs that never straddle two offsets.

    Chunk ``c`` covers pairs ``start[c]:stop[c]`` of offset ``offset[c]``; the chunks of offset ``k`` are
    ``bounds[k]:bounds[k+1]``. ``num_chunks`` may pass ``bounds[K]``: the chunks past it are empty.
    """

    start: torch.Tensor  # [C] int64
    stop: torch.Tensor  # [C] int64
    offset: torch.Tensor  # [C] int64
    bounds: torch.Tensor  # [K+1] int64
    num_chunks: int


@fast_launch
@triton.jit(do_not_specialize=["n_chunks", "chunk"])
def _pair_chunks_kernel(pair_bounds_ptr, start_ptr, stop_ptr, offset_ptr, bounds_ptr, n_chunks, chunk,
                        KV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    """``BLOCK`` chunks per program: every program derives the offsets' chunk counts from the pair bounds and
    their running sum (program 0 stores it as the chunk bounds), then places its chunks. Chunks past the last
    hold no pairs (``start == stop``) and name the last offset."""
    k = tl.arange(0, KP)
    real = k < KV
    lo = tl.load(pair_bounds_ptr + k, mask=real, other=0)
    hi = tl.load(pair_bounds_ptr + k + 1, mask=real, other=0)
    per = (hi - lo + chunk - 1) // chunk
    ends = tl.cumsum(per, axis=0)
    firsts = ends - per
    if tl.program_id(0) == 0:
        tl.store(bounds_ptr + k, firsts, mask=real)
        tl.store(bounds_ptr + k + 1, ends, mask=real)
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = c < n_chunks
    off = tl.minimum(tl.sum(((ends[None, :] <= c[:, None]) & real[None, :]).to(tl.int32), axis=1), KV - 1)
    mine = k[None, :] == off[:, None]
    first = tl.sum(tl.where(mine, firsts[None, :], 0), axis=1)
    top = tl.sum(tl.where(mine, hi[None, :], 0), axis=1)
    start = tl.minimum(tl.sum(tl.where(mine, lo[None, :], 0), axis=1) + (c - first) * chunk, top)
    tl.store(start_ptr + c, start, mask=live)
    tl.store(stop_ptr + c, tl.minimum(start + chunk, top), mask=live)
    tl.store(offset_ptr + c, off.to(tl.int64), mask=live)


def pair_chunks(kmap: KernelMap, chunk: int) -> PairChunks:
    """The :class:`PairChunks` of ``kmap`` for chunks of ``chunk`` pairs, laid out on the device by one kernel
    from the pair bounds (no host read): ``num_chunks`` is the bound ``ceil(P / chunk) + K``, the chunks past
    ``bounds[K]`` are empty."""

    def build() -> PairChunks:
        kv, pairs = kmap.kernel_volume, kmap.num_pairs
        n = cdiv(pairs, chunk) + kv if pairs else 0
        m = n + (n & 1)  # an even stride keeps every part 16-byte aligned: one kernel specialization, not two
        packed = torch.empty(3 * m + kv + 1, dtype=torch.int64, device=kmap.device)
        if n:
            kp = pow2_at_least(kv)
            block = max(16, 4096 // kp)
            _pair_chunks_kernel[(cdiv(n, block),)](kmap.pairs.bounds, packed, packed[m:], packed[2 * m:],
                                                   packed[3 * m:], n, chunk, KV=kv, KP=kp, BLOCK=block,
                                                   num_warps=4)
        else:
            packed.zero_()
        return PairChunks(packed[:n], packed[m:m + n], packed[2 * m:2 * m + n], packed[3 * m:], n)

    return _cached(kmap, ("pair_chunks", chunk), build)


def split_bounds(kmap: KernelMap, splits: int) -> torch.Tensor:
    """``[0, splits]`` on the map's device: one group holding every split (for the segment reduction)."""
    return _cached(kmap, ("split_bounds", splits),
                   lambda: torch.arange(2, dtype=torch.int64, device=kmap.device) * splits)
