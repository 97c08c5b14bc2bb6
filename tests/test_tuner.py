"""The tuner: candidate selection on a fake registry, correctness checks, budget, pruning, reuse, hot path."""
import functools
import logging
import threading

import pytest
import torch

from helpers_tuner import Fake, cache_dir, operands, random_map, truth, use_registry  # noqa: F401
from warpsparse.algorithms.base import CONV_OPS, DEPTHWISE_OPS, Op, Signature, tf32_allowed
from warpsparse.algorithms.explicit import ExplicitDepthwise, ExplicitGemm
from warpsparse import triton_launch
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.tuner import (Call, collect_calls, dispatch, dispatcher, mode_for, pretune, reset, save_tuning_cache,
                              search, store)
from warpsparse.tuner.identity import sources_digest
from warpsparse.tuner.key import density_bucket, entry_key, half_octave, hot_key

pytestmark = pytest.mark.usefixtures("cache_dir")


def _entry():
    """The single entry of the cache file after saving."""
    assert save_tuning_cache()
    entries = store.read_document(store.cache_file()).entries
    assert len(entries) == 1
    return entries[0]


def _status(entry):
    return {c.algorithm: (c.status, c.error) for c in entry.candidates}


def test_fastest_correct_wins_wrong_crashing_mutating_partial_rejected(monkeypatch):
    ref = Fake("explicit_gemm", cost_ms=12)
    good = Fake("implicit_gemm", cost_ms=3)
    slow = Fake("slow_correct", cost_ms=25)
    wrong = Fake("fast_wrong", cost_ms=0, behaviour="wrong")
    crash = Fake("crashing", cost_ms=0, behaviour="raise")
    mutate = Fake("mutating", cost_ms=0, behaviour="mutate")
    partial = Fake("partial", cost_ms=0, behaviour="partial")
    use_registry(monkeypatch, ref, wrong, crash, mutate, partial, slow, good)
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    a0, b0 = a.clone(), b.clone()
    out = dispatch(Op.CONV_FWD, a, b, kmap)
    assert torch.equal(a, a0) and torch.equal(b, b0), "tuning must leave the caller's inputs intact"
    torch.testing.assert_close(out, truth(Op.CONV_FWD, a, b, kmap))
    entry = _entry()
    assert entry.winner.algorithm == "implicit_gemm"
    status = _status(entry)
    assert status["fast_wrong"][0] == "failed" and "wrong result" in status["fast_wrong"][1]
    assert status["crashing"] == ("failed", "RuntimeError: out of resources: shared memory")
    assert status["mutating"] == ("failed", "modified its inputs")
    assert status["partial"][0] == "failed"
    assert status["slow_correct"][0] == status["explicit_gemm"][0] == "ok"
    times = {c.algorithm: c.median_ms for c in entry.candidates if c.status == "ok"}
    assert times["implicit_gemm"] < times["explicit_gemm"] < times["slow_correct"]
    # the hit: only the winner runs, once
    before = {f.name: len(f.calls) for f in (ref, good, slow, wrong, crash)}
    out2 = dispatch(Op.CONV_FWD, a, b, kmap)
    torch.testing.assert_close(out2, out)
    after = {f.name: len(f.calls) for f in (ref, good, slow, wrong, crash)}
    assert after == {**before, "implicit_gemm": before["implicit_gemm"] + 1}


def test_parameter_points_are_tuned_and_the_fastest_point_wins(monkeypatch):
    # costs far apart and no budget: a busy machine can neither reorder the points nor skip one
    fake = Fake("explicit_gemm", cost_ms=lambda p: {1: 90, 2: 10, 3: 50}[p["tile"]], space={"tile": (1, 2, 3)})
    use_registry(monkeypatch, fake)
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")
    kmap = random_map()
    for op in (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD):
        a, b = operands(op, kmap)
        torch.testing.assert_close(dispatch(op, a, b, kmap, "explicit_gemm"), truth(op, a, b, kmap))
    assert save_tuning_cache()
    entries = store.read_document(store.cache_file()).entries
    assert sorted(e.key.signature.op for e in entries) == ["conv_dgrad", "conv_fwd", "conv_wgrad"]
    for e in entries:
        assert e.winner.params == {"tile": 2}
        assert {c.params["tile"] for c in e.candidates if c.status == "ok"} == {1, 2, 3}


