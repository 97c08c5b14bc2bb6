"""Compiling Triton kernels before their first launch: many at once, in worker processes and on threads.

Inside :func:`precompiling`, launches of kernels marked ``precompilable`` (see :mod:`warpsparse.triton_launch`)
run nothing: each is queued. Leaving compiles the queue in two steps:

1. In worker processes (CUDA, at least two workers): each queued launch is bound by Triton in this process
   with compilation skipped (a ``jit_cache_hook`` collects its serialized specialization), and worker processes
   compile those specializations into Triton's on-disk kernel cache, one per process at a time. Triton's
   compiler holds the GIL for much of its work, so threads of one process compile little faster than one
   thread; processes do not share it. Workers are ``python -m warpsparse.triton_compile`` (they never import
   the caller's main script), start at the first batch that needs them, compile for this process's target
   without touching the GPU, and exit after :data:`IDLE_S` seconds without work. A worker that fails, answers
   garbage or takes longer than :data:`COMPILE_TIMEOUT_S` is killed and its kernels are left to step 2.
2. On threads (Triton's async compile mode): every queued launch goes through Triton's own path, which now loads
   what the workers compiled from the disk cache, and compiles what they did not (a worker failure, or a
   cache key that differs in this process) as before.

Compile errors are dropped here; they surface at the kernel's next real launch.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import IO, Any, Iterator, NamedTuple

from triton import knobs
from triton.runtime._async_compile import AsyncCompileMode
from triton.runtime.driver import driver

log = logging.getLogger("warpsparse.compile")

MAX_PROCESSES = 8  # each worker holds an imported torch (a few hundred MB of host memory)
IDLE_S = 60.0  # workers exit after this long without a batch
COMPILE_TIMEOUT_S = 300.0  # a worker silent for this long on one kernel is killed


class Launch(NamedTuple):
    """One queued launch of a jitted kernel."""

    fn: Any  # the JITFunction
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


#: the queue of the :func:`precompiling` block this thread is in (None: launches run)
queued: ContextVar[list[Launch] | None] = ContextVar("warpsparse_precompiling", default=None)


@contextlib.contextmanager
def precompiling(workers: int) -> Iterator[None]:
    """Launches of ``precompilable`` kernels from this thread inside are queued, not run; leaving compiles the
    queue with ``workers`` processes (CUDA) and threads and returns once everything is compiled. Other threads
    launch as usual. The queued launches' outputs are left unwritten."""
    launches: list[Launch] = []
    token = queued.set(launches)
    try:
        yield
    finally:
        queued.reset(token)
    if launches:
        compile_all(launches, workers)


def compile_all(launches: list[Launch], workers: int) -> None:
    """Compile the kernels of ``launches`` (the two steps of this module's description)."""
    processes = min(workers, MAX_PROCESSES)
    if processes >= 2:
        specs = _specializations(launches)
        if specs:
            _workers().compile(specs, processes)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="warpsparse-compile") as pool, \
            AsyncCompileMode(pool, ignore_errors=True):
        for launch in launches:
            try:
                launch.fn.warmup(*launch.args, grid=launch.grid, **launch.kwargs)
            except Exception:  # noqa: BLE001 - the kernel's next real launch reports it
                log.debug("binding %s failed", launch.fn, exc_info=True)


class Spec(NamedTuple):
    """A kernel specialization as Triton serializes it, and where its kernel is defined."""

    module: str
    name: str
    data: str


_capture = threading.local()  # .found: the specializations this thread collects, while it collects
_chained: list[Any] = [None]  # the jit_cache_hook that was installed before ours


def _collect(**info: Any) -> Any:
    """Triton's ``jit_cache_hook``: skips and records this thread's manual warmups while it collects."""
    found = getattr(_capture, "found", None)
    if found is not None and info.get("is_manual_warmup"):
        fn, data = info["fn"], info["compile"]["specialization_data"]
        found.setdefault(data, Spec(fn.module, fn.name, data))
        return True  # skip this compile
    previous = _chained[0]
    return previous(**info) if previous is not None else None


def _specializations(launches: list[Launch]) -> list[Spec]:
    """The distinct specializations that ``launches`` would compile (those not yet compiled in this process),
    found by binding each launch in Triton with compilation skipped."""
    if knobs.runtime.jit_cache_hook is not _collect:  # installed once; a hook set since is chained
        _chained[0], knobs.runtime.jit_cache_hook = knobs.runtime.jit_cache_hook, _collect
    found: dict[str, Spec] = {}
    _capture.found = found
    try:
        for launch in launches:
            try:
                launch.fn.warmup(*launch.args, grid=launch.grid, **launch.kwargs)
            except Exception:  # noqa: BLE001 - the thread step binds it again, and its real launch reports it
                log.debug("binding %s failed", launch.fn, exc_info=True)
    finally:
        _capture.found = None
    return list(found.values())


