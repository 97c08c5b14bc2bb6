"""The algorithm interface: what an algorithm implements, when it applies, and its parameter space."""
from __future__ import annotations

import enum
import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch

if TYPE_CHECKING:
    from warpsparse.coords.kernel_map import KernelMap


class Op(str, enum.Enum):
    """Operations an algorithm can implement.

    Every op takes two tensors ``(a, b)`` and a :class:`KernelMap` and returns one tensor:

    ============  =======================  ==========================  =======================
    op            a                        b                           result
    ============  =======================  ==========================  =======================
    CONV_FWD      features [N_in, C_in]    weight [K, C_in, C_out]     [N_out, C_out]
    CONV_DGRAD    grad_out [N_out, C_out]  weight [K, C_in, C_out]     [N_in, C_in]
    CONV_WGRAD    features [N_in, C_in]    grad_out [N_out, C_out]     [K, C_in, C_out]
    DW_FWD        features [N_in, C]       weight [K, C]               [N_out, C]
    DW_DGRAD      grad_out [N_out, C]      weight [K, C]               [N_in, C]
    DW_WGRAD      features [N_in, C]       grad_out [N_out, C]         [K, C]
    ============  =======================  ==========================  =======================
    """

    CONV_FWD = "conv_fwd"
    CONV_DGRAD = "conv_dgrad"
    CONV_WGRAD = "conv_wgrad"
    DW_FWD = "dw_fwd"
    DW_DGRAD = "dw_dgrad"
    DW_WGRAD = "dw_wgrad"

    @property
    def depthwise(self) -> bool:
        return self.value.startswith("dw_")

    @property
    def is_forward(self) -> bool:
        return self in (Op.CONV_FWD, Op.DW_FWD)


CONV_OPS = frozenset({Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD})
DEPTHWISE_OPS = frozenset({Op.DW_FWD, Op.DW_DGRAD, Op.DW_WGRAD})


@dataclass(frozen=True)
class Signature:
    """What an algorithm sees of a call when deciding whether it applies and which parameters fit.

    Sizes are exact here; the tuner buckets them for its cache key.
    """

    op: Op
    n_in: int
    n_out: int
    c_in: int
    c_out: int
    kernel_volume: int
    dtype: torch.dtype
    device_type: str  # "cuda" or "cpu"
    num_pairs: int
    tf32: bool = False

    @staticmethod
    def of(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: "KernelMap") -> "Signature":
        """Describe the call ``op(a, b, kmap)`` (costs no device sync beyond ``kmap.num_pairs``)."""
        if op in (Op.CONV_FWD, Op.CONV_DGRAD):
            c_in, c_out = b.shape[1], b.shape[2]
        elif op == Op.CONV_WGRAD:
            c_in, c_out = a.shape[1], b.shape[1]
        else:
            c_in = c_out = a.shape[1]
        tf32 = a.dtype == torch.float32 and a.is_cuda and tf32_allowed()
        return Signature(op, kmap.num_in, kmap.num_out, int(c_in), int(c_out), kmap.kernel_volume,
                         a.dtype, a.device.type, kmap.num_pairs, tf32)


def tf32_allowed() -> bool:
    """Whether CUDA fp32 matmuls may use TF32: torch's ``fp32_precision`` for matmuls (their own, else the global
    one) where torch has it, else the legacy ``allow_tf32`` flag. (Reading ``allow_tf32`` raises on torch 2.13
    once the new setting was used.)"""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:
        return bool(matmul.allow_tf32)
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"


Params = Mapping[str, Any]


