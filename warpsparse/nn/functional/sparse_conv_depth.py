"""Depthwise sparse convolution (one filter per channel), over a kernel map or on a SparseTensor."""
from __future__ import annotations

import torch

from warpsparse.coords.geometry import Triple, triple
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.nn.functional.conv_function import conv_features
from warpsparse.nn.functional.sparse_conv import apply_on_map, check_input, warp_conv_map
from warpsparse.sparse_tensor import SparseTensor
from warpsparse.tuner import AlgoSpec
from warpsparse.tuner.modes import SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE, SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE

__all__ = ["SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE", "SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE",
           "spatially_sparse_depthwise_conv", "sparse_depthwise_conv3d"]


def spatially_sparse_depthwise_conv(in_features: torch.Tensor, weight: torch.Tensor, kernel_map: KernelMap,
                                    num_out_coords: int, fwd_algo: AlgoSpec = None,
                                    bwd_algo: AlgoSpec = None) -> torch.Tensor:
    """``out[o, c] = sum_k weight[k, c] * in_features[nbr[o, k], c]`` over ``kernel_map``: [num_out_coords, C]."""
    if num_out_coords != kernel_map.num_out:
        raise ValueError(f"num_out_coords={num_out_coords} but the kernel map has {kernel_map.num_out} outputs")
    return conv_features(in_features, weight, kernel_map, None, fwd_algo, bwd_algo, depthwise=True)


def sparse_depthwise_conv3d(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                            kernel_size: int | Triple = 3, stride: int | Triple = 1, dilation: int | Triple = 1,
                            fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None, relu: bool = False) -> SparseTensor:
    """Depthwise conv of ``x`` with ``weight`` [K, C], on the sites of :func:`spatially_sparse_conv` (then ReLU
    with ``relu``)."""
    ks = triple(kernel_size, "kernel_size", 1)
    check_input(x, weight, ks, depthwise=True)
    kmap, dst = warp_conv_map(x, ks, stride, dilation, False, False, None)
    return apply_on_map(x, weight, bias, kmap, dst, fwd_algo, bwd_algo, depthwise=True, relu=relu)
