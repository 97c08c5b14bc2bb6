"""The ``warpsparse`` command: inspect and manage the tuning cache, show the algorithm modes, pre-tune a model.

``warpsparse cache path|list|show|clear|export|import``, ``warpsparse env``, ``warpsparse tune``
(also ``python -m warpsparse ...``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

import torch
from filelock import Timeout

from warpsparse.cache_schema import CacheDocument, DeviceInfo, Entry
from warpsparse.tuner import store
from warpsparse.tuner.identity import device_info, versions
from warpsparse.tuner.key import bucket_range
from warpsparse.tuner.modes import ENV_VARS, describe, env_setting, library_algorithms, parse_mode
from warpsparse.tuner.search import BUDGET_ENV, WORKERS_ENV, compile_workers, tune_budget_ms

_OP_LABELS = {"conv_fwd": "conv forward", "conv_dgrad": "conv input grad", "conv_wgrad": "conv weight grad",
              "dw_fwd": "depthwise forward", "dw_dgrad": "depthwise input grad", "dw_wgrad": "depthwise weight grad"}


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain text table, columns aligned (numbers to the right)."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _current_devices() -> list[DeviceInfo]:
    """This machine's CPU and, if there is one, its current GPU."""
    devices = [device_info(torch.device("cpu"))]
    if torch.cuda.is_available():
        devices.append(device_info(torch.device("cuda")))
    return devices


def _usable(entry: Entry) -> bool:
    return entry.key.device in _current_devices() and entry.key.versions == versions()


def _device_label(dev: DeviceInfo) -> str:
    if dev.type == "cuda":
        return f"{dev.name} (sm_{(dev.capability or '').replace('.', '')}, {dev.sm_count} SMs)"
    return f"{dev.name} ({dev.threads} threads)"


def _fmt_params(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items()) or "-"


def _fmt_kernel(triple: Sequence[int]) -> str:
    return "x".join(str(v) for v in triple)


def _density_range(bucket: int) -> str:
    if bucket < 0:
        return "0"
    return f"{2 ** (bucket / 2):.3g}-{2 ** ((bucket + 1) / 2):.3g}"


def _when(t: datetime) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M")


def _entries(device: str) -> list[Entry]:
    doc = store.load_document(store.cache_file())
    return [e for e in doc.entries if device == "all" or _usable(e)]


def _availability(name: str) -> str:
    """``yes``, or ``no: why`` for an algorithm that is not registered or whose backend is missing."""
    from warpsparse.algorithms import registry

    try:
        missing = registry.get(name).missing_backend()
    except KeyError:
        return "no: not registered"
    return "yes" if missing is None else f"no: {missing}"


# ---- cache -------------------------------------------------------------------------------------------------

def cmd_path(args: argparse.Namespace) -> int:
    print(store.cache_file())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    entries = _entries(args.device)
    path = store.cache_file()
    if not entries:
        print(f"no tuned signatures{' for this device' if args.device == 'current' else ''} in {path}")
        return 0
    headers = ["ID", "OP", "DTYPE", "C_IN", "C_OUT", "KERNEL", "STRIDE", "KIND", "N_IN", "N_OUT", "WINNER",
               "PARAMS", "MS", "TIMED", "TUNED"]
    if args.device == "all":
        headers += ["DEVICE", "USABLE"]
    rows = []
    for e in sorted(entries, key=lambda e: (e.key.signature.op, e.key.signature.c_in, e.key.signature.c_out,
                                             e.key.signature.n_in_bucket, e.id)):
        s = e.key.signature
        ok = sum(c.status == "ok" for c in e.candidates)
        row = [e.id, s.op, s.dtype + ("+tf32" if s.tf32 else ""), s.c_in, s.c_out, _fmt_kernel(s.kernel_size),
               _fmt_kernel(s.stride), s.kind, bucket_range(s.n_in_bucket), bucket_range(s.n_out_bucket),
               e.winner.algorithm if e.winner else "(none)", _fmt_params(e.winner.params) if e.winner else "-",
               f"{e.winner.median_ms:.3f}" if e.winner else "-", f"{ok}/{len(e.candidates)}", _when(e.tuned_at)]
        if args.device == "all":
            row += [_device_label(e.key.device), "yes" if _usable(e) else "no"]
        rows.append(row)
    print(table(headers, rows))
    print(f"\n{len(entries)} signatures in {path}")
    return 0


