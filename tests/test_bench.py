"""The benchmark entry point (``python -m bench``) at a tiny size, so that it cannot rot.

CPU: explicit algorithm only, in a temporary output directory. GPU (``gpu`` marker): AUTO and, when
importable, spconv, whose outputs must agree with warpsparse's on the same voxels and weights.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import networks as nets
from bench import report
from bench.run import main
from warpsparse.demo import load_scan, rotation_angles

ROOT = Path(__file__).resolve().parents[1]

WORKLOADS = "tuning,spconv_net,batch4,regret,layers,maps"


def _run(tmp_path, monkeypatch, *args):
    # a tiny tuning budget: the smoke run checks the plumbing, not the tuner
    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "1")
    out = tmp_path / "out"
    main(["--tiny", "--out", str(out), *args])
    data = json.loads((out / "results.json").read_text())
    return out, data


def _check_network_rows(rows, impls):
    assert {(r["impl"], r["pass"]) for r in rows} == {(i, p) for i in impls for p in ("fwd", "fwd+bwd")}
    for r in rows:
        assert "error" not in r, r
        assert 0 < r["min_ms"] <= r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["reps"] >= 3 and r["first_call_s"] > 0
        assert r["sites"] > 100 and r["input"].startswith("scan @ 3.2 m")


def test_entry_point_tiny_cpu(tmp_path, monkeypatch):
    out, data = _run(tmp_path, monkeypatch, "--device", "cpu", "--algos", "explicit", "--dtype", "float32",
                     "--workloads", WORKLOADS, "--profile")
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["date"] and env["scan_sha256"]
    assert data["config"]["algos"] == ["explicit_gemm"]
    wl = data["workloads"]
    assert wl["spconv_net"]["status"] == "ok"
    _check_network_rows(wl["spconv_net"]["rows"], ["warpsparse-explicit"])
    for r in wl["spconv_net"]["rows"]:
        prof = r["profile"]
        assert prof["host_op_ms"] > 0 and prof["host_ops"] and prof["syncs"] == 0  # no device to wait for
        assert "gpu_ms" not in prof

    # the caches the run tuned are kept: the spconv_net probes filled one, which regret then extended
    cache = json.loads((out / data["tuning_caches"]["spconv_net"]).read_text())
    assert len(cache["entries"]) >= wl["tuning"]["rows"][0]["cache_entries"]

    tuning = wl["tuning"]["rows"]
    assert [r["phase"] for r in tuning] == ["empty cache", "warm cache", "empty tuning cache"]
    for r in tuning:
        assert "error" not in r, r
        assert r["network"] == "spconv_net" and r["first_call_s"] > 0 and r["steady_ms"] > 0
    # the second process finds every signature in the cache the first one wrote, and adds none
    assert tuning[0]["cache_entries"] > 0 and tuning[1]["cache_entries"] == tuning[0]["cache_entries"]
    assert tuning[2]["cache_entries"] == tuning[0]["cache_entries"]  # a fresh tuning cache, filled again

    regret = wl["regret"]
    assert regret["status"] == "ok" and len(regret["rows"]) == 9
    for r in regret["rows"]:
        assert "error" not in r, r
        assert r["timed"] == r["candidates"] == 4 and r["choice"].startswith("explicit_gemm")
        assert r["regret"] >= 1.0 and r["best_ms"] <= r["choice_ms"]
    summary = regret["summary"]
    assert summary["count"] == 9 and 1.0 <= summary["median"] <= summary["worst"]
    # the spconv net's layers also have a budgeted choice: the winner of what its tunings left in the cache
    assert {r["layer"] for r in regret["rows"] if "budgeted_regret" in r} >= {"subm 3x3x3 L0"}

    batch4 = wl["batch4"]
    assert batch4["status"] == "ok" and batch4["rows"]
    angles = [math.degrees(a) for a in rotation_angles(4).tolist()]
    assert batch4["rotations"] == {"seed": 0, "angles_deg": pytest.approx(angles)}

    assert wl["maps"]["status"] == "skipped"  # needs a GPU
    assert wl["layers"]["status"] in ("ok", "skipped")

    md = (out / "results.md").read_text()
    assert "## spconv's benchmark network" in md and "## Tuning cost" in md and "## AUTO regret" in md
    assert "## Where the time goes" in md
    assert md.count("| spconv_net | scan @ 3.2 m | fp32 |") == 2
    plots = data.get("plots", [])
    if importlib.util.find_spec("matplotlib") is not None:
        assert "regret.png" in plots
    assert all((out / p).stat().st_size > 0 for p in plots)
    assert "layers_speedup.png" not in plots  # no layers results on CPU


def test_networks_at_extra_voxel_sizes(tmp_path, monkeypatch):
    """``--extra-voxel-sizes`` runs the networks on the scan at those sizes too (rows told apart by input)."""
    out, data = _run(tmp_path, monkeypatch, "--device", "cpu", "--algos", "explicit", "--dtype", "float32",
                     "--workloads", "spconv_net", "--extra-voxel-sizes", "1.6,3.2")
    assert data["config"]["extra_voxel_sizes"] == [1.6]  # the main size is not run twice
    rows = data["workloads"]["spconv_net"]["rows"]
    assert {(r["input"], r["pass"]) for r in rows} == {(f"scan @ {v} m", p) for v in ("3.2", "1.6")
                                                        for p in ("fwd", "fwd+bwd")}
    assert all("error" not in r for r in rows)
    assert "| spconv_net | scan @ 1.6 m | fp32 |" in (out / "results.md").read_text()
    with pytest.raises(SystemExit):
        main(["--tiny", "--device", "cpu", "--extra-voxel-sizes", "0.1,x"])
    for bad in ("0", "-1"):  # a zero voxel size is refused, not replaced by the default
        with pytest.raises(SystemExit):
            main(["--tiny", "--device", "cpu", "--voxel-size", bad])


def test_minkunet_tiny_cpu(tmp_path, monkeypatch):
    """The MinkUNet workload (strided convs down, inverse convs up, skips, BatchNorm) runs end to end on CPU."""
    out, data = _run(tmp_path, monkeypatch, "--device", "cpu", "--algos", "explicit", "--dtype", "float32",
                     "--workloads", "minkunet", "--no-profile")
    section = data["workloads"]["minkunet"]
    assert section["status"] == "ok"
    _check_network_rows(section["rows"], ["warpsparse-explicit"])
    assert "| minkunet | scan @ 3.2 m | fp32 |" in (out / "results.md").read_text()


def test_rotated_batch_is_seeded():
    """The same seed gives the same batch of rotated copies, another seed other copies; the first is the scan."""
    a, b = load_scan(3.2, batch_size=4, seed=7), load_scan(3.2, batch_size=4, seed=7)
    assert torch.equal(a.coords, b.coords) and torch.equal(a.features, b.features)
    assert not torch.equal(a.coords, load_scan(3.2, batch_size=4, seed=8).coords)
    first = a.coords[a.coords[:, 0] == 0]
    assert torch.equal(first, load_scan(3.2).coords)
    angles = rotation_angles(4, seed=7)
    assert angles[0] == 0 and ((angles[1:] > 0) & (angles[1:] < 2 * math.pi)).all()
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        rotation_angles(0)


def _layer_row(label, maps_in_call, ms):
    """A row of ``layers.json`` as ``bench/layers.py`` writes it (kernel sweeps, dense GEMM, module times)."""
    layer, channels, dtype = label.split()
    c = int(channels.split("->")[0])
    row = {"label": label, "layer": layer, "c": c, "dtype": dtype, "n_in": 125655, "n_out": 125655,
           "pairs": 791727, "dense_ms": 0.057, "maps_in_call": maps_in_call}
    for op in ("conv_fwd", "conv_dgrad", "conv_wgrad"):
        for algo in ("explicit_gemm", "implicit_gemm"):
            row[f"{algo}_{op}_ms"] = 0.1
            row[f"{algo}_{op}_params"] = {"chunk": 256}
    row.update(ms)
    return row


LAYER_ROWS = [
    _layer_row("subm 64->64 fp16", False, {"explicit_gemm_fwd_ms": 1.2, "explicit_gemm_fwdbwd_ms": 2.4,
                                           "ws_auto_fwd_ms": 0.1, "ws_auto_fwdbwd_ms": 0.8,
                                           "spconv_fwd_ms": 0.3, "spconv_fwdbwd_ms": 1.0}),
    _layer_row("down 64->64 fp16", True, {"explicit_gemm_fwd_ms": 1.5, "explicit_gemm_fwdbwd_ms": 3.0,
                                          "ws_auto_fwd_ms": 1.3, "ws_auto_fwdbwd_ms": 3.3,
                                          "spconv_fwd_ms": 1.3, "spconv_fwdbwd_ms": 2.3}),
    _layer_row("subm 16->16 fp32", False, {"module_error": "Traceback ..."}),  # no module times
]


def _layers_results(rows):
    section = {"rows": [], "checks": [], "notes": [], "status": "ok", "stdout": "",
               "files": {"layers.json": {"environment": {}, "meta": {}, "rows": rows, "sweeps": []}}}
    return {"environment": {"gpu": "NVIDIA H200"}, "workloads": {"layers": section}}


def test_layer_speedups():
    labels, series = report.layer_speedups(_layers_results(LAYER_ROWS))
    assert labels == ["subm 64->64 fp16 fwd", "subm 64->64 fp16 fwd+bwd", "down 64->64 fp16 (maps in call) fwd",
                      "down 64->64 fp16 (maps in call) fwd+bwd"]
    assert series["vs spconv (module)"] == pytest.approx([3.0, 1.25, 1.0, 2.3 / 3.3])
    # kernel times on a prebuilt map are not compared with a module that builds its maps in the call
    assert series["vs explicit_gemm (kernel)"] == pytest.approx([12.0, 3.0, None, None])
    no_peer = [{k: v for k, v in r.items() if not k.startswith("spconv")} for r in LAYER_ROWS]
    assert list(report.layer_speedups(_layers_results(no_peer))[1]) == ["vs explicit_gemm (kernel)"]


def test_layer_plot(tmp_path):
    pytest.importorskip("matplotlib")
    written = report.make_plots(_layers_results(LAYER_ROWS), tmp_path)
    assert written == ["layers_speedup.png"]
    assert (tmp_path / "layers_speedup.png").stat().st_size > 0


@pytest.mark.parametrize("layers", [None, {"rows": [], "checks": [], "notes": ["bench/layers.py needs a CUDA device"],
                                           "status": "skipped"}, _layers_results([])["workloads"]["layers"]])
def test_no_layer_plot_without_layer_results(tmp_path, layers):
    pytest.importorskip("matplotlib")
    results = {"environment": {}, "workloads": {} if layers is None else {"layers": layers}}
    assert report.make_plots(results, tmp_path) == []
    assert not (tmp_path / "layers_speedup.png").exists()


def test_output_difference_aligns_sites():
    n = 50
    coords = torch.unique(torch.randint(0, 9, (n, 4), dtype=torch.int32), dim=0)
    feats = torch.randn(coords.shape[0], 5)
    perm = torch.randperm(coords.shape[0])
    same = nets.output_difference(coords, feats, coords[perm], feats[perm])
    assert same["same_sites"] and same["rel_error"] == 0.0
    noisy = nets.output_difference(coords, feats, coords[perm], feats[perm] + 0.1)
    assert noisy["same_sites"] and 0 < noisy["rel_error"] < 1
    other = nets.output_difference(coords[1:], feats[1:], coords, feats)
    assert not other["same_sites"] and "rel_error" not in other


def test_copy_weights_layout():
    """spconv's [C_out, k0, k1, k2, C_in] weight from a warpsparse [K, C_in, C_out] one, k = (i0*k1 + i1)*k2 + i2."""
    src = nets.SpconvBenchmarkNet(nets.WarpsparseBackend("explicit_gemm"), 3, width_divisor=16)

    class Fake5d(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            k, c_in, c_out = w.shape
            self.weight = torch.nn.Parameter(torch.full((c_out, 3, 3, 3, c_in), math.nan))

    convs = nets.conv_layers(src)
    dst = torch.nn.Sequential(*[Fake5d(c.weight) for c in convs])
    nets.copy_weights(src, dst)
    for s, d in zip(convs, dst):
        i0, i1, i2 = torch.randint(0, 3, (3,)).tolist()
        k = (i0 * 3 + i1) * 3 + i2
        assert torch.equal(d.weight[:, i0, i1, i2, :], s.weight[k].t())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_entry_point_tiny_gpu(tmp_path, monkeypatch):
    out, data = _run(tmp_path, monkeypatch, "--device", "cuda", "--algos", "auto", "--dtype", "float32",
                     "--workloads", "spconv_net,minkunet")
    spconv_there = data["environment"].get("peer") == "spconv"
    impls = ["warpsparse-auto"] + (["spconv"] if spconv_there else [])
    for name in ("spconv_net", "minkunet"):
        _check_network_rows(data["workloads"][name]["rows"], impls)
        checks = data["workloads"][name]["checks"]
        assert len(checks) == len(impls) - 1
        for check in checks:
            assert check["same_sites"], check
            # spconv's max-pool returns max(0, window max): only the pool-free network must agree in values
            if name == "minkunet":
                assert check["rel_error"] < 1e-3, check
    assert "| spconv_net | scan @ 3.2 m | fp32 |" in (out / "results.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_costs_tiny_gpu(monkeypatch, capsys):
    """``bench/host_costs.py`` runs end to end and prints a time for every row."""
    from bench import host_costs

    monkeypatch.setenv("WARPCONVNET_TUNE_BUDGET_MS", "50")
    argv = ["host_costs.py", "--sites", "300", "--channels", "16", "--calls", "3", "--maps", "1"]
    monkeypatch.setattr("sys.argv", argv)
    host_costs.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.rstrip().endswith(" us")]
    names = {line.rsplit(maxsplit=2)[0] for line in lines}
    assert {"module fwd+bwd", "dispatch wgrad", "+ mask sort", "+ pair chunks"} <= names, names
    assert all(math.isfinite(float(line.split()[-2])) for line in lines), lines


def test_first_call_breakdown_tiny_cpu(tmp_path):
    """``bench/first_call.py`` (in its own process: it wraps the tuner and the compilers) splits a first call."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "WARPCONVNET_BENCHMARK_CACHE_DIR": str(tmp_path), "WARPCONVNET_TUNE_BUDGET_MS": "1",
           "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, str(repo / "bench" / "first_call.py"), "--device", "cpu",
                           "--voxel-size", "3.2", "--width-divisor", "16"], env=env, capture_output=True, text=True,
                          timeout=900, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    head = lines[0].split()
    assert head[:2] == ["first", "call"] and float(head[2]) > 0 and int(head[4]) > 0, lines[0]
    rows = [line for line in lines if "conv_fwd" in line or "conv_dgrad" in line or "conv_wgrad" in line]
    assert len(rows) == int(head[4]) and all("explicit_gemm" in row for row in rows)
    assert any(line.strip().startswith("reference") for line in lines)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiles_gpu(tmp_path, monkeypatch):
    """``bench/tiles.py`` times points checked against the explicit algorithm and lists the compiled variants'
    tensor-core instructions."""
    from bench import tiles

    monkeypatch.setattr("sys.argv", ["tiles.py", "--channels", "64", "--out", str(tmp_path)])
    tiles.main()
    result = json.loads((tmp_path / "tiles.json").read_text())
    assert result["points"] and all(r["rel_error"] < 1e-2 and r["ms"] > 0 for r in result["points"])
    assert any(v["wgmma"] + v["mma_sync"] > 0 and None not in v["tile"] for v in result["variants"])


def test_tiles_sm90_lists_registers_without_a_gpu(tmp_path):
    """``bench/tiles.py --sm90`` compiles the forward kernel's tile points for sm_90 on the CPU (in a process of
    its own: the interpreter, which this suite runs under, compiles nothing) and lists each one's registers,
    spills and tensor-core instructions."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "tiles.py"), "--sm90", "--channels", "64",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    variants = json.loads((tmp_path / "tiles_sm90.json").read_text())["variants"]
    assert {(v["BLOCK_M"], v["BLOCK_N"]) for v in variants} == {(64, 32), (64, 64), (128, 32), (128, 64)}
    assert all(0 < v["registers"] <= 255 and v["stack_bytes"] >= 0 and v["wgmma"] > 0 for v in variants)
    assert "| 64 | 128 x 64 x 64 | 4 | 3 |" in done.stdout
