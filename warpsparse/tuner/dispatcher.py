"""Dispatch of one op: an in-memory decision table in front of the tuner.

A call's slot is its bucketed signature, device and mode; a hit runs the remembered (algorithm, params)
at once (no file I/O, no device sync). A miss resolves the allowed algorithms, then tunes (or reuses what
the persistent cache holds) and fills the slot.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Hashable, Iterator, Sequence

import torch

from warpsparse.algorithms import registry
from warpsparse.algorithms.base import Algorithm, Op, Signature
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.tuner import store
from warpsparse.tuner.key import entry_key, hot_key
from warpsparse.tuner.modes import AUTO, REFERENCE, AlgoSpec, Mode, describe, env_setting, mode_for
from warpsparse.tuner.search import Choice, choose

log = logging.getLogger("warpsparse.tuner")

Slot = tuple[Hashable, Mode]

_table: dict[Slot, Choice] = {}
_tuning = threading.RLock()
_skip_logged: set[tuple[str, str, str]] = set()
_collecting: dict[Slot, "Call"] | None = None


@dataclass(frozen=True)
class Call:
    """One recorded call (see :func:`collect_calls`)."""

    op: Op
    a: torch.Tensor
    b: torch.Tensor
    kmap: KernelMap
    mode: Mode


def dispatch(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, algo: AlgoSpec = None,
             bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """Run ``op(a, b, kmap)`` with the fastest correct algorithm allowed by ``algo``.

    ``a`` and ``b`` as :class:`Op` lists them (one dtype and device). ``algo``: an algorithm name or mode enum,
    a list of them, ``"auto"``, or ``None`` (the environment variable for ``op``, default auto). The first call
    of a signature tunes; later ones reuse the choice. ``bias`` [C_out] (``a``'s dtype and device) and
    ``relu``: the epilogue of a forward op (tuning ignores it). Bad operands are a ``TypeError``/``ValueError``.
    """
    _check_operands(op, a, b, kmap)
    if bias is not None or relu:
        _check_epilogue(op, a, b, bias, relu)
    return dispatch_unchecked(op, a, b, kmap, algo, bias, relu)


def dispatch_unchecked(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, algo: AlgoSpec = None,
                       bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """:func:`dispatch` for callers that checked the operands and epilogue themselves (``conv_features``)."""
    slot = (hot_key(op, a, b, kmap), mode_for(op, algo))
    choice = _table.get(slot)
    if choice is None:
        choice = _decide(op, a, b, kmap, slot, algo)
    if bias is not None or relu:
        return choice[0].run(op, choice[1], a, b, kmap, bias, relu)
    return choice[0].run(op, choice[1], a, b, kmap)  # algorithms written before the epilogue keep working


def _check_operands(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> None:
    """``TypeError``/``ValueError`` unless ``a`` and ``b`` are what :class:`Op` lists for ``op`` on ``kmap``."""
    if not isinstance(op, Op):
        raise TypeError(f"op must be a warpsparse Op ({', '.join(o.name for o in Op)}), got {op!r}")
    if not isinstance(kmap, KernelMap):
        raise TypeError(f"the kernel map must be a warpsparse KernelMap, got {type(kmap).__name__}")
    dgrad, wgrad = op in (Op.CONV_DGRAD, Op.DW_DGRAD), op in (Op.CONV_WGRAD, Op.DW_WGRAD)
    a_name, b_name = "grad_out" if dgrad else "features", "grad_out" if wgrad else "weight"
    for name, t in ((a_name, a), (b_name, b)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.layout != torch.strided:
            got = f"{t.dtype} {t.layout}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{op.value}: {name} must be a dense floating-point tensor, got {got}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"{op.value}: {a_name} ({a.dtype} on {a.device}) and {b_name} ({b.dtype} on {b.device}) "
                         "must share a dtype and a device")
    rows, c = (kmap.num_out if dgrad else kmap.num_in), (a.shape[-1] if a.dim() == 2 else None)
    if a.dim() != 2 or a.shape[0] != rows:
        raise ValueError(f"{op.value}: {a_name} must be [{rows}, C] for this map, got {tuple(a.shape)}")
    k = kmap.kernel_volume
    if wgrad:
        want = f"[{kmap.num_out}, {c if op.depthwise else 'C_out'}]"
        ok = b.dim() == 2 and b.shape[0] == kmap.num_out and (not op.depthwise or b.shape[1] == c)
    elif op.depthwise:
        want, ok = f"[{k}, {c}]", b.shape == (k, c)
    else:
        want = f"[{k}, C_in, {c}]" if dgrad else f"[{k}, {c}, C_out]"
        ok = b.dim() == 3 and b.shape[0] == k and b.shape[2 if dgrad else 1] == c
    if not ok:
        raise ValueError(f"{op.value}: {b_name} must be {want} for this map and {a_name}, got {tuple(b.shape)}")


def _check_epilogue(op: Op, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> None:
    """``ValueError`` unless ``op`` is a forward op and ``bias`` (if any) is [C_out] of ``a``'s dtype and device."""
    if not op.is_forward:
        raise ValueError(f"bias and relu are the epilogue of a forward op; {op.value} takes neither")
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {relu!r}")
    c_out = b.shape[-1]
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (c_out,)
                             or bias.dtype != a.dtype or bias.device != a.device):
        got = (f"{tuple(bias.shape)} {bias.dtype} on {bias.device}" if isinstance(bias, torch.Tensor)
               else type(bias).__name__)
        raise ValueError(f"bias must be a [{c_out}] tensor of {a.dtype} on {a.device} (the features'), got {got}")


