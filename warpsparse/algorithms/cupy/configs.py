"""Which kernel instantiations exist and which fit a call: tile tables, warp layouts, vector widths, smem.

A parameter point (the tuner's unit) names a tile, warps, stages and a few run-time choices; together with
the call's dtype and the vector widths its tensors allow it selects one template instantiation
(:class:`GemmKernel`, :class:`DwKernel`), compiled once per process.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from warpsparse.algorithms.base import Op, ParamSpace, Signature, workspace_limit

DT_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
KC = 32  # kernel offsets staged at a time by the forward kernel (gemm.cu)
_SMEM_RESERVE = 1024  # bytes per block the driver keeps for itself


@dataclass(frozen=True)
class DeviceInfo:
    """What the parameter spaces need to know about the GPU."""

    capability: tuple[int, int]
    smem_per_block: int  # opt-in maximum of shared memory per block, bytes
    sm_count: int


NOMINAL_DEVICE = DeviceInfo((9, 0), 227 * 1024, 132)  # spaces asked for without a GPU describe an H100


def _bool(v: bool) -> str:
    return "true" if v else "false"


@dataclass(frozen=True)
class GemmKernel:
    """One instantiation of ``ws_conv_fwd`` or ``ws_conv_wgrad`` (gemm.cu)."""

    wgrad: bool
    dt: int
    block_m: int
    block_n: int
    block_k: int
    warps_m: int
    warps_n: int
    stages: int
    vec_a: int
    vec_b: int
    mma: bool

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @functools.cached_property
    def name(self) -> str:
        """The C++ name expression of this instantiation."""
        fn = "ws_conv_wgrad" if self.wgrad else "ws_conv_fwd"
        args = (self.dt, self.block_m, self.block_n, self.block_k, self.warps_m, self.warps_n, self.stages,
                self.vec_a, self.vec_b)
        return f"wsk::{fn}<{','.join(map(str, args))},{_bool(self.mma)}>"

    @property
    def dynamic_smem(self) -> int:
        """Bytes of the pipeline's stage buffers (the kernel's dynamic shared memory)."""
        es = 4 if self.dt == 0 else 2
        if self.wgrad:
            a = self.block_k * (self.block_m + 8)
        else:
            a = self.block_m * (self.block_k + 16 // es)
        return self.stages * (a + self.block_k * (self.block_n + 8)) * es

    @property
    def static_smem(self) -> int:
        """Bytes of the forward kernel's staged neighbour indices and row bookkeeping."""
        return 0 if self.wgrad else 4 * (KC * (self.block_m + 1) + self.block_m + 2 * KC + 1)


@dataclass(frozen=True)
class DwKernel:
    """One instantiation of ``ws_dw_fwd`` (``threads_y == 0``) or ``ws_dw_wgrad`` (depthwise.cu)."""

    dt: int
    vec: int
    threads_x: int = 0
    threads_y: int = 0

    @functools.cached_property
    def name(self) -> str:
        """The C++ name expression of this instantiation."""
        if self.threads_y == 0:
            return f"wsk::ws_dw_fwd<{self.dt},{self.vec}>"
        return f"wsk::ws_dw_wgrad<{self.dt},{self.vec},{self.threads_x},{self.threads_y}>"


def sum_splits_name(dt: int) -> str:
    return f"wsk::ws_sum_splits<{dt}>"


# ---- tile tables: (block_m, block_n, block_k, warps) ----
# forward / input gradient: M = output rows, N = output channels, K = input channels per offset
_FWD_MMA = ((64, 16, 32, 2), (128, 16, 32, 4), (64, 32, 32, 4), (128, 32, 32, 4), (64, 64, 32, 4),
            (64, 64, 64, 4), (128, 64, 32, 4), (128, 64, 64, 4), (64, 128, 32, 4), (64, 128, 64, 4),
            (128, 128, 32, 8), (128, 128, 64, 8))
_FWD_SIMT = ((64, 16, 16, 2), (128, 16, 16, 4), (64, 32, 16, 4), (128, 32, 16, 4), (64, 64, 16, 4),
             (128, 64, 16, 8), (64, 128, 16, 8), (128, 128, 16, 8))
# weight gradient: M = input channels, N = output channels, K = pairs
_WGRAD_MMA = ((16, 16, 32, 1), (32, 32, 32, 4), (32, 64, 32, 4), (64, 32, 32, 4), (64, 64, 32, 4),
              (64, 128, 32, 8), (128, 64, 32, 8), (128, 128, 32, 8))
_WGRAD_SIMT = ((16, 16, 32, 1), (32, 32, 16, 4), (32, 64, 16, 4), (64, 32, 16, 4), (64, 64, 16, 4),
               (128, 128, 16, 8))
_MAX_ACC = 64  # fp32 accumulators per thread
_MAX_WORKSPACE = 1 << 28  # bytes of split-k partial sums


def pow2ceil(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def pow2floor(n: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(n)))) if n >= 1 else 1


