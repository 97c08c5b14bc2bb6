"""The persistent cache: round trip, merging, damaged files, unwritable dirs, locks, concurrent processes."""
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from helpers_tuner import cache_dir, operands, random_map, truth, use_registry  # noqa: F401  (fixture)
from warpsparse.algorithms.base import Op
from warpsparse.algorithms.explicit import ExplicitGemm
from warpsparse.cache_schema import SCHEMA_VERSION, CacheDocument, CandidateResult, DeviceInfo, Entry
from warpsparse.tuner import dispatch, reset, save_tuning_cache, store

pytestmark = pytest.mark.usefixtures("cache_dir")
REPO = Path(__file__).resolve().parents[1]


def _tune_one(monkeypatch, c_in: int = 4):
    use_registry(monkeypatch, ExplicitGemm())
    kmap = random_map()
    a, b = operands(Op.CONV_FWD, kmap, c_in=c_in)
    out = dispatch(Op.CONV_FWD, a, b, kmap)
    torch.testing.assert_close(out, truth(Op.CONV_FWD, a, b, kmap))
    return kmap, a, b


def _entries():
    return store.read_document(store.cache_file()).entries


def test_round_trip_is_strict_human_readable_json(monkeypatch):
    kmap, a, b = _tune_one(monkeypatch)
    assert save_tuning_cache()
    path = store.cache_file()
    text = path.read_text()

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    raw = json.loads(text, parse_constant=no_constants)
    assert raw["schema_version"] == SCHEMA_VERSION and "\n " in text
    (entry,) = CacheDocument.model_validate(raw).entries
    params = sorted(json.dumps(c.params) for c in entry.candidates)
    assert params == sorted(['{"batch_below": 0}', '{"batch_below": 1024}', '{"batch_below": 8192}',
                             '{"batch_below": "inf"}'])
    assert entry.id == entry.key.ident and entry.tuned_at.tzinfo is not None
    # a new process reuses the file: no timing, and the inf point maps back to a real float
    reset(save=False)
    monkeypatch.setattr("warpsparse.tuner.search.benchmark", lambda *a, **k: pytest.fail("must reuse the cache"))
    a2, b2 = operands(Op.CONV_FWD, kmap)
    torch.testing.assert_close(dispatch(Op.CONV_FWD, a2, b2, kmap), truth(Op.CONV_FWD, a2, b2, kmap))


def _candidate(alg, ms=None, status="ok", **params):
    return CandidateResult(algorithm=alg, params=params, status=status, median_ms=ms,
                           error=None if status == "ok" else "x")


def _key(monkeypatch, device_name="Some GPU"):
    _tune_one(monkeypatch)
    assert save_tuning_cache()
    (entry,) = _entries()
    return entry.key, entry.key.model_copy(update={"device": DeviceInfo(
        type="cuda", name=device_name, capability="9.0", sm_count=132)})


def test_merge_keeps_what_it_did_not_measure(monkeypatch):
    key, other = _key(monkeypatch)
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    doc = store.merge(CacheDocument(), [(other, [_candidate("a", 2.0), _candidate("b", 1.0)], t0)])
    doc = store.merge(doc, [(other, [_candidate("b", 3.0), _candidate("c", status="failed")], t0 + timedelta(1))])
    (entry,) = doc.entries
    assert {c.algorithm: c.median_ms for c in entry.candidates} == {"a": 2.0, "b": 3.0, "c": None}
    assert entry.winner.algorithm == "a" and entry.tuned_at == t0 + timedelta(1)
    doc = store.merge(doc, [(key, [_candidate("a", 1.0)], t0)])
    assert len(doc.entries) == 2


def test_entries_of_other_devices_are_kept_but_never_used(monkeypatch):
    key, other = _key(monkeypatch)
    path = store.cache_file()
    foreign = Entry.build(other, [_candidate("explicit_gemm", 0.001, batch_below=8192)], datetime.now(timezone.utc))
    store.write_document(path, CacheDocument(entries=[foreign]))
    reset(save=False)
    kmap, a, b = _tune_one(monkeypatch)
    assert save_tuning_cache()
    entries = {e.key.device.name: e for e in _entries()}
    assert set(entries) == {"Some GPU", key.device.name}
    assert len(entries[key.device.name].candidates) == 4, "the other device's result must not be reused"
    assert entries["Some GPU"] == foreign