def epilogue(out: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """``out + bias`` and then ReLU, in place: the epilogue of a forward op for algorithms that do not fuse it
    into their kernels."""
    if bias is not None:
        out.add_(bias)
    if relu:
        out.relu_()
    return out

#: Host time (ms) that the per-offset pair list costs a fresh kernel map (0.2 ms for a 125k-site scan on an H100
#: host, ``bench/host_costs.py``, when the list still read its per-offset counts: an upper bound now), shared by
#: the two convolutions of a typical block that reuse the map.
PAIR_LIST_MS = 0.1

#: The same for the mask sort behind mask-sorted rows (0.07 ms there), shared by the ops that walk them.
MASK_SORT_MS = 0.04

#: The same for cutting the pair list into chunks (0.29 ms there, when the chunks were laid out on the host and
#: the indices copied to int32: an upper bound now).
PAIR_CHUNKS_MS = 0.15


def workspace_limit(sig: Signature) -> int:
    """Bytes a deterministic weight gradient's split-k workspace may take where a non-deterministic reduction is
    allowed instead: no more than the operands it reduces (``x`` and ``dy``), 16 MiB at least, so that a
    workspace does not set the backward pass's peak memory."""
    return max(16 << 20, (sig.n_in * sig.c_in + sig.n_out * sig.c_out) * sig.dtype.itemsize)


@dataclass(frozen=True)
class ParamSpace:
    """A named, discrete parameter space: the product of ``choices`` filtered by ``constraint``."""

    choices: Mapping[str, tuple[Any, ...]]
    constraint: Callable[[dict[str, Any]], bool] | None = None

    def points(self) -> Iterator[dict[str, Any]]:
        names = list(self.choices)
        for values in itertools.product(*(self.choices[n] for n in names)):
            point = dict(zip(names, values))
            if self.constraint is None or self.constraint(point):
                yield point


class Algorithm(ABC):
    """A pluggable implementation of some :class:`Op` s.

    Subclasses set ``name`` and ``ops`` and implement :meth:`run`; they refine :meth:`applies_to`,
    :meth:`param_space` and :meth:`estimate_cost` where it matters.
    """

    name: str
    ops: frozenset[Op]
    #: runs compile a kernel per parameter point, and :func:`warpsparse.triton_launch.precompiling` can
    #: compile many points side by side before they are timed
    precompiles: bool = False

    def missing_backend(self) -> str | None:
        """Why this installation cannot run the algorithm at all (e.g. its backend is not installed), else
        ``None``."""
        return None

    def applies_to(self, sig: Signature) -> str | None:
        """``None`` when the algorithm can run ``sig``, else a short reason why not."""
        if sig.op not in self.ops:
            return f"{self.name} does not implement {sig.op.value}"
        return None

    def param_space(self, sig: Signature) -> ParamSpace:
        """The parameter points worth timing for ``sig`` (default: a single empty point)."""
        return ParamSpace({})

    def default_params(self, sig: Signature) -> dict[str, Any]:
        """The point used without tuning: the first point of the space."""
        return next(self.param_space(sig).points(), {})

    def estimate_cost(self, sig: Signature, params: Params) -> float | None:
        """Optional relative cost estimate used to prune hopeless points (lower is better)."""
        return None

    def compile_jobs(self, sig: Signature, params: Params) -> list[Callable[[], object]]:
        """Calls that each compile (without running) a kernel a run at ``params`` needs on the current device
        and that can run on other threads side by side (default: none; compiled at the first run). Jobs that are
        equal :class:`functools.partial` objects are run once."""
        return []

    def setup_ms(self, sig: Signature, params: Params) -> float:
        """Host time (ms) a fresh kernel map costs this point for layouts no forward pass builds anyway; the
        tuner adds it to the measured time, since maps are rebuilt for every new input."""
        return 0.0

    @abstractmethod
    def run(self, op: Op, params: Params, a: torch.Tensor, b: torch.Tensor, kmap: "KernelMap",
            bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        """Compute ``op(a, b, kmap)`` with ``params`` (see :class:`Op` for shapes). Returns a new tensor.

        Forward ops only: the epilogue adds ``bias`` [C_out] (the dtype of ``a``) to every result row, then
        applies ReLU when ``relu`` is set (see :func:`epilogue`); other ops ignore both (the dispatcher refuses
        them there)."""

    def __repr__(self) -> str:
        return f"<algorithm {self.name}>"