def test_estimate_cost_prunes_hopeless_points(monkeypatch):
    fake = Fake("explicit_gemm", cost_ms=1, space={"tile": (1, 2, 3)},
                estimate=lambda p: {1: 1.0, 2: 1.5, 3: 100.0}[p["tile"]])
    use_registry(monkeypatch, fake)
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    dispatch(Op.CONV_FWD, a, b, kmap)
    assert {"tile": 3} not in fake.calls
    status = {c.params["tile"]: c.status for c in _entry().candidates}
    assert status == {1: "ok", 2: "ok", 3: "pruned"}


def test_budget_bounds_the_search_and_is_validated(monkeypatch):
    fake = Fake("explicit_gemm", cost_ms=30, space={"tile": tuple(range(8))})
    use_registry(monkeypatch, fake)
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "50")
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    dispatch(Op.CONV_FWD, a, b, kmap)
    results = _entry().candidates
    status = [c.status for c in results]
    # the reference run and the default's timing (>= 60 ms of sleep) spend the 50 ms: only the default is timed
    assert status.count("ok") == 1 and sum("budget of 50 ms exhausted" in (c.error or "") for c in results) >= 1
    assert len({tuple(sorted(c.items())) for c in fake.calls}) < 8
    reset()  # a later process without a limit times what was skipped
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")
    dispatch(Op.CONV_FWD, a, b, kmap)
    assert [c.status for c in _entry().candidates].count("ok") == 8
    for bad in ("abc", "0", "-5", "nan"):
        monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", bad)
        reset(save=False)
        with pytest.raises(ValueError, match=f"WARPCONVNET_TUNE_BUDGET_MS='{bad}'"):
            dispatch(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap, c_in=7), kmap)  # a new signature


def test_first_tuning_is_a_short_round_of_the_most_promising_points(monkeypatch):
    # estimates rank the points 0 < 1 < ... < 9 (point 5 is the fastest); a point that won another signature
    # goes first
    fake = Fake("explicit_gemm", cost_ms=lambda p: 1 + 3 * abs(p["tile"] - 5), space={"tile": tuple(range(10))},
                estimate=lambda p: 1.0 + 0.01 * p["tile"])
    use_registry(monkeypatch, fake)
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "60000")
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    default = fake.default_params(Signature.of(Op.CONV_FWD, a, b, kmap))["tile"]
    timed: list[set[int]] = []
    for _ in range(3):
        dispatch(Op.CONV_FWD, a, b, kmap)
        ok = {c.params["tile"] for c in _entry().candidates if c.status == "ok"}
        skipped = {c.params["tile"] for c in _entry().candidates if c.status == "skipped"}
        assert ok | skipped == set(range(10)) and not ok & skipped
        timed.append(ok - set().union(*timed))
        reset()  # the next process
    rest = sorted(set(range(10)) - {default})
    assert timed[0] == {default, *rest[:search.ROUND_POINTS]}
    assert timed[1] == set(rest[search.ROUND_POINTS:]) and timed[2] == set()  # the next tuning times the rest
    # another signature of the same op and dtype: this file's winner is among its first points
    winner = _entry().winner.params["tile"]
    assert winner == 5 != default
    fake.estimate = lambda p: 1.0 - 0.01 * p["tile"]  # now the high points look best, 5 among the worst
    c, d = operands(Op.CONV_FWD, kmap, c_in=9)
    dispatch(Op.CONV_FWD, c, d, kmap)
    assert save_tuning_cache()
    other = next(e for e in store.read_document(store.cache_file()).entries if e.key.signature.c_in == 9)
    first = {r.params["tile"] for r in other.candidates if r.status == "ok"}
    assert winner in first and len(first) == 1 + search.ROUND_POINTS


