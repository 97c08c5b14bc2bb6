"""The `warpsparse` command end to end, in a temporary cache dir."""
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from helpers_tuner import cache_dir, operands, random_map, use_registry  # noqa: F401
from warpsparse.algorithms.base import Op
from warpsparse.algorithms.explicit import ExplicitGemm
from warpsparse.cache_schema import SCHEMA_VERSION, CandidateResult, DeviceInfo, Entry
from warpsparse.cli import main
from warpsparse.tuner import dispatch, save_tuning_cache, store

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("cache_dir")


def _populate(monkeypatch, channels=(3, 4)) -> list[Entry]:
    """Tune a few real signatures here and add one entry of another device; the entries on disk."""
    use_registry(monkeypatch, ExplicitGemm())
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "inf")
    kmap = random_map()
    for c in channels:
        dispatch(Op.CONV_FWD, *operands(Op.CONV_FWD, kmap, c_in=c), kmap)
    assert save_tuning_cache()
    here = store.read_document(store.cache_file()).entries
    key = here[0].key.model_copy(update={"device": DeviceInfo(type="cuda", name="Other GPU", capability="9.0",
                                                                  sm_count=132)})
    foreign = Entry.build(key, [CandidateResult(algorithm="implicit_gemm", params={"block": 64}, status="ok",
                                                median_ms=0.25)], datetime.now(timezone.utc))
    store.update_document(store.cache_file(), lambda d: store.merge(d, [(key, foreign.candidates,
                                                                          foreign.tuned_at)]))
    return store.read_document(store.cache_file()).entries


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_path_list_show(monkeypatch, capsys, cache_dir):
    rc, out, _ = _run(capsys, "cache", "path")
    assert rc == 0 and out.strip() == str(cache_dir / "tuning_cache.json")
    rc, out, _ = _run(capsys, "cache", "list")
    assert rc == 0 and "no tuned signatures" in out
    entries = _populate(monkeypatch)
    mine = [e for e in entries if e.key.device.type == "cpu"]
    rc, out, _ = _run(capsys, "cache", "list")
    assert rc == 0 and "2 signatures" in out and "Other GPU" not in out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "OP", "DTYPE", "C_IN"]
    for e in mine:
        row = next(line for line in lines if line.startswith(e.id))
        assert "conv_fwd" in row and "explicit_gemm" in row and f"{e.winner.median_ms:.3f}" in row
    rc, out, _ = _run(capsys, "cache", "list", "--device", "all")
    assert "3 signatures" in out and "Other GPU" in out and " no" in out
    target = mine[0]
    rc, out, _ = _run(capsys, "cache", "show", target.id[:6])
    assert rc == 0 and target.id in out and "usable here" in out
    assert out.count("explicit_gemm") >= 5 and "batch_below=inf" in out
    assert f"C {target.key.signature.c_in} -> 5" in out
    rc, _, err = _run(capsys, "cache", "show", "zzzz")
    assert rc == 1 and "no entry with id 'zzzz'" in err


def test_clear_needs_confirmation(monkeypatch, capsys):
    _populate(monkeypatch)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    rc, _, err = _run(capsys, "cache", "clear")
    assert rc == 1 and "--yes" in err and store.cache_file().exists()
    rc, out, _ = _run(capsys, "cache", "clear", "--yes")
    assert rc == 0 and "removed 3" in out and not store.cache_file().exists()
    rc, out, _ = _run(capsys, "cache", "clear", "--yes")
    assert rc == 0 and "nothing to clear" in out
    store.cache_file().write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "entries": []}))
    rc, out, _ = _run(capsys, "cache", "clear", "--yes")
    assert rc == 0 and "removed a cache written by a newer warpsparse" in out and not store.cache_file().exists()


def test_export_import_round_trip(monkeypatch, capsys, tmp_path):
    entries = _populate(monkeypatch)
    exported = tmp_path / "tuned.json"
    rc, out, _ = _run(capsys, "cache", "export", str(exported))
    assert rc == 0 and "exported 3" in out
    rc, out, _ = _run(capsys, "cache", "export", str(tmp_path / "mine.json"), "--device", "current")
    assert "exported 2" in out
    _run(capsys, "cache", "clear", "--yes")
    rc, out, _ = _run(capsys, "cache", "import", str(tmp_path / "mine.json"))
    assert rc == 0 and "merged 2 tuned signatures (2 new)" in out
    rc, out, _ = _run(capsys, "cache", "import", str(exported))
    assert rc == 0 and "merged 3 tuned signatures (1 new)" in out
    assert sorted(store.read_document(store.cache_file()).entries, key=lambda e: e.id) == \
        sorted(entries, key=lambda e: e.id)


def test_import_rejects_invalid_files(monkeypatch, capsys, tmp_path):
    _populate(monkeypatch)
    before = store.cache_file().read_text()
    bad = tmp_path / "bad.json"
    doc = json.loads(before)
    doc["entries"][0]["candidates"][0]["median_ms"] = "fast"
    bad.write_text(json.dumps(doc))
    rc, _, err = _run(capsys, "cache", "import", str(bad))
    assert rc == 1 and "cannot import" in err and "median_ms" in err
    rc, _, err = _run(capsys, "cache", "import", str(tmp_path / "missing.json"))
    assert rc == 1 and "no such file" in err
    rc, _, err = _run(capsys, "cache", "import", str(tmp_path))
    assert rc == 1 and "is a directory, not a cache file" in err
    if Path("/dev/null").exists():
        rc, _, err = _run(capsys, "cache", "import", "/dev/null")
        assert rc == 1 and "not a regular file" in err
    assert store.cache_file().read_text() == before and bad.exists()


