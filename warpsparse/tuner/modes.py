"""Algorithm modes: the WarpConvNet-compatible enums and the parsing of ``fwd_algo`` / ``bwd_algo`` values.

A mode is ``None`` (AUTO: every algorithm that applies) or a sorted tuple of library algorithm names.
``None`` as a user value means "from the environment", read at call time.
"""
from __future__ import annotations

import enum
import os
import warnings
from typing import Any, Final, Optional, Sequence, Union

from warpsparse.algorithms.base import Op


class SPARSE_CONV_FWD_ALGO_MODE(str, enum.Enum):
    EXPLICIT_GEMM = "explicit_gemm"
    IMPLICIT_GEMM = "implicit_gemm"
    CUPY_IMPLICIT_GEMM = "cupy_implicit_gemm"
    AUTO = "auto"


class SPARSE_CONV_BWD_ALGO_MODE(str, enum.Enum):
    EXPLICIT_GEMM = "explicit_gemm"
    IMPLICIT_GEMM = "implicit_gemm"
    CUPY_IMPLICIT_GEMM = "cupy_implicit_gemm"
    AUTO = "auto"


class SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE(str, enum.Enum):
    EXPLICIT = "explicit"
    IMPLICIT = "implicit"
    CUPY_IMPLICIT = "cupy_implicit"
    AUTO = "auto"


class SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE(str, enum.Enum):
    EXPLICIT = "explicit"
    IMPLICIT = "implicit"
    CUPY_IMPLICIT = "cupy_implicit"
    AUTO = "auto"


AlgoSpec = Union[None, str, enum.Enum, Sequence[Union[str, enum.Enum]]]
Mode = Optional[tuple[str, ...]]
AUTO: Final = None  # the mode of every algorithm that applies

#: The library's algorithm names (whether or not they are registered in this process).
CONV_ALGORITHMS = ("explicit_gemm", "implicit_gemm", "cupy_implicit_gemm")
DEPTHWISE_ALGORITHMS = ("explicit", "implicit", "cupy_implicit")
#: The algorithm every candidate's output is checked against.
REFERENCE = {False: "explicit_gemm", True: "explicit"}

_AUTO_WORDS = frozenset({"auto", "all", "trimmed"})
#: WarpConvNet depthwise settings used the conv names.
_DEPTHWISE_ALIASES = {"explicit_gemm": "explicit", "implicit_gemm": "implicit", "cupy_implicit_gemm": "cupy_implicit"}
#: WarpConvNet algorithms warpsparse does not provide: accepted with one warning and ignored.
FOREIGN_ALGORITHMS = frozenset({
    "cutlass_implicit_gemm", "cutlass_grouped_hybrid", "cute_implicit_gemm", "cute_grouped",
    "cute_implicit_gemm_sm90", "cute_grouped_sm90", "explicit_gemm_grouped", "implicit_gemm_grouped",
    "explicit_gemm_batched", "mask_gemm", "mask_implicit_gemm", "wmma_implicit_gemm", "production",
})

ENV_VARS: dict[Op, tuple[str, ...]] = {
    Op.CONV_FWD: ("WARPCONVNET_FWD_ALGO_MODE",),
    Op.CONV_DGRAD: ("WARPCONVNET_DGRAD_ALGO_MODE", "WARPCONVNET_BWD_ALGO_MODE"),
    Op.CONV_WGRAD: ("WARPCONVNET_WGRAD_ALGO_MODE", "WARPCONVNET_BWD_ALGO_MODE"),
    Op.DW_FWD: ("WARPCONVNET_DEPTHWISE_CONV_FWD_ALGO_MODE",),
    Op.DW_DGRAD: ("WARPCONVNET_DEPTHWISE_CONV_BWD_ALGO_MODE",),
    Op.DW_WGRAD: ("WARPCONVNET_DEPTHWISE_CONV_BWD_ALGO_MODE",),
}

_warned: set[str] = set()
_parsed: dict[tuple[Any, ...], Mode] = {}


def library_algorithms(depthwise: bool) -> tuple[str, ...]:
    """The valid algorithm names for conv (``depthwise=False``) or depthwise ops."""
    return DEPTHWISE_ALGORITHMS if depthwise else CONV_ALGORITHMS