def test_a_first_round_times_points_the_estimate_tells_apart(monkeypatch):
    # points 2k and 2k+1 share an estimate (another pipeline depth of one tile, say): besides the default the
    # round takes one point of each other pair, the best estimates first, and the next tuning times the rest
    fake = Fake("explicit_gemm", space={"tile": tuple(range(10))}, estimate=lambda p: 1.0 + 0.01 * (p["tile"] // 2))
    use_registry(monkeypatch, fake)
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "60000")
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    default = fake.default_params(Signature.of(Op.CONV_FWD, a, b, kmap))["tile"]
    dispatch(Op.CONV_FWD, a, b, kmap)
    timed = {c.params["tile"] for c in _entry().candidates if c.status == "ok"} - {default}
    pairs = sorted({t // 2 for t in range(10)} - {default // 2})
    assert len(timed) == search.ROUND_POINTS and sorted(t // 2 for t in timed) == pairs[:search.ROUND_POINTS]
    reset()
    dispatch(Op.CONV_FWD, a, b, kmap)
    assert [c.status for c in _entry().candidates].count("ok") == 10


def test_a_first_round_keeps_a_point_that_won_elsewhere_whatever_its_estimate(monkeypatch):
    # tile 7 wins; another signature's first round times it although the default (tile 0) has its estimate
    fake = Fake("explicit_gemm", cost_ms=lambda p: 1 + 12 * (p["tile"] != 7), space={"tile": tuple(range(10))},
                estimate=lambda p: 1.0 if p["tile"] in (0, 7) else 1.0 + 0.01 * p["tile"])
    use_registry(monkeypatch, fake)
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    assert fake.default_params(Signature.of(Op.CONV_FWD, a, b, kmap)) == {"tile": 0}
    dispatch(Op.CONV_FWD, a, b, kmap)
    assert _entry().winner.params == {"tile": 7}
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "60000")
    dispatch(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap, c_in=9), kmap)
    assert save_tuning_cache()
    other = next(e for e in store.read_document(store.cache_file()).entries if e.key.signature.c_in == 9)
    assert sorted(c.params["tile"] for c in other.candidates if c.status == "ok") == [0, 1, 2, 7]


def test_a_point_that_won_another_signature_is_not_pruned_by_its_estimate(monkeypatch):
    fake = Fake("explicit_gemm", cost_ms=lambda p: 1 + 24 * (p["tile"] != 2), space={"tile": (0, 1, 2)},
                estimate=lambda p: 1.0)
    use_registry(monkeypatch, fake)
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")
    kmap = random_map()
    dispatch(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap), kmap)
    assert _entry().winner.params == {"tile": 2}
    fake.estimate = lambda p: 100.0 if p["tile"] == 2 else 1.0  # now estimated hopeless
    dispatch(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap, c_in=9), kmap)
    assert save_tuning_cache()
    other = next(e for e in store.read_document(store.cache_file()).entries if e.key.signature.c_in == 9)
    assert {c.params["tile"]: c.status for c in other.candidates}[2] == "ok" and other.winner.params == {"tile": 2}


def _first_tuning(monkeypatch, fake):
    """``fake`` alone in the registry, a finite budget, one forward tuned once: (kmap, a, b)."""
    use_registry(monkeypatch, fake)
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "60000")
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    dispatch(Op.CONV_FWD, a, b, kmap)
    return kmap, a, b


def test_retuning_times_every_point_within_the_budget(monkeypatch):
    kmap, a, b = _first_tuning(monkeypatch, Fake("explicit_gemm", space={"tile": tuple(range(10))}))  # one round
    assert [c.status for c in _entry().candidates].count("ok") == 1 + search.ROUND_POINTS
    pretune([Call(Op.CONV_FWD, a, b, kmap, mode_for(Op.CONV_FWD, None))], retune=True, progress=False)
    assert [c.status for c in _entry().candidates].count("ok") == 10


def test_points_new_to_a_signature_get_a_first_round_after_another_mode_tuned_it(monkeypatch):
    use_registry(monkeypatch, Fake("explicit_gemm"), Fake("implicit_gemm", space={"tile": tuple(range(10))}))
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "60000")
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    dispatch(Op.CONV_FWD, a, b, kmap, "explicit_gemm")  # the entry now holds explicit_gemm's result only
    dispatch(Op.CONV_FWD, a, b, kmap)  # AUTO: implicit_gemm's points were never recorded
    status = [c.status for c in _entry().candidates if c.algorithm == "implicit_gemm"]
    assert status.count("ok") == 1 + search.ROUND_POINTS and status.count("skipped") == 10 - 1 - search.ROUND_POINTS


def test_an_algorithm_whose_points_changed_gets_a_first_round(monkeypatch):
    # a newer version's space names its points differently: the stored results match none of them
    fake = Fake("explicit_gemm", space={"tile": tuple(range(10))})
    kmap, a, b = _first_tuning(monkeypatch, fake)
    reset()
    fake.space = {"tile": tuple(range(10)), "groups": (1, 2)}
    dispatch(Op.CONV_FWD, a, b, kmap)
    status = [c.status for c in _entry().candidates if "groups" in c.params]
    assert status.count("ok") == 1 + search.ROUND_POINTS and status.count("skipped") == 20 - 1 - search.ROUND_POINTS