def warp_layout(block_m: int, block_n: int, warps: int, mma: bool, dt: int) -> tuple[int, int] | None:
    """Warps along (M, N) for a tile, or None when the tile cannot be covered.

    Tensor cores: squarest warp tiles of whole 16 x 8 (16 x 16 for half types) mma shapes. FFMA: one thread
    per (TM x TN) sub-tile with 16 (or block_n) threads along N.
    """
    if not mma:
        tx = min(block_n, 16)
        nt = 32 * warps
        if block_n % tx or nt % tx:
            return None
        ty = nt // tx
        if block_m % ty or (block_m // ty) * (block_n // tx) > _MAX_ACC:
            return None
        return warps, 1
    n_min = 8 if dt == 0 else 16
    best, best_key = None, None
    wm = 1
    while wm <= warps:
        wn = warps // wm
        if block_m % (16 * wm) == 0 and block_n % (n_min * wn) == 0 \
                and (block_m // wm) * (block_n // wn) <= 32 * _MAX_ACC:
            key = (abs(math.log2(block_m / wm) - math.log2(block_n / wn)), -wm)
            if best_key is None or key < best_key:
                best, best_key = (wm, wn), key
        wm *= 2
    return best


def vec_width(channels: int, elem_size: int, ptrs: Iterable[int], cap: int) -> int:
    """Widest copy (elements, at most 16 bytes and ``cap``) that divides ``channels`` and every pointer."""
    v = 16 // elem_size
    ptrs = tuple(ptrs)
    while v > 1 and (v > cap or channels % v or any(p % (v * elem_size) for p in ptrs)):
        v //= 2
    return v


def _halves(p: int, lo: int) -> set[int]:
    return {b for b in (p, p // 2) if b >= lo}


def _fits_smem(k: GemmKernel, dev: DeviceInfo) -> bool:
    return k.dynamic_smem + k.static_smem + _SMEM_RESERVE <= dev.smem_per_block


def _mma_allowed(sig: Signature, dev: DeviceInfo, c_m: int, c_n: int) -> bool:
    tensor_type = sig.dtype != torch.float32 or sig.tf32
    return dev.capability >= (8, 0) and tensor_type and c_m >= 8 and c_n >= 8


def _simt_allowed(sig: Signature, dev: DeviceInfo, c_m: int, c_n: int) -> bool:
    """FFMA tiles: exact fp32, small channel counts, and whatever the tensor cores cannot take."""
    return not _mma_allowed(sig, dev, c_m, c_n) or min(c_m, c_n) < 16


@functools.lru_cache(maxsize=None)
def gemm_kernel(wgrad: bool, dt: int, engine: str, block_m: int, block_n: int, block_k: int, warps: int,
                stages: int, vec_a: int, vec_b: int) -> GemmKernel:
    """The instantiation a parameter point selects, given the dtype code and the tensors' vector widths."""
    mma = engine == "mma"
    layout = warp_layout(block_m, block_n, warps, mma, dt)
    if layout is None:
        raise ValueError(f"no warp layout covers a {block_m}x{block_n} tile with {warps} warps on the {engine} "
                         f"engine")
    return GemmKernel(wgrad, dt, block_m, block_n, block_k, layout[0], layout[1], stages, vec_a, vec_b, mma)


def _tile_kernel(wgrad: bool, dt: int, tile: tuple[int, int, int, int], stages: int, mma: bool) -> GemmKernel | None:
    """The kernel of a tile with scalar copies (vector widths do not change shared memory), or None."""
    bm, bn, bk, warps = tile
    if warp_layout(bm, bn, warps, mma, dt) is None:
        return None
    return gemm_kernel(wgrad, dt, "mma" if mma else "simt", bm, bn, bk, warps, stages, 1, 1)


def _forward_points(sig: Signature, dev: DeviceInfo) -> list[dict[str, Any]]:
    dt = DT_CODE[sig.dtype]
    c_red, c_n = (sig.c_in, sig.c_out) if sig.op == Op.CONV_FWD else (sig.c_out, sig.c_in)
    points: list[dict[str, Any]] = []
    seen = set()
    for mma in (True, False):
        allowed = _mma_allowed if mma else _simt_allowed
        if not allowed(sig, dev, c_red, c_n):
            continue
        p_n = min(max(pow2ceil(c_n), 16 if mma else 4), 128)
        k_min = 8 if dt == 0 else 16
        k_cap = max(pow2ceil(c_red), k_min if mma else 4)
        for bm, bn, bk, warps in (_FWD_MMA if mma else _FWD_SIMT):
            tile = (bm, min(bn, p_n), min(bk, k_cap), warps)
            if tile[1] not in _halves(p_n, 16 if mma else 4) or (mma, tile) in seen:
                continue
            seen.add((mma, tile))
            for stages in ((2, 3, 4) if mma else (2, 3)):
                k = _tile_kernel(False, dt, tile, stages, mma)
                if k is None or stages * tile[2] > 128 or not _fits_smem(k, dev):
                    continue
                for srt in (True, False):
                    points.append({"engine": "mma" if mma else "simt", "block_m": tile[0], "block_n": tile[1],
                                   "block_k": tile[2], "warps": warps, "stages": stages, "sorted": srt})
    return points


def wgrad_splits(tiles: int, kvol: int, num_pairs: int, slice_elems: int, dev: DeviceInfo) -> list[int]:
    """Split-k candidates: enough blocks to fill the GPU, at least ~512 pairs a share, bounded workspace."""
    avg = num_pairs / max(kvol, 1)
    cap = pow2floor(avg / 512)
    target = pow2ceil(max(1, math.ceil(4 * dev.sm_count / max(tiles * kvol, 1))))
    top = max(1, min(cap, target))
    while top > 1 and top * kvol * slice_elems * 4 > _MAX_WORKSPACE:
        top //= 2
    return sorted({top, max(1, top // 4), max(1, top // 16)})


def _wgrad_points(sig: Signature, dev: DeviceInfo) -> list[dict[str, Any]]:
    dt = DT_CODE[sig.dtype]
    atomic_ok = not torch.are_deterministic_algorithms_enabled()
    workspace = sig.kernel_volume * sig.c_in * sig.c_out * 4  # bytes of one share's partial sums
    limit = workspace_limit(sig)
    points: list[dict[str, Any]] = []
    seen = set()
    for mma in (True, False):
        allowed = _mma_allowed if mma else _simt_allowed
        if not allowed(sig, dev, sig.c_in, sig.c_out):
            continue
        lo_m, lo_n = (16, 16) if mma else (8, 4)
        p_m = min(max(pow2ceil(sig.c_in), lo_m), 128)
        p_n = min(max(pow2ceil(sig.c_out), lo_n), 128)
        for bm, bn, bk, warps in (_WGRAD_MMA if mma else _WGRAD_SIMT):
            tile = (min(bm, p_m), min(bn, p_n), bk, warps)
            if tile[0] not in _halves(p_m, lo_m) or tile[1] not in _halves(p_n, lo_n) or (mma, tile) in seen:
                continue
            seen.add((mma, tile))
            k = _tile_kernel(True, dt, tile, 3, mma)
            if k is None or not _fits_smem(k, dev):
                continue
            tiles = math.ceil(sig.c_in / tile[0]) * math.ceil(sig.c_out / tile[1])
            for split in wgrad_splits(tiles, sig.kernel_volume, sig.num_pairs, sig.c_in * sig.c_out, dev):
                for reduce in _reductions(split, split * workspace <= limit, atomic_ok):
                    points.append({"engine": "mma" if mma else "simt", "block_m": tile[0], "block_n": tile[1],
                                   "block_k": tile[2], "warps": warps, "stages": 3, "split": split,
                                   "reduce": reduce})
    return points


def _reductions(split: int, workspace_fits: bool, atomic_ok: bool) -> tuple[str, ...]:
    """How the shares of a ``split``-way weight gradient may be summed: in a fixed order through a workspace
    (within :func:`~warpsparse.algorithms.base.workspace_limit`; always when unsplit or when nothing else is
    allowed), or atomically where determinism is not required."""
    if split == 1 or not atomic_ok:
        return ("ordered",)
    return ("ordered", "atomic") if workspace_fits else ("atomic",)


def conv_points(sig: Signature, dev: DeviceInfo) -> list[dict[str, Any]]:
    """Every parameter point of ``cupy_implicit_gemm`` that fits ``sig`` on ``dev``."""
    return _wgrad_points(sig, dev) if sig.op == Op.CONV_WGRAD else _forward_points(sig, dev)


def _dw_vecs(channels: int, elem_size: int) -> list[int]:
    v = vec_width(channels, elem_size, (), 16)
    return sorted(_halves(v, 1), reverse=True)


def dw_threads(groups: int) -> tuple[int, int]:
    """(threads along channel vectors, threads along pairs) of the depthwise weight-gradient block."""
    tx = min(32, pow2ceil(groups))
    return tx, 256 // tx


def dw_points(sig: Signature, dev: DeviceInfo) -> list[dict[str, Any]]:
    """Every parameter point of ``cupy_implicit`` that fits ``sig`` on ``dev``."""
    es = sig.dtype.itemsize
    points: list[dict[str, Any]] = []
    for vec in _dw_vecs(sig.c_in, es):
        if sig.op != Op.DW_WGRAD:
            points += [{"vec": vec, "block": block} for block in (128, 256)]
            continue
        tx, _ = dw_threads(sig.c_in // vec)
        groups = math.ceil(sig.c_in // vec / tx)
        for split in wgrad_splits(groups, sig.kernel_volume, sig.num_pairs, sig.c_in, dev):
            points.append({"vec": vec, "split": split})
    return points


def space_of(points: list[dict[str, Any]]) -> ParamSpace:
    """A :class:`ParamSpace` whose points are exactly ``points`` (in product order)."""
    if not points:
        return ParamSpace({"engine": ()})
    names = list(points[0])
    choices = {n: tuple(dict.fromkeys(p[n] for p in points)) for n in names}
    allowed = frozenset(tuple(p[n] for n in names) for p in points)
    return ParamSpace(choices, lambda p: tuple(p[n] for n in names) in allowed)