def _valid_names(depthwise: bool) -> str:
    return ", ".join(("auto",) + library_algorithms(depthwise))


def _split(text: str) -> list[str]:
    """``"a"``, ``"[a, b]"`` or ``"a,b"`` (quotes and spaces forgiven) -> names."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    return [part.strip().strip("'\"").strip() for part in body.split(",") if part.strip().strip("'\"").strip()]


def _name_of(item: Any, what: str) -> str:
    if isinstance(item, enum.Enum):
        item = item.value
    if not isinstance(item, str):
        raise TypeError(f"{what} must be an algorithm name, an algorithm-mode enum, a list of them or None; "
                        f"got {item!r} ({type(item).__name__})")
    return item.strip().lower()


def parse_mode(value: AlgoSpec, depthwise: bool, what: str) -> Mode:
    """Parse a user or environment value (never ``None``) into a mode; ``what`` names it in errors."""
    items: list[Any]
    if isinstance(value, str):
        items = _split(value)
    elif isinstance(value, enum.Enum):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = [piece for item in value
                 for piece in (_split(item) if isinstance(item, str) else [item])]
    else:
        raise TypeError(f"{what} must be an algorithm name, an algorithm-mode enum, a list of them or None; "
                        f"got {value!r} ({type(value).__name__})")
    valid = library_algorithms(depthwise)
    names: set[str] = set()
    auto = False
    for item in items:  # every name is checked, also after an auto word
        name = _name_of(item, what)
        if depthwise:
            name = _DEPTHWISE_ALIASES.get(name, name)
        if name in _AUTO_WORDS:
            auto = True
        elif name in valid:
            names.add(name)
        elif name in FOREIGN_ALGORITHMS:
            if name not in _warned:
                _warned.add(name)
                warnings.warn(f"{what}: {name!r} is a WarpConvNet algorithm that warpsparse does not provide; "
                              f"ignoring it (valid names: {_valid_names(depthwise)})", UserWarning, stacklevel=3)
        else:
            raise ValueError(f"{what}: unknown algorithm {name!r}; valid names: {_valid_names(depthwise)} "
                             f"(WarpConvNet-only names such as 'cutlass_implicit_gemm' are accepted and ignored)")
    return AUTO if auto else tuple(sorted(names)) or AUTO


def _cached_parse(value: Any, depthwise: bool, source: str) -> Mode:
    """``parse_mode`` memoised per (value, family, source); ``source`` is an argument or variable name."""
    cache_key = (value, depthwise, source)
    try:
        return _parsed[cache_key]
    except KeyError:
        what = f"{source}={value!r}" if source.startswith("WARPCONVNET_") else source
        mode = _parsed[cache_key] = parse_mode(value, depthwise, what)
        return mode
    except TypeError:  # unhashable value: parse_mode raises the proper error
        return parse_mode(value, depthwise, source)


def env_setting(op: Op) -> tuple[str, str] | None:
    """``(variable, value)`` of the environment variable that sets ``op``'s mode now, if any."""
    for var in ENV_VARS[op]:
        raw = os.environ.get(var)
        if raw is not None and raw.strip():
            return var, raw
    return None


_OP_INFO: dict[Op, tuple[bool, str, tuple[str, ...]]] = {
    op: (op.depthwise, "fwd_algo" if op.is_forward else "bwd_algo", ENV_VARS[op]) for op in Op}


def mode_for(op: Op, algo: AlgoSpec) -> Mode:
    """The mode of one call: ``algo`` itself, or (``None``) the environment (AUTO when unset)."""
    depthwise, argument, variables = _OP_INFO[op]
    if algo is None:
        for var in variables:  # a blank variable counts as unset, as in env_setting
            raw = os.environ.get(var)
            if raw and not raw.isspace():
                return _cached_parse(raw, depthwise, var)
        return AUTO
    if type(algo) is list:
        algo = tuple(algo)
    return _cached_parse(algo, depthwise, argument)


def describe(mode: Mode) -> str:
    """``auto`` or ``[a, b]``."""
    return "auto" if mode is None else "[" + ", ".join(mode) + "]"