def _source(op: Op, algo: AlgoSpec) -> str:
    if algo is not None:
        return "fwd_algo" if op.is_forward else "bwd_algo"
    setting = env_setting(op)
    return f"{setting[0]}={setting[1]!r}" if setting else "auto"


def _describe_call(sig: Signature) -> str:
    return (f"{sig.op.value} ({str(sig.dtype).removeprefix('torch.')} on {sig.device_type}, "
            f"C={sig.c_in}->{sig.c_out}, K={sig.kernel_volume})")


def _why_not(alg: Algorithm, sig: Signature) -> str | None:
    try:
        return alg.applies_to(sig)
    except Exception as exc:  # noqa: BLE001 - a broken applies_to disqualifies its algorithm
        return f"applies_to raised {type(exc).__name__}: {exc}"


def allowed_algorithms(op: Op, sig: Signature, mode: Mode, algo: AlgoSpec = None) -> list[Algorithm]:
    """The registered algorithms of ``mode`` that can run ``sig``; ``ValueError`` saying why if there are none."""
    chosen: list[Algorithm] = []
    reasons: dict[str, str] = {}
    if mode is AUTO:
        candidates: Sequence[Algorithm | str] = registry.algorithms_for(op)
    else:
        candidates = list(mode)
    for item in candidates:
        if isinstance(item, str):
            name = item
            try:
                item = registry.get(name)
            except KeyError:
                reasons[name] = "not available in this installation (not registered: its backend is missing)"
                continue
        reason = _why_not(item, sig)
        if reason is None:
            chosen.append(item)
        else:
            reasons[item.name] = reason
    if not chosen:
        why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items()) or "no algorithm is registered"
        raise ValueError(f"{_source(op, algo)}: {describe(mode)} cannot run {_describe_call(sig)}: {why}")
    if mode is not AUTO:
        for name, reason in reasons.items():
            if (op.value, name, reason) not in _skip_logged:
                _skip_logged.add((op.value, name, reason))
                log.info("skipping %s for %s: %s", name, op.value, reason)
    return chosen


def _default(algos: list[Algorithm], sig: Signature) -> Choice:
    """The untuned choice: the reference if allowed, else the first allowed algorithm, default parameters."""
    alg = next((a for a in algos if a.name == REFERENCE[sig.op.depthwise]), algos[0])
    return alg, alg.default_params(sig)


def _decide(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, slot: Slot, algo: AlgoSpec) -> Choice:
    mode = slot[1]
    sig = Signature.of(op, a, b, kmap)
    algos = allowed_algorithms(op, sig, mode, algo)
    if min(sig.n_in, sig.n_out, sig.num_pairs) == 0:  # nothing to compute, nothing to tune
        return _table.setdefault(slot, _default(algos, sig))
    collecting = _collecting
    if collecting is not None:
        collecting.setdefault(slot, Call(op, a, b, kmap, mode))
        return _default(algos, sig)
    if a.is_cuda and torch.cuda.is_current_stream_capturing():  # timing would break the capture
        return _default(algos, sig)
    with _tuning:
        choice = _table.get(slot)
        if choice is None:
            choice = _table[slot] = choose(op, a, b, kmap, sig, algos, entry_key(sig, kmap, a.device),
                                           store.store_for())
    return choice


@contextlib.contextmanager
def collect_calls() -> Iterator[list[Call]]:
    """Record the first call of every untuned signature (running untuned defaults) for :func:`pretune`.

    The list is filled when the ``with`` block ends.
    """
    global _collecting
    previous = _collecting
    calls: dict[Slot, Call] = {}
    _collecting = calls
    found: list[Call] = []
    try:
        yield found
    finally:
        _collecting = previous
        found.extend(calls.values())


def pretune(calls: Sequence[Call], retune: bool = False, progress: bool = True) -> list[Choice]:
    """Tune every recorded call (with a progress bar); ``retune`` ignores cached results."""
    from tqdm.auto import tqdm

    choices = []
    with _tuning, torch.no_grad():
        for call in tqdm(calls, desc="tuning", unit="signature", disable=not progress):
            sig = Signature.of(call.op, call.a, call.b, call.kmap)
            algos = allowed_algorithms(call.op, sig, call.mode)
            choice = choose(call.op, call.a, call.b, call.kmap, sig, algos, entry_key(sig, call.kmap, call.a.device),
                            store.store_for(), retune=retune)
            _table[(hot_key(call.op, call.a, call.b, call.kmap), call.mode)] = choice
            choices.append(choice)
    return choices


def save_tuning_cache() -> bool:
    """Write every pending tuning result to the cache file now; ``True`` if all were written."""
    return store.save_all()


def reset(save: bool = True) -> None:
    """Forget every decision and cached result held in memory (first saving them unless ``save=False``)."""
    with _tuning:
        if save:
            store.save_all()
        _table.clear()
        store.forget_all()


def _after_fork_in_child() -> None:
    global _tuning
    _tuning = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)
