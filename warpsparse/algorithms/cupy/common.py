"""What the CuPy algorithms share: when they apply, the once-per-call checks, the split-k reduction."""
from __future__ import annotations

import functools
import math
from abc import abstractmethod
from typing import Any, Callable, NamedTuple

import torch

from warpsparse.algorithms.base import Algorithm, Op, ParamSpace, Params, Signature, epilogue
from warpsparse.algorithms.cupy import runtime
from warpsparse.algorithms.cupy.configs import DT_CODE, space_of, sum_splits_name
from warpsparse.coords.kernel_map import KernelMap

_DTYPES = "float16, bfloat16, float32"
_SUM_BLOCK = 256


class Instantiation(NamedTuple):
    """A compiled kernel: its source family, C++ name expression and dynamic shared memory."""

    family: str
    name: str
    dynamic_smem: int = 0


def contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when contiguous (the usual case: no copy), else a contiguous copy."""
    return t if t.is_contiguous() else t.contiguous()


def unsupported_reason(sig: Signature) -> str | None:
    """None when the CuPy kernels can run ``sig``, else a short reason."""
    reason = runtime.unavailable_reason()
    if reason is not None:
        return reason
    if sig.device_type != "cuda":
        return "needs a CUDA tensor"
    if sig.dtype not in DT_CODE:
        return f"dtype {sig.dtype} is not supported (supported: {_DTYPES}; the explicit algorithms take the rest)"
    if runtime.device_info().capability < (7, 0):
        return "needs a GPU of compute capability 7.0 or newer"
    return None


def _expected(op: Op, kmap: KernelMap) -> tuple[int, int, int, int]:
    """(rows of a, leading size of b, dims of b, the dim of b whose size must equal a's channels; -1: none)."""
    k = kmap.kernel_volume
    return {
        Op.CONV_FWD: (kmap.num_in, k, 3, 1),
        Op.CONV_DGRAD: (kmap.num_out, k, 3, 2),
        Op.CONV_WGRAD: (kmap.num_in, kmap.num_out, 2, -1),
        Op.DW_FWD: (kmap.num_in, k, 2, 1),
        Op.DW_DGRAD: (kmap.num_out, k, 2, 1),
        Op.DW_WGRAD: (kmap.num_in, kmap.num_out, 2, 1),
    }[op]


def prepare(name: str, op: Op, a: torch.Tensor, b: torch.Tensor,
            kmap: KernelMap) -> tuple[torch.Tensor, torch.Tensor]:
    """Check dtype, device and shapes of ``op(a, b, kmap)``; return ``a`` and ``b`` contiguous."""
    if a.dtype != b.dtype or a.dtype not in DT_CODE:
        raise TypeError(f"{name}: a and b must share one dtype among {_DTYPES}, got {a.dtype} and {b.dtype}")
    dev = a.get_device()  # -1 on CPU
    if dev < 0 or b.get_device() != dev or kmap.device != a.device:
        raise ValueError(f"{name}: a, b and the kernel map must be on one CUDA device, got {a.device}, "
                         f"{b.device} and {kmap.device}")
    rows_a, rows_b, dims_b, chan_dim = _expected(op, kmap)
    if (a.dim() != 2 or b.dim() != dims_b or a.shape[0] != rows_a or b.shape[0] != rows_b
            or (chan_dim >= 0 and b.shape[chan_dim] != a.shape[1])):
        raise ValueError(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit {op.value} over a map "
                         f"of {kmap.num_in} inputs, {kmap.num_out} outputs and {kmap.kernel_volume} offsets "
                         f"(see Op for the layouts)")
    return contiguous(a), contiguous(b)


def sum_splits(ws: torch.Tensor, out: torch.Tensor, splits: int) -> None:
    """``out = ws.view(splits, *out.shape).sum(0)`` in a fixed order, cast to ``out``'s dtype (one launch)."""
    n, dev = out.numel(), out.device.index
    fn = runtime.function("common", sum_splits_name(DT_CODE[out.dtype]), dev)
    runtime.launch(fn, min(math.ceil(n / _SUM_BLOCK), 65535), (_SUM_BLOCK,),
                   (runtime.ptr(ws), runtime.ptr(out), n, splits), dev)


class CupyAlgorithm(Algorithm):
    """An algorithm of CuPy-compiled kernels: availability, validation and device selection done once here;
    subclasses enumerate their points and compute."""

    @abstractmethod
    def points(self, sig: Signature) -> list[dict[str, Any]]:
        """Every parameter point that fits ``sig`` on the current device."""

    @abstractmethod
    def preference(self, point: dict[str, Any]) -> tuple:
        """Sort key choosing the untuned default point (lowest first)."""

    @abstractmethod
    def point_instantiations(self, sig: Signature, params: Params) -> list[Instantiation]:
        """The kernels a run of ``sig`` at ``params`` launches, for aligned tensors."""

    def instantiations(self, sig: Signature) -> list[Instantiation]:
        """Every kernel the points of ``sig`` can select for aligned tensors (to compile ahead, e.g. with
        :func:`runtime.precompile`)."""
        return list(dict.fromkeys(k for p in self.points(sig) for k in self.point_instantiations(sig, p)))

    def compile_jobs(self, sig: Signature, params: Params) -> list[Callable[[], object]]:
        """One :func:`runtime.function` call per kernel of :meth:`point_instantiations` on the current device."""
        if self.missing_backend() is not None:
            return []
        device = torch.cuda.current_device()
        return [functools.partial(runtime.function, k.family, k.name, device, k.dynamic_smem)
                for k in self.point_instantiations(sig, params)]

    @abstractmethod
    def compute(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        """``op(a, b, kmap)`` on validated, contiguous tensors of the current device."""

    def missing_backend(self) -> str | None:
        return runtime.unavailable_reason()

    def applies_to(self, sig: Signature) -> str | None:
        return super().applies_to(sig) or unsupported_reason(sig)

    def param_space(self, sig: Signature) -> ParamSpace:
        return space_of(self.points(sig))

    def default_params(self, sig: Signature) -> dict[str, Any]:
        points = self.points(sig)
        return min(points, key=self.preference) if points else {}

    def run(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap,
            bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        if op not in self.ops:
            raise ValueError(f"{self.name} does not implement {op.value}")
        reason = self.missing_backend()
        if reason is not None:
            raise RuntimeError(f"{self.name}: {reason}")
        a, b = prepare(self.name, op, a, b, kmap)
        if a.get_device() != torch.cuda.current_device():
            with torch.cuda.device(a.device):
                out = self.compute(op, params, a, b, kmap)
        else:
            out = self.compute(op, params, a, b, kmap)
        return epilogue(out, bias, relu) if op.is_forward else out
