"""`implicit_gemm`: Triton implicit-GEMM convolution (forward, input gradient, weight gradient)."""
from __future__ import annotations

import functools
import itertools
from typing import Any, Iterator

import torch

from warpsparse.algorithms.base import (CONV_OPS, MASK_SORT_MS, PAIR_CHUNKS_MS, PAIR_LIST_MS, Algorithm, Op,
                                        ParamSpace, Params, Signature, epilogue, workspace_limit)
from warpsparse.algorithms.triton import conv_kernels as K
from warpsparse.algorithms.triton.common import (channel_tiles, chunk_lengths, device_limits, dot_precision,
                                                 explicit_space, rows, unsupported, upcast_dots)
from warpsparse.algorithms.triton.layouts import block_offsets, pair_chunks, split_bounds
from warpsparse.algorithms.triton.reduction import segment_sum
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.triton_launch import cdiv, pow2_at_least

# the packed forms pay off while the reduction channels leave most of a 32-wide tile empty
PACKED_BELOW = 32


def _warps(block_m: int, block_n: int) -> int:
    return 8 if block_m * block_n >= 128 * 128 else 4


def _gather_warps(sig: Signature, block_m: int, block_n: int) -> int:
    """Warps of a gather tile: as :func:`_warps`, except that 16-bit 128 x 128 tiles take 4 (H100, scan at
    0.1 m, fp16, 3 stages: 0.234 against 0.290 ms at 128 channels, 0.79 against over 0.91 ms at 256)."""
    if sig.dtype.itemsize == 2 and block_m * block_n == 128 * 128:
        return 4
    return _warps(block_m, block_n)


def _gather_warp_choices(sig: Signature, block_m: int, block_n: int) -> tuple[int, ...]:
    """Warps the space tries for a gather tile: :func:`_gather_warps`'s, and on the tensor cores (16-bit, TF32)
    both 4 and 8 for 64-row tiles of 128 channels, whose two forms took within 2% of each other on an H100
    (run Y: 0.249 / 0.250 ms at 128 channels, 0.863 / 0.877 at 256; the 128 x 128 tiles had a clear winner)."""
    if (sig.dtype.itemsize == 2 or sig.tf32) and (block_m, block_n) == (64, 128):
        return (4, 8)
    return (_gather_warps(sig, block_m, block_n),)


def _fits(sig: Signature, block_m: int, block_n: int, block_k: int, stages: int) -> bool:
    """Tiles of one pipeline stage fit shared memory, and FMA tiles (under 16 wide) stay in registers."""
    size = sig.dtype.itemsize
    if min(block_m, block_n, block_k) < 16 and block_m * block_n * block_k > 64 * 16 * 16:
        return False
    return stages * (block_m + block_n) * block_k * size <= device_limits(sig.device_type)[1]


def _propagate_dims(sig: Signature) -> tuple[int, int, int]:
    """(reduction channels, result channels, result rows) of a forward or input-gradient call."""
    if sig.op == Op.CONV_FWD:
        return sig.c_in, sig.c_out, sig.n_out
    return sig.c_out, sig.c_in, sig.n_in


def _row_tiles(sig: Signature, c_n: int) -> list[tuple[int, int]]:
    """(BLOCK_M, BLOCK_N) of the propagation: 64 or 128 rows times the result channels or half of them
    (256 wide only for 16-bit types, whose accumulators fit)."""
    return [(m, n) for n in channel_tiles(c_n, 256 if sig.dtype.itemsize == 2 else 128) for m in (64, 128)]


def _propagate_default(sig: Signature) -> dict[str, Any]:
    """The untuned point; on an H100 (LiDAR scan, 16 to 256 channels) it was the best or within 10% of it."""
    c_red, c_n, _ = _propagate_dims(sig)
    block_n = channel_tiles(c_n, 128 if sig.dtype.itemsize == 2 else 64)[-1]
    block_m = 128 if block_n * sig.dtype.itemsize <= 128 else 64
    packed = c_red < 16
    block_k = 32 if packed else channel_tiles(c_red, 64)[-1]
    return {"mode": "packed" if packed else "gather", "sorted": not packed, "offset_groups": 1, "BLOCK_M": block_m,
            "BLOCK_N": block_n, "BLOCK_K": block_k,
            "num_warps": _warps(block_m, block_n) if packed else _gather_warps(sig, block_m, block_n), "num_stages": 2}


