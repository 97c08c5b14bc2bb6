"""Worker processes compile queued Triton kernels into the disk cache, and this process then only loads them.

Runs a script with ``TRITON_INTERPRET`` unset, on CPU (the workers compile real kernels for sm_90 without a GPU:
the script makes Triton's active driver the one a worker uses, which only names the target) and on a GPU (the
real driver: its cache keys must be the workers', and the loaded kernels must compute)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from warpsparse import triton_compile

SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    import torch
    from triton import knobs
    knobs.cache.dir = cache = tempfile.mkdtemp()  # set in this process only: the workers must follow it
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from warpsparse import triton_compile
    from warpsparse.algorithms.triton.reduction import segment_sum_kernel

    device = sys.argv[1]
    if device == "cpu":
        driver.set_active(triton_compile._TargetOnly(GPUTarget("cuda", 90, 32)))
    noisy = tempfile.mkdtemp()  # workers whose start-up prints to stdout must still be understood
    with open(f"{noisy}/sitecustomize.py", "w") as f:
        f.write("print('a banner on stdout')\\n")
    os.environ["PYTHONPATH"] = os.pathsep.join([noisy, os.environ.get("PYTHONPATH", "")])
    replies = []
    real = triton_compile._Worker.compile
    def logged(self, spec):
        replies.append((spec.name, real(self, spec)))
        return replies[-1][1]
    triton_compile._Worker.compile = logged

    def groups():
        return sorted(d for d in os.listdir(cache) if any(f.endswith(".cubin") for f in os.listdir(f"{cache}/{d}")))

    jit = segment_sum_kernel.fn
    ws = torch.randn(4, 8, device=device)
    out = torch.zeros(2, 8, dtype=torch.float16, device=device)
    bounds = torch.tensor([0, 1, 4], device=device)
    launches = [triton_compile.Launch(jit, (2, 1), (ws, out, bounds, 8), {"BLOCK": block, "num_warps": 4})
                for block in (64, 128, 64)]  # two specializations, one of them queued twice
    triton_compile.compile_all(launches, 2)
    assert sorted(replies) == [("segment_sum_kernel", "ok")] * 2, replies
    compiled = groups()
    assert len(compiled) == 2, compiled
    index = torch.cuda.current_device() if device == "cuda" else 0
    assert len(jit.device_caches[index][0]) == 2, "the thread step loads both kernels into this process"
    assert groups() == compiled, "loaded from the workers' cache entries, not compiled again"
    if device == "cuda":  # the loaded kernels run and are right
        for launch in launches[:2]:
            out.zero_()
            jit[launch.grid](*launch.args, **launch.kwargs)
            expected = torch.stack([ws[:1].sum(0), ws[1:].sum(0)]).half()
            torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
        assert groups() == compiled
    triton_compile.compile_all(launches, 2)  # compiled in this process already: no work for the workers
    assert len(replies) == 2 and groups() == compiled
    pool = triton_compile._workers()
    workers = [pool._idle.get_nowait() for _ in range(pool._count)]
    assert len(workers) == 2 and all(w.proc.poll() is None for w in workers)
    for worker in workers:
        pool._idle.put(worker)
    pool.close()
    workers = [w.proc for w in workers]
    assert all(p.poll() is not None for p in workers), "closed workers exit"
    print("OK")
""")


def _run_script(device: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", SCRIPT, device], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout[-4000:] + done.stderr[-4000:]


def test_workers_compile_into_the_disk_cache_this_process_loads():
    _run_script("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_workers_compile_what_the_gpu_process_loads_and_runs():
    """With the real driver: the tuning process's cache keys are the workers', so it loads and runs their kernels."""
    _run_script("cuda")


class _FakeWorker:
    """Stands in for a worker process: kernels named "bad" make it fail as a dead or garbled worker would."""

    made: list["_FakeWorker"] = []

    def __init__(self, target: Any) -> None:
        self.target, self.closed, self.proc = target, False, SimpleNamespace(kill=lambda: None)
        _FakeWorker.made.append(self)

    def compile(self, spec: Any) -> str:
        if spec.name == "bad":
            raise ValueError("garbled reply")
        return "ok"

    def close(self) -> None:
        self.closed = True


def test_failing_workers_are_dropped_without_hanging(monkeypatch):
    """A worker that dies or answers garbage is dropped and its kernel left to the threads; a batch whose workers
    all fail still ends; the next batch starts new ones; workers of another GPU target are replaced."""
    from triton.runtime.driver import driver

    _FakeWorker.made = []
    monkeypatch.setattr(triton_compile, "_Worker", _FakeWorker)
    target = ["sm_90"]
    monkeypatch.setattr(driver, "_active", SimpleNamespace(get_current_target=lambda: target[0]))
    pool = triton_compile._Workers()
    Spec = triton_compile.Spec
    pool.compile([Spec("m", "bad", "1"), Spec("m", "good", "2"), Spec("m", "good", "3")], 2)
    assert pool._count == 1 and len(_FakeWorker.made) == 2 and sum(w.closed for w in _FakeWorker.made) == 1
    pool.compile([Spec("m", "bad", "4"), Spec("m", "bad", "5"), Spec("m", "bad", "6")], 2)
    assert pool._count == 0 and len(_FakeWorker.made) == 3
    pool.compile([Spec("m", "good", "7")], 2)
    assert pool._count == 2
    target[0] = "sm_100"
    pool.compile([Spec("m", "good", "8")], 2)
    assert pool._count == 2 and [w.target for w in _FakeWorker.made[-2:]] == ["sm_100"] * 2
    assert all(w.closed for w in _FakeWorker.made if w.target == "sm_90")
    pool.close()
    assert pool._count == 0 and all(w.closed for w in _FakeWorker.made)
