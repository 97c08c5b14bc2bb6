"""`cupy_implicit_gemm`: run-time compiled CUDA implicit-GEMM convolution (forward and both gradients)."""
from __future__ import annotations

import math
from typing import Any

import torch

from warpsparse.algorithms.base import CONV_OPS, MASK_SORT_MS, PAIR_LIST_MS, Op, Params, Signature
from warpsparse.algorithms.cupy import runtime
from warpsparse.algorithms.cupy.common import CupyAlgorithm, Instantiation, contiguous, sum_splits
from warpsparse.algorithms.cupy.configs import (DT_CODE, GemmKernel, conv_points, gemm_kernel, sum_splits_name,
                                                vec_width)
from warpsparse.coords.kernel_map import KernelMap


def kernel_for(wgrad: bool, params: Params, dtype: torch.dtype, c_a: int, c_b: int, ptrs_a: tuple[int, ...] = (),
               ptrs_b: tuple[int, ...] = ()) -> GemmKernel:
    """The instantiation ``params`` select for A rows of ``c_a`` and B rows of ``c_b`` channels whose data
    start at ``ptrs_a`` / ``ptrs_b`` (the vector widths follow channels and pointer alignment)."""
    es = dtype.itemsize
    cap_a = params["block_m"] if wgrad else params["block_k"]
    return gemm_kernel(wgrad, DT_CODE[dtype], params["engine"], params["block_m"], params["block_n"],
                       params["block_k"], params["warps"], params["stages"], vec_width(c_a, es, ptrs_a, cap_a),
                       vec_width(c_b, es, ptrs_b, params["block_n"]))


def _launch(k: GemmKernel, grid: int, args: tuple, device: int) -> None:
    fn = runtime.function("gemm", k.name, device, k.dynamic_smem)
    runtime.launch(fn, grid, (k.threads,), args, device, k.dynamic_smem)


def propagate(params: Params, x: torch.Tensor, w: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """``out[o] = sum_k x[nbr[o, k]] @ w[k]`` for ``w`` [K, C_red, C_n] (the forward; the input gradient over
    the reversed map with ``w`` transposed)."""
    n_out, kvol = kmap.num_out, kmap.kernel_volume
    c_red, c_n = w.shape[1], w.shape[2]
    out = torch.empty(n_out, c_n, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if x.numel() == 0 or w.numel() == 0:
        return out.zero_()
    srt = params.get("sorted", True)
    nbr = contiguous(kmap.sorted_nbr if srt else kmap.nbr)
    order = kmap.sorted_order if srt else None
    k = kernel_for(False, params, x.dtype, c_red, c_n, (x.data_ptr(),), (w.data_ptr(),))
    grid = math.ceil(n_out / k.block_m) * math.ceil(c_n / k.block_n)
    _launch(k, grid, (runtime.ptr(x), runtime.ptr(w), runtime.ptr(out), runtime.ptr(nbr), runtime.ptr(order),
                      n_out, kvol, c_red, c_n), x.get_device())
    return out


def _atomic(params: Params) -> bool:
    """Whether the weight gradient at ``params`` adds its splits atomically (``params["reduce"]`` asks for it
    and determinism is not required)."""
    return params.get("reduce") == "atomic" and params.get("split", 1) > 1 \
        and not torch.are_deterministic_algorithms_enabled()


def weight_grad(params: Params, x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """``dW[k] = x[in_k]^T @ dy[out_k]`` over each offset's pairs, split ``params["split"]`` ways and reduced
    in a fixed order (or atomically: :func:`_atomic`)."""
    kvol, c_in, c_out = kmap.kernel_volume, x.shape[1], dy.shape[1]
    dev = x.device
    out = torch.empty(kvol, c_in, c_out, dtype=x.dtype, device=dev)
    if out.numel() == 0:
        return out
    pairs = kmap.pairs
    split = int(params.get("split", 1))
    atomic = _atomic(params)
    if split == 1:
        target, mode = out, 0
    elif atomic and x.dtype == torch.float32:
        target, mode = out.zero_(), 2
    elif atomic:
        target, mode = torch.zeros(kvol, c_in, c_out, dtype=torch.float32, device=dev), 2
    else:
        target, mode = torch.empty(split, kvol, c_in, c_out, dtype=torch.float32, device=dev), 1
    k = kernel_for(True, params, x.dtype, c_in, c_out, (x.data_ptr(),), (dy.data_ptr(),))
    tiles = math.ceil(c_in / k.block_m) * math.ceil(c_out / k.block_n)
    _launch(k, tiles * kvol * split,
            (runtime.ptr(x), runtime.ptr(dy), runtime.ptr(target), runtime.ptr(contiguous(pairs.in_idx)),
             runtime.ptr(contiguous(pairs.out_idx)), runtime.ptr(contiguous(pairs.bounds)), kvol,
             c_in, c_out, split, mode), dev.index)
    if target is not out:
        sum_splits(target, out, 1 if mode == 2 else split)
    return out


class CupyImplicitGemm(CupyAlgorithm):
    """Implicit GEMM in CUDA C++ compiled by NVRTC through CuPy: gathers rows through the neighbour table,
    multiplies on tensor cores (or exact FFMA) and writes each output row once."""

    name = "cupy_implicit_gemm"
    ops = CONV_OPS

    def points(self, sig: Signature) -> list[dict[str, Any]]:
        return conv_points(sig, runtime.device_info())

    def preference(self, p: dict[str, Any]) -> tuple:
        """What won most often on an H100: tensor cores, mask-sorted rows, 128-row (FFMA: 64-row) tiles, the
        widest channel tiles, about 3 stages, the ordered reduction with the most splits."""
        mma = p["engine"] == "mma"
        return (not mma, not p.get("sorted", True), abs(p["block_m"] - (128 if mma else 64)), -p["block_n"],
                -p["block_k"], abs(p["stages"] - 3), p.get("reduce") == "atomic", -p.get("split", 1))

    def setup_ms(self, sig: Signature, params: Params) -> float:
        if sig.op == Op.CONV_WGRAD:
            return PAIR_LIST_MS  # the weight gradient walks the pair list
        return MASK_SORT_MS if params.get("sorted", True) else 0.0

    def point_instantiations(self, sig: Signature, params: Params) -> list[Instantiation]:
        c_a, c_b = (sig.c_out, sig.c_in) if sig.op == Op.CONV_DGRAD else (sig.c_in, sig.c_out)
        k = kernel_for(sig.op == Op.CONV_WGRAD, params, sig.dtype, c_a, c_b)
        found = [Instantiation("gemm", k.name, k.dynamic_smem)]
        fp32_atomics = _atomic(params) and sig.dtype == torch.float32  # these add into the result itself
        if params.get("split", 1) > 1 and not fp32_atomics:
            found.append(Instantiation("common", sum_splits_name(DT_CODE[sig.dtype])))
        return found

    def compute(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        if op == Op.CONV_FWD:
            return propagate(params, a, b, kmap)
        if op == Op.CONV_DGRAD:
            return propagate(params, a, b.transpose(1, 2).contiguous(), kmap.reversed())
        return weight_grad(params, a, b, kmap)
