"""Benchmarks of warpsparse against spconv on the bundled LiDAR scan: networks, layers, tuning cost, memory.

    python -m bench [--device cuda] [--workloads spconv_net,minkunet,...] [--dtype float16,float32] [--out DIR]
    python -m bench --device cpu --tiny --algos explicit      # the CPU smoke run of CI

Workloads (each under the time ``--budget-s`` leaves):

- ``tuning``: wall time of the first forward+backward call of each network in a fresh process on empty
  tuning and kernel caches (Triton, CuPy), then in a second process on the caches the first one left, then in
  a third on an empty tuning cache with those kernel caches (the tuning alone, compiles mostly done);
- ``spconv_net``: spconv's benchmark network, a fresh sparse tensor every call (map building included),
  forward and forward+backward, per dtype; warpsparse (each of ``--algos``) vs spconv, with peak memory;
- ``minkunet``: a MinkUNet-style encoder-decoder, forward+backward (half precision under autocast) and fp32;
- ``batch4``: spconv's benchmark network on a batch of 4 copies of the scan, rotated by angles drawn from a
  fixed seed (both recorded);
- ``layers``, ``maps``: the per-layer and map-build benchmarks of ``bench/layers.py`` and ``bench/maps.py``;
- ``regret``: per layer and op of a suite, the time of AUTO's choice over the best of every candidate timed.

Order: per network its tuning probes, then the network in the first dtype (it reuses the probes' caches); then
regret; the networks at the ``--extra-voxel-sizes`` (default 0.05 m on a GPU) in the first dtype; the networks
in the other dtypes; batch4; maps; layers. Results go to ``--out``: ``results.json`` and ``results.md``
(rewritten after every workload), PNG plots (at the end, an interrupted run included), and the tuning caches
the run filled.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Callable, Iterator

import torch

from bench import networks as nets
from bench import report
from bench.timing import REPO, Timing, call_profile, environment, interleaved, measure, ratio, sync, wall

WORKLOADS = ("tuning", "spconv_net", "minkunet", "batch4", "layers", "maps", "regret")
DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
ALGO_ALIASES = {"explicit": "explicit_gemm", "implicit": "implicit_gemm", "cupy": "cupy_implicit_gemm"}
CACHE_ENV = "WARPCONVNET_BENCHMARK_CACHE_DIR"
#: the kernel caches a first call may fill besides the tuning cache: Triton's and CuPy's (NVRTC)
KERNEL_CACHE_ENVS = {"triton": "TRITON_CACHE_DIR", "cupy": "CUPY_CACHE_DIR"}
#: longest first call a tuning probe may take
PROBE_CAP_S = 150.0
PROBE_TAG = "PROBE "
TINY_VOXEL, TINY_DIVISOR = 3.2, 16
#: networks that run half precision under autocast (fp32 weights); the others convert the whole model
AMP_NETWORKS = frozenset({"minkunet"})


class Deadline:
    """Seconds left of an optional time budget."""

    def __init__(self, seconds: float | None) -> None:
        self.end = math.inf if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.left() <= 0


class OutOfTime(Exception):
    """The time budget ran out inside a workload."""


@dataclass
class Config:
    device: torch.device
    tiny: bool
    workloads: tuple[str, ...]
    out: Path
    dtypes: tuple[torch.dtype, ...]
    algos: tuple[str, ...]
    voxel_size: float
    extra_voxel_sizes: tuple[float, ...]
    peer: bool
    budget_s: float | None
    width_divisor: int
    target_s: float
    min_reps: int
    layers_args: list[str]
    regret_s: float | None
    profile: bool


@contextlib.contextmanager
def env_vars(values: dict[str, str]) -> Iterator[None]:
    """Set the environment variables ``values`` in this process for the ``with`` block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Run:
    """What the workloads share: the configuration, the deadline, the peer, the caches and the results."""

    cfg: Config
    deadline: Deadline
    results: dict[str, Any]
    work: Path
    spconv: ModuleType | None = None
    inputs: dict[tuple[float, int], nets.ScanInput] = field(default_factory=dict)

    def input(self, batch_size: int = 1, voxel_size: float | None = None) -> nets.ScanInput:
        """The scan at ``voxel_size`` (default the run's), ``batch_size`` copies; loaded once."""
        key = (voxel_size or self.cfg.voxel_size, batch_size)
        if key not in self.inputs:
            self.inputs[key] = nets.load_input(key[0], self.cfg.device, batch_size)
        return self.inputs[key]

    def cache_env(self, name: str) -> dict[str, str]:
        """Environment variables pointing the tuner, Triton and CuPy at the cache directories of ``name`` (a
        network, whose tuning probes fill them, or ``main``)."""
        env = {CACHE_ENV: str(self.work / name / "tuning")}
        env.update({var: str(self.work / name / kind) for kind, var in KERNEL_CACHE_ENVS.items()})
        return env

    @contextlib.contextmanager
    def caches(self, name: str) -> Iterator[None]:
        """Use the caches of ``name`` in this process (the tuning probes of that network filled them)."""
        with env_vars(self.cache_env(name)):
            try:
                yield
            finally:
                from warpsparse.tuner import save_tuning_cache

                save_tuning_cache()

    def check_time(self) -> None:
        if self.deadline.passed:
            raise OutOfTime(f"time budget of {self.cfg.budget_s:g} s used up")

    def backends(self) -> list[nets.Backend]:
        found: list[nets.Backend] = [nets.WarpsparseBackend(a) for a in self.cfg.algos]
        if self.spconv is not None:
            found.append(nets.SpconvBackend(self.spconv))
        return found

    def measure(self, call: Callable[[], object]) -> Timing:
        return measure(call, self.cfg.device, warmup=2, target_s=self.cfg.target_s, min_reps=self.cfg.min_reps)


