"""The differentiable sparse convolution over a kernel map: one autograd Function for conv and depthwise."""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from warpsparse.algorithms.base import Op, epilogue
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.tuner import AlgoSpec
from warpsparse.tuner.dispatcher import dispatch_unchecked
from warpsparse.tuner.modes import mode_for

CONV_TRIPLE = (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD)
DEPTHWISE_TRIPLE = (Op.DW_FWD, Op.DW_DGRAD, Op.DW_WGRAD)


def _result_shape(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> tuple[int, ...]:
    """Shape of ``op(a, b, kmap)`` (see :class:`Op`)."""
    return {
        Op.CONV_FWD: (kmap.num_out, b.shape[-1]),
        Op.CONV_DGRAD: (kmap.num_in, b.shape[1]),
        Op.CONV_WGRAD: (kmap.kernel_volume, a.shape[1], b.shape[1]),
        Op.DW_FWD: (kmap.num_out, b.shape[1]),
        Op.DW_DGRAD: (kmap.num_in, b.shape[1]),
        Op.DW_WGRAD: (kmap.kernel_volume, a.shape[1]),
    }[op]


def run_op(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, algo: AlgoSpec,
           bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``op(a, b, kmap)`` (with a forward op's epilogue) through the dispatcher; empty maps give zeros (plus
    the epilogue) without dispatching."""
    if kmap.num_in == 0 or kmap.num_out == 0:
        return epilogue(a.new_zeros(_result_shape(op, a, b, kmap)), bias, relu)
    return dispatch_unchecked(op, a.contiguous(), b.contiguous(), kmap, algo, bias, relu)


def _remember_conv(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    """What the backward of a conv needs: the operands, the output where a ReLU was fused, the map and ops."""
    features, weight, _, kmap, ops, _, bwd_algo, relu = inputs
    ctx.save_for_backward(features, weight, output if relu else None)
    ctx.kmap, ctx.ops, ctx.bwd_algo = kmap, ops, bwd_algo


class SparseConvFunction(torch.autograd.Function):
    """Forward (with its bias and ReLU epilogue) and the gradients of a conv (or depthwise conv) over one map.

    A plain backward runs the tuned gradient ops. Under ``create_graph=True`` (a gradient penalty, or
    ``torch.func.grad``) the gradients are built from differentiable pieces instead: the input gradient is the
    forward conv over the reversed map (weight transposed), the weight gradient a :class:`WeightGradFunction`.
    Call it through :func:`sparse_conv`.
    """

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap,
                ops: tuple[Op, Op, Op], fwd_algo: AlgoSpec, bwd_algo: AlgoSpec, relu: bool) -> torch.Tensor:
        out = run_op(ops[0], features, weight, kmap, fwd_algo, bias, relu)
        _remember_conv(ctx, (features, weight, bias, kmap, ops, fwd_algo, bwd_algo, relu), out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        features, weight, out = ctx.saved_tensors
        kmap, ops, algo = ctx.kmap, ctx.ops, ctx.bwd_algo
        grad_out = grad_out.to(features.dtype)
        if out is not None:  # through the fused ReLU
            grad_out = grad_out.masked_fill(out <= 0, 0)
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: gradients that can be differentiated again
            grad_in = backward_conv(grad_out, weight, kmap.reversed(), ops, algo) if needs[0] else None
            grad_w = WeightGradFunction.apply(features, grad_out, kmap, ops, algo) if needs[1] else None
        else:
            grad_in = run_op(ops[1], grad_out, weight, kmap, algo) if needs[0] else None
            grad_w = run_op(ops[2], features, grad_out, kmap, algo) if needs[1] else None
        grad_b = grad_out.sum(0) if needs[2] else None  # torch accumulates half types in fp32
        return grad_in, grad_w, grad_b, None, None, None, None, None


class _TransformableConv(SparseConvFunction):
    """The same Function in the ``setup_context`` form, which ``torch.func`` transforms require. Only used while
    one is active: torch binds such a Function's arguments with ``inspect`` at every call (about 100 us)."""

    @staticmethod
    def forward(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                kmap: KernelMap, ops: tuple[Op, Op, Op], fwd_algo: AlgoSpec, bwd_algo: AlgoSpec,
                relu: bool) -> torch.Tensor:
        return run_op(ops[0], features, weight, kmap, fwd_algo, bias, relu)

    setup_context = staticmethod(_remember_conv)


def autograd_form(classic: type[torch.autograd.Function],
                  transformable: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """The form of an autograd Function to apply now: its ``setup_context`` form while a ``torch.func`` transform
    runs (which needs it), else the classic form (torch binds the other's arguments with ``inspect``)."""
    return transformable if torch._C._are_functorch_transforms_active() else classic


def sparse_conv(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap,
                ops: tuple[Op, Op, Op], fwd_algo: AlgoSpec, bwd_algo: AlgoSpec, relu: bool) -> torch.Tensor:
    """The differentiable conv (:class:`SparseConvFunction`), in the form :func:`autograd_form` picks."""
    return autograd_form(SparseConvFunction, _TransformableConv).apply(features, weight, bias, kmap, ops, fwd_algo,
                                                                       bwd_algo, relu)


def backward_conv(grad: torch.Tensor, weight: torch.Tensor, reverse: KernelMap, ops: tuple[Op, Op, Op],
                  algo: AlgoSpec) -> torch.Tensor:
    """The input gradient as a differentiable conv: the forward op over the ``reverse`` map with each weight
    offset transposed (a depthwise weight as it is)."""
    weight_t = weight if ops[0].depthwise else weight.transpose(1, 2)
    return sparse_conv(grad, weight_t, None, reverse, ops, algo, algo, False)


class WeightGradFunction(torch.autograd.Function):
    """The weight gradient ``dW[k] = x[in_k]^T dy[out_k]`` as a function of ``x`` and ``dy`` (bilinear), for
    gradients of gradients: its own gradients are convs (:func:`backward_conv` and the forward op)."""

    @staticmethod
    def forward(features: torch.Tensor, grad_out: torch.Tensor, kmap: KernelMap, ops: tuple[Op, Op, Op],
                algo: AlgoSpec) -> torch.Tensor:
        return run_op(ops[2], features, grad_out, kmap, algo)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        features, grad_out, kmap, ops, algo = inputs
        ctx.save_for_backward(features, grad_out)
        ctx.kmap, ctx.ops, ctx.algo = kmap, ops, algo

    @staticmethod
    def backward(ctx: Any, grad_w: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        features, grad_out = ctx.saved_tensors
        kmap, ops, algo = ctx.kmap, ctx.ops, ctx.algo
        grad_w = grad_w.to(features.dtype)
        needs = ctx.needs_input_grad
        d_features = backward_conv(grad_out, grad_w, kmap.reversed(), ops, algo) if needs[0] else None
        d_grad_out = sparse_conv(features, grad_w, None, kmap, ops, algo, algo, False) if needs[1] else None
        return d_features, d_grad_out, None, None, None


def conv_features(features: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, bias: torch.Tensor | None = None,
                  fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None, depthwise: bool = False,
                  relu: bool = False) -> torch.Tensor:
    """Convolve ``features`` [N_in, C_in] over ``kmap`` with ``weight`` ([K, C_in, C_out], or [K, C] depthwise),
    add ``bias`` [C_out] and, with ``relu``, apply ReLU: the bias and ReLU are the forward kernel's epilogue.

    Under ``torch.autocast`` features, weight and bias are cast to the autocast dtype (float64 ones stay, as
    with torch's ops); the features and weight dtypes must then match (the bias is cast to theirs).
    """
    if not isinstance(kmap, KernelMap):
        raise TypeError(f"the kernel map must be a warpsparse KernelMap, got {type(kmap).__name__}")
    for name, tensor in (("features", features), ("weight", weight)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point() or tensor.layout != torch.strided:
            raise TypeError(f"{name} must be a dense floating-point tensor, got {tensor.dtype} {tensor.layout}")
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {relu!r}")
    if features.dim() != 2:
        raise ValueError(f"features must have shape [N_in, C_in], got {tuple(features.shape)}")
    expected = 2 if depthwise else 3
    if weight.dim() != expected or weight.shape[0] != kmap.kernel_volume:
        want = "[K, C]" if depthwise else "[K, C_in, C_out]"
        raise ValueError(f"weight must have shape {want} with K={kmap.kernel_volume}, got {tuple(weight.shape)}")
    if features.shape[0] != kmap.num_in:
        raise ValueError(f"features has {features.shape[0]} rows but the kernel map expects {kmap.num_in} inputs")
    if features.shape[1] != weight.shape[1]:
        raise ValueError(f"features have {features.shape[1]} channels but the weight expects {weight.shape[1]}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != weight.shape[-1:]):
        raise ValueError(f"bias must be a tensor of shape [C_out] = ({weight.shape[-1]},), got "
                         f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    if features.device != weight.device:
        raise ValueError(f"features are on {features.device} but the weight on {weight.device}")
    device_type = features.device.type
    autocast = torch.is_autocast_enabled(device_type)
    if autocast:  # as torch's autocast: float64 stays float64
        dtype = torch.get_autocast_dtype(device_type)
        features, weight = (t if t.dtype == torch.float64 else t.to(dtype) for t in (features, weight))
    if features.dtype != weight.dtype:
        raise TypeError(f"features are {features.dtype} but the weight is {weight.dtype}; cast one of them or "
                        "run under torch.autocast")
    if bias is not None and bias.device != features.device:
        raise ValueError(f"bias is on {bias.device} but the features on {features.device}")
    if bias is not None and bias.dtype != features.dtype:
        bias = bias.to(features.dtype)
    ops = DEPTHWISE_TRIPLE if depthwise else CONV_TRIPLE
    if bwd_algo is not None:
        mode_for(ops[1], bwd_algo)  # a bad name fails here, not at the backward pass (parsed once, memoised)
    # the algorithms run in the operands' dtype (autocast off); without gradients no autograd node is made
    with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
        if torch.is_grad_enabled() and (features.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return sparse_conv(features, weight, bias, kmap, ops, fwd_algo, bwd_algo, relu)
        return run_op(ops[0], features, weight, kmap, fwd_algo, bias, relu)