@pytest.mark.parametrize("damage", ["garbage", "truncated", "invalid", "empty", "nested"])
def test_damaged_file_is_moved_aside_once_and_tuning_goes_on(monkeypatch, damage):
    _tune_one(monkeypatch)
    assert save_tuning_cache()
    path = store.cache_file()
    good = path.read_text()
    bad = {
        "garbage": "\x00\x01 not json at all",
        "truncated": good[: len(good) // 2],
        "invalid": good.replace('"status": "ok"', '"status": "great"', 1),
        "empty": "",
        "nested": "[" * 100_000 + "]" * 100_000,  # deeper than the JSON decoder's recursion
    }[damage]
    path.write_text(bad)
    reset(save=False)
    with pytest.warns(RuntimeWarning, match="unusable") as record:
        _tune_one(monkeypatch, c_in=3)
        _tune_one(monkeypatch, c_in=2)
        assert save_tuning_cache()
    assert len(record) == 1
    aside = path.with_name(path.name + ".corrupt")
    assert aside.read_text() == bad
    assert sorted(e.key.signature.c_in for e in _entries()) == [2, 3]


def test_a_second_damaged_file_does_not_replace_the_first_one_moved_aside(monkeypatch):
    _tune_one(monkeypatch)
    assert save_tuning_cache()
    path = store.cache_file()
    for n, bad in enumerate(["first damaged file", "second damaged file"]):
        path.write_text(bad)
        reset(save=False)
        store._warned.clear()
        with pytest.warns(RuntimeWarning, match="unusable"):
            _tune_one(monkeypatch, c_in=3 + n)
            assert save_tuning_cache()
    assert sorted(p.read_text() for p in path.parent.glob("*.corrupt")) == ["first damaged file",
                                                                           "second damaged file"]


def test_a_newer_versions_file_is_left_unchanged_and_results_stay_in_memory(monkeypatch):
    _tune_one(monkeypatch)
    assert save_tuning_cache()
    path = store.cache_file()
    newer = json.dumps({"schema_version": SCHEMA_VERSION + 1, "entries": [], "new_field": 1})
    path.write_text(newer)
    reset(save=False)
    with pytest.warns(RuntimeWarning, match="written by a newer warpsparse") as record:
        _tune_one(monkeypatch, c_in=3)
        assert save_tuning_cache() is False
        assert save_tuning_cache() is False
    assert len(record) == 1
    assert path.read_text() == newer and not list(path.parent.glob("*.corrupt"))


def test_unwritable_cache_dir_warns_once_and_keeps_results_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache's parent directory should be")
    monkeypatch.setenv(store.CACHE_DIR_ENV, str(blocker / "cache"))
    reset(save=False)
    use_registry(monkeypatch, ExplicitGemm())
    kmap = random_map()
    with pytest.warns(RuntimeWarning, match="cannot write warpsparse tuning cache") as record:
        dispatch(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap), kmap)
        assert save_tuning_cache() is False
        dispatch(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap, c_in=3), kmap)
        assert save_tuning_cache() is False
    assert len(record) == 1
    monkeypatch.setattr("warpsparse.tuner.dispatcher.choose", lambda *a, **k: pytest.fail("must hit in memory"))
    a, b = operands(Op.CONV_FWD, kmap, c_in=3)
    torch.testing.assert_close(dispatch(Op.CONV_FWD, a, b, kmap), truth(Op.CONV_FWD, a, b, kmap))
    reset(save=False)


def test_lock_timeout_keeps_results_until_the_lock_is_free(monkeypatch):
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.2)
    monkeypatch.setattr(store._writer, "wake", lambda: None)  # its save could come first on a loaded machine
    _tune_one(monkeypatch)
    path = store.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        with pytest.warns(RuntimeWarning, match="could not lock"):
            assert save_tuning_cache() is False
    assert save_tuning_cache() is True
    assert len(_entries()) == 1


def test_a_save_waits_for_the_lock_once_even_behind_another_save(monkeypatch, tmp_path):
    """A save behind a stuck one (another thread waiting for a lock that another process holds) gives up within
    one ``LOCK_TIMEOUT_S`` in all, not one for each: a process ends no later than that after its last call."""
    key, _ = _key(monkeypatch)
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 1.0)
    private = store.TuningStore(tmp_path / "private.json")  # outside the process-wide stores the writer saves
    private.record(key, [_candidate("a", 1.0)])
    with FileLock(str(private.path) + ".lock"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stuck = threading.Thread(target=private.flush)
        stuck.start()
        time.sleep(0.5)  # the first save now holds the store and waits for the file lock
        start = time.monotonic()
        assert private.flush() is False
        waited = time.monotonic() - start
        stuck.join()
    assert 0.4 < waited < 1.3, f"waited {waited:.2f} s (one wait for each save would be about 1.5 s)"
    assert private.flush() is True
    assert [e.key for e in store.read_document(private.path).entries] == [key]


def test_background_writer_saves_without_being_asked(monkeypatch):
    monkeypatch.setattr(store, "FLUSH_DELAY_S", 0.05)
    _tune_one(monkeypatch)
    deadline = time.monotonic() + 10
    while not store.cache_file().exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_entries()) == 1