def _find(prefix: str) -> Entry:
    prefix = prefix.strip().lower()
    found = [e for e in store.load_document(store.cache_file()).entries if e.id.startswith(prefix)]
    if not found:
        raise CliError(f"no entry with id {prefix!r} in {store.cache_file()} "
                       "(see `warpsparse cache list --device all`)")
    if len(found) > 1:
        raise CliError(f"id {prefix!r} is ambiguous: {', '.join(e.id for e in found)}")
    return found[0]


def cmd_show(args: argparse.Namespace) -> int:
    e = _find(args.id)
    s, d, v = e.key.signature, e.key.device, e.key.versions
    print(f"entry      {e.id}   tuned {_when(e.tuned_at)}   {'usable here' if _usable(e) else 'not usable here'}")
    print(f"signature  {_OP_LABELS.get(s.op, s.op)} ({s.op}), {s.dtype}{' with TF32' if s.tf32 else ''}, "
          f"C {s.c_in} -> {s.c_out}, kernel {_fmt_kernel(s.kernel_size)}, stride {_fmt_kernel(s.stride)}, "
          f"kind {s.kind}")
    print(f"           N_in {bucket_range(s.n_in_bucket)}, N_out {bucket_range(s.n_out_bucket)}, "
          f"neighbours per output {_density_range(s.density_bucket)}")
    print(f"device     {d.type}: {_device_label(d)}")
    print("versions   " + ", ".join(f"{k} {val or '-'}" for k, val in v.model_dump().items()))
    if e.winner:
        print(f"winner     {e.winner.algorithm} {_fmt_params(e.winner.params)}  {e.winner.median_ms:.3f} ms")
    else:
        print("winner     none (no candidate succeeded)")
    order = {"ok": 0, "failed": 1, "pruned": 2, "skipped": 3}
    cands = sorted(e.candidates, key=lambda c: (order[c.status], c.score_ms, c.ident))
    rows = [[c.algorithm, _fmt_params(c.params), c.status,
             f"{c.median_ms:.3f}" if c.median_ms is not None else None, f"{c.setup_ms:g}", c.error or ""]
            for c in cands]
    print()
    print(table(["ALGORITHM", "PARAMS", "STATUS", "MEDIAN_MS", "SETUP_MS", "NOTE"], rows))
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    path = store.cache_file()
    if not path.exists():
        print(f"nothing to clear: {path} does not exist")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"refusing to clear {path} without --yes (no terminal to confirm on)")
        if input(f"delete every tuning result in {path}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("kept")
            return 1
    removed = "0 tuned signatures"
    with store.file_lock(path):
        try:
            removed = f"{len(store.read_document(path).entries)} tuned signatures"
        except store.CacheFromNewerVersion as exc:
            removed = f"a cache written by a newer warpsparse ({exc})"
        except store.CacheUnreadable:
            pass
        path.unlink(missing_ok=True)
    print(f"removed {removed}: deleted {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    target = Path(args.file)
    if target.resolve() == store.cache_file().resolve():
        raise CliError(f"cannot export to {target}: it is the tuning cache itself; name another file")
    entries = _entries(args.device)
    if target.is_dir():
        raise CliError(f"cannot export to {target}: it is a directory; name a file")
    if not target.resolve().parent.is_dir():
        raise CliError(f"cannot export to {target}: directory {target.resolve().parent} does not exist")
    store.write_document(target.resolve(), CacheDocument(entries=entries))
    print(f"exported {len(entries)} tuned signatures to {target}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    source = Path(args.file)
    if source.is_dir():
        raise CliError(f"cannot import {source}: it is a directory, not a cache file")
    if not source.exists():
        raise CliError(f"cannot import {source}: no such file")
    if not source.is_file():
        raise CliError(f"cannot import {source}: not a regular file (a cache file written by `warpsparse cache "
                       "export` is)")
    try:
        incoming = store.read_document(source)
    except store.CacheUnreadable as exc:
        raise CliError(f"cannot import {source}: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc}") from None
    path = store.cache_file()
    before: set[str] = set()

    def change(doc: CacheDocument) -> CacheDocument:
        before.update(e.id for e in doc.entries)
        return store.merge(doc, [(e.key, e.candidates, e.tuned_at) for e in incoming.entries])

    try:
        store.update_document(path, change)
    except store.CacheFromNewerVersion as exc:
        raise CliError(f"cannot merge into {path}: it was written by a newer warpsparse ({exc})") from None
    new = sum(e.id not in before for e in incoming.entries)
    print(f"merged {len(incoming.entries)} tuned signatures ({new} new) from {source} into {path}")
    return 0


# ---- env ---------------------------------------------------------------------------------------------------

def cmd_env(args: argparse.Namespace) -> int:
    from warpsparse.algorithms.base import Op

    rows, errors = [], []
    for op in Op:
        setting = env_setting(op)
        if setting is None:
            mode, source = "auto", "default (" + " / ".join(ENV_VARS[op]) + " unset)"
        else:
            var, raw = setting
            try:
                mode = describe(parse_mode(raw, op.depthwise, f"{var}={raw!r}"))
            except (ValueError, TypeError) as exc:
                mode = "INVALID (see below)"
                errors.append(str(exc))
            source = f"{var}={raw!r}"
        rows.append([_OP_LABELS[op.value], mode, source])
    print(table(["OP", "MODE", "FROM"], rows))
    print()
    try:
        budget = f"{tune_budget_ms():g} ms"
    except ValueError as exc:
        budget = "INVALID (see below)"
        errors.append(str(exc))
    try:
        workers = str(compile_workers())
    except ValueError as exc:
        workers = "INVALID (see below)"
        errors.append(str(exc))
    budget_from = BUDGET_ENV if os.environ.get(BUDGET_ENV, "").strip() else "default"
    workers_from = WORKERS_ENV if os.environ.get(WORKERS_ENV, "").strip() else "usable CPUs (at most 16)"
    cache_from = store.CACHE_DIR_ENV if os.environ.get(store.CACHE_DIR_ENV) else "platformdirs default"
    print(table(["SETTING", "VALUE", "FROM"], [
        ["tuning budget per signature", budget, budget_from],
        ["compile threads", workers, workers_from],
        ["cache file", str(store.cache_file()), cache_from],
    ]))
    print()
    rows = []
    for depthwise in (False, True):
        for name in library_algorithms(depthwise):
            rows.append(["depthwise" if depthwise else "conv", name, _availability(name)])
    print(table(["FAMILY", "ALGORITHM", "AVAILABLE"], rows))
    print("\ndevices: " + "; ".join(_device_label(d) for d in _current_devices()))
    for error in dict.fromkeys(errors):  # each distinct error once
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


# ---- tune --------------------------------------------------------------------------------------------------

def cmd_tune(args: argparse.Namespace) -> int:
    import warpsparse.demo as demo
    from warpsparse.algorithms.base import Signature
    from warpsparse.tuner import collect_calls, pretune, save_tuning_cache

    try:
        if args.algo is not None:
            parse_mode(args.algo, False, "--algo")  # fail early on a bad name
            os.environ["WARPCONVNET_FWD_ALGO_MODE"] = args.algo
            os.environ["WARPCONVNET_BWD_ALGO_MODE"] = args.algo
        if args.budget_ms is not None:
            if not args.budget_ms > 0:
                raise ValueError(f"--budget-ms must be a positive number of milliseconds, got {args.budget_ms:g}")
            os.environ[BUDGET_ENV] = str(args.budget_ms)
        tune_budget_ms()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not (math.isfinite(args.voxel_size) and args.voxel_size > 0):
        raise CliError(f"--voxel-size must be a positive number of metres, got {args.voxel_size:g}")
    try:
        device: torch.device | None = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CliError(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available")
    dtype = getattr(torch, args.dtype)
    try:
        scan = demo.load_scan(args.voxel_size, device)
    except ValueError as exc:
        raise CliError(f"--voxel-size {args.voxel_size:g}: {exc}") from None
    scan = scan.replace(scan.features.to(dtype))
    model = demo.SparseUNet(scan.num_channels).to(device=device, dtype=dtype)
    print(f"sample: bundled scan, {scan.num_points} voxels of {args.voxel_size} m on {device}, {args.dtype}; "
          f"cache {store.cache_file()}")
    with collect_calls() as calls:
        try:
            out = model(scan)
        except ValueError as exc:  # voxels so large that a level has no grid left, or batch norm one value
            raise CliError(f"--voxel-size {args.voxel_size:g} m: the sample network cannot run on this scan: "
                           f"{exc}") from None
        if not args.forward_only:
            out.features.float().square().mean().backward()
    if not calls:
        print("every signature is already tuned in this process")
        return 0
    choices = pretune(calls, retune=args.retune, progress=not args.quiet)
    saved = save_tuning_cache()
    rows = []
    for call, (alg, params) in zip(calls, choices):
        sig = Signature.of(call.op, call.a, call.b, call.kmap)
        rows.append([sig.op.value, sig.c_in, sig.c_out, _fmt_kernel(call.kmap.kernel_size), call.kmap.kind,
                     sig.n_in, sig.n_out, alg.name, _fmt_params(params)])
    print(table(["OP", "C_IN", "C_OUT", "KERNEL", "KIND", "N_IN", "N_OUT", "ALGORITHM", "PARAMS"], rows))
    print(f"\n{len(calls)} signatures tuned; {'saved to ' + str(store.cache_file()) if saved else 'NOT saved'}")
    return 0 if saved else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warpsparse", description="Inspect and manage warpsparse's tuning cache, "
                                     "show the algorithm modes, pre-tune a model.")
    sub = parser.add_subparsers(dest="command", required=True)

    cache = sub.add_parser("cache", help="inspect and manage the tuning cache")
    csub = cache.add_subparsers(dest="action", required=True)
    csub.add_parser("path", help="print the cache file's path").set_defaults(run=cmd_path)
    p = csub.add_parser("list", help="list tuned signatures")
    p.add_argument("--device", choices=["current", "all"], default="current",
                   help="only entries usable on this machine's devices and software versions (default), or all")
    p.set_defaults(run=cmd_list)
    p = csub.add_parser("show", help="every candidate measured for one signature")
    p.add_argument("id", help="signature id (a unique prefix is enough)")
    p.set_defaults(run=cmd_show)
    p = csub.add_parser("clear", help="delete the cache file")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(run=cmd_clear)
    p = csub.add_parser("export", help="write entries to FILE")
    p.add_argument("file")
    p.add_argument("--device", choices=["current", "all"], default="all")
    p.set_defaults(run=cmd_export)
    p = csub.add_parser("import", help="validate FILE and merge its entries into the cache")
    p.add_argument("file")
    p.set_defaults(run=cmd_import)

    sub.add_parser("env", help="effective algorithm modes and where each comes from").set_defaults(run=cmd_env)

    p = sub.add_parser("tune", help="pre-tune the demo UNet's signatures on the bundled scan")
    p.add_argument("--voxel-size", type=float, default=0.2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--algo", default=None, help="conv mode for forward and backward, e.g. auto, implicit_gemm, "
                                                 "'[explicit_gemm,implicit_gemm]' (default: the environment)")
    p.add_argument("--budget-ms", type=float, default=None, help=f"tuning budget per signature ({BUDGET_ENV})")
    p.add_argument("--retune", action="store_true", help="time every candidate again, ignoring cached results")
    p.add_argument("--forward-only", action="store_true", help="tune the forward pass only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_tune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``warpsparse`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as exc:
        print(f"warpsparse: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, Timeout) as exc:
        print(f"warpsparse: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