def test_export_to_a_directory_or_a_missing_one_is_a_clear_error(monkeypatch, capsys, tmp_path):
    _populate(monkeypatch)
    rc, _, err = _run(capsys, "cache", "export", str(tmp_path))
    assert rc == 1 and "it is a directory; name a file" in err
    rc, _, err = _run(capsys, "cache", "export", str(tmp_path / "missing" / "x.json"))
    assert rc == 1 and f"directory {tmp_path / 'missing'} does not exist" in err
    before = store.cache_file().read_bytes()
    rc, _, err = _run(capsys, "cache", "export", str(store.cache_file()), "--device", "current")
    assert rc == 1 and "it is the tuning cache itself; name another file" in err
    assert store.cache_file().read_bytes() == before, "the cache must be left as it was"


@pytest.mark.parametrize("argv, message", [
    (["--device", "foo"], "--device 'foo': expected cpu, cuda or cuda:N"),
    (["--voxel-size", "0"], "--voxel-size must be a positive number of metres, got 0"),
    (["--budget-ms", "-1"], "--budget-ms must be a positive number of milliseconds, got -1"),
    (["--voxel-size", "1000", "--device", "cpu"], "--voxel-size 1000 m: the sample network cannot run on this scan"),
    (["--voxel-size", "1e-9", "--device", "cpu"], "--voxel-size 1e-09: "),
    (["--voxel-size", "20", "--device", "cpu"], "--voxel-size 20 m: the sample network cannot run on this scan"),
])
def test_tune_rejects_bad_options(capsys, argv, message):
    rc, _, err = _run(capsys, "tune", *argv)
    assert rc == 1 and message in err


def test_env_reports_modes_and_sources(monkeypatch, capsys, cache_dir):
    monkeypatch.delenv("WARPCONVNET_TUNE_BUDGET_MS")  # the default budget
    rc, out, _ = _run(capsys, "env")
    assert rc == 0
    assert "conv forward" in out and "depthwise weight grad" in out and str(cache_dir) in out
    assert "2000 ms" in out
    monkeypatch.setenv("WARPCONVNET_BWD_ALGO_MODE", "[implicit_gemm,explicit_gemm]")
    monkeypatch.setenv("WARPCONVNET_WGRAD_ALGO_MODE", "explicit_gemm")
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "500")
    rc, out, _ = _run(capsys, "env")
    rows = {line[:22].strip(): line for line in out.splitlines()}
    assert "[explicit_gemm, implicit_gemm]" in rows["conv input grad"]
    assert "WARPCONVNET_BWD_ALGO_MODE" in rows["conv input grad"]
    assert "WARPCONVNET_WGRAD_ALGO_MODE='explicit_gemm'" in rows["conv weight grad"]
    assert "auto" in rows["conv forward"] and "500 ms" in out
    monkeypatch.setenv("WARPCONVNET_FWD_ALGO_MODE", "warp_speed")
    monkeypatch.setenv("WARPCONVNET_COMPILE_WORKERS", "abc")
    rc, out, err = _run(capsys, "env")
    assert rc == 1 and "INVALID" in out and "'warp_speed'" in err
    assert "WARPCONVNET_COMPILE_WORKERS='abc'" in err and err.count("error: WARPCONVNET_FWD_ALGO_MODE") == 1


def test_env_says_why_an_algorithm_is_unavailable(capsys):
    from warpsparse.algorithms.cupy import runtime
    rc, out, _ = _run(capsys, "env")
    row = next(line for line in out.splitlines() if line.split()[1:2] == ["cupy_implicit_gemm"])
    missing = runtime.unavailable_reason()
    assert rc == 0 and row.endswith("yes" if missing is None else f"no: {missing}")


def test_module_entry_point(cache_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "warpsparse", "cache", "path"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(cache_dir / "tuning_cache.json")
    done = subprocess.run([sys.executable, "-m", "warpsparse", "cache", "frobnicate"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_tune_pretunes_the_demo_network(monkeypatch, capsys):
    use_registry(monkeypatch, ExplicitGemm())
    rc, out, err = _run(capsys, "tune", "--voxel-size", "1.0", "--budget-ms", "1", "--algo", "explicit_gemm",
                        "--device", "cpu")
    assert rc == 0, err
    assert "tuning" in err  # the progress bar
    assert "signatures tuned; saved to" in out
    count = int(out.strip().splitlines()[-1].split()[0])
    entries = store.read_document(store.cache_file()).entries
    assert len(entries) == count and count >= 6
    assert {e.key.signature.op for e in entries} == {"conv_fwd", "conv_dgrad", "conv_wgrad"}
    rc, out, err = _run(capsys, "tune", "--algo", "bogus")
    assert rc == 1 and "--algo: unknown algorithm 'bogus'" in err
    assert torch.is_grad_enabled()
