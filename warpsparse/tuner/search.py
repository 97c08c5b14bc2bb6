"""Benchmark the allowed candidates of one call and choose the fastest correct one.

Candidates are (algorithm, parameter point) pairs. Each new candidate first runs once and is checked against
the reference algorithm (and for leaving its inputs untouched); then it is timed (warm-up, repeats, median).
Close leaders are re-timed together before the choice. A candidate that raises or is wrong is recorded as
failed and never chosen. Results already in the cache are reused, only missing candidates are timed.

With a finite budget the first tuning of an algorithm on a signature is a short round: its default point and the
:data:`ROUND_POINTS` most promising points (winners of the cache's other signatures first, then by the
algorithm's cost estimate, one per estimated time while there are others); the rest wait, recorded as skipped,
for the signature's next tuning (usually the next process), which times them within the budget. A new network's
first call thus compiles and times a few points per signature, and the next run continues the search within
the budget.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch

from warpsparse.algorithms import registry
from warpsparse.algorithms.base import Algorithm, Op, Signature
from warpsparse.cache_schema import CandidateResult, EntryKey, candidate_ident
from warpsparse.cache_schema.models import Status
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.tuner.modes import REFERENCE
from warpsparse.tuner.store import TuningStore
from warpsparse.tuner.timing import median, output_error, poison, snapshot, time_round_robin, tolerance, unchanged
from warpsparse.triton_launch import precompiling

log = logging.getLogger("warpsparse.tuner")

BUDGET_ENV = "WARPCONVNET_TUNE_BUDGET_MS"
DEFAULT_BUDGET_MS = 2000.0
WORKERS_ENV = "WARPCONVNET_COMPILE_WORKERS"
MAX_WORKERS = 16
ROUND_POINTS = 3  # non-default points per algorithm in a signature's first tuning (with a finite budget)
PRUNE_FACTOR = 4.0  # points estimated this many times costlier than their algorithm's best are not timed
TARGET_MS = 40.0  # timed repeats per candidate aim at about this much time
MIN_REPS, MAX_REPS = 3, 20
HOPELESS = 3.0  # a candidate whose first timed runs are this much slower than the best so far stops there
LEADER_MARGIN = 1.10  # candidates within 10% of the best are re-timed together
MAX_LEADERS = 4
RETIME_ROUNDS = 5

Choice = tuple[Algorithm, dict[str, Any]]


def tune_budget_ms() -> float:
    """The per-signature tuning budget from ``WARPCONVNET_TUNE_BUDGET_MS`` (default 2000 ms)."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_MS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ValueError(f"{BUDGET_ENV}={raw!r}: expected a positive number of milliseconds "
                         "(e.g. 2000, or inf for no limit)")
    return value


def _job_key(job: Callable[[], object]) -> Hashable:
    """What makes two compile jobs the same: a :class:`functools.partial`'s function and arguments (when they
    hash), else the job's identity."""
    if isinstance(job, functools.partial):
        key = job.func, job.args, tuple(sorted(job.keywords.items()))
        try:
            hash(key)
        except TypeError:
            return id(job)
        return key
    return id(job)


