"""Sparse max / average pooling over windows, and global pooling per batch item."""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from warpsparse.algorithms.explicit.common import accumulation_dtype
from warpsparse.algorithms.triton.common import SUPPORTED_DTYPES
from warpsparse.coords.geometry import ConvGeometry, Triple, triple
from warpsparse.nn.functional.conv_function import autograd_form
from warpsparse.nn.functional.kernel_maps import conv_map
from warpsparse.sparse_tensor import SparseTensor

__all__ = ["sparse_max_pool3d", "sparse_avg_pool3d", "global_max_pool", "global_avg_pool"]


def _window_max(feats: torch.Tensor, nbr: torch.Tensor,
                with_source: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, source)``: the window maxima and (if ``with_source``, else possibly ``None``) their rows."""
    if feats.is_cuda and feats.dtype in SUPPORTED_DTYPES:
        from warpsparse.algorithms.triton.pooling import max_pool_forward
        return max_pool_forward(feats, nbr, with_source=with_source)
    idx = nbr.long()
    present = idx >= 0
    window = feats[idx.clamp(min=0)].masked_fill_(~present.unsqueeze(-1), float("-inf"))
    source = idx.gather(1, window.argmax(dim=1))  # [N_out, C]
    # a window whose present rows are all -inf may pick an empty slot: take its first present row (-1
    # when the window is empty, which then gives 0 like the Triton kernel)
    first = idx.gather(1, present.to(torch.uint8).argmax(dim=1, keepdim=True))
    source = torch.where(source < 0, first, source)
    return feats.gather(0, source.clamp(min=0)).masked_fill_(source < 0, 0), source


def _remember_pool(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    ctx.mark_non_differentiable(*(t for t in output[1:] if t is not None))
    ctx.save_for_backward(output[1])
    ctx.num_in = inputs[0].shape[0]


class _MaxPool(torch.autograd.Function):
    """Window max over a kernel map; the backward adds each gradient to the window's arg-max row only.

    CUDA runs the Triton kernels for 16- and 32-bit floats (one pass each way, int32 arg-max rows, kept only
    when the features need a gradient; under ``torch.use_deterministic_algorithms`` the gradient is scattered
    by PyTorch); other cases gather every window.
    """

    @staticmethod
    def forward(ctx: Any, feats: torch.Tensor, nbr: torch.Tensor,
                with_source: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        output = _window_max(feats, nbr, with_source)
        _remember_pool(ctx, (feats, nbr, with_source), output)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, _: Any) -> tuple[torch.Tensor, None, None]:
        source, = ctx.saved_tensors
        if source.dtype == torch.int32 and not torch.are_deterministic_algorithms_enabled():
            from warpsparse.algorithms.triton.pooling import max_pool_backward
            return max_pool_backward(grad, source, ctx.num_in), None, None
        index = source.long()
        grad = grad.masked_fill(index < 0, 0)  # -1: a window without inputs
        return grad.new_zeros(ctx.num_in, grad.shape[1]).scatter_add_(0, index.clamp(min=0), grad), None, None


class _TransformableMaxPool(_MaxPool):
    """:class:`_MaxPool` in the ``setup_context`` form that ``torch.func`` transforms require (used only while
    one is active: :func:`~warpsparse.nn.functional.conv_function.autograd_form`)."""

    forward = staticmethod(_window_max)  # type: ignore[assignment]
    setup_context = staticmethod(_remember_pool)


def _pool(x: SparseTensor, kernel_size: int | Triple, stride: int | Triple | None, padding: int | Triple,
          dilation: int | Triple, reduce: str) -> SparseTensor:
    if not isinstance(x, SparseTensor):
        raise TypeError(f"input must be a warpsparse.SparseTensor, got {type(x).__name__}")
    ks = triple(kernel_size, "kernel_size", 1)
    geom = ConvGeometry(ks, triple(ks if stride is None else stride, "stride", 1), triple(padding, "padding", 0),
                        triple(dilation, "dilation", 1))
    kmap, dst = conv_map(x, geom, "conv")
    feats = x.features
    if reduce == "max":
        with_source = torch.is_grad_enabled() and feats.requires_grad
        out = autograd_form(_MaxPool, _TransformableMaxPool).apply(feats, kmap.nbr, with_source)[0]
    else:
        in_idx, out_idx = kmap.pairs.in_idx, kmap.pairs.out_idx
        if in_idx.is_inference() and not torch.is_inference_mode_enabled():  # a map cached by an inference pass:
            in_idx, out_idx = in_idx.clone(), out_idx.clone()  # autograd cannot save inference tensors
        count = torch.bincount(out_idx, minlength=kmap.num_out).clamp(min=1)
        wide = feats.to(accumulation_dtype(feats.dtype))  # half sums overflow
        summed = wide.new_zeros(kmap.num_out, x.num_channels).index_add(0, out_idx, wide[in_idx])
        out = (summed / count.unsqueeze(1).to(wide.dtype)).to(feats.dtype)
    return SparseTensor.from_coord_set(out, dst, x.indice_store)


def sparse_max_pool3d(x: SparseTensor, kernel_size: int | Triple, stride: int | Triple | None = None,
                      padding: int | Triple = 0, dilation: int | Triple = 1) -> SparseTensor:
    """Max over the active inputs of each window; output sites as :func:`sparse_conv3d` (stride defaults to
    the kernel size)."""
    return _pool(x, kernel_size, stride, padding, dilation, "max")


def sparse_avg_pool3d(x: SparseTensor, kernel_size: int | Triple, stride: int | Triple | None = None,
                      padding: int | Triple = 0, dilation: int | Triple = 1) -> SparseTensor:
    """Mean over the active inputs of each window; output sites as :func:`sparse_conv3d`."""
    return _pool(x, kernel_size, stride, padding, dilation, "mean")


def _global(x: SparseTensor, reduce: str) -> torch.Tensor:
    if not isinstance(x, SparseTensor):
        raise TypeError(f"input must be a warpsparse.SparseTensor, got {type(x).__name__}")
    index = x.coords[:, 0].long()[:, None].expand(-1, x.num_channels)
    feats = x.features.to(accumulation_dtype(x.dtype)) if reduce == "mean" else x.features
    out = feats.new_zeros(x.batch_size, x.num_channels)
    return out.scatter_reduce(0, index, feats, reduce, include_self=False).to(x.features.dtype)


def global_max_pool(x: SparseTensor) -> torch.Tensor:
    """Per batch item, the max over its sites: [B, C] (zeros for an item without sites)."""
    return _global(x, "amax")


def global_avg_pool(x: SparseTensor) -> torch.Tensor:
    """Per batch item, the mean over its sites: [B, C] (zeros for an item without sites)."""
    return _global(x, "mean")
