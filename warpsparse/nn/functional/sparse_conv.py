"""Sparse convolutions on SparseTensors: spconv-style layers and WarpConvNet's ``spatially_sparse_conv``."""
from __future__ import annotations

import torch

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, Triple, submanifold_geometry, triple
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.nn.functional.conv_function import conv_features
from warpsparse.nn.functional.kernel_maps import conv_map, downsampled_sites, inverse_map
from warpsparse.sparse_tensor import SparseTensor
from warpsparse.tuner import AlgoSpec
from warpsparse.tuner.modes import SPARSE_CONV_BWD_ALGO_MODE, SPARSE_CONV_FWD_ALGO_MODE

__all__ = ["SPARSE_CONV_FWD_ALGO_MODE", "SPARSE_CONV_BWD_ALGO_MODE", "sparse_conv3d", "subm_conv3d",
           "sparse_inverse_conv3d", "spatially_sparse_conv", "warp_geometry"]


def check_input(x: SparseTensor, weight: torch.Tensor, kernel_size: Triple, depthwise: bool = False) -> None:
    """``TypeError``/``ValueError`` unless ``x`` is a SparseTensor and ``weight`` fits it and the kernel."""
    if not isinstance(x, SparseTensor):
        raise TypeError(f"input must be a warpsparse.SparseTensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor ({'[K, C]' if depthwise else '[K, C_in, C_out]'}), got "
                        f"{type(weight).__name__}")
    k = kernel_size[0] * kernel_size[1] * kernel_size[2]
    if tuple(weight.shape[:2]) != (k, x.num_channels) or weight.dim() != (2 if depthwise else 3):
        layout = "[K, C]" if depthwise else "[K, C_in, C_out]"
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit kernel_size {kernel_size} (K={k}) and "
                         f"{x.num_channels} input channels; expected {layout}")


def apply_on_map(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap, dst: CoordSet,
                 fwd_algo: AlgoSpec, bwd_algo: AlgoSpec, depthwise: bool = False, relu: bool = False) -> SparseTensor:
    """Convolve ``x`` over ``kmap`` (bias and ReLU fused) and put the result on the sites ``dst``."""
    out = conv_features(x.features, weight, kmap, bias, fwd_algo, bwd_algo, depthwise, relu)
    return SparseTensor.from_coord_set(out, dst, x.indice_store)


def subm_conv3d(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                kernel_size: int | Triple = 3, dilation: int | Triple = 1, indice_key: str | None = None,
                fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None, relu: bool = False) -> SparseTensor:
    """Submanifold conv: outputs on the input sites, values of ``conv3d`` with same-padding there (then ReLU
    with ``relu``)."""
    geom = submanifold_geometry(triple(kernel_size, "kernel_size", 1), triple(dilation, "dilation", 1))
    check_input(x, weight, geom.kernel_size)
    kmap, dst = conv_map(x, geom, "subm", indice_key)
    return apply_on_map(x, weight, bias, kmap, dst, fwd_algo, bwd_algo, relu=relu)


def sparse_conv3d(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  kernel_size: int | Triple = 3, stride: int | Triple = 1, padding: int | Triple = 0,
                  dilation: int | Triple = 1, transposed: bool = False, indice_key: str | None = None,
                  fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None, relu: bool = False) -> SparseTensor:
    """Regular (or transposed) sparse conv: outputs on every site of the dense output grid that some input
    reaches; values of ``conv3d`` (``conv_transpose3d``) there (then ReLU with ``relu``)."""
    geom = ConvGeometry(triple(kernel_size, "kernel_size", 1), triple(stride, "stride", 1),
                        triple(padding, "padding", 0), triple(dilation, "dilation", 1), transposed)
    check_input(x, weight, geom.kernel_size)
    kmap, dst = conv_map(x, geom, "transposed" if transposed else "conv", indice_key)
    return apply_on_map(x, weight, bias, kmap, dst, fwd_algo, bwd_algo, relu=relu)


def sparse_inverse_conv3d(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int | Triple,
                          indice_key: str, fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None,
                          relu: bool = False) -> SparseTensor:
    """Inverse of the conv stored under ``indice_key``: back onto its input sites (transposed conv values, then
    ReLU with ``relu``)."""
    ks = triple(kernel_size, "kernel_size", 1)
    check_input(x, weight, ks)
    kmap, dst = inverse_map(x, indice_key, ks)
    return apply_on_map(x, weight, bias, kmap, dst, fwd_algo, bwd_algo, relu=relu)


def warp_geometry(kernel_size: Triple, stride: Triple, dilation: Triple, transposed: bool) -> ConvGeometry:
    """WarpConvNet geometry: kernel offsets centred for odd sizes (padding ``d*((k-1)//2)``)."""
    padding = tuple(d * ((k - 1) // 2) for k, d in zip(kernel_size, dilation))
    return ConvGeometry(kernel_size, stride, padding, dilation, transposed)  # type: ignore[arg-type]


def warp_conv_map(x: SparseTensor, kernel_size: int | Triple, stride: int | Triple, dilation: int | Triple,
                  transposed: bool, generative: bool, output: SparseTensor | None) -> tuple[KernelMap, CoordSet]:
    """Map and output sites of a WarpConvNet-style conv (see :func:`spatially_sparse_conv`)."""
    geom = warp_geometry(triple(kernel_size, "kernel_size", 1), triple(stride, "stride", 1),
                         triple(dilation, "dilation", 1), transposed)
    if output is not None:
        if not isinstance(output, SparseTensor):
            raise TypeError(f"output_spatially_sparse_tensor must be a warpsparse.SparseTensor, got "
                            f"{type(output).__name__}")
        if output.batch_size != x.batch_size:
            raise ValueError(f"output_spatially_sparse_tensor has batch_size {output.batch_size}, input "
                             f"{x.batch_size}")
        return conv_map(x, geom, "given", out=output.coord_set)
    if generative or transposed:
        return conv_map(x, geom, "generative")
    if geom.stride == (1, 1, 1):
        return conv_map(x, geom, "subm")
    return conv_map(x, geom, "given", out=downsampled_sites(x.coord_set, geom.stride))


def spatially_sparse_conv(input: SparseTensor, weight: torch.Tensor, kernel_size: int | Triple,
                          stride: int | Triple = 1, dilation: int | Triple = 1, bias: torch.Tensor | None = None,
                          transposed: bool = False, generative: bool = False,
                          output_spatially_sparse_tensor: SparseTensor | None = None,
                          fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None, relu: bool = False) -> SparseTensor:
    """WarpConvNet-style sparse conv with kernel offsets centred for odd sizes (then ReLU with ``relu``).

    Output sites: those of ``output_spatially_sparse_tensor`` when given; else every reached site when
    ``generative`` or ``transposed``; else the input sites (stride 1) or the unique ``floor(coords / stride)``.
    Values are ``conv3d`` (``conv_transpose3d`` when transposed) with padding ``dilation*((k-1)//2)`` there.
    """
    ks = triple(kernel_size, "kernel_size", 1)
    check_input(input, weight, ks)
    kmap, dst = warp_conv_map(input, ks, stride, dilation, transposed, generative, output_spatially_sparse_tensor)
    return apply_on_map(input, weight, bias, kmap, dst, fwd_algo, bwd_algo, relu=relu)
