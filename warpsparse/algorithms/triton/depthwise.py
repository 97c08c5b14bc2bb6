"""`implicit`: Triton depthwise convolution (forward, input gradient, weight gradient)."""
from __future__ import annotations

from typing import Any, Iterator

import torch

from warpsparse.algorithms.base import (DEPTHWISE_OPS, MASK_SORT_MS, PAIR_CHUNKS_MS, PAIR_LIST_MS, Algorithm, Op,
                                        ParamSpace, Params, Signature, epilogue)
from warpsparse.algorithms.triton import depthwise_kernels as K
from warpsparse.algorithms.triton.common import (channel_tiles, chunk_lengths, device_limits, explicit_space, rows,
                                                 unsupported)
from warpsparse.algorithms.triton.layouts import block_offsets, pair_chunks
from warpsparse.algorithms.triton.reduction import segment_sum
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.triton_launch import cdiv


def _propagate_points(sig: Signature) -> Iterator[dict[str, Any]]:
    for block_c in channel_tiles(sig.c_in):
        for block_m in (64, 128):
            for stages in (1, 3):
                for sort in (True, False):
                    yield {"sorted": sort, "BLOCK_M": block_m, "BLOCK_C": block_c, "num_warps": 4,
                           "num_stages": stages}


def _wgrad_points(sig: Signature) -> Iterator[dict[str, Any]]:
    sms = device_limits(sig.device_type)[0]
    atomic_ok = not torch.are_deterministic_algorithms_enabled()
    for block_c in channel_tiles(sig.c_in):
        tiles = cdiv(sig.c_in, block_c)
        for block_p in (32, 64):
            for chunk in chunk_lengths(sig.num_pairs, tiles, block_p, sms):
                for deterministic in (True, False) if atomic_ok else (True,):
                    yield {"BLOCK_P": block_p, "BLOCK_C": block_c, "num_warps": 4, "num_stages": 2, "chunk": chunk,
                           "deterministic": deterministic}


def propagate(src: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, params: Params,
              bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``y[o] = sum_k src[kmap.nbr[o, k]] * weight[k]``, then the epilogue (``+ bias``, ReLU) fused."""
    src, weight = rows(src), rows(weight)
    n_rows, kvol = kmap.num_out, kmap.kernel_volume
    c = src.shape[1]
    y = torch.empty(n_rows, c, dtype=src.dtype, device=src.device)
    if n_rows == 0 or c == 0:
        return y
    if src.shape[0] == 0:
        return epilogue(y.zero_(), bias, relu)
    block_m, block_c = params["BLOCK_M"], params["BLOCK_C"]
    lay = block_offsets(kmap, params["sorted"], block_m)
    grid = (cdiv(n_rows, block_m), cdiv(c, block_c))
    order = lay.order if lay.order is not None else lay.count
    K.dw_propagate_kernel[grid](src, weight, y, y if bias is None else bias.contiguous(), lay.table, order, lay.count,
                                lay.active, n_rows, c, kvol, lay.flip, src.stride(0), weight.stride(0), y.stride(0),
                                int(bias is not None), int(relu), SORTED=lay.order is not None, BLOCK_M=block_m,
                                BLOCK_C=block_c, num_warps=params["num_warps"], num_stages=params["num_stages"])
    return y


def weight_grad(x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap, params: Params) -> torch.Tensor:
    """``dW[k] = sum over the pairs (i, o) of offset k of x[i] * dy[o]``."""
    x, dy = rows(x), rows(dy)
    kvol, c = kmap.kernel_volume, x.shape[1]
    if kmap.num_pairs == 0 or c == 0:
        return torch.zeros(kvol, c, dtype=x.dtype, device=x.device)
    atomic = not params["deterministic"] and not torch.are_deterministic_algorithms_enabled()
    chunks = pair_chunks(kmap, params["chunk"])
    block_c = params["BLOCK_C"]
    if atomic:
        target = torch.zeros(kvol, c, dtype=torch.float32, device=x.device)
    else:
        target = torch.empty(chunks.num_chunks, c, dtype=torch.float32, device=x.device)
    grid = (chunks.num_chunks, cdiv(c, block_c))
    pairs = kmap.pairs
    K.dw_wgrad_kernel[grid](x, dy, target, pairs.in_idx, pairs.out_idx, chunks.start, chunks.stop, chunks.offset,
                            c, x.stride(0), dy.stride(0), ATOMIC=atomic, BLOCK_P=params["BLOCK_P"], BLOCK_C=block_c,
                            num_warps=params["num_warps"], num_stages=params["num_stages"])
    if atomic:
        return target.to(x.dtype)
    return segment_sum(target, chunks.bounds, torch.empty(kvol, c, dtype=x.dtype, device=x.device))


class TritonImplicitDepthwise(Algorithm):
    """Depthwise convolution in Triton: gathered rows times per-offset channel weights, fp32 accumulation."""

    name = "implicit"
    ops = DEPTHWISE_OPS
    precompiles = True

    def applies_to(self, sig: Signature) -> str | None:
        return super().applies_to(sig) or unsupported(sig, K.dw_propagate_kernel)

    def param_space(self, sig: Signature) -> ParamSpace:
        return explicit_space(_wgrad_points(sig) if sig.op == Op.DW_WGRAD else _propagate_points(sig))

    def default_params(self, sig: Signature) -> dict[str, Any]:
        if sig.op == Op.DW_WGRAD:
            return min(self.param_space(sig).points(), key=lambda p: (not p["deterministic"], -p["BLOCK_C"],
                                                                     -p["BLOCK_P"], p["chunk"]))
        return {"sorted": True, "BLOCK_M": 64, "BLOCK_C": channel_tiles(sig.c_in)[-1], "num_warps": 4,
                "num_stages": 3}

    def setup_ms(self, sig: Signature, params: Params) -> float:
        if sig.op == Op.DW_WGRAD:
            return PAIR_LIST_MS + PAIR_CHUNKS_MS  # the weight gradient walks the pair list in chunks
        return MASK_SORT_MS if params["sorted"] else 0.0

    def run(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap,
            bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        kvol = kmap.kernel_volume
        if op in (Op.DW_FWD, Op.DW_DGRAD):
            n_src, name, target = (kmap.num_in, "features", kmap) if op == Op.DW_FWD else \
                (kmap.num_out, "grad_out", kmap.reversed())
            if a.dim() != 2 or a.shape[0] != n_src or b.shape != (kvol, a.shape[1]) or a.dtype != b.dtype:
                raise ValueError(f"{self.name}: {name} {tuple(a.shape)} {a.dtype} and weight {tuple(b.shape)} "
                                 f"{b.dtype} do not fit a map of {n_src} source rows and kernel volume {kvol}")
            return propagate(a, b, target, params, *((bias, relu) if op == Op.DW_FWD else ()))
        if op == Op.DW_WGRAD:
            if a.shape[0] != kmap.num_in or b.shape != (kmap.num_out, a.shape[1]) or a.dtype != b.dtype:
                raise ValueError(f"{self.name} wgrad: features {tuple(a.shape)} {a.dtype} and grad_out "
                                 f"{tuple(b.shape)} {b.dtype} do not fit the map ({kmap.num_in} -> "
                                 f"{kmap.num_out} sites)")
            return weight_grad(a, b, kmap, params)
        raise ValueError(f"{self.name} does not implement {op.value}")
