"""`cupy_implicit`: run-time compiled CUDA depthwise convolution (forward and both gradients)."""
from __future__ import annotations

import math
from typing import Any

import torch

from warpsparse.algorithms.base import DEPTHWISE_OPS, PAIR_LIST_MS, Op, Params, Signature
from warpsparse.algorithms.cupy import runtime
from warpsparse.algorithms.cupy.common import CupyAlgorithm, Instantiation, contiguous, sum_splits
from warpsparse.algorithms.cupy.configs import (DT_CODE, DwKernel, dw_points, dw_threads, sum_splits_name,
                                                vec_width)
from warpsparse.coords.kernel_map import KernelMap


def kernel_for(wgrad: bool, params: Params, dtype: torch.dtype, c: int, ptrs: tuple[int, ...] = ()) -> DwKernel:
    """The instantiation ``params`` select for ``c`` channels and tensors whose data start at ``ptrs``."""
    vec = vec_width(c, dtype.itemsize, ptrs, params["vec"])
    return DwKernel(DT_CODE[dtype], vec, *dw_threads(c // vec)) if wgrad else DwKernel(DT_CODE[dtype], vec)


def propagate(params: Params, x: torch.Tensor, w: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """``out[o, c] = sum_k x[nbr[o, k], c] * w[k, c]`` (the forward; the input gradient over the reversed map)."""
    n_out, kvol, c = kmap.num_out, kmap.kernel_volume, x.shape[1]
    out = torch.empty(n_out, c, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if x.numel() == 0 or kvol == 0:
        return out.zero_()
    nbr = contiguous(kmap.nbr)
    k = kernel_for(False, params, x.dtype, c, (x.data_ptr(), w.data_ptr(), out.data_ptr()))
    dev = x.get_device()
    block = int(params["block"])
    fn = runtime.function("depthwise", k.name, dev)
    runtime.launch(fn, math.ceil(n_out * (c // k.vec) / block), (block,),
                   (runtime.ptr(x), runtime.ptr(w), runtime.ptr(out), runtime.ptr(nbr), n_out,
                    kvol, c), dev)
    return out


def weight_grad(params: Params, x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """``dW[k, c] = sum x[in, c] * dy[out, c]`` over each offset's pairs, split ``params["split"]`` ways and
    reduced in a fixed order."""
    kvol, c = kmap.kernel_volume, x.shape[1]
    dev = x.device
    out = torch.empty(kvol, c, dtype=x.dtype, device=dev)
    if out.numel() == 0:
        return out
    pairs = kmap.pairs
    k = kernel_for(True, params, x.dtype, c, (x.data_ptr(), dy.data_ptr(), out.data_ptr()))
    split = int(params.get("split", 1))
    target = out if split == 1 else torch.empty(split, kvol, c, dtype=torch.float32, device=dev)
    fn = runtime.function("depthwise", k.name, dev.index)
    runtime.launch(fn, (math.ceil(c // k.vec / k.threads_x), kvol, split), (k.threads_x, k.threads_y),
                   (runtime.ptr(x), runtime.ptr(dy), runtime.ptr(target), runtime.ptr(contiguous(pairs.in_idx)),
                    runtime.ptr(contiguous(pairs.out_idx)), runtime.ptr(contiguous(pairs.bounds)),
                    kvol, c, split, 0 if split == 1 else 1),
                   dev.index)
    if split > 1:
        sum_splits(target, out, split)
    return out


class CupyImplicit(CupyAlgorithm):
    """Depthwise convolution in CUDA C++ compiled by NVRTC through CuPy: one thread per (row, channel
    vector) over the neighbour table, and a split, deterministically reduced weight gradient."""

    name = "cupy_implicit"
    ops = DEPTHWISE_OPS

    def points(self, sig: Signature) -> list[dict[str, Any]]:
        return dw_points(sig, runtime.device_info())

    def preference(self, p: dict[str, Any]) -> tuple:
        """Widest vectors, 256-thread blocks, most splits."""
        return (-p["vec"], -p.get("block", 0), -p.get("split", 0))

    def setup_ms(self, sig: Signature, params: Params) -> float:
        return PAIR_LIST_MS if sig.op == Op.DW_WGRAD else 0.0  # the weight gradient walks the pair list

    def point_instantiations(self, sig: Signature, params: Params) -> list[Instantiation]:
        found = [Instantiation("depthwise", kernel_for(sig.op == Op.DW_WGRAD, params, sig.dtype, sig.c_in).name)]
        if params.get("split", 1) > 1:
            found.append(Instantiation("common", sum_splits_name(DT_CODE[sig.dtype])))
        return found

    def compute(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        if op == Op.DW_FWD:
            return propagate(params, a, b, kmap)
        if op == Op.DW_DGRAD:
            return propagate(params, a, b, kmap.reversed())
        return weight_grad(params, a, b, kmap)
