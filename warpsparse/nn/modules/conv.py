"""Sparse convolution modules: spconv-style layers, WarpConvNet's SpatiallySparseConv, depthwise."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from warpsparse.coords.geometry import Triple, submanifold_geometry, triple
from warpsparse.nn.functional.sparse_conv import (
    sparse_conv3d,
    sparse_inverse_conv3d,
    spatially_sparse_conv,
    subm_conv3d,
)
from warpsparse.nn.functional.sparse_conv_depth import sparse_depthwise_conv3d
from warpsparse.sparse_tensor import SparseTensor
from warpsparse.tuner import AlgoSpec
from warpsparse.tuner.modes import parse_mode


class _SparseConvBase(nn.Module):
    """Holds ``weight`` [K, C_in, C_out] (or [K, C] depthwise), ``bias`` [C_out], whether a ReLU follows (fused
    into the forward kernel with the bias) and the algorithm choice."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple, bias: bool,
                 fwd_algo: AlgoSpec, bwd_algo: AlgoSpec, relu: bool, depthwise: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = triple(kernel_size, "kernel_size", 1)
        k = self.kernel_size[0] * self.kernel_size[1] * self.kernel_size[2]
        shape = (k, in_channels) if depthwise else (k, in_channels, out_channels)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        for name, spec in (("fwd_algo", fwd_algo), ("bwd_algo", bwd_algo)):
            if spec is not None:
                parse_mode(spec, depthwise, name)  # a bad name fails here, not at the first (backward) call
        if not isinstance(relu, bool):
            raise TypeError(f"relu must be a bool, got {relu!r}")
        self.fwd_algo, self.bwd_algo, self.relu = fwd_algo, bwd_algo, relu
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(fan_in), as PyTorch's conv layers."""
        fan_in = self.weight.shape[0] * (1 if self.weight.dim() == 2 else self.in_channels)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def get_extra_state(self) -> torch.Tensor:
        """The kernel size, saved with the weights (as a tensor, like every other entry of the state dict):
        [K, C_in, C_out] alone does not tell (3, 1, 3) from (1, 3, 3)."""
        return torch.tensor(self.kernel_size)

    def set_extra_state(self, state: Any) -> None:
        """Checked in :meth:`_load_from_state_dict`, before any weight is copied."""

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        extra = prefix + torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX
        saved = state_dict.get(extra)
        if saved is not None and tuple(torch.as_tensor(saved).tolist()) != self.kernel_size:
            error_msgs.append(f"{type(self).__name__} {prefix or '(top level)'}: the state dict holds the weights of "
                              f"a kernel of size {tuple(torch.as_tensor(saved).tolist())}, this module's kernel "
                              f"size is {self.kernel_size}")
            return  # nothing copied
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if extra in missing_keys:  # saved before the kernel size was: the weights' shape is all there is to check
            missing_keys.remove(extra)

    def _check(self, x: SparseTensor) -> None:
        if not isinstance(x, SparseTensor):
            raise TypeError(f"{type(self).__name__} takes a warpsparse.SparseTensor, got {type(x).__name__}")
        if x.num_channels != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input channels, got "
                             f"{x.num_channels}")
        if self.weight.shape[-1] != self.out_channels:
            raise ValueError(f"{type(self).__name__}: a weight of shape {tuple(self.weight.shape)} was assigned to a "
                             f"module of {self.out_channels} output channels")

    def extra_repr(self) -> str:
        relu = ", relu=True" if self.relu else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"bias={self.bias is not None}{relu}")


class SubMConv3d(_SparseConvBase):
    """Submanifold conv: outputs on the input sites (odd kernel sizes)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple = 3, dilation: int | Triple = 1,
                 bias: bool = True, indice_key: str | None = None, fwd_algo: AlgoSpec = None,
                 bwd_algo: AlgoSpec = None, relu: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias, fwd_algo, bwd_algo, relu)
        self.dilation = triple(dilation, "dilation", 1)
        submanifold_geometry(self.kernel_size, self.dilation)  # rejects even kernels now
        self.indice_key = indice_key

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check(x)
        return subm_conv3d(x, self.weight, self.bias, self.kernel_size, self.dilation, self.indice_key,
                           self.fwd_algo, self.bwd_algo, self.relu)


class SparseConv3d(_SparseConvBase):
    """Regular sparse conv: outputs on every reached site of the dense output grid."""

    transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple, stride: int | Triple = 1,
                 padding: int | Triple = 0, dilation: int | Triple = 1, bias: bool = True,
                 indice_key: str | None = None, fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None,
                 relu: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias, fwd_algo, bwd_algo, relu)
        self.stride = triple(stride, "stride", 1)
        self.padding = triple(padding, "padding", 0)
        self.dilation = triple(dilation, "dilation", 1)
        self.indice_key = indice_key

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check(x)
        return sparse_conv3d(x, self.weight, self.bias, self.kernel_size, self.stride, self.padding, self.dilation,
                             self.transposed, self.indice_key, self.fwd_algo, self.bwd_algo, self.relu)


class SparseConvTranspose3d(SparseConv3d):
    """Transposed sparse conv: outputs on every site some input reaches (``conv_transpose3d`` values)."""

    transposed = True


class SparseInverseConv3d(_SparseConvBase):
    """Inverse of the strided conv stored under ``indice_key``: back onto that conv's input sites."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple, indice_key: str,
                 bias: bool = True, fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None, relu: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias, fwd_algo, bwd_algo, relu)
        if not isinstance(indice_key, str):
            raise TypeError(f"indice_key must be the str key of a SparseConv3d, got {indice_key!r}")
        self.indice_key = indice_key

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check(x)
        return sparse_inverse_conv3d(x, self.weight, self.bias, self.kernel_size, self.indice_key, self.fwd_algo,
                                     self.bwd_algo, self.relu)


class SpatiallySparseConv(_SparseConvBase):
    """WarpConvNet-style conv (see :func:`warpsparse.nn.functional.spatially_sparse_conv`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Triple, stride: int | Triple = 1,
                 dilation: int | Triple = 1, transposed: bool = False, generative: bool = False, bias: bool = True,
                 fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None, relu: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias, fwd_algo, bwd_algo, relu)
        self.stride = triple(stride, "stride", 1)
        self.dilation = triple(dilation, "dilation", 1)
        self.transposed, self.generative = transposed, generative

    def forward(self, x: SparseTensor, output_spatially_sparse_tensor: SparseTensor | None = None) -> SparseTensor:
        self._check(x)
        return spatially_sparse_conv(x, self.weight, self.kernel_size, self.stride, self.dilation, self.bias,
                                     self.transposed, self.generative, output_spatially_sparse_tensor,
                                     self.fwd_algo, self.bwd_algo, self.relu)


class SparseDepthwiseConv3d(_SparseConvBase):
    """Depthwise conv (one filter per channel, weight [K, C]) on the sites of :class:`SpatiallySparseConv`."""

    def __init__(self, channels: int, kernel_size: int | Triple, stride: int | Triple = 1, dilation: int | Triple = 1,
                 bias: bool = True, fwd_algo: AlgoSpec = None, bwd_algo: AlgoSpec = None, relu: bool = False) -> None:
        super().__init__(channels, channels, kernel_size, bias, fwd_algo, bwd_algo, relu, depthwise=True)
        self.stride = triple(stride, "stride", 1)
        self.dilation = triple(dilation, "dilation", 1)

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check(x)
        return sparse_depthwise_conv3d(x, self.weight, self.bias, self.kernel_size, self.stride, self.dilation,
                                       self.fwd_algo, self.bwd_algo, self.relu)