def _worker(worker: int, rounds: int, barrier) -> None:
    """One of the concurrent processes: tunes ``rounds`` new signatures and saves them."""
    torch.set_num_threads(1)
    kmap = random_map(n=40, extent=6)
    barrier.wait(timeout=60)
    for r in range(rounds):
        c_out = 1 + worker * rounds + r
        dispatch(Op.CONV_FWD, torch.randn(kmap.num_in, 2), torch.randn(27, 2, c_out), kmap)
        if worker % 2 == 0:
            assert save_tuning_cache()
    deadline = time.monotonic() + 60  # odd workers leave the writing to the background thread
    while any(s._pending for s in store._stores.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert save_tuning_cache()


def test_eight_processes_lose_no_entry(monkeypatch, cache_dir):
    use_registry(monkeypatch, ExplicitGemm())
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "5")
    monkeypatch.setattr(store, "FLUSH_DELAY_S", 0.01)
    rounds, ctx = 4, multiprocessing.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_worker, args=(w, rounds, barrier)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 8
    entries = store.read_document(cache_dir / store.FILE_NAME).entries
    assert sorted(e.key.signature.c_out for e in entries) == list(range(1, 8 * rounds + 1))
    assert all(e.winner is not None for e in entries)
    assert not list(cache_dir.glob("*.tmp")) and not list(cache_dir.glob("*.corrupt"))


_EXITING = textwrap.dedent("""
    import torch
    from warpsparse.algorithms.base import Op
    from warpsparse.coords.coord_set import CoordSet
    from warpsparse.coords.geometry import submanifold_geometry
    from warpsparse.coords.maps import build_kernel_map
    from warpsparse.tuner import dispatch
    xyz = torch.unique(torch.randint(0, 6, (40, 3)), dim=0)
    src = CoordSet(torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], 1).int(), (6, 6, 6), 1)
    kmap = build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), (6, 6, 6), out=src, kind="subm")[0]
    dispatch(Op.CONV_FWD, torch.randn(kmap.num_in, 3), torch.randn(27, 3, 2), kmap, "explicit_gemm")
""")


def test_results_are_saved_at_interpreter_exit(cache_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "WARPCONVNET_TUNE_BUDGET_MS": "5", store.CACHE_DIR_ENV: str(cache_dir)}
    done = subprocess.run([sys.executable, "-c", _EXITING], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (entry,) = store.read_document(cache_dir / store.FILE_NAME).entries
    assert (entry.key.signature.c_in, entry.key.signature.c_out) == (3, 2) and entry.winner is not None


def test_rewriting_keeps_the_file_permissions(monkeypatch):
    """A shared (group-readable) cache stays shared after the tuner rewrites it."""
    _tune_one(monkeypatch)
    assert save_tuning_cache()
    path = store.cache_file()
    path.chmod(0o664)
    reset(save=False)
    _tune_one(monkeypatch, c_in=3)
    assert save_tuning_cache()
    assert path.stat().st_mode & 0o777 == 0o664
    assert sorted(e.key.signature.c_in for e in _entries()) == [3, 4]


def test_files_of_older_schema_versions_still_load(monkeypatch):
    """A file written before the sources digest (schema 2: no ``versions.sources``) or before the setup costs
    (schema 1) is read, its entries kept; only entries of this process's versions are current."""
    _tune_one(monkeypatch)
    assert save_tuning_cache()
    raw = json.loads(store.cache_file().read_text())
    for version in (2, 1):
        old = json.loads(json.dumps(raw))
        old["schema_version"] = version
        for entry in old["entries"]:
            del entry["key"]["versions"]["sources"]
            # the id as schema 1 and 2 wrote it: a digest of the key's JSON, which had no sources field
            blob = json.dumps(entry["key"], sort_keys=True, separators=(",", ":"))
            entry["id"] = hashlib.sha256(blob.encode()).hexdigest()[:12]
            if version == 1:
                for candidate in entry["candidates"]:
                    candidate.pop("setup_ms", None)
        document = CacheDocument.model_validate(old)
        assert len(document.entries) == len(raw["entries"])
        assert all(e.key.versions.sources is None for e in document.entries)