# ---------------------------------------------------------------------------------------------------------------
# networks


def _precision(network: str, dtype: torch.dtype) -> nets.Precision:
    return nets.Precision.of(dtype, amp=network in AMP_NETWORKS)


def _peak_memory(call: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Peak allocated memory during one call, absolute and above what was allocated before it (MiB)."""
    if device.type != "cuda":
        return {}
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_mib": peak / 2**20, "call_peak_mib": (peak - before) / 2**20}


def _profile(call: Callable[[], object], device: torch.device) -> dict[str, Any]:
    try:
        return call_profile(call, device)
    except Exception as exc:  # noqa: BLE001 - the profiler is optional (CUPTI may be unavailable)
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _models(run: Run, network: str, precision: nets.Precision) -> tuple[dict[str, tuple[nets.Backend, Any]],
                                                                        list[str]]:
    """One model per backend, all with the same weights; notes on what could not be aligned."""
    notes: list[str] = []
    models: dict[str, tuple[nets.Backend, Any]] = {}
    first = None
    for backend in run.backends():
        model = nets.build(network, backend, precision, run.cfg.device, 3, run.cfg.width_divisor)
        try:
            if first is None:
                first = model
            elif isinstance(backend, nets.SpconvBackend):
                nets.copy_weights(first, model)
            else:
                model.load_state_dict(first.state_dict())
        except (ValueError, RuntimeError) as exc:
            notes.append(f"{backend.name}: weights not copied ({exc}); outputs are not compared")
        models[backend.name] = (backend, model)
    return models, notes


def _compare(run: Run, models: dict[str, tuple[nets.Backend, Any]], inp: nets.ScanInput,
             precision: nets.Precision) -> list[dict[str, Any]]:
    """Forward outputs of every backend against the first one (same weights, same voxels)."""
    outs = {}
    for name, (backend, model) in models.items():
        out = nets.NetworkCall(model, backend, inp, precision, backward=False)()
        outs[name] = (backend.coords(out), backend.features(out))
    names = list(outs)
    checks = []
    for other in names[1:]:
        diff = nets.output_difference(*outs[names[0]], *outs[other])
        checks.append({"a": names[0], "b": other, "precision": precision.name, **diff})
    return checks


def bench_network(run: Run, network: str, inp: nets.ScanInput, dtype: torch.dtype, section: dict[str, Any]) -> None:
    """Time every backend on ``network``: forward+backward then forward; peak memory; output agreement."""
    precision = _precision(network, dtype)
    models, notes = _models(run, network, precision)
    section["notes"].extend(notes)
    base = {"network": network, "input": inp.label, "sites": inp.num_sites, "precision": precision.name}
    for backward in (True, False):
        for name, (backend, model) in models.items():
            run.check_time()
            row: dict[str, Any] = {**base, "pass": "fwd+bwd" if backward else "fwd", "impl": name}
            call = nets.NetworkCall(model, backend, inp, precision, backward)
            try:
                row["first_call_s"] = wall(call, run.cfg.device)
                row.update(run.measure(call).as_dict())
                row.update(_peak_memory(call, run.cfg.device))
                if run.cfg.profile and dtype == run.cfg.dtypes[0] and inp.batch_size == 1:
                    row["profile"] = _profile(call, run.cfg.device)
            except OutOfTime:
                raise
            except Exception as exc:  # noqa: BLE001 - one failing backend must not hide the others
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
                if run.cfg.device.type == "cuda":
                    torch.cuda.empty_cache()
            section["rows"].append(row)
            print(f"[bench]   {network} {inp.label} {precision.name} {row['pass']} {name}: "
                  f"{row.get('median_ms', row.get('error'))}", flush=True)
    try:
        section["checks"].extend(_compare(run, models, inp, precision))
    except Exception as exc:  # noqa: BLE001
        section["notes"].append(f"output comparison failed: {type(exc).__name__}: {exc}"[:400])
    del models
    if run.cfg.device.type == "cuda":
        torch.cuda.empty_cache()


def network_workload(run: Run, network: str, section: dict[str, Any], batch_size: int,
                     dtypes: tuple[torch.dtype, ...], voxel_size: float | None = None) -> dict[str, Any]:
    """Fill ``section`` with the timings of ``network`` on the scan (``batch_size`` copies, at ``voxel_size``,
    default the run's), per dtype."""
    inp = run.input(batch_size, voxel_size)
    note = f"{inp.label}: {inp.num_sites} voxels, grid {inp.spatial_shape}"
    if batch_size > 1:
        section["rotations"] = {"seed": inp.seed, "angles_deg": list(inp.angles_deg)}
        note += f"; copies rotated by {', '.join(f'{a:.1f}' for a in inp.angles_deg)} deg (seed {inp.seed})"
    if note not in section["notes"]:
        section["notes"].append(note)
    with run.caches(network):
        for dtype in dtypes:
            bench_network(run, network, inp, dtype, section)
    return section


# ---------------------------------------------------------------------------------------------------------------
# tuning cost


def _cache_entries() -> int | None:
    from warpsparse.tuner import cache_file

    try:
        return len(json.loads(cache_file().read_text()).get("entries", []))
    except (OSError, ValueError):
        return None


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: the first forward+backward call of a network (tuning included), then steady calls."""
    import warpsparse.tuner

    cfg = make_config(args)
    device, network = cfg.device, args.first_call_probe
    precision = _precision(network, cfg.dtypes[0])
    inp = nets.load_input(cfg.voxel_size, device)
    warm = torch.ones(64, 64, device=device)
    (warm @ warm).sum().item()  # device context and BLAS handles exist before the timed call
    result: dict[str, Any] = {"network": network, "precision": precision.name, "sites": inp.num_sites}
    backend = nets.WarpsparseBackend(cfg.algos[0])
    model = nets.build(network, backend, precision, device, 3, cfg.width_divisor)
    call = nets.NetworkCall(model, backend, inp, precision, backward=True)
    result["impl"] = backend.name
    result["first_call_s"] = wall(call, device)
    result["second_call_ms"] = wall(call, device) * 1e3
    result["steady_ms"] = measure(call, device, warmup=1, target_s=cfg.target_s / 2, min_reps=3).median_ms
    warpsparse.tuner.save_tuning_cache()
    result["cache_entries"] = _cache_entries()
    if args.probe_peer:
        spconv, _ = nets.import_spconv()
        if spconv is not None and device.type == "cuda":
            sp = nets.SpconvBackend(spconv)
            sp_call = nets.NetworkCall(nets.build(network, sp, precision, device, 3, cfg.width_divisor), sp, inp,
                                       precision, backward=True)
            result["spconv_first_call_s"] = wall(sp_call, device)
            result["spconv_steady_ms"] = measure(sp_call, device, warmup=1, target_s=cfg.target_s / 2,
                                                 min_reps=3).median_ms
    return result


def _probe_command(run: Run, network: str, peer: bool) -> list[str]:
    cfg = run.cfg
    cmd = [sys.executable, "-m", "bench", "--first-call-probe", network, "--device", str(cfg.device),
           "--dtype", str(cfg.dtypes[0]).removeprefix("torch."), "--algos", cfg.algos[0],
           "--voxel-size", repr(cfg.voxel_size)]
    if cfg.tiny:
        cmd.append("--tiny")
    if peer:
        cmd.append("--probe-peer")
    return cmd


def tuning_probes(run: Run, network: str, section: dict[str, Any]) -> dict[str, Any]:
    """A process on empty caches, then one on the caches it left, then one on an empty tuning cache with the
    kernel caches the two left: the first call of ``network`` in each."""
    base = {**os.environ, **run.cache_env(network),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    fresh_tuning = {CACHE_ENV: str(run.work / network / "tuning-fresh")}
    for phase, env in (("empty cache", base), ("warm cache", base), ("empty tuning cache", {**base, **fresh_tuning})):
        run.check_time()
        row: dict[str, Any] = {"network": network, "phase": phase}
        start = time.perf_counter()
        limit = min(run.deadline.left(), PROBE_CAP_S)
        code, stdout = run_child(_probe_command(run, network, peer=run.spconv is not None and phase == "empty cache"),
                                 env, limit)
        lines = [ln for ln in stdout.splitlines() if ln.startswith(PROBE_TAG)]
        if code is None:
            row["error"] = f"the process did not finish within {limit:.0f} s"
        elif code != 0 or not lines:
            row["error"] = f"probe exited with {code}: {stdout[-600:]}"
        else:
            row.update(json.loads(lines[-1][len(PROBE_TAG):]))
        row["process_s"] = time.perf_counter() - start
        section["rows"].append(row)
        if "error" in row:
            break
    return section


# ---------------------------------------------------------------------------------------------------------------
# regret of AUTO


@dataclass(frozen=True)
class SuiteLayer:
    label: str
    kmap: Any
    c_in: int
    c_out: int


def layer_suite(run: Run) -> list[SuiteLayer]:
    """spconv-network and MinkUNet layers on the scan: (level, geometry, channels)."""
    from warpsparse import SparseTensor
    from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry
    from warpsparse.nn.functional.kernel_maps import conv_map
    from warpsparse.nn.functional.sparse_pool import sparse_max_pool3d

    inp = run.input()
    levels = [SparseTensor(inp.features, inp.coords, inp.spatial_shape, inp.batch_size)]
    for _ in range(4):
        levels.append(sparse_max_pool3d(levels[-1], 2, 2))
    subm, down = submanifold_geometry((3, 3, 3), (1, 1, 1)), ConvGeometry((2, 2, 2), (2, 2, 2))
    d = run.cfg.width_divisor
    spec = [("subm 3x3x3 L0", 0, subm, "subm", 3, 64), ("subm 3x3x3 L0", 0, subm, "subm", 64, 64),
            ("conv 2x2x2/2 L0", 0, down, "conv", 32, 32), ("subm 3x3x3 L1", 1, subm, "subm", 96, 96),
            ("subm 3x3x3 L2", 2, subm, "subm", 128, 128), ("subm 3x3x3 L4", 4, subm, "subm", 192, 192)]
    suite = []
    for label, level, geom, kind, c_in, c_out in spec[:3] if run.cfg.tiny else spec:
        kmap, _ = conv_map(levels[level], geom, kind)
        c_in = c_in if c_in < 8 else max(4, c_in // d)
        suite.append(SuiteLayer(label, kmap, c_in, max(4, c_out // d)))
    return suite


def _operands(op: Any, layer: SuiteLayer, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    from warpsparse.algorithms.base import Op

    k = layer.kmap
    feats = torch.randn(k.num_in, layer.c_in, device=device).to(dtype)
    grad = torch.randn(k.num_out, layer.c_out, device=device).to(dtype)
    weight = (torch.randn(k.kernel_volume, layer.c_in, layer.c_out, device=device)
              / math.sqrt(k.kernel_volume * layer.c_in)).to(dtype)
    return {Op.CONV_FWD: (feats, weight), Op.CONV_DGRAD: (grad, weight), Op.CONV_WGRAD: (feats, grad)}[op]


def _label(name: str, params: dict[str, Any]) -> str:
    inner = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{name}{{{inner}}}" if inner else name


def cached_choice(op: Any, a: torch.Tensor, b: torch.Tensor, kmap: Any, mode: Any) -> tuple[Any, dict] | None:
    """AUTO's choice from what the tuning cache holds for the call now, without timing anything more: the winner
    of the budgeted tunings so far; ``None`` when it holds none."""
    from warpsparse.algorithms.base import Signature
    from warpsparse.tuner import store
    from warpsparse.tuner.dispatcher import allowed_algorithms
    from warpsparse.tuner.key import entry_key
    from warpsparse.tuner.search import candidates_for, fastest

    sig = Signature.of(op, a, b, kmap)
    best = fastest(candidates_for(allowed_algorithms(op, sig, mode), sig),
                   store.store_for().results(entry_key(sig, kmap, a.device)))
    return None if best is None else (best.algorithm, best.params)


def exhaustive(run: Run, op: Any, a: torch.Tensor, b: torch.Tensor, kmap: Any, algo: str,
               out_of_time: Callable[[], bool]) -> dict[str, Any]:
    """Time every candidate (algorithm x parameter point) allowed by ``algo``; AUTO's choice once its search is
    complete and its budgeted choice, from the cache as it was (:func:`cached_choice`); the regret of each."""
    from warpsparse.algorithms import registry
    from warpsparse.algorithms.base import Signature
    from warpsparse.tuner import Call, mode_for, pretune
    from warpsparse.tuner.search import BUDGET_ENV
    from warpsparse.tuner.timing import output_error, tolerance

    device = run.cfg.device
    sig = Signature.of(op, a, b, kmap)
    mode = mode_for(op, algo)
    budgeted = cached_choice(op, a, b, kmap, mode)
    with env_vars({BUDGET_ENV: "inf"}):  # AUTO's choice once its search of the signature is complete
        chosen_alg, chosen_params = pretune([Call(op, a, b, kmap, mode)], progress=False)[0]
    ref_alg = registry.get("explicit_gemm")
    ref = ref_alg.run(op, ref_alg.default_params(sig), a, b, kmap)
    tol = tolerance(sig.dtype, sig.tf32)
    candidates: dict[str, tuple[Any, dict[str, Any]]] = {}
    for alg in registry.algorithms_for(op):
        if (mode is not None and alg.name not in mode) or alg.applies_to(sig) is not None:
            continue
        for params in [alg.default_params(sig), *alg.param_space(sig).points()]:
            candidates.setdefault(_label(alg.name, params), (alg, dict(params)))
    chosen = _label(chosen_alg.name, chosen_params)
    picks = {chosen: (chosen_alg, dict(chosen_params))}
    if budgeted is not None:
        picks[_label(budgeted[0].name, budgeted[1])] = (budgeted[0], dict(budgeted[1]))
    candidates = {**picks, **candidates}  # AUTO's choices timed first
    times: dict[str, float] = {}
    failed: dict[str, str] = {}
    truncated = False
    for label, (alg, params) in candidates.items():
        if out_of_time():
            truncated = True
            break

        def fn(alg: Any = alg, params: dict[str, Any] = params) -> torch.Tensor:
            return alg.run(op, params, a, b, kmap)
        try:
            wrong = output_error(fn(), ref, tol)
            if wrong is not None:
                failed[label] = f"wrong result: {wrong}"
                continue
            times[label] = measure(fn, device, warmup=1, target_s=0.02, min_reps=3 if run.cfg.tiny else 5,
                                   max_reps=5 if run.cfg.tiny else 25, isolate=False).median_ms
        except Exception as exc:  # noqa: BLE001 - a failing candidate is recorded, never chosen
            failed[label] = f"{type(exc).__name__}: {exc}"[:200]
    row: dict[str, Any] = {"candidates": len(candidates), "timed": len(times), "failed": len(failed),
                           "choice": chosen, "truncated": truncated}
    if not times or chosen not in times:
        row["error"] = failed.get(chosen, "AUTO's choice was not timed")
        return row
    # the tuner's objective: kernel time plus the host time a fresh map costs the candidate's layouts
    setup = {n: float(alg.setup_ms(sig, params)) for n, (alg, params) in candidates.items()}
    leaders = sorted(times, key=lambda n: times[n] + setup[n])[:3]
    final = list(dict.fromkeys([*leaders, *(n for n in picks if n in times)]))
    samples = interleaved([lambda c=candidates[n]: c[0].run(op, c[1], a, b, kmap) for n in final], device,
                          5 if run.cfg.tiny else 15, isolate=False)
    medians = {n: Timing.of(s).median_ms for n, s in zip(final, samples)}
    best = min(medians, key=lambda n: medians[n] + setup[n])

    def regret(name: str) -> float:
        return ratio(medians[name] + setup[name], medians[best] + setup[best])

    row.update(choice_ms=medians[chosen], choice_setup_ms=setup[chosen], best=best, best_ms=medians[best],
               best_setup_ms=setup[best], regret=regret(chosen))
    if budgeted is not None and (name := _label(budgeted[0].name, budgeted[1])) in medians:
        row.update(budgeted_choice=name, budgeted_choice_ms=medians[name], budgeted_regret=regret(name))
    return row


def regret_workload(run: Run, section: dict[str, Any]) -> dict[str, Any]:
    """AUTO's regret per (op, layer) of :func:`layer_suite`, ops outermost (later layers reuse compiled kernels)."""
    from warpsparse.algorithms.base import Op

    dtype, algo = run.cfg.dtypes[0], run.cfg.algos[0]
    slice_end = Deadline(run.cfg.regret_s)

    def out_of_time() -> bool:
        return run.deadline.passed or slice_end.passed

    section["notes"].append(f"candidates allowed by fwd_algo/bwd_algo={algo!r}, dtype "
                            f"{str(dtype).removeprefix('torch.')}; AUTO's choice is the tuner's decision for the "
                            "signature once its search is complete (the cache the spconv_net workload filled, "
                            "completed without a tuning budget); AUTO's budgeted choice is the winner of what that "
                            "cache held before (the budgeted tunings of the tuning probes and the network runs)")
    with run.caches("spconv_net"):
        suite = layer_suite(run)
        for op in (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD):
            for layer in suite:
                if out_of_time():
                    section["notes"].append(f"regret time slice of {run.cfg.regret_s} s (or the budget) used up")
                    section["status"] = "partial"
                    return section
                a, b = _operands(op, layer, dtype, run.cfg.device)
                row = {"layer": layer.label, "op": op.value, "dtype": str(dtype).removeprefix("torch."),
                       "n_in": layer.kmap.num_in, "n_out": layer.kmap.num_out, "c_in": layer.c_in,
                       "c_out": layer.c_out}
                try:
                    row.update(exhaustive(run, op, a, b, layer.kmap, algo, out_of_time))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = f"{type(exc).__name__}: {exc}"[:400]
                section["rows"].append(row)
                section["summary"] = report.regret_summary(section["rows"])
    return section


# ---------------------------------------------------------------------------------------------------------------
# the benchmarks of bench/layers.py and bench/maps.py


def external_workload(run: Run, name: str, argv: list[str], section: dict[str, Any]) -> dict[str, Any]:
    """Run ``bench/<name>.py --out DIR argv`` (GPU only) in a child process and collect what it writes: the JSON
    files under ``DIR`` and the Markdown tables it prints.

    A child process, because these scripts parse ``sys.argv``, set process-wide tuning settings and compile in
    worker processes.
    """
    script = REPO / "bench" / f"{name}.py"
    if not script.exists():
        section["status"] = "skipped"
        section["notes"].append(f"bench/{name}.py is not present")
        return section
    if run.cfg.device.type != "cuda":
        section["status"] = "skipped"
        section["notes"].append(f"bench/{name}.py needs a CUDA device")
        return section
    out_dir = run.cfg.out / name
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(script), "--out", str(out_dir), *argv]
    section["notes"].append("command: " + " ".join(["python3", f"bench/{name}.py", "--out", f"OUT/{name}", *argv]))
    code, stdout = run_child(cmd, {**os.environ, **run.cache_env("main")}, run.deadline.left())
    if code is None:
        section["status"] = "partial"
        section["notes"].append("stopped when the time budget ran out")
    elif code != 0:
        section["status"] = "error"
        section["error"] = f"exited with {code}: {stdout[-600:]}"
    section["stdout"] = stdout[-20000:]
    section["files"] = {}
    for path in sorted(out_dir.glob("*.json")):
        try:
            section["files"][path.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return section


def run_child(cmd: list[str], env: dict[str, str], seconds: float) -> tuple[int | None, str]:
    """Run ``cmd`` (from the repository root) in its own process group; ``(exit code, output)``, the code
    ``None`` when it ran out of ``seconds`` and was killed together with its own child processes."""
    timeout = max(1.0, seconds) if math.isfinite(seconds) else None
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        return None, stdout
    except BaseException:  # interrupted: take the child's process group down too
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, stdout


# ---------------------------------------------------------------------------------------------------------------
# driver


def new_section() -> dict[str, Any]:
    return {"rows": [], "checks": [], "notes": []}


def _run_workload(run: Run, key: str, body: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Run one workload (or one part of it) into its section of the results, then rewrite the report.

    The body fills the section it is given, so whatever it measured before running out of time or failing
    is kept.
    """
    start = time.perf_counter()
    section = run.results["workloads"].setdefault(key, new_section())
    if run.deadline.passed:
        section["status"] = "partial" if section["rows"] else "skipped"
        section["notes"].append(f"time budget of {run.cfg.budget_s:g} s used up")
    else:
        try:
            body(section)
            section.setdefault("status", "ok")
        except OutOfTime as exc:
            section["status"] = "partial"
            section["notes"].append(str(exc))
        except Exception as exc:  # noqa: BLE001 - a broken workload is reported, the others still run
            section["status"] = "error"
            section["error"] = f"{type(exc).__name__}: {exc}"
            section["traceback"] = traceback.format_exc()[-3000:]
    section["elapsed_s"] = section.get("elapsed_s", 0.0) + time.perf_counter() - start
    report.write(run.results, run.cfg.out, plots=False)
    print(f"[bench] {key}: {section.get('status')} in {time.perf_counter() - start:.1f} s", flush=True)


def run_all(run: Run) -> None:
    """Every selected workload, half precision first (the targets), then fp32, then the extras."""
    wl, dtypes = run.cfg.workloads, run.cfg.dtypes
    for network in nets.NETWORKS:
        if "tuning" in wl and (network in wl or network == "spconv_net"):
            _run_workload(run, "tuning", lambda section: tuning_probes(run, network, section))
        if network in wl:
            _run_workload(run, network, lambda section: network_workload(run, network, section, 1, dtypes[:1]))
    if "regret" in wl:
        _run_workload(run, "regret", lambda section: regret_workload(run, section))
    for voxel in run.cfg.extra_voxel_sizes:
        for network in nets.NETWORKS:
            if network in wl:
                _run_workload(run, network,
                              lambda section: network_workload(run, network, section, 1, dtypes[:1], voxel))
    for network in nets.NETWORKS:
        if network in wl and dtypes[1:]:
            _run_workload(run, network, lambda section: network_workload(run, network, section, 1, dtypes[1:]))
    if "batch4" in wl:
        _run_workload(run, "batch4", lambda section: network_workload(run, "spconv_net", section, 4, dtypes[:1]))
    if "maps" in wl:
        _run_workload(run, "maps", lambda section: external_workload(run, "maps", [], section))
    if "layers" in wl:
        _run_workload(run, "layers", lambda section: external_workload(run, "layers", run.cfg.layers_args, section))


def _dtype(text: str) -> torch.dtype:
    try:
        return DTYPES[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; allowed: {', '.join(DTYPES)}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--tiny", action="store_true",
                   help=f"smoke-test size: scan at {TINY_VOXEL} m, channels / {TINY_DIVISOR}, few repetitions")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {', '.join(WORKLOADS)} (default: all)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
    p.add_argument("--dtype", default=None,
                   help="comma-separated dtypes (default float16,float32 on GPU, float32 on CPU); the first one is "
                        "used by tuning, batch4 and regret")
    p.add_argument("--algos", default=None,
                   help="warpsparse variants, comma-separated: auto, explicit, or algorithm names (default "
                        "auto,explicit on GPU, explicit on CPU); the first one is used by tuning and regret")
    p.add_argument("--voxel-size", type=float, default=None, help="voxel size in metres (default 0.1; 3.2 with --tiny)")
    p.add_argument("--extra-voxel-sizes", default=None,
                   help="comma-separated voxel sizes at which the networks also run, in the first dtype (default "
                        "0.05 on GPU, none on CPU or with --tiny)")
    p.add_argument("--no-peer", action="store_true", help="do not run spconv even when it is importable")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget in seconds; workloads that do not fit are skipped (default: none)")
    p.add_argument("--regret-s", type=float, default=None,
                   help="most seconds the regret workload may take (default: what the budget leaves)")
    p.add_argument("--layers-args", default="",
                   help="arguments for bench/layers.py, e.g. \"--channels 64 256 --dtypes fp16\" (default: its own)")
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--profile", dest="profile", action="store_true", default=None,
                      help="profile the networks in the first dtype (kernels, host ops, syncs; default on GPU)")
    prof.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--first-call-probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe-peer", action="store_true", help=argparse.SUPPRESS)
    return p


def make_config(args: argparse.Namespace) -> Config:
    """Validated configuration from parsed arguments; ``ValueError`` naming the bad argument."""
    from warpsparse.tuner import mode_for
    from warpsparse.algorithms.base import Op

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu --tiny)")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device must be cuda or cpu, got {args.device!r}")
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        raise ValueError(f"--workloads: unknown {unknown or 'empty list'}; allowed: {', '.join(WORKLOADS)}")
    dtype_text = args.dtype or ("float16,float32" if device.type == "cuda" else "float32")
    try:
        dtypes = tuple(dict.fromkeys(_dtype(t) for t in dtype_text.split(",") if t.strip()))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"--dtype: {exc}") from None
    if not dtypes:
        raise ValueError("--dtype: no dtype given")
    algo_text = args.algos or ("auto,explicit" if device.type == "cuda" else "explicit")
    algos = tuple(dict.fromkeys(ALGO_ALIASES.get(a.strip().lower(), a.strip().lower())
                                for a in algo_text.split(",") if a.strip()))
    if not algos:
        raise ValueError("--algos: no algorithm given")
    for algo in algos:
        mode_for(Op.CONV_FWD, algo)  # ValueError for an unknown name
    voxel = args.voxel_size if args.voxel_size is not None else (TINY_VOXEL if args.tiny else 0.1)
    if not voxel > 0:
        raise ValueError(f"--voxel-size must be positive, got {voxel}")
    extra_text = args.extra_voxel_sizes
    if extra_text is None:
        extra_text = "0.05" if device.type == "cuda" and not args.tiny else ""
    try:
        extra = tuple(dict.fromkeys(float(v) for v in extra_text.split(",") if v.strip()))
    except ValueError:
        raise ValueError(f"--extra-voxel-sizes must be comma-separated numbers, got {extra_text!r}") from None
    if not all(v > 0 for v in extra):
        raise ValueError(f"--extra-voxel-sizes must be positive, got {extra_text!r}")
    for name in ("budget_s", "regret_s"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    return Config(device=device, tiny=args.tiny, workloads=workloads, out=args.out, dtypes=dtypes, algos=algos,
                  voxel_size=voxel, extra_voxel_sizes=tuple(v for v in extra if v != voxel),
                  peer=not args.no_peer and device.type == "cuda", budget_s=args.budget_s,
                  width_divisor=TINY_DIVISOR if args.tiny else 1, target_s=0.05 if args.tiny else 1.0,
                  min_reps=3 if args.tiny else 10, layers_args=shlex.split(args.layers_args),
                  regret_s=args.regret_s, profile=device.type == "cuda" if args.profile is None else args.profile)


def register_backends() -> list[str]:
    """Import the optional algorithm packages (Triton, CuPy) so that they register; what could not be imported."""
    missing = []
    for package in ("warpsparse.algorithms.triton", "warpsparse.algorithms.cupy"):
        try:
            importlib.import_module(package)
        except ImportError as exc:
            missing.append(f"{package}: {exc}")
    return missing


def keep_tuning_caches(run: Run) -> None:
    """Copy the tuning caches of the run (the tuner's decisions and every candidate's time) to the output."""
    from warpsparse.tuner import save_tuning_cache

    save_tuning_cache()
    kept = {}
    for path in sorted(run.work.glob("*/tuning/*.json")):
        name = f"tuning_cache_{path.parent.parent.name}.json"
        shutil.copyfile(path, run.cfg.out / name)
        kept[path.parent.parent.name] = name
    run.results["tuning_caches"] = kept


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the selected workloads and write the results; returns them (``None`` for a probe run)."""
    p = parser()
    args = p.parse_args(argv)
    try:
        cfg = make_config(args)
    except ValueError as exc:
        p.error(str(exc))
    missing = register_backends() if cfg.device.type == "cuda" else []
    if args.first_call_probe:
        print(PROBE_TAG + json.dumps(probe(args)), flush=True)
        return None
    cfg.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"schema": 1, "environment": environment(cfg.device), "workloads": {},
                               "config": {"device": str(cfg.device), "tiny": cfg.tiny, "workloads": cfg.workloads,
                                          "dtypes": [str(d).removeprefix("torch.") for d in cfg.dtypes],
                                          "algos": cfg.algos, "voxel_size": cfg.voxel_size,
                                          "extra_voxel_sizes": list(cfg.extra_voxel_sizes),
                                          "budget_s": cfg.budget_s, "width_divisor": cfg.width_divisor,
                                          "unregistered": missing}}
    run = Run(cfg, Deadline(cfg.budget_s), results, Path(tempfile.mkdtemp(prefix="warpsparse-bench-")))
    if cfg.peer:
        run.spconv, why = nets.import_spconv()
        results["environment"]["peer"] = "spconv" if run.spconv is not None else None
        results["environment"]["peer_note"] = why
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        run_all(run)
    except KeyboardInterrupt as exc:
        results["interrupted"] = str(exc) or "interrupted"
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        keep_tuning_caches(run)
        report.write(results, cfg.out, plots=True)
        shutil.rmtree(run.work, ignore_errors=True)
    print(f"[bench] results in {cfg.out}/results.json and results.md", flush=True)
    return results


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    main()