def _offset_groups(sig: Signature) -> tuple[int, ...]:
    """How many column groups a mask-sorted forward or input gradient may run in: each group is a pass over the
    rows sorted by its own columns' mask, so blocks compute fewer absent (row, offset) products (for 3x3x3 on a
    LiDAR scan at 64-row blocks: 1.80x the pairs with one group, 1.26x with two, 1.09x with three); every pass
    after the first adds into the partial sums (fp32), which costs their round trip through memory. Half types
    keep them in a workspace, allowed where it is no larger than :func:`workspace_limit`."""
    _, c_n, n_rows = _propagate_dims(sig)
    if sig.kernel_volume < 27 or (sig.dtype.itemsize < 4 and n_rows * c_n * 4 > workspace_limit(sig)):
        return (1,)
    return (1, 2, 3)


def _propagate_points(sig: Signature) -> Iterator[dict[str, Any]]:
    c_red, c_n, _ = _propagate_dims(sig)
    default = _propagate_default(sig)
    if default["mode"] == "gather":
        yield {**default, "sorted": False}  # rows in map order: better locality, worse offset skipping
    for block_m, block_n in _row_tiles(sig, c_n):
        for stages in (2, 3):
            point = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_stages": stages}
            if c_red >= 16:
                block_ks = [k for k in (channel_tiles(c_red, 64) if block_n >= 16 else (16,))
                            if _fits(sig, block_m, block_n, k, stages)]
                for block_k, warps, groups in itertools.product(block_ks, _gather_warp_choices(sig, block_m, block_n),
                                                                _offset_groups(sig)):
                    yield {"mode": "gather", "sorted": True, "offset_groups": groups, **point, "num_warps": warps,
                           "BLOCK_K": block_k}
            if c_red < PACKED_BELOW:
                packed = {**point, "num_warps": _warps(block_m, block_n)}
                for block_k in (16, 32):
                    if _fits(sig, block_m, block_n, block_k, stages):
                        yield {"mode": "packed", "sorted": False, "offset_groups": 1, **packed, "BLOCK_K": block_k}


