"""Benchmark results to files: ``results.json``, a Markdown report ``results.md`` and PNG plots (matplotlib)."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bench.timing import ratio, versions

SPCONV = "spconv"
REFERENCE_INPUT = "scan @ 0.1 m"


@dataclass(frozen=True)
class Target:
    """A speed-up the primary warpsparse variant must reach over spconv on one network row (issue 6)."""

    network: str
    precision: str
    pass_: str
    speedup: float
    note: str


TARGETS = (
    Target("spconv_net", "fp16", "fwd", 2.5, "spconv ~9.5 ms on an H100"),
    Target("spconv_net", "fp16", "fwd+bwd", 2.0, "spconv ~17.9 ms on an H100"),
    Target("spconv_net", "fp32", "fwd+bwd", 2.0, "spconv ~27.7 ms on an H100"),
    Target("minkunet", "amp-fp16", "fwd+bwd", 1.5, ""),
)
FIRST_CALL_TARGET_S = 10.0
REGRET_TARGET = 1.05
NETWORK_SECTIONS = ("spconv_net", "minkunet", "batch4")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return " ".join(value.split()).replace("|", "\\|")
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: Iterable[list[Any]], align: str | None = None) -> list[str]:
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out


# ---------------------------------------------------------------------------------------------------------------
# network tables


@dataclass
class NetworkLine:
    """One (network, input, precision, pass) with the rows of every implementation."""

    network: str
    input: str
    precision: str
    pass_: str
    by_impl: dict[str, dict[str, Any]]

    def ms(self, impl: str) -> float | None:
        row = self.by_impl.get(impl)
        return None if row is None or "error" in row else row.get("median_ms")

    def memory(self, impl: str) -> float | None:
        row = self.by_impl.get(impl)
        return None if row is None or "error" in row else row.get("call_peak_mib")

    def target(self) -> Target | None:
        if self.input != REFERENCE_INPUT:
            return None
        return next((t for t in TARGETS if (t.network, t.precision, t.pass_) ==
                     (self.network, self.precision, self.pass_)), None)


def network_lines(rows: list[dict[str, Any]]) -> tuple[list[NetworkLine], list[str]]:
    """Rows grouped per line, and the implementations in order of appearance."""
    lines: dict[tuple[str, str, str, str], NetworkLine] = {}
    impls: list[str] = []
    for r in rows:
        key = (r["network"], r["input"], r["precision"], r["pass"])
        line = lines.setdefault(key, NetworkLine(*key, {}))
        line.by_impl[r["impl"]] = r
        if r["impl"] not in impls:
            impls.append(r["impl"])
    return list(lines.values()), impls


def network_markdown(section: dict[str, Any]) -> list[str]:
    lines, impls = network_lines(section.get("rows", []))
    if not lines:
        return []
    primary = impls[0]
    others = [i for i in impls[1:]]
    header = ["network", "input", "precision", "pass", *[f"{i} ms" for i in impls],
              *[f"{primary} vs {o}" for o in others], "target vs spconv"]
    body = []
    for ln in lines:
        target = ln.target()
        speed = ratio(ln.ms(SPCONV), ln.ms(primary))
        verdict = ""
        if target is not None:
            verdict = f">= {target.speedup:g}x: " + ("met" if speed is not None and speed >= target.speedup
                                                     else "MISSED" if speed is not None else "not measured")
        body.append([ln.network, ln.input, ln.precision, ln.pass_, *[ln.ms(i) for i in impls],
                     *[_x(ratio(ln.ms(o), ln.ms(primary))) for o in others], verdict])
    out = ["Median ms per call (fresh sparse tensor each call, maps built in the call); "
           "speed-up = other's time / " + primary + "'s time.", ""]
    out += _table(header, body, "llll" + "r" * (len(impls) + len(others)) + "l")
    errors = [f"- {r['impl']} {r['network']} {r['precision']} {r['pass']}: {r['error']}"
              for r in section.get("rows", []) if "error" in r]
    if errors:
        out += ["", "Errors:", *errors]
    return out


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def memory_markdown(sections: list[dict[str, Any]]) -> list[str]:
    rows = [r for s in sections for r in s.get("rows", []) if "call_peak_mib" in r]
    if not rows:
        return []
    lines, impls = network_lines(rows)
    primary = impls[0]
    body = []
    for ln in lines:
        ws, sp = ln.memory(primary), ln.memory(SPCONV)
        share = ratio(ws, sp)
        verdict = "" if share is None else ("met" if share <= 1.0 else "MISSED")
        body.append([ln.network, ln.input, ln.precision, ln.pass_, *[ln.memory(i) for i in impls],
                     None if share is None else f"{share:.2f}", verdict])
    out = ["Peak GPU memory of one call above what was allocated before it (`torch.cuda.max_memory_allocated`), "
           "MiB. Target: warpsparse no more than spconv.", ""]
    return out + _table(["network", "input", "precision", "pass", *[f"{i} MiB" for i in impls],
                         f"{primary} / spconv", "target"], body, "llll" + "r" * (len(impls) + 1) + "l")


def checks_markdown(sections: list[dict[str, Any]]) -> list[str]:
    checks = [c for s in sections for c in s.get("checks", [])]
    if not checks:
        return []
    out = ["Forward outputs with identical weights, compared site by site (relative L2 error of b against a). "
           "spconv's implicit-GEMM max-pool starts its running max at 0, so it returns max(0, window max) where "
           "warpsparse returns the window max: networks with max-pools on signed features (spconv's benchmark "
           "network has no ReLU) differ there; convolutions, inverse convolutions and norms agree.", ""]
    return out + _table(["a", "b", "precision", "sites a", "sites b", "same sites", "rel. error"],
                        [[c["a"], c["b"], c["precision"], c["sites_a"], c["sites_b"], c["same_sites"],
                          None if c.get("rel_error") is None else f"{c['rel_error']:.2e}"] for c in checks],
                        "lllrrlr")


def profile_markdown(sections: list[dict[str, Any]]) -> list[str]:
    """Per profiled row: wall time against kernel and host-op time, syncs, and the top kernels and host ops."""
    out: list[str] = []
    for r in (r for s in sections for r in s.get("rows", []) if r.get("profile")):
        prof = r["profile"]
        head = f"**{r['impl']}, {r['network']} {r['input']} {r['precision']} {r['pass']}**: "
        if "error" in prof:
            out += [head + f"profiler failed ({prof['error']})", ""]
            continue
        parts = [f"{_fmt(r.get('median_ms'))} ms per call"]
        if "gpu_ms" in prof:
            busy = ratio(prof["gpu_ms"], r.get("median_ms"))
            parts.append(f"{_fmt(prof['gpu_ms'])} ms of CUDA kernels"
                         + ("" if busy is None else f" ({100 * busy:.0f}% of the call)"))
        if "host_op_ms" in prof:
            parts.append(f"{_fmt(prof['host_op_ms'])} ms in traced host ops, {_fmt(prof.get('syncs'), 1)} device "
                         f"syncs and {_fmt(prof.get('cuda_mallocs'), 1)} cudaMalloc per call")
        out += [head + "; ".join(parts) + ".", ""]
        for key, title in (("kernels", "kernel"), ("host_ops", "host op (self CPU time)")):
            if prof.get(key):
                out += _table([title, "ms per call", "share", "count per call"],
                              [[k["name"], k["ms"], f"{100 * k['share']:.1f}%",
                                f"{k.get('count', k.get('launches', 0)):.0f}"] for k in prof[key]], "lrrr")
                out.append("")
    return out


# ---------------------------------------------------------------------------------------------------------------
# tuning cost and regret


def tuning_markdown(section: dict[str, Any]) -> list[str]:
    rows = section.get("rows", [])
    if not rows:
        return []
    body = []
    for r in rows:
        first = r.get("first_call_s")
        verdict = ""
        if r["phase"] in ("empty cache", "empty tuning cache") and first is not None:
            verdict = f"< {FIRST_CALL_TARGET_S:g} s: " + ("met" if first < FIRST_CALL_TARGET_S else "MISSED")
        body.append([r["network"], r.get("precision"), r["phase"], first, r.get("second_call_ms"), r.get("steady_ms"),
                     r.get("cache_entries"), r.get("process_s"), r.get("spconv_first_call_s"),
                     r.get("spconv_steady_ms"), verdict, r.get("error", "")[:200]])
    out = ["First forward+backward call of a network in a fresh process (scan loaded, device initialised), on "
           "empty caches (tuning, Triton and CuPy kernels), then in a second process on the caches the first "
           "left (it tunes the next round of candidates), then in a third on an empty tuning cache with the kernel "
           "caches the two left (the tuning alone). spconv's first call (its own in-process tuning, kernels "
           "shipped compiled) is shown for comparison.", ""]
    return out + _table(["network", "precision", "caches", "first call s", "2nd call ms", "steady ms",
                         "cache entries", "process s", "spconv first call s", "spconv steady ms", "target",
                         "error"], body, "lllrrrrrrrll")


def regret_summary(rows: list[dict[str, Any]], field: str = "regret") -> dict[str, Any]:
    """Median and worst of ``field`` (AUTO's ``regret`` once complete, or its ``budgeted_regret``) over the complete
    rows (``None`` when there are none)."""
    values = [r[field] for r in rows if r.get(field) is not None and not r.get("truncated")]
    if not values:
        return {"count": 0, "median": None, "worst": None}
    return {"count": len(values), "median": float(statistics.median(values)), "worst": float(max(values)),
            "within_5pct": sum(v <= REGRET_TARGET for v in values)}


def _regret_line(summary: dict[str, Any], what: str) -> str:
    met = "met" if summary["median"] <= REGRET_TARGET else "MISSED"
    return (f"{what} over {summary['count']} signatures: median {summary['median']:.3f}, worst "
            f"{summary['worst']:.3f}, {summary['within_5pct']} within {REGRET_TARGET:g} (target median <= "
            f"{REGRET_TARGET:g}: {met})")


def regret_markdown(section: dict[str, Any]) -> list[str]:
    rows = section.get("rows", [])
    if not rows:
        return []
    def fmt(value: float | None) -> str | None:
        return None if value is None else f"{value:.3f}"

    body = [[r["layer"], r["op"], r["dtype"], f"{r['n_in']}->{r['n_out']}", f"{r['c_in']}->{r['c_out']}",
             f"{r.get('timed', '')}/{r.get('candidates', '')}" + (" (cut)" if r.get("truncated") else ""),
             r.get("choice"), r.get("choice_ms"), r.get("budgeted_choice"), r.get("budgeted_choice_ms"), r.get("best"),
             r.get("best_ms"), fmt(r.get("regret")), fmt(r.get("budgeted_regret")), r.get("error", "")[:120]]
            for r in rows]
    out = []
    for field, what in (("regret", "AUTO regret (search complete)"),
                        ("budgeted_regret", "AUTO regret of its budgeted choice (the cache as the networks left it)")):
        summary = regret_summary(rows, field)
        if summary.get("count"):
            out += [_regret_line(summary, what) + ".", ""]
    out += ["Every candidate (algorithm x parameter point) timed (CUDA events, median); the leaders and AUTO's "
            "choices re-timed together; regret = choice / best.", ""]
    return out + _table(["layer", "op", "dtype", "sites", "channels", "timed/candidates", "AUTO choice",
                         "AUTO ms", "budgeted choice", "budgeted ms", "best", "best ms", "regret", "budgeted regret",
                         "error"], body, "lllllrlrlrlrrrl")


def external_markdown(section: dict[str, Any]) -> list[str]:
    """The Markdown tables a sub-benchmark printed (lines starting with ``|`` and the line before each table)."""
    text = section.get("stdout", "")
    lines = text.splitlines()
    keep: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("|"):
            if (not keep or keep[-1] != lines[i - 1]) and i > 0 and not lines[i - 1].startswith("|"):
                keep += ["", lines[i - 1]] if lines[i - 1].strip() else [""]
            keep.append(line)
    return keep


# ---------------------------------------------------------------------------------------------------------------
# the whole report


def key_results(results: dict[str, Any]) -> list[str]:
    """One line per target of issue 6: the measured value and whether it was met."""
    wl = results.get("workloads", {})
    out: list[str] = []
    for name in ("spconv_net", "minkunet"):
        lines, impls = network_lines(wl.get(name, {}).get("rows", []))
        if not impls:
            continue
        primary = impls[0]
        for ln in lines:
            target = ln.target()
            if target is None:
                continue
            ws, sp = ln.ms(primary), ln.ms(SPCONV)
            speed = ratio(sp, ws)
            state = "not measured" if speed is None else ("met" if speed >= target.speedup else "MISSED")
            out.append(f"- {ln.network} {ln.precision} {ln.pass_}: {primary} {_fmt(ws) or 'n/a'} ms, spconv "
                       f"{_fmt(sp) or 'n/a'} ms, speed-up {_x(speed) or 'n/a'} "
                       f"(target >= {target.speedup:g}x: {state})")
    for r in wl.get("tuning", {}).get("rows", []):
        if r["phase"] in ("empty cache", "empty tuning cache"):
            first = r.get("first_call_s")
            state = "not measured" if first is None else ("met" if first < FIRST_CALL_TARGET_S else "MISSED")
            where = ("on empty caches" if r["phase"] == "empty cache"
                     else "on an empty tuning cache with warm kernel caches")
            out.append(f"- first call of {r['network']} {where}: {_fmt(first)} s "
                       f"(target < {FIRST_CALL_TARGET_S:g} s: {state})" + (f"; {r['error'][:160]}" if "error" in r
                                                                          else ""))
    regret_rows = wl.get("regret", {}).get("rows", [])
    for field, what in (("regret", "AUTO regret"), ("budgeted_regret", "AUTO regret of its budgeted choice")):
        summary = regret_summary(regret_rows, field)
        if summary.get("count"):
            out.append(f"- {_regret_line(summary, what)}")
    mem_rows = [r for n in NETWORK_SECTIONS for r in wl.get(n, {}).get("rows", []) if "call_peak_mib" in r]
    lines, impls = network_lines(mem_rows)
    if impls and SPCONV in impls:
        ratios = [ln.memory(impls[0]) / ln.memory(SPCONV) for ln in lines
                  if ln.memory(impls[0]) is not None and ln.memory(SPCONV)]
        if ratios:
            out.append(f"- peak memory {impls[0]} / spconv: {min(ratios):.2f} to {max(ratios):.2f} over "
                       f"{len(ratios)} network configurations (target <= 1: "
                       f"{'met' if max(ratios) <= 1 else 'MISSED'})")
    return out


def markdown(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    wl = results.get("workloads", {})
    peer = "the peer" if env.get("peer") else env.get("peer_note") or "no peer"
    commit = env.get("git_commit") or "no git"
    commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    out = ["# warpsparse benchmark results", "",
           f"{versions(env)} ({peer}); {env.get('date')}; warpsparse {env.get('warpsparse')} ({commit}); "
           f"algorithms {', '.join(env.get('algorithms', []))}.", ""]
    cfg = results.get("config", {})
    out += [f"Configuration: device {cfg.get('device')}, dtypes {', '.join(cfg.get('dtypes', []))}, warpsparse "
            f"variants {', '.join(cfg.get('algos', []))}, voxel {cfg.get('voxel_size')} m"
            + (", tiny smoke run" if cfg.get("tiny") else "") + ".", ""]
    if results.get("interrupted"):
        out += [f"**Run interrupted ({results['interrupted']}): the tables hold what finished.**", ""]
    keys = key_results(results)
    if keys:
        out += ["## Key results", "", *keys, ""]
    titles = {"spconv_net": "spconv's benchmark network", "minkunet": "MinkUNet-style encoder-decoder",
              "batch4": "Batch of 4 rotated scans (spconv's benchmark network)"}
    for name in ("spconv_net", "minkunet", "batch4"):
        if name in wl:
            out += [f"## {titles[name]}", "", *_status(wl[name]), *network_markdown(wl[name]), ""]
    sections = [wl[n] for n in NETWORK_SECTIONS if n in wl]
    mem = memory_markdown(sections)
    if mem:
        out += ["## Peak memory", "", *mem, ""]
    checks = checks_markdown(sections)
    if checks:
        out += ["## Output agreement", "", *checks, ""]
    prof = profile_markdown(sections)
    if prof:
        out += ["## Where the time goes (torch.profiler)", "", *prof]
    if "tuning" in wl:
        out += ["## Tuning cost", "", *_status(wl["tuning"]), *tuning_markdown(wl["tuning"]), ""]
    if "regret" in wl:
        out += ["## AUTO regret", "", *_status(wl["regret"]), *regret_markdown(wl["regret"]), ""]
    for name, title in (("layers", "Per-layer table (bench/layers.py)"), ("maps", "Map building (bench/maps.py)")):
        if name in wl:
            out += [f"## {title}", "", *_status(wl[name]), *external_markdown(wl[name]), ""]
    return "\n".join(out).rstrip() + "\n"


def _status(section: dict[str, Any]) -> list[str]:
    lines = []
    status = section.get("status", "ok")
    if status != "ok" or section.get("error"):
        lines.append(f"Status: **{status}**" + (f" ({section['error']})" if section.get("error") else ""))
    lines += [f"- {n}" for n in section.get("notes", [])]
    if section.get("elapsed_s") is not None:
        lines.append(f"- took {section['elapsed_s']:.1f} s")
    return lines + [""] if lines else []


# ---------------------------------------------------------------------------------------------------------------
# plots


LAYER_PASSES = (("fwd", "fwd"), ("fwd+bwd", "fwdbwd"))


def layer_speedups(results: dict[str, Any]) -> tuple[list[str], dict[str, list[float | None]]]:
    """Speed-ups of warpsparse AUTO per layer, channel count, dtype and pass, from the ``layers.json`` rows of the
    ``layers`` workload (``bench/layers.py``): bar labels and, per comparison present, one value per label.

    ``vs spconv``: spconv's module time over AUTO's. ``vs explicit_gemm``: the ``explicit_gemm`` kernel time on a
    prebuilt map over AUTO's module time, left out where the module builds its maps in the call.
    """
    files = results.get("workloads", {}).get("layers", {}).get("files", {})
    rows = files.get("layers.json", {}).get("rows", [])
    labels: list[str] = []
    series: dict[str, list[float | None]] = {"vs spconv (module)": [], "vs explicit_gemm (kernel)": []}
    for r in rows:
        for name, key in LAYER_PASSES:
            auto = r.get(f"ws_auto_{key}_ms")
            spconv = ratio(r.get(f"spconv_{key}_ms"), auto)
            explicit = None if r.get("maps_in_call") else ratio(r.get(f"explicit_gemm_{key}_ms"), auto)
            if spconv is None and explicit is None:
                continue
            labels.append(f"{r['label']}{' (maps in call)' if r.get('maps_in_call') else ''} {name}")
            series["vs spconv (module)"].append(spconv)
            series["vs explicit_gemm (kernel)"].append(explicit)
    return labels, {k: v for k, v in series.items() if any(x is not None for x in v)}


def _speedup_plot(plt: Any, path: Path, labels: list[str], series: dict[str, list[float | None]], xlabel: str,
                  title: str) -> None:
    """Horizontal bars of speed-ups: one group per label, one bar per series (none where a value is missing) and
    a line at 1x; written to ``path``."""
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) * len(series) + 1.5))
    height = 0.8 / len(series)
    for j, (name, values) in enumerate(series.items()):
        ax.barh([i + j * height for i in range(len(labels))], [math.nan if v is None else v for v in values],
                height, label=name)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(labels))], labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    """PNG plots of the speed-ups per network and per layer and of AUTO's regret per layer (each where its
    workload has results); the file names, ``[]`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    wl = results.get("workloads", {})
    device = results.get("environment", {}).get("gpu") or "CPU"
    written = []
    rows = [r for n in NETWORK_SECTIONS for r in wl.get(n, {}).get("rows", [])]
    lines, impls = network_lines(rows)
    if len(impls) > 1:
        primary = impls[0]
        _speedup_plot(plt, out_dir / "networks_speedup.png",
                      [f"{ln.network} {ln.input} {ln.precision} {ln.pass_}" for ln in lines],
                      {f"vs {o}": [ratio(ln.ms(o), ln.ms(primary)) for ln in lines] for o in impls[1:]},
                      f"speed-up of {primary} (x)", f"Networks: {device}")
        written.append("networks_speedup.png")
    labels, series = layer_speedups(results)
    if series:
        _speedup_plot(plt, out_dir / "layers_speedup.png", labels, series,
                      "speed-up of warpsparse AUTO (module) (x)", f"Layers (bench/layers.py): {device}")
        written.append("layers_speedup.png")
    regret_rows = [r for r in wl.get("regret", {}).get("rows", []) if r.get("regret") is not None]
    if regret_rows:
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(regret_rows) + 1.5))
        ax.barh(range(len(regret_rows)), [r["regret"] for r in regret_rows])
        ax.set_yticks(range(len(regret_rows)), [f"{r['layer']} {r['c_in']}->{r['c_out']} {r['op']}"
                                                for r in regret_rows], fontsize=7)
        ax.axvline(REGRET_TARGET, color="red", linewidth=0.8, label=f"target {REGRET_TARGET:g}")
        ax.invert_yaxis()
        ax.set_xlabel("AUTO choice time / best candidate time")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "regret.png", dpi=120)
        plt.close(fig)
        written.append("regret.png")
    return written


def write(results: dict[str, Any], out_dir: Path, plots: bool = True) -> None:
    """Write ``results.json`` and ``results.md`` (and the plots) to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        results["plots"] = make_plots(results, out_dir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out_dir / "results.md").write_text(markdown(results))
