"""`explicit` depthwise: per-pair multiply and scatter-add in PyTorch, looped by offset or in one pass."""
from __future__ import annotations

import torch

from warpsparse.algorithms.base import (DEPTHWISE_OPS, PAIR_LIST_MS, Algorithm, Op, ParamSpace, Params, Signature,
                                        epilogue)
from warpsparse.algorithms.explicit.common import accumulation_dtype, offset_ranges
from warpsparse.coords.kernel_map import KernelMap


class ExplicitDepthwise(Algorithm):
    """Depthwise conv as per-pair products; ``flat`` does every pair in one pass, else one pass per offset."""

    name = "explicit"
    ops = DEPTHWISE_OPS

    def param_space(self, sig: Signature) -> ParamSpace:
        return ParamSpace({"flat": (True, False)})

    def setup_ms(self, sig: Signature, params: Params) -> float:
        return PAIR_LIST_MS

    def run(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap,
            bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        p = kmap.pairs
        offsets = p.offset_of_pair  # expanded once: the list does not keep it
        acc = accumulation_dtype(a.dtype)
        if op == Op.DW_FWD:
            src, src_idx, dst_idx, rows = a, p.in_idx, p.out_idx, kmap.num_out
        elif op == Op.DW_DGRAD:
            src, src_idx, dst_idx, rows = a, p.out_idx, p.in_idx, kmap.num_in
        elif op == Op.DW_WGRAD:
            src, src_idx, dst_idx, rows = a, p.in_idx, offsets, kmap.kernel_volume
        else:
            raise ValueError(f"{self.name} does not implement {op.value}")
        out = torch.zeros(rows, a.shape[1], dtype=acc, device=a.device)
        flat = params.get("flat", True)
        segments = [(0, p.in_idx.numel())] if flat else [r for r in offset_ranges(p.counts) if r[1] > r[0]]
        for start, stop in segments:
            if op == Op.DW_WGRAD:
                prod = a[p.in_idx[start:stop]].to(acc) * b[p.out_idx[start:stop]].to(acc)
            else:
                prod = src[src_idx[start:stop]].to(acc) * b[offsets[start:stop]].to(acc)
            out.index_add_(0, dst_idx[start:stop], prod)
        if op == Op.DW_FWD:
            epilogue(out, None if bias is None else bias.to(acc), relu)
        return out.to(a.dtype)

