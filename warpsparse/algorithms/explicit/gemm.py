"""`explicit_gemm`: per kernel offset gather -> matmul -> scatter-add, with small offsets batched in one bmm."""
from __future__ import annotations

import math

import torch

from warpsparse.algorithms.base import (CONV_OPS, PAIR_LIST_MS, Algorithm, Op, ParamSpace, Params, Signature,
                                        epilogue)
from warpsparse.algorithms.explicit.common import (accumulation_dtype, identity_offset, matmul_acc, offset_ranges,
                                                   split_offsets)
from warpsparse.coords.kernel_map import KernelMap


def _propagate(src: torch.Tensor, weight: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor,
               kmap: KernelMap, n_dst: int, batch_below: float, bias: torch.Tensor | None = None,
               relu: bool = False) -> torch.Tensor:
    """``dst[d] = sum_k src[s] @ weight[k]`` over the pairs (s, d) of every offset k (``+ bias``, then ReLU,
    in the accumulation dtype)."""
    acc_dtype = accumulation_dtype(src.dtype)
    acc = torch.zeros(n_dst, weight.shape[2], dtype=acc_dtype, device=src.device)
    centre = identity_offset(kmap)
    if centre is not None:
        acc += matmul_acc(src, weight[centre], acc_dtype)
    looped, batch = split_offsets(kmap, batch_below)
    pairs = kmap.pairs
    ranges = offset_ranges(pairs.counts)
    for k in looped:
        start, stop = ranges[k]
        acc.index_add_(0, dst_idx[start:stop], matmul_acc(src[src_idx[start:stop]], weight[k], acc_dtype))
    if batch is not None:
        rows = src[src_idx[batch.pos]] * batch.valid[..., None]
        prod = matmul_acc(rows, weight[batch.offsets], acc_dtype)
        acc.index_add_(0, dst_idx[batch.pos[batch.valid]], prod[batch.valid])
    return epilogue(acc, None if bias is None else bias.to(acc_dtype), relu).to(src.dtype)


def _weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kmap: KernelMap, batch_below: float) -> torch.Tensor:
    """``dW[k] = x[in_k]^T @ grad_out[out_k]`` for every offset k."""
    k_vol = kmap.kernel_volume
    acc_dtype = accumulation_dtype(x.dtype)
    dw = torch.zeros(k_vol, x.shape[1], grad_out.shape[1], dtype=acc_dtype, device=x.device)
    centre = identity_offset(kmap)
    if centre is not None:
        dw[centre] = matmul_acc(x.t(), grad_out, acc_dtype)
    looped, batch = split_offsets(kmap, batch_below)
    pairs = kmap.pairs
    ranges = offset_ranges(pairs.counts)
    for k in looped:
        start, stop = ranges[k]
        dw[k] = matmul_acc(x[pairs.in_idx[start:stop]].t(), grad_out[pairs.out_idx[start:stop]], acc_dtype)
    if batch is not None:
        a = x[pairs.in_idx[batch.pos]] * batch.valid[..., None]
        b = grad_out[pairs.out_idx[batch.pos]]
        dw[batch.offsets] = matmul_acc(a.transpose(1, 2), b, acc_dtype)
    return dw.to(x.dtype)


class ExplicitGemm(Algorithm):
    """Gather-matmul-scatter in PyTorch; offsets with fewer than ``batch_below`` pairs share one padded bmm."""

    name = "explicit_gemm"
    ops = CONV_OPS

    def param_space(self, sig: Signature) -> ParamSpace:
        return ParamSpace({"batch_below": (0, 1024, 8192, math.inf)})

    def default_params(self, sig: Signature) -> dict[str, float]:
        return {"batch_below": 0}

    def setup_ms(self, sig: Signature, params: Params) -> float:
        return PAIR_LIST_MS

    def run(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap,
            bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        batch_below = float(params.get("batch_below", 0))
        pairs = kmap.pairs
        if op == Op.CONV_FWD:
            return _propagate(a, b, pairs.in_idx, pairs.out_idx, kmap, kmap.num_out, batch_below, bias, relu)
        if op == Op.CONV_DGRAD:
            return _propagate(a, b.transpose(1, 2), pairs.out_idx, pairs.in_idx, kmap, kmap.num_in, batch_below)
        if op == Op.CONV_WGRAD:
            return _weight_grad(a, b, kmap, batch_below)
        raise ValueError(f"{self.name} does not implement {op.value}")