def _reduction_tiles(c: int) -> tuple[int, ...]:
    """Tile widths along a channel dimension of the weight gradient."""
    full = pow2_at_least(c)
    if full >= 128:
        return (64, 128)
    return tuple(sorted({full, max(16, full // 2)}))


def _wgrad_tiles(sig: Signature) -> list[tuple[int, int]]:
    """(BLOCK_M, BLOCK_N) over (c_in, c_out) of the weight gradient; 128 x 256 for wide 16-bit layers."""
    tiles = [(m, n) for m in _reduction_tiles(sig.c_in) for n in _reduction_tiles(sig.c_out)]
    if sig.dtype.itemsize == 2 and sig.c_in >= 128 and sig.c_out >= 256:
        tiles.append((128, 256))
    return tiles


def _wgrad_default(sig: Signature) -> dict[str, Any]:
    """The untuned point: deterministic, wide tiles; few input channels pack offsets into the tile rows (with
    the chunking that won on an H100 for the dtype), the others walk the mask-sorted rows."""
    packed = sig.c_in < 16
    block_k = 64 if sig.dtype.itemsize == 2 else 32
    if packed:
        block_m, block_n = 64, _reduction_tiles(sig.c_out)[-1]
    else:
        block_m, block_n = max(_wgrad_tiles(sig), key=lambda t: (t[0] * t[1], t[1]))
        if sig.dtype.itemsize == 2 and 64 < sig.c_in <= 128:
            block_m = 64  # 64 x 128 beat 128 x 128 at 128 channels
    rows = sig.kernel_volume * sig.c_in if packed else sig.c_in
    tiles = cdiv(rows, block_m) * cdiv(sig.c_out, block_n)
    sms = device_limits(sig.device_type)[0]
    chunks = chunk_lengths(sig.n_out, tiles * (1 if packed else sig.kernel_volume), block_k, sms)
    chunk = chunks[-1] if packed and sig.dtype.itemsize == 4 else chunks[0]  # packed fp32 likes shorter chunks
    return {"mode": "packed" if packed else "rows", "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k,
            "num_warps": _warps(block_m, block_n), "num_stages": 2, "chunk": chunk,
            "deterministic": True}


def _wgrad_points(sig: Signature) -> Iterator[dict[str, Any]]:
    sms = device_limits(sig.device_type)[0]
    strict = torch.are_deterministic_algorithms_enabled()
    modes = {"deterministic": (True,) if strict else (True, False)}
    block_k = 64 if sig.dtype.itemsize == 2 else 32
    kvol = sig.kernel_volume
    limit = float("inf") if strict else workspace_limit(sig)  # when nothing else is allowed, any workspace
    for block_m, block_n in _wgrad_tiles(sig):
        if not _fits(sig, block_m, block_n, block_k, 2):
            continue
        point = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": _warps(block_m, block_n),
                 "num_stages": 2}
        count = cdiv(sig.c_in, block_m) * cdiv(sig.c_out, block_n)
        for chunk in chunk_lengths(sig.num_pairs, count, block_k, sms):
            workspace = (cdiv(sig.num_pairs, chunk) + kvol) * sig.c_in * sig.c_out * 4  # pair_chunks' bound
            for deterministic in modes["deterministic"]:
                if not (deterministic and workspace > limit):
                    yield {"mode": "pairs", **point, "chunk": chunk, "deterministic": deterministic}
        # rows mode: every offset walks the mask-sorted output rows, so it needs no pair list
        chunk = chunk_lengths(sig.n_out, count * kvol, block_k, sms)[0]
        workspace = cdiv(sig.n_out, chunk) * kvol * sig.c_in * sig.c_out * 4
        for deterministic in modes["deterministic"]:
            if not (deterministic and workspace > limit):
                yield {"mode": "rows", **point, "chunk": chunk, "deterministic": deterministic}
    if sig.c_in < PACKED_BELOW:
        packed_rows = kvol * sig.c_in
        for block_n in _reduction_tiles(sig.c_out):
            for block_m in (64, 128) if packed_rows > 64 else (64,):
                count = cdiv(packed_rows, block_m) * cdiv(sig.c_out, block_n)
                for chunk in chunk_lengths(sig.n_out, count, block_k, sms):
                    for deterministic in modes["deterministic"]:
                        if _fits(sig, block_m, block_n, block_k, 2):
                            yield {"mode": "packed", "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k,
                                   "num_warps": _warps(block_m, block_n), "num_stages": 2, "chunk": chunk,
                                   "deterministic": deterministic}


# Rough rates of an H100-class GPU; the estimate only orders (and prunes) points relative to each other.
_MAC_RATE = {"half": 4e14, "tf32": 2e14, "ieee": 3e13}  # multiply-adds per second
_L2_RATE = 6e12  # bytes per second from L2 into the multiprocessors
_DRAM_RATE = 3e12
# pairs over (row, offset) products computed when blocks skip offsets none of their rows use, measured on
# a LiDAR scan at 0.1 m with 64-row blocks: mask-sorted rows in 1, 2 or 3 column groups (see _offset_groups),
# rows in map order; and the share of it that 128-row blocks keep (0.92-0.95 on the scan)
_SORTED_FILL = (0.5, 0.7, 0.8)
_UNSORTED_FILL = 0.25
_TALL_BLOCK_FILL = 0.93
_LAUNCH_S = 5e-6
# exact fp32 products (FMA) over propagation tiles wider than 64 x 64 ran slower per product on an H100 and an
# H200 (scan, 128 and 256 channels: 64 x 128 1.14x, 128 x 128 1.22x the time of 64 x 64); rate x (4096/area)^0.2
_FMA_TILE = 64 * 64


def _pad(n: int, tile: int) -> int:
    return cdiv(n, tile) * tile


def estimate_seconds(sig: Signature, p: Params) -> float:
    """A roofline-style time estimate of one point: tile products at the tensor-core (or FMA) rate plus
    operand traffic at L2 rate, stretched when too few programs share the multiprocessors."""
    size = sig.dtype.itemsize
    rate = _MAC_RATE["half" if size == 2 else ("tf32" if sig.tf32 else "ieee")]
    sms = device_limits(sig.device_type)[0]
    block_m, block_n, block_k, kvol = p["BLOCK_M"], p["BLOCK_N"], p["BLOCK_K"], sig.kernel_volume
    extra = 0.0
    macs: float
    loads: float
    weight_reads: float
    if sig.op == Op.CONV_WGRAD:
        mode = p["mode"]
        if mode == "packed":
            rows, work, chunks = kvol * sig.c_in, sig.n_out, cdiv(sig.n_out, p["chunk"])
        elif mode == "rows":  # mask-sorted rows; steps that no row uses are skipped
            rows, work, chunks = sig.c_in, int(sig.num_pairs / _SORTED_FILL[0]), kvol * cdiv(sig.n_out, p["chunk"])
        else:
            rows, work, chunks = sig.c_in, sig.num_pairs, cdiv(sig.num_pairs, p["chunk"]) + kvol
        tiles = cdiv(rows, block_m) * cdiv(sig.c_out, block_n)
        macs = work * _pad(rows, block_m) * _pad(sig.c_out, block_n)
        loads = work * (rows * cdiv(sig.c_out, block_n) + sig.c_out * cdiv(rows, block_m)) * size
        programs = chunks * tiles
        if p["deterministic"]:  # the workspace round trip and the reduction's launch
            extra = 2 * chunks * rows * sig.c_out * 4 / _DRAM_RATE + 1e-5
    else:
        c_red, c_n, n_rows = _propagate_dims(sig)
        if size == 4 and not sig.tf32:
            rate *= min(1.0, _FMA_TILE / (block_m * block_n)) ** 0.2
        col_tiles = cdiv(c_n, block_n)
        programs = cdiv(n_rows, block_m) * col_tiles
        if p["mode"] == "packed":
            macs = n_rows * _pad(kvol * c_red, block_k) * _pad(c_n, block_n)
            weight_reads = programs * kvol * c_red * block_n
        else:
            groups = p["offset_groups"]
            fill = _SORTED_FILL[groups - 1] if p["sorted"] else _UNSORTED_FILL
            products = sig.num_pairs / (fill * (_TALL_BLOCK_FILL if block_m > 64 else 1.0))
            macs = products * _pad(c_red, block_k) * _pad(c_n, block_n)
            weight_reads = products / block_m * c_red * c_n
            extra = (groups - 1) * (2 * n_rows * c_n * 4 / _DRAM_RATE + _LAUNCH_S)  # the fp32 partial sums
        loads = (sig.num_pairs * c_red * col_tiles + weight_reads) * size
    fill = min(1.0, programs / (4 * sms))  # a few programs per multiprocessor hide the gathers' latency
    return (macs / rate + loads / _L2_RATE) / fill + extra


def propagate(src: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, params: Params,
              bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``y[o] = sum_k src[kmap.nbr[o, k]] @ weight[k]`` (``weight`` [K, c_red, c_n], any strides), then the
    epilogue (``+ bias`` [c_n], ReLU) fused into the store."""
    src = rows(src)
    n_rows, kvol = kmap.num_out, kmap.kernel_volume
    c_red, c_n = weight.shape[1], weight.shape[2]
    y = torch.empty(n_rows, c_n, dtype=src.dtype, device=src.device)
    if n_rows == 0 or c_n == 0:
        return y
    if src.shape[0] == 0 or c_red == 0:
        return epilogue(y.zero_(), bias, relu)
    block_m, block_n, block_k = params["BLOCK_M"], params["BLOCK_N"], params["BLOCK_K"]
    grid = (cdiv(n_rows, block_m), cdiv(c_n, block_n))
    common = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, USE_DOT=min(block_n, block_k) >= 16,
                  PRECISION=dot_precision(src), UPCAST=upcast_dots(src), num_warps=params["num_warps"],
                  num_stages=params["num_stages"])
    strides = (src.stride(0), weight.stride(0), weight.stride(1), weight.stride(2), y.stride(0))
    bias_or_y = y if bias is None else bias.contiguous()  # the epilogue reads it at unit stride
    if params["mode"] == "packed":
        K.propagate_packed_kernel[grid](src, weight, y, bias_or_y, kmap.nbr.contiguous(), n_rows, c_red, c_n, kvol,
                                        *strides, int(bias is not None), int(relu), **common)
        return y
    groups = params["offset_groups"]
    # the passes of several column groups keep their partial sums in fp32: y itself, or a workspace
    if y.dtype == torch.float32:
        part = y
    elif groups > 1:
        part = torch.empty(y.shape, dtype=torch.float32, device=y.device)
    else:
        part = _placeholder(y.device)
    for group in range(groups):  # the first pass adds the bias, the last one writes y and applies ReLU
        lay = block_offsets(kmap, params["sorted"], block_m, group, groups)
        order = lay.order if lay.order is not None else lay.count
        last = group == groups - 1
        K.propagate_gather_kernel[grid](src, weight, y, part, bias_or_y, lay.table, order, lay.count, lay.active,
                                        n_rows, c_red, c_n, kvol, lay.flip, *strides,
                                        int(bias is not None and group == 0), int(relu and last),
                                        SORTED=lay.order is not None, ACCUMULATE=group > 0, PARTIAL=not last,
                                        **common)
    return y


@functools.cache
def _placeholder(device: torch.device) -> torch.Tensor:
    """An fp32 tensor that stands for the partial sums a single pass never touches (one kernel signature)."""
    return torch.zeros(1, dtype=torch.float32, device=device)


def weight_grad(x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap, params: Params) -> torch.Tensor:
    """``dW[k] = x[in_k]^T dy[out_k]`` over the pairs of every offset ``k``."""
    x, dy = rows(x), rows(dy)
    kvol, c_in, c_out = kmap.kernel_volume, x.shape[1], dy.shape[1]
    shape = (kvol, c_in, c_out)
    if kmap.num_pairs == 0 or c_in == 0 or c_out == 0:
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    atomic = not params["deterministic"] and not torch.are_deterministic_algorithms_enabled()
    block_m, block_n, block_k, chunk = params["BLOCK_M"], params["BLOCK_N"], params["BLOCK_K"], params["chunk"]
    common = dict(ATOMIC=atomic, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                  USE_DOT=min(block_m, block_n, block_k) >= 16, PRECISION=dot_precision(x), UPCAST=upcast_dots(x),
                  num_warps=params["num_warps"], num_stages=params["num_stages"])
    mode = params["mode"]
    if mode == "pairs":
        chunks = pair_chunks(kmap, chunk)
        groups = kvol
        partial_shape: tuple[int, ...] = (chunks.num_chunks, c_in * c_out)
        bounds = chunks.bounds
    else:  # packed, rows: splits of the output rows
        splits = cdiv(kmap.num_out, chunk)
        groups = 1
        partial_shape = (splits, kvol * c_in * c_out)
        bounds = split_bounds(kmap, splits)
    if atomic:
        target = torch.zeros(shape, dtype=torch.float32, device=x.device)
    else:
        target = torch.empty(partial_shape, dtype=torch.float32, device=x.device)
    if mode == "packed":
        grid = (cdiv(kvol * c_in, block_m), cdiv(c_out, block_n), splits)
        K.wgrad_packed_kernel[grid](x, dy, target, kmap.nbr.contiguous(), kmap.num_out, chunk, c_in, c_out, kvol,
                                    x.stride(0), dy.stride(0), **common)
    elif mode == "rows":
        grid = (kvol, splits, cdiv(c_in, block_m) * cdiv(c_out, block_n))
        K.wgrad_rows_kernel[grid](x, dy, target, kmap.nbr.contiguous(), kmap.sorted_order, kmap.num_out, chunk,
                                  c_in, c_out, kvol, x.stride(0), dy.stride(0), **common)
    else:
        grid = (chunks.num_chunks, cdiv(c_in, block_m), cdiv(c_out, block_n))
        pairs = kmap.pairs
        K.wgrad_pairs_kernel[grid](x, dy, target, pairs.in_idx, pairs.out_idx, chunks.start, chunks.stop, chunks.offset,
                                   c_in, c_out, x.stride(0), dy.stride(0), **common)
    if atomic:
        return target.to(x.dtype)
    result = torch.empty(shape, dtype=x.dtype, device=x.device)
    return segment_sum(target, bounds, result.view(groups, -1)).view(shape)


class TritonImplicitGemm(Algorithm):
    """Implicit-GEMM convolution in Triton: gathered tiles on the tensor cores, fp32 accumulation."""

    name = "implicit_gemm"
    ops = CONV_OPS
    precompiles = True

    def applies_to(self, sig: Signature) -> str | None:
        return super().applies_to(sig) or unsupported(sig, K.propagate_gather_kernel)

    def param_space(self, sig: Signature) -> ParamSpace:
        points = _wgrad_points(sig) if sig.op == Op.CONV_WGRAD else _propagate_points(sig)
        return explicit_space(points)

    def default_params(self, sig: Signature) -> dict[str, Any]:
        """The untuned point, or (where the space lacks it) the space's first deterministic point."""
        default = _wgrad_default(sig) if sig.op == Op.CONV_WGRAD else _propagate_default(sig)
        points = list(self.param_space(sig).points())
        return default if default in points else next((p for p in points if p.get("deterministic", True)),
                                                      points[0])

    def estimate_cost(self, sig: Signature, params: Params) -> float | None:
        return estimate_seconds(sig, params)

    def setup_ms(self, sig: Signature, params: Params) -> float:
        if sig.op == Op.CONV_WGRAD:
            return {"pairs": PAIR_LIST_MS + PAIR_CHUNKS_MS, "rows": MASK_SORT_MS}.get(params["mode"], 0.0)
        return MASK_SORT_MS * params["offset_groups"] if params["sorted"] else 0.0

    def run(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap,
            bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        if op == Op.CONV_FWD:
            _check(a, b, kmap.num_in, "features", kmap)
            return propagate(a, b, kmap, params, bias, relu)
        if op == Op.CONV_DGRAD:
            weight_t = b.transpose(1, 2)
            _check(a, weight_t, kmap.num_out, "grad_out", kmap)
            if b.dtype == torch.float32:  # fp32 tiles read W^T fastest row-major: the copy is tiny
                weight_t = weight_t.contiguous()
            return propagate(a, weight_t, kmap.reversed(), params)
        if op == Op.CONV_WGRAD:
            if a.shape[0] != kmap.num_in or b.shape[0] != kmap.num_out or a.dtype != b.dtype:
                raise ValueError(f"{self.name} wgrad: features {tuple(a.shape)} {a.dtype} and grad_out "
                                 f"{tuple(b.shape)} {b.dtype} do not match the map ({kmap.num_in} -> "
                                 f"{kmap.num_out} sites) or each other")
            return weight_grad(a, b, kmap, params)
        raise ValueError(f"{self.name} does not implement {op.value}")


def _check(src: torch.Tensor, weight: torch.Tensor, n_src: int, src_name: str, kmap: KernelMap) -> None:
    """``ValueError`` unless ``src`` [n_src, C] and ``weight`` [K, C, *] fit the map and share a dtype."""
    if src.dim() != 2 or src.shape[0] != n_src or weight.dim() != 3 or weight.shape[0] != kmap.kernel_volume \
            or weight.shape[1] != src.shape[1] or weight.dtype != src.dtype:
        raise ValueError(f"implicit_gemm: {src_name} {tuple(src.shape)} {src.dtype} and weight "
                         f"{tuple(weight.shape)} {weight.dtype} do not fit a map of {n_src} source rows and "
                         f"kernel volume {kmap.kernel_volume}")