def test_compile_jobs_run_on_the_compile_threads_before_timing(monkeypatch):
    """An algorithm that names its kernels' compiles (``compile_jobs``, as the CuPy ones do) has those of its
    first candidates that name any (two rounds of the compile threads) run once each on a thread pool before its
    points run; a job that fails, or a candidate whose jobs cannot be listed, leaves tuning to the checked runs."""
    jobs = Fake("cupy_implicit_gemm", space={"tile": tuple(range(8))})
    use_registry(monkeypatch, jobs)
    monkeypatch.setattr(search, "compiled_on", lambda device: True)
    monkeypatch.setenv("WARPCONVNET_COMPILE_WORKERS", "2")
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")
    events: list[tuple[str, ...]] = []

    def compile_kernel(name: object) -> None:
        events.append(("compile", name, threading.current_thread().name))
        if name == 1:
            raise RuntimeError("this kernel does not compile")

    def compile_jobs(sig, params):
        tile = params["tile"]
        if tile == 2:
            raise ValueError("no kernel fits this point")
        if tile == 0:
            return []
        return [functools.partial(compile_kernel, "shared" if tile in (3, 4) else tile)]

    monkeypatch.setattr(jobs, "compile_jobs", compile_jobs, raising=False)
    original = Fake.run

    def tracking(self, *args):
        events.append(("run",))
        return original(self, *args)

    monkeypatch.setattr(Fake, "run", tracking)
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    torch.testing.assert_close(dispatch(Op.CONV_FWD, a, b, kmap), truth(Op.CONV_FWD, a, b, kmap))
    compiled = [e for e in events if e[0] == "compile"]
    assert sorted(str(e[1]) for e in compiled) == ["1", "5", "shared"], "tiles 1, 3, 4, 5 name jobs; 3 and 4 one"
    assert all(e[2].startswith("warpsparse-compile-jobs") for e in compiled)
    assert events[:3] == compiled, "every job ran before the first checked run"
    assert [c.status for c in _entry().candidates].count("ok") == 8


def test_compiling_algorithms_precompile_their_first_points_side_by_side(monkeypatch):
    """Before timing, the points of algorithms that compile per point run once inside ``precompiling`` (at most
    two rounds of the compile threads); every point is still checked and timed after."""
    compiling = Fake("implicit_gemm", space={"tile": tuple(range(6))})
    compiling.precompiles = True
    plain = Fake("explicit_gemm", space={"tile": (0, 1)})
    use_registry(monkeypatch, compiling, plain)
    monkeypatch.setattr(search, "compiled_on", lambda device: True)
    entered: list[int] = []
    real = triton_launch.precompiling

    def spy(workers: int):
        entered.append(workers)
        return real(workers)

    monkeypatch.setattr(search, "precompiling", spy)
    monkeypatch.setenv("WARPCONVNET_COMPILE_WORKERS", "2")
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")
    flags: list[tuple[str, bool]] = []
    original = Fake.run

    def tracking(self, *args):
        flags.append((self.name, triton_launch._precompiling.get()))
        return original(self, *args)

    monkeypatch.setattr(Fake, "run", tracking)
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    torch.testing.assert_close(dispatch(Op.CONV_FWD, a, b, kmap), truth(Op.CONV_FWD, a, b, kmap))
    assert entered == [2]
    precompiled = [name for name, inside in flags if inside]
    assert precompiled == ["implicit_gemm"] * 4, "two rounds of two threads, compiling algorithms only"
    assert [c.status for c in _entry().candidates].count("ok") == 8
    for bad in ("0", "two", "-1", "\u00b2"):  # a superscript two is a digit to str.isdigit
        monkeypatch.setenv("WARPCONVNET_COMPILE_WORKERS", bad)
        with pytest.raises(ValueError, match="WARPCONVNET_COMPILE_WORKERS"):
            search.compile_workers()


def test_everything_failing_falls_back_to_the_reference(monkeypatch, caplog):
    ref = Fake("explicit_gemm", behaviour="correct")
    use_registry(monkeypatch, ref, Fake("implicit_gemm", behaviour="raise"),
                 Fake("cupy_implicit_gemm", behaviour="wrong"))
    kmap = random_map()
    a, b = operands(Op.CONV_DGRAD, kmap)
    with caplog.at_level(logging.WARNING, logger="warpsparse.tuner"):
        out = dispatch(Op.CONV_DGRAD, a, b, kmap, ["implicit_gemm", "cupy_implicit_gemm"])
    torch.testing.assert_close(out, truth(Op.CONV_DGRAD, a, b, kmap))
    assert "every candidate failed" in caplog.text
    assert _entry().winner is None


