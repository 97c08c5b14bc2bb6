"""Worker processes compile queued Triton kernels into the disk cache, and this process then only loads them.

Runs a script with ``TRITON_INTERPRET`` unset (the workers compile real kernels, here for sm_90 without a GPU:
the script makes Triton's active driver the one a worker uses, which only names the target)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    os.environ["TRITON_CACHE_DIR"] = cache = tempfile.mkdtemp()
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from warpsparse import triton_compile
    from warpsparse.algorithms.triton.reduction import segment_sum_kernel

    driver.set_active(triton_compile._TargetOnly(GPUTarget("cuda", 90, 32)))
    replies = []
    real = triton_compile._Worker.compile
    def logged(self, spec):
        replies.append((spec.name, real(self, spec)))
        return replies[-1][1]
    triton_compile._Worker.compile = logged

    def groups():
        return sorted(d for d in os.listdir(cache) if any(f.endswith(".cubin") for f in os.listdir(f"{cache}/{d}")))

    jit = segment_sum_kernel.fn
    ws, out, bounds = torch.zeros(4, 8), torch.zeros(2, 8, dtype=torch.float16), torch.zeros(3, dtype=torch.int64)
    launches = [triton_compile.Launch(jit, (2, 1), (ws, out, bounds, 8), {"BLOCK": block, "num_warps": 4})
                for block in (64, 128, 64)]  # two specializations, one of them queued twice
    triton_compile.compile_all(launches, 2)
    assert sorted(replies) == [("segment_sum_kernel", "ok")] * 2, replies
    compiled = groups()
    assert len(compiled) == 2, compiled
    assert len(jit.device_caches[0][0]) == 2, "the thread step loads both kernels into this process"
    assert groups() == compiled, "loaded from the workers' cache entries, not compiled again"
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


def test_workers_compile_into_the_disk_cache_this_process_loads():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout[-4000:] + done.stderr[-4000:]