def compile_workers() -> int:
    """Threads that compile candidates side by side: ``WARPCONVNET_COMPILE_WORKERS``, else the usable CPUs
    (at most 16); 1 compiles each candidate at its first run."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1))
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"{WORKERS_ENV}={raw!r}: expected a positive whole number of threads")
    return int(raw)


def compiled_on(device: torch.device) -> bool:
    """Whether kernels are compiled for ``device`` (on CPU they run in Triton's interpreter)."""
    return device.type == "cuda"


def _canonical(value: Any) -> Any:
    """A JSON-safe, comparable form of a parameter value (non-finite floats become strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass(frozen=True)
class Candidate:
    algorithm: Algorithm
    params: dict[str, Any]
    json_params: dict[str, Any]
    ident: str
    is_default: bool
    setup_ms: float  # host time a fresh map costs this point (Algorithm.setup_ms)

    @staticmethod
    def of(algorithm: Algorithm, params: dict[str, Any], sig: Signature, is_default: bool = False) -> "Candidate":
        """The candidate ``params`` of ``algorithm`` for ``sig``, with its per-map setup cost."""
        json_params = {k: _canonical(v) for k, v in sorted(params.items())}
        try:
            setup = float(algorithm.setup_ms(sig, params))
        except Exception:  # noqa: BLE001 - a broken hint counts as none
            setup = 0.0
        return Candidate(algorithm, dict(params), json_params, candidate_ident(algorithm.name, json_params),
                         is_default, setup)

    @property
    def label(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in self.json_params.items())
        return f"{self.algorithm.name}{{{inner}}}" if inner else self.algorithm.name

    def result(self, status: Status, median_ms: float | None = None, error: str | None = None) -> CandidateResult:
        return CandidateResult(algorithm=self.algorithm.name, params=self.json_params, status=status,
                               median_ms=median_ms, error=error, setup_ms=self.setup_ms)


def candidates_for(algos: list[Algorithm], sig: Signature) -> list[Candidate]:
    """Every parameter point of every algorithm, each algorithm's default point first."""
    out: list[Candidate] = []
    for alg in algos:
        default = Candidate.of(alg, alg.default_params(sig), sig, is_default=True)
        out.append(default)
        out.extend(c for c in (Candidate.of(alg, p, sig) for p in alg.param_space(sig).points())
                   if c.ident != default.ident)
    return out


def _describe(sig: Signature) -> str:
    return (f"{sig.op.value} N_in={sig.n_in} N_out={sig.n_out} C={sig.c_in}->{sig.c_out} K={sig.kernel_volume} "
            f"{str(sig.dtype).removeprefix('torch.')}{' tf32' if sig.tf32 else ''} on {sig.device_type}")


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


class _Session:
    """One tuning of one call: reference, candidate checks and timings under a time budget."""

    def __init__(self, op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, sig: Signature,
                 budget_ms: float) -> None:
        self.op, self.a, self.b, self.kmap, self.sig = op, a, b, kmap, sig
        self.device = a.device
        self.budget_ms = budget_ms
        self.start = time.perf_counter()
        self.tol = tolerance(sig.dtype, sig.tf32)
        self.snaps = (snapshot(a), snapshot(b))
        self.ref: torch.Tensor | None = None
        self.ref_error: BaseException | None = None
        self.ref_alg: Algorithm | None = None
        self._run_reference()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1e3

    def _call(self, cand: Candidate) -> Callable[[], object]:
        op, params, a, b, kmap = self.op, cand.params, self.a, self.b, self.kmap
        return lambda: cand.algorithm.run(op, params, a, b, kmap)

    def precompile(self, cands: list[Candidate]) -> None:
        """Compile the kernels of the first candidates side by side, so that their checked runs only load them
        (CUDA; of each kind as many candidates as two rounds of the compile threads): points of algorithms that
        compile per point run inside :func:`precompiling`, while the :meth:`Algorithm.compile_jobs` of the
        others run on a thread pool beside them. The time is not charged to the budget."""
        workers = compile_workers()
        if not compiled_on(self.device) or workers < 2:
            return
        points = [c for c in cands if c.algorithm.precompiles][:2 * workers]
        jobs = self._compile_jobs(cands, 2 * workers)
        if len(points) < 2 and len(jobs) < 2:
            return
        started = time.perf_counter()
        with ThreadPoolExecutor(workers, thread_name_prefix="warpsparse-compile-jobs") as pool:
            pending = [pool.submit(job) for job in jobs]
            if len(points) >= 2:
                with precompiling(workers):
                    for cand in points:
                        try:
                            self._call(cand)()
                        except Exception:  # noqa: BLE001 - the candidate's checked run reports its own failure
                            log.debug("precompiling %s failed", cand.label, exc_info=True)
            for done in pending:
                if done.exception() is not None:  # the run that needs the kernel reports the failure
                    log.debug("a compile job failed", exc_info=done.exception())
        self.start += time.perf_counter() - started

    def _compile_jobs(self, cands: list[Candidate], limit: int) -> list[Callable[[], object]]:
        """The distinct :meth:`Algorithm.compile_jobs` of the first ``limit`` candidates that name any, listed on
        the session's device; a candidate whose jobs cannot be listed is left to its checked run."""
        jobs: dict[Hashable, Callable[[], object]] = {}
        named = 0
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            for cand in cands:
                if named == limit:
                    break
                if cand.algorithm.precompiles:
                    continue
                try:
                    found = cand.algorithm.compile_jobs(self.sig, cand.params)
                except Exception:  # noqa: BLE001 - the candidate's checked run reports its own failure
                    log.debug("listing the compile jobs of %s failed", cand.label, exc_info=True)
                    continue
                named += bool(found)
                for job in found:
                    jobs.setdefault(_job_key(job), job)
        return list(jobs.values())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run_reference(self) -> None:
        name = REFERENCE[self.op.depthwise]
        try:
            alg = registry.get(name)
            reason = alg.applies_to(self.sig)
            if reason is not None:
                raise RuntimeError(f"reference {name} does not apply: {reason}")
            # half types: the reference runs on fp32 copies, so that half arithmetic that loses digits (small
            # gradients near the subnormals) cannot make the reference itself the least accurate result
            upcast = self.a.dtype in (torch.float16, torch.bfloat16)
            a, b = (self.a.float(), self.b.float()) if upcast else (self.a, self.b)
            self.ref = alg.run(self.op, alg.default_params(self.sig), a, b, self.kmap).to(self.a.dtype)
            self._sync()
            if not self._inputs_intact():
                raise RuntimeError(f"reference {name} modified its inputs")
            self.ref_alg = None if upcast else alg  # an upcast reference checks its own half-type run too
        except Exception as exc:  # noqa: BLE001 - the reference may fail (e.g. out of memory); tuning goes on
            self.ref_error = exc
            log.warning("reference %s failed on %s (%s); candidates are timed without a correctness check",
                        name, _describe(self.sig), _error_text(exc))

    def _inputs_intact(self) -> bool:
        intact = True
        for t, snap in zip((self.a, self.b), self.snaps):
            if not unchanged(t, snap):
                t.copy_(snap)
                intact = False
        return intact

    def check(self, cand: Candidate) -> CandidateResult | None:
        """Run ``cand`` once (compiles, warms up); a failed result, or ``None`` if it is correct."""
        try:
            out = self._call(cand)()
            self._sync()
        except Exception as exc:  # noqa: BLE001 - any candidate failure is recorded, never raised
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            log.debug("%s failed on %s: %s", cand.label, _describe(self.sig), _error_text(exc))
            return cand.result("failed", error=_error_text(exc))
        if not self._inputs_intact():
            log.warning("%s modified its inputs on %s; rejected", cand.label, _describe(self.sig))
            return cand.result("failed", error="modified its inputs")
        if self.ref is not None:
            wrong = output_error(out, self.ref, self.tol)
            poison(out, self.a, self.b, self.ref)
            if wrong is not None:
                log.warning("%s gave a wrong result on %s: %s; rejected", cand.label, _describe(self.sig), wrong)
                return cand.result("failed", error=f"wrong result: {wrong}")
        return None

    def measure(self, cand: Candidate, best_ms: float | None) -> CandidateResult:
        if not (cand.is_default and cand.algorithm is self.ref_alg):  # the reference itself needs no check
            failed = self.check(cand)
            if failed is not None:
                return failed
        fn = self._call(cand)
        try:
            samples = time_round_robin([fn], self.device, 1)[0]
            if best_ms is not None and self.elapsed_ms() > self.budget_ms:  # budget spent: one sample only
                return cand.result("ok", median_ms=samples[0])
            samples += time_round_robin([fn], self.device, MIN_REPS - 1)[0]
            hopeless = best_ms is not None and median(samples) > HOPELESS * best_ms
            target_ms = min(TARGET_MS, max(self.budget_ms - self.elapsed_ms(), 0.0))
            reps = min(MAX_REPS, int(target_ms / max(min(samples), 1e-3)))
            more = 0 if hopeless else reps - MIN_REPS
            if more > 0:
                samples += time_round_robin([fn], self.device, more)[0]
        except Exception as exc:  # noqa: BLE001
            return cand.result("failed", error=_error_text(exc))
        return cand.result("ok", median_ms=median(samples))

    def retime(self, leaders: list[Candidate]) -> dict[str, CandidateResult]:
        """Time the close leaders together, interleaved; their fresh medians."""
        try:
            samples = time_round_robin([self._call(c) for c in leaders], self.device, RETIME_ROUNDS)
        except Exception:  # noqa: BLE001 - keep the first measurements
            return {}
        return {c.ident: c.result("ok", median_ms=median(s)) for c, s in zip(leaders, samples)}


@dataclass
class Plan:
    """What one tuning does with the candidates it lacks results for."""

    timed: list[Candidate]  # in timing order: defaults first, then the most promising, algorithms interleaved
    pruned: list[Candidate]  # estimated far slower than their algorithm's best
    deferred: list[Candidate]  # left for a later round


def _plan(todo: list[Candidate], sig: Signature, proven: set[str], rounds: set[str]) -> Plan:
    """Split ``todo``: per algorithm the default, then ``proven`` points (winners elsewhere), then the rest by
    estimate; an algorithm in ``rounds`` defers its points past :data:`ROUND_POINTS` non-default ones."""
    groups: dict[str, list[Candidate]] = {}
    for c in todo:
        groups.setdefault(c.algorithm.name, []).append(c)
    pruned: list[Candidate] = []
    deferred: list[Candidate] = []
    ordered_groups = []
    for name, group in groups.items():
        estimates: dict[str, float] = {}
        for c in group:
            try:
                est = c.algorithm.estimate_cost(sig, c.params)
            except Exception:  # noqa: BLE001 - an estimate is only a hint
                est = None
            if est is not None:
                estimates[c.ident] = float(est)
        floor = min(estimates.values(), default=None)
        keep = [c for c in group if c.is_default or c.ident in proven or floor is None or c.ident not in estimates
                or estimates[c.ident] <= PRUNE_FACTOR * floor]  # a point that won elsewhere overrules its estimate
        kept = {c.ident for c in keep}
        pruned.extend(c for c in group if c.ident not in kept)
        keep.sort(key=lambda c: (not c.is_default, c.ident not in proven, estimates.get(c.ident, math.inf)))
        if name in rounds:
            keep, later = _first_round(keep, estimates, proven)
            deferred.extend(later)
        ordered_groups.append(keep)
    ordered = [g[i] for i in range(max((len(g) for g in ordered_groups), default=0))
               for g in ordered_groups if i < len(g)]
    return Plan(ordered, pruned, deferred)


def _first_round(ranked: list[Candidate], estimates: dict[str, float],
                 proven: set[str]) -> tuple[list[Candidate], list[Candidate]]:
    """(timed now, deferred): the defaults and :data:`ROUND_POINTS` more of ``ranked`` (in its order), the
    ``proven`` points (winners elsewhere) first, then one point per estimated time: points the estimate cannot
    tell apart (other pipeline depths of one tile, say) would spend the short round on one guess."""
    chosen = [c for c in ranked if c.is_default]
    others = [c for c in ranked if not c.is_default]
    seen = {estimates.get(c.ident) for c in chosen}
    picks: set[str] = set()
    for c in others:
        est = estimates.get(c.ident)
        if len(picks) < ROUND_POINTS and (c.ident in proven or est is None or est not in seen):
            picks.add(c.ident)
            seen.add(est)
    for c in others:  # fewer distinct estimates than the round holds: the next points in rank order
        if len(picks) >= ROUND_POINTS:
            break
        picks.add(c.ident)
    return chosen + [c for c in others if c.ident in picks], [c for c in others if c.ident not in picks]


def benchmark(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, sig: Signature,
              todo: list[Candidate], settled: dict[str, CandidateResult],
              everything: list[Candidate], proven: set[str], new_algorithms: set[str]) -> dict[str, CandidateResult]:
    """Measure ``todo`` (given the ``settled`` results of the other candidates, and the idents of ``proven``
    points; with a finite budget, ``new_algorithms`` time a short round); the new results by ident."""
    budget = tune_budget_ms()
    with torch.no_grad():
        session = _Session(op, a, b, kmap, sig, budget)
        plan = _plan(todo, sig, proven, new_algorithms if math.isfinite(budget) else set())
        ordered = plan.timed
        session.precompile(ordered)
        new = {c.ident: c.result("pruned", error=f"estimated over {PRUNE_FACTOR:g}x its algorithm's best")
               for c in plan.pruned}
        new.update((c.ident, c.result("skipped", error=f"left for the next tuning (a first tuning times {ROUND_POINTS}"
                                                       " points per algorithm besides its default)"))
                   for c in plan.deferred)

        def best_ms() -> float | None:
            return min(ok_times({**settled, **new}).values(), default=None)

        for cand in ordered:
            # the budget bounds the parameter search; every allowed algorithm's default point is still timed
            if session.elapsed_ms() > budget and best_ms() is not None and not cand.is_default:
                new[cand.ident] = cand.result("skipped", error=f"tuning budget of {budget:g} ms exhausted")
                continue
            new[cand.ident] = session.measure(cand, best_ms())
        best = best_ms()
        if best is not None and session.elapsed_ms() <= budget:
            times = ok_times({**settled, **new})
            leaders = sorted((c for c in everything if times.get(c.ident, math.inf) <= best * LEADER_MARGIN),
                             key=lambda c: times[c.ident])[:MAX_LEADERS]
            if len(leaders) > 1:
                new.update(session.retime(leaders))
        if best is None and session.ref_error is not None:
            raise session.ref_error
    return new


def ok_times(results: Mapping[str, CandidateResult]) -> dict[str, float]:
    """Median ms of every result that is ``ok``, by candidate identity."""
    return {ident: r.median_ms for ident, r in results.items() if r.status == "ok" and r.median_ms is not None}


def fastest(candidates: Sequence[Candidate], results: Mapping[str, CandidateResult]) -> Candidate | None:
    """The candidate whose result is ``ok`` with the lowest time plus its setup cost today (ties broken by
    identity, as the cache's winner), or ``None`` when none has such a result."""
    times = ok_times(results)
    ok = [c for c in candidates if c.ident in times]
    return min(ok, key=lambda c: (times[c.ident] + c.setup_ms, c.ident), default=None)


def choose(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap, sig: Signature, algos: list[Algorithm],
           key: EntryKey, store: TuningStore, retune: bool = False) -> Choice:
    """The fastest correct candidate among ``algos`` for this call, timing only what the cache lacks."""
    everything = candidates_for(algos, sig)
    known = {} if retune else store.results(key)
    # a candidate skipped for lack of budget is timed by a later tuning of the same signature
    settled = {c.ident: known[c.ident] for c in everything
               if c.ident in known and known[c.ident].status != "skipped"}
    # results stored with another setup cost (an older version's estimate) are re-recorded with today's, so
    # that the file's winner is the candidate this call runs
    restated = [settled[c.ident].model_copy(update={"setup_ms": c.setup_ms}) for c in everything
                if c.ident in settled and settled[c.ident].setup_ms != c.setup_ms]
    settled.update((r.ident, r) for r in restated)
    todo = [c for c in everything if c.ident not in settled]
    new: dict[str, CandidateResult] = {}
    if todo:
        start = time.perf_counter()
        # algorithms none of whose points has a result here: tuned on this signature for the first time, or
        # whose parameter space changed since (a retune searches every point again)
        fresh = set() if retune else ({c.algorithm.name for c in everything}
                                      - {c.algorithm.name for c in everything if c.ident in known})
        new = benchmark(op, a, b, kmap, sig, todo, settled, everything, store.winners_like(key), fresh)
        _log_tuned(sig, everything, {**settled, **new}, new, (time.perf_counter() - start) * 1e3)
    if new or restated:
        store.record(key, [*restated, *new.values()])
    best = fastest(everything, {**settled, **new})
    if best is not None:
        return best.algorithm, best.params
    try:
        reference = registry.get(REFERENCE[op.depthwise])
    except KeyError:
        raise RuntimeError(f"every candidate failed on {_describe(sig)} and no reference algorithm is "
                           "registered") from None
    log.warning("every candidate failed on %s; running the reference %s", _describe(sig), reference.name)
    return reference, reference.default_params(sig)


def _log_tuned(sig: Signature, everything: list[Candidate], results: dict[str, CandidateResult],
               new: dict[str, CandidateResult], elapsed_ms: float) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    ok = sorted((c for c in everything if results[c.ident].status == "ok"), key=lambda c: results[c.ident].score_ms)
    counts = {s: sum(r.status == s for r in new.values()) for s in ("ok", "failed", "pruned", "skipped")}
    head = f"{ok[0].label} {results[ok[0].ident].median_ms:.3f} ms" if ok else "none (all failed)"
    runner = f"{ok[1].label} {results[ok[1].ident].median_ms:.3f} ms" if len(ok) > 1 else "none"
    log.info("tuned %s in %.0f ms: winner %s; runner-up %s; %d candidates tried (%d timed, %d failed, %d pruned, "
             "%d skipped, %d from cache)", _describe(sig), elapsed_ms, head, runner, len(new), counts["ok"],
             counts["failed"], counts["pruned"], counts["skipped"], len(everything) - len(new))