def test_failing_reference_does_not_crash_the_call(monkeypatch, caplog):
    use_registry(monkeypatch, Fake("explicit_gemm", behaviour="raise"), Fake("implicit_gemm", cost_ms=1))
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    with caplog.at_level(logging.WARNING, logger="warpsparse.tuner"):
        out = dispatch(Op.CONV_FWD, a, b, kmap)
    torch.testing.assert_close(out, truth(Op.CONV_FWD, a, b, kmap))
    assert "reference explicit_gemm failed" in caplog.text
    reset(save=False)
    use_registry(monkeypatch, Fake("explicit_gemm", behaviour="raise"), Fake("implicit_gemm", behaviour="raise"))
    other = random_map()
    with pytest.raises(RuntimeError, match="out of resources"):  # nothing can compute it: the real error
        dispatch(Op.CONV_FWD, *operands(Op.CONV_FWD, other), other)


def test_named_algorithm_that_cannot_run_is_a_clear_error(monkeypatch):
    use_registry(monkeypatch, ExplicitGemm(), Fake("implicit_gemm", not_for="needs a CUDA device"))
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    with pytest.raises(ValueError, match=r"fwd_algo: \[implicit_gemm\] cannot run conv_fwd.*needs a CUDA device"):
        dispatch(Op.CONV_FWD, a, b, kmap, "implicit_gemm")
    with pytest.raises(ValueError, match="cupy_implicit_gemm: not available in this installation"):
        dispatch(Op.CONV_FWD, a, b, kmap, "cupy_implicit_gemm")
    with pytest.raises(ValueError, match="cupy_implicit_gemm: not available.*; implicit_gemm: needs a CUDA device"):
        dispatch(Op.CONV_FWD, a, b, kmap, ["implicit_gemm", "cupy_implicit_gemm"])
    monkeypatch.setenv("WARPCONVNET_BWD_ALGO_MODE", "cupy_implicit_gemm")
    g, w = operands(Op.CONV_DGRAD, kmap)
    with pytest.raises(ValueError, match="WARPCONVNET_BWD_ALGO_MODE='cupy_implicit_gemm'"):
        dispatch(Op.CONV_DGRAD, g, w, kmap)


def test_list_skips_members_that_cannot_run_and_logs_once(monkeypatch, caplog):
    use_registry(monkeypatch, ExplicitGemm(), Fake("implicit_gemm", not_for="dtype not supported"))
    kmap = random_map()
    with caplog.at_level(logging.INFO, logger="warpsparse.tuner"):
        for _ in range(2):
            a, b = operands(Op.CONV_FWD, kmap)
            out = dispatch(Op.CONV_FWD, a, b, kmap, ["implicit_gemm", "explicit_gemm", "cupy_implicit_gemm"])
            torch.testing.assert_close(out, truth(Op.CONV_FWD, a, b, kmap))
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert sorted(skips) == ["skipping cupy_implicit_gemm for conv_fwd: not available in this installation "
                             "(not registered: its backend is missing)",
                             "skipping implicit_gemm for conv_fwd: dtype not supported"]
    assert any(r.getMessage().startswith("tuned conv_fwd") and "winner explicit_gemm" in r.getMessage()
               for r in caplog.records)


def test_mode_aware_reuse(monkeypatch):
    ref = Fake("explicit_gemm", cost_ms=12)
    mid = Fake("implicit_gemm", cost_ms=6)
    fast = Fake("cupy_implicit_gemm", cost_ms=1)
    use_registry(monkeypatch, ref, mid, fast)
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    dispatch(Op.CONV_FWD, a, b, kmap, ["explicit_gemm", "implicit_gemm"])
    assert not fast.calls
    first = {c.algorithm: c.median_ms for c in _entry().candidates}
    assert set(first) == {"explicit_gemm", "implicit_gemm"}

    reset()  # a new process: nothing in memory, the file remains
    counts = (len(ref.calls), len(mid.calls))
    out = dispatch(Op.CONV_FWD, a, b, kmap)  # AUTO after a narrower run: only the missing one is timed
    torch.testing.assert_close(out, truth(Op.CONV_FWD, a, b, kmap))
    assert len(mid.calls) == counts[1], "implicit_gemm was timed already"
    assert len(ref.calls) == counts[0] + 1, "the reference runs once, to check the new candidate"
    entry = _entry()
    assert entry.winner.algorithm == "cupy_implicit_gemm"
    assert {c.algorithm: c.median_ms for c in entry.candidates}["implicit_gemm"] == first["implicit_gemm"]

    reset()
    calls = [len(f.calls) for f in (ref, mid, fast)]
    dispatch(Op.CONV_FWD, a, b, kmap, "implicit_gemm")  # pinned to timed algorithms: no timing at all
    assert [len(f.calls) for f in (ref, mid, fast)] == [calls[0], calls[1] + 1, calls[2]]
    dispatch(Op.CONV_FWD, a, b, kmap, ["explicit_gemm", "implicit_gemm"])
    assert [len(f.calls) for f in (ref, mid, fast)] == [calls[0], calls[1] + 2, calls[2]]