class _Worker:
    """One worker process: specializations in on its stdin (one JSON line each), one reply line each out on a
    pipe of its own (whatever else it prints cannot be taken for a reply)."""

    def __init__(self, target: Any) -> None:
        read, write = os.pipe()
        try:
            env = {**os.environ, "TRITON_CACHE_DIR": str(knobs.cache.dir)}  # this process's cache, however set
            self.proc = subprocess.Popen([sys.executable, "-m", "warpsparse.triton_compile", str(write)],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, pass_fds=(write,), env=env, text=True)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self._replies = os.fdopen(read, "r")
        self._send({"target": [target.backend, target.arch, target.warp_size]})

    def _send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def compile(self, spec: Spec) -> str:
        """``"ok"`` or the worker's error; raises if the worker is gone, silent too long or answers garbage."""
        self._send(spec._asdict())
        ready, _, _ = select.select([self._replies], [], [], COMPILE_TIMEOUT_S)
        line = self._replies.readline() if ready else ""
        if not line:
            raise OSError(f"compile worker {self.proc.pid} " + ("exited" if ready else "timed out"))
        return str(json.loads(line))

    def close(self) -> None:
        """Ask the worker to exit (an explicit message: a forked child may hold its stdin open), then reap it."""
        with contextlib.suppress(OSError, ValueError):
            self._send({"quit": True})
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self._replies):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


class _Workers:
    """The worker processes of this process, started on demand and closed when idle."""

    def __init__(self) -> None:
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._count = 0
        self._target: Any = None
        self._mutex = threading.Lock()
        self._timer: threading.Timer | None = None
        self.broken = False  # no worker could start: threads compile alone from now on

    def _start(self, processes: int) -> int:
        """Start workers up to ``processes`` for the current target; how many there are."""
        stale: list[_Worker] = []
        with self._mutex:
            if self._timer is not None:
                self._timer.cancel()
            if not self.broken:
                try:
                    target = driver.active.get_current_target()
                    if target != self._target:  # another GPU architecture: workers for it
                        stale, self._target = self._take_idle(), target
                    while self._count < processes:
                        self._idle.put(_Worker(target))
                        self._count += 1
                except Exception:  # noqa: BLE001 - no GPU target, or no processes allowed here
                    log.debug("starting compile workers failed", exc_info=True)
                    self.broken = self._count == 0
            count = self._count
        for worker in stale:
            worker.close()
        return count

    def compile(self, specs: list[Spec], processes: int) -> None:
        """Compile ``specs`` on up to ``processes`` workers (a worker that fails is dropped)."""
        count = self._start(processes)
        if count == 0:
            return
        try:
            with ThreadPoolExecutor(max_workers=count, thread_name_prefix="warpsparse-compile-feed") as pool:
                for spec, reply in zip(specs, pool.map(self._one, specs)):
                    if reply != "ok":
                        log.debug("compile worker: %s.%s: %s", spec.module, spec.name, reply)
        finally:
            with self._mutex:
                self._timer = threading.Timer(IDLE_S, self.close)
                self._timer.daemon = True
                self._timer.start()

    def _one(self, spec: Spec) -> str:
        while True:
            try:
                worker = self._idle.get(timeout=0.5)
                break
            except queue.Empty:
                if self._count <= 0:  # every worker is gone: the thread step compiles it
                    return "no compile worker left"
        try:
            reply = worker.compile(spec)
        except Exception as exc:  # noqa: BLE001 - gone, silent or garbled: drop it
            with self._mutex:
                self._count -= 1
            worker.proc.kill()
            worker.close()
            return f"{type(exc).__name__}: {exc}"
        self._idle.put(worker)
        return reply

    def _take_idle(self) -> list[_Worker]:
        """Under the mutex: remove every idle worker from the pool (to be closed outside it)."""
        taken = []
        while True:
            try:
                taken.append(self._idle.get_nowait())
            except queue.Empty:
                break
        self._count -= len(taken)
        return taken

    def close(self) -> None:
        """Let every idle worker exit."""
        with self._mutex:
            idle = self._take_idle()
        for worker in idle:
            worker.close()


_pool: _Workers | None = None
_pool_mutex = threading.Lock()


def _workers() -> _Workers:
    global _pool
    with _pool_mutex:
        if _pool is None:
            _pool = _Workers()
        return _pool


def _forget_workers_in_child() -> None:
    global _pool, _pool_mutex
    _pool, _pool_mutex = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_workers_in_child)


class _TargetOnly:
    """What Triton asks of a driver to compile for ``target`` (a worker never touches a GPU)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


def _jit_function(module: str, name: str) -> Any:
    from warpsparse.triton_launch import FastLaunch

    obj = getattr(importlib.import_module(module), name)
    return obj.fn if isinstance(obj, FastLaunch) else obj


def serve(requests: IO[str], replies: IO[str]) -> None:
    """A worker's loop: the target first, then one specialization per line, each answered ``"ok"`` or an error,
    until ``{"quit": true}`` or the end of the input."""
    from triton.backends.compiler import GPUTarget

    first = requests.readline()
    if not first:
        return
    driver.set_active(_TargetOnly(GPUTarget(*json.loads(first)["target"])))
    for line in requests:
        request = json.loads(line)
        if request.get("quit"):
            return
        spec = Spec(**request)
        try:
            _jit_function(spec.module, spec.name).preload(spec.data)
            reply = "ok"
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which compiles it itself
            reply = f"{type(exc).__name__}: {exc}"
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve(sys.stdin, os.fdopen(int(sys.argv[1]), "w"))