def test_cache_hit_does_no_file_io_and_no_tuning(monkeypatch):
    use_registry(monkeypatch, ExplicitGemm())
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    dispatch(Op.CONV_FWD, a, b, kmap)

    def forbidden(*args, **kwargs):
        raise AssertionError("a cache hit must not tune or touch the cache file")

    monkeypatch.setattr(dispatcher, "choose", forbidden)
    monkeypatch.setattr(store, "load_document", forbidden)
    monkeypatch.setattr(store.TuningStore, "results", forbidden)
    monkeypatch.setattr("builtins.open", forbidden)
    for _ in range(3):
        a2, b2 = operands(Op.CONV_FWD, kmap)
        torch.testing.assert_close(dispatch(Op.CONV_FWD, a2, b2, kmap), truth(Op.CONV_FWD, a2, b2, kmap))


def _rows_map(n: int, per_row: int) -> KernelMap:
    """``n`` outputs over ``n`` inputs, each output reading ``per_row`` random inputs at the first offsets."""
    nbr = torch.full((n, 27), -1, dtype=torch.int32)
    nbr[:, :per_row] = torch.randint(0, n, (n, per_row), dtype=torch.int32)
    return KernelMap(nbr, n, (3, 3, 3))


def _fwd_key(kmap: KernelMap):
    return hot_key(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap, 8, 16), kmap)


def test_site_counts_and_densities_are_bucketed():
    """Maps of other sizes within one half-octave (100 and 110 sites) and one density bucket share a key; a map
    a half-octave larger (200 sites) or twice as dense does not."""
    assert half_octave(100) == half_octave(110) != half_octave(200)
    key = _fwd_key(_rows_map(100, 4))
    assert key == _fwd_key(_rows_map(110, 4))
    assert key != _fwd_key(_rows_map(200, 4))
    assert key != _fwd_key(_rows_map(100, 8))


def test_signatures_in_one_bucket_share_a_decision_others_do_not():
    kmap = random_map(n=200, extent=9)
    a, b = operands(Op.CONV_FWD, kmap, 8, 16)
    key = hot_key(Op.CONV_FWD, a, b, kmap)
    assert key == hot_key(Op.CONV_FWD, torch.randn_like(a), torch.randn_like(b), kmap)
    assert key != hot_key(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap, 8, 17), kmap)
    assert key != hot_key(Op.CONV_FWD, a.double(), b.double(), kmap)
    assert key != hot_key(Op.CONV_DGRAD, *operands(Op.CONV_DGRAD, kmap, 8, 16), kmap)
    sig = Signature.of(Op.CONV_FWD, a, b, kmap)
    ek = entry_key(sig, kmap, a.device)
    assert ek.signature.n_in_bucket == half_octave(kmap.num_in) and ek.signature.kind == "subm"
    assert ek.signature.density_bucket == density_bucket(kmap.num_pairs, kmap.num_out)
    assert ek.device.type == "cpu" and ek.versions.torch == torch.__version__
    assert ek.versions.sources == sources_digest() and len(ek.versions.sources) == 16
    assert len(ek.ident) == 12 and ek.ident == entry_key(sig, kmap, a.device).ident
    for n in (1, 2, 3, 5, 90, 1000, 12345):
        lo, hi = 2 ** (half_octave(n) / 2), 2 ** ((half_octave(n) + 1) / 2)
        assert lo <= n < hi


@pytest.mark.parametrize("op", list(Op))
def test_real_explicit_algorithms_tune_every_op(monkeypatch, op):
    use_registry(monkeypatch, ExplicitGemm(), ExplicitDepthwise())
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")
    kmap = random_map(subm=False, kernel=2, stride=2, n=120, extent=8)
    for dtype in (torch.float32, torch.float64):
        a, b = operands(op, kmap, dtype=dtype)
        out = dispatch(op, a, b, kmap)
        torch.testing.assert_close(out, truth(op, a, b, kmap))
    assert save_tuning_cache()
    entries = store.read_document(store.cache_file()).entries
    assert len(entries) == 2
    space = 4 if op in CONV_OPS else 2
    for e in entries:
        assert e.key.signature.op == op.value and e.key.signature.kind == "conv"
        assert len(e.candidates) == space and all(c.status == "ok" for c in e.candidates)
        assert e.winner.median_ms == min(c.median_ms for c in e.candidates)


def test_empty_maps_are_not_tuned(monkeypatch):
    fake = Fake("explicit_gemm")
    use_registry(monkeypatch, fake)
    kmap = random_map(n=0)
    a, b = operands(Op.CONV_FWD, kmap)
    assert dispatch(Op.CONV_FWD, a, b, kmap).shape == (0, 5)
    assert len(fake.calls) == 1
    assert save_tuning_cache()
    assert not store.cache_file().exists() or not store.read_document(store.cache_file()).entries


def test_collect_then_pretune_with_progress(monkeypatch, capsys):
    use_registry(monkeypatch, ExplicitGemm(), Fake("implicit_gemm", cost_ms=0.5))
    kmaps = [random_map(n=n) for n in (30, 120)]
    with collect_calls() as calls:
        for kmap in kmaps:
            for op in CONV_OPS:
                a, b = operands(op, kmap)
                torch.testing.assert_close(dispatch(op, a, b, kmap), truth(op, a, b, kmap))
    assert len(calls) == 6 and not store.cache_file().exists()
    choices = pretune(calls, progress=True)
    assert len(choices) == 6 and "tuning" in capsys.readouterr().err
    assert save_tuning_cache()
    assert len(store.read_document(store.cache_file()).entries) == 6
    monkeypatch.setattr(dispatcher, "choose", lambda *a, **k: pytest.fail("pretuned calls must hit"))
    for kmap in kmaps:
        for op in CONV_OPS:
            dispatch(op, *operands(op, kmap), kmap)


def test_concurrent_threads_tune_a_signature_once(monkeypatch):
    fake = Fake("explicit_gemm", cost_ms=2)
    use_registry(monkeypatch, fake)
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    expected = truth(Op.CONV_FWD, a, b, kmap)
    results, errors = [], []

    def work():
        try:
            results.append(dispatch(Op.CONV_FWD, a, b, kmap))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for r in results:
        torch.testing.assert_close(r, expected)
    assert [c.status for c in _entry().candidates] == ["ok"]


def test_depthwise_uses_its_own_reference_and_names(monkeypatch):
    ref = Fake("explicit", ops=DEPTHWISE_OPS, cost_ms=5)
    fast = Fake("implicit", ops=DEPTHWISE_OPS, cost_ms=0.5)
    use_registry(monkeypatch, ExplicitGemm(), ref, fast)
    kmap = random_map()
    monkeypatch.setenv("WARPCONVNET_DEPTHWISE_CONV_BWD_ALGO_MODE", "[implicit_gemm, explicit]")
    a, b = operands(Op.DW_WGRAD, kmap)
    torch.testing.assert_close(dispatch(Op.DW_WGRAD, a, b, kmap), truth(Op.DW_WGRAD, a, b, kmap))
    assert _entry().winner.algorithm == "implicit"


class _Fp32Accumulating(ExplicitGemm):
    """Runs the explicit algorithm on fp32 copies: what a fused fp32-accumulating kernel computes."""

    name = "implicit_gemm"

    def run(self, op, params, a, b, kmap, bias=None, relu=False):
        return super().run(op, params, a.float(), b.float(), kmap, bias, relu).to(a.dtype)


class _SubnormalInputs(ExplicitGemm):
    """The reference, made lossy in half precision: it scales its first operand down by 16 in the operands'
    dtype first, so tiny fp16 values sink into the subnormals and lose digits (harmless in fp32)."""

    def run(self, op, params, a, b, kmap, bias=None, relu=False):
        return super().run(op, params, (a / 16).to(a.dtype), b, kmap, bias, relu) * 16


def test_half_precision_reference_is_upcast_so_accurate_kernels_win(monkeypatch):
    # tiny fp16 gradients: the reference (explicit_gemm) loses digits in fp16, not on the fp32 copies it gets
    use_registry(monkeypatch, _SubnormalInputs(), _Fp32Accumulating())
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")  # every candidate is checked, however slow the machine
    kmap = random_map(300, 8)
    grad = (torch.randn(kmap.num_out, 64) * 1e-6).half()
    weight = (torch.randn(kmap.kernel_volume, 64, 64) * 0.05).half()
    dispatch(Op.CONV_DGRAD, grad, weight, kmap)
    candidates = _entry().candidates
    accurate = [c.status for c in candidates if c.algorithm == "implicit_gemm"]
    lossy = [c.status for c in candidates if c.algorithm == "explicit_gemm"]
    assert accurate and set(accurate) == {"ok"}, "checked against an fp32 reference, the accurate kernel passes"
    assert lossy and set(lossy) == {"failed"}, "the reference's own half-precision run is checked too"


def test_per_map_setup_cost_counts_in_the_choice(monkeypatch):
    """A point whose kernel is a little faster but needs a layout built for every fresh map loses to one that
    does not; the cache file records both costs and the same winner."""

    class NeedsPairs(Fake):
        def setup_ms(self, sig, params):
            return 50.0 if params["pairs"] else 0.0

    fake = NeedsPairs("explicit_gemm", cost_ms=lambda p: 5 if p["pairs"] else 20, space={"pairs": (True, False)})
    use_registry(monkeypatch, fake)
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    dispatch(Op.CONV_FWD, a, b, kmap, "explicit_gemm")
    assert fake.calls[-1] == {"pairs": False}
    entry = _entry()
    assert entry.winner.params == {"pairs": False}
    setups = {c.params["pairs"]: c.setup_ms for c in entry.candidates}
    assert setups == {True: 50.0, False: 0.0}
    timed = {c.params["pairs"]: c.median_ms for c in entry.candidates}
    assert timed[True] < timed[False], "the pair-list point's kernel is the faster one"


def test_results_cached_with_another_setup_cost_are_restated(monkeypatch):
    """Results stored with an older setup estimate are re-recorded with today's, so the file's winner is the
    point the call runs, without timing anything again."""

    class NeedsPairs(Fake):
        setup = 0.0

        def setup_ms(self, sig, params):
            return self.setup if params["pairs"] else 0.0

    fake = NeedsPairs("explicit_gemm", cost_ms=lambda p: 5 if p["pairs"] else 20, space={"pairs": (True, False)})
    use_registry(monkeypatch, fake)
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap)
    dispatch(Op.CONV_FWD, a, b, kmap, "explicit_gemm")
    assert fake.calls[-1] == {"pairs": True} and _entry().winner.params == {"pairs": True}
    reset()  # a new process: same cache file, a larger setup estimate
    NeedsPairs.setup = 50.0
    timed = len(fake.calls)
    dispatch(Op.CONV_FWD, a, b, kmap, "explicit_gemm")
    assert fake.calls[timed:] == [{"pairs": False}], "nothing is re-timed; the cheaper-per-map point runs"
    entry = _entry()
    assert entry.winner.params == {"pairs": False}
    assert {c.params["pairs"]: c.setup_ms for c in entry.candidates} == {True: 50.0, False: 0.0}


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch without fp32_precision")
def test_tf32_follows_both_of_torchs_settings():
    """TF32 is allowed by the legacy ``allow_tf32`` flag or by ``fp32_precision`` (matmul's own, else the global
    one); after the new setting, reading the legacy flag raises on recent torch, and the check must not."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision, torch.backends.fp32_precision
    try:
        assert not tf32_allowed()
        matmul.fp32_precision = "tf32"
        assert tf32_allowed()
        matmul.fp32_precision = "ieee"
        torch.backends.fp32_precision = "tf32"
        assert not tf32_allowed()  # matmul's own setting wins
        matmul.fp32_precision = "none"
        assert tf32_allowed()  # else the global one
        torch.backends.fp32_precision = "none"
        assert not tf32_allowed()
        matmul.allow_tf32 = True  # the legacy flag
        assert tf32_allowed()
        matmul.allow_tf32 = False
        assert not tf32_allowed()
    finally:
        matmul.fp32_precision, torch.backends.fp32_precision = saved


def test_sources_digest_follows_every_algorithm_source(tmp_path):
    """Results measured with other kernel sources (an edited checkout, where the version stays) are not reused:
    the key's digest changes with a source's contents or name, not with other files."""
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "k.py").write_text("x = 1\n")
    (tmp_path / "gemm.cu").write_text("// kernel\n")
    before = sources_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("not a source")
    assert sources_digest(tmp_path) == before
    (tmp_path / "gemm.cu").write_text("// kernel, edited\n")
    edited = sources_digest(tmp_path)
    assert edited != before
    (tmp_path / "triton" / "k.py").rename(tmp_path / "triton" / "k2.py")
    assert sources_digest(tmp_path) not in (before, edited)
