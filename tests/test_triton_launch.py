"""`FastLaunch`: a compiled kernel is reused only for arguments Triton would specialize the same way."""
from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from triton import knobs

from warpsparse import triton_launch
from warpsparse.triton_launch import FastLaunch, fast_launch


class _Compiled:
    """Stands in for a ``CompiledKernel``: its launcher and its runner (the path taken under launch hooks)."""

    packed_metadata = object()
    function = object()

    def __init__(self, log: list) -> None:
        self.log = log

    def run(self, g0: int, g1: int, g2: int, stream: int, function: Any, packed: Any, launch_metadata: Any,
            enter: Any, exit_: Any, *args: Any) -> None:
        assert (stream, function, packed) == (7, self.function, self.packed_metadata)
        assert launch_metadata is enter is exit_ is None
        self.log.append(("fast", (g0, g1, g2), args))

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        return lambda *args: self.log.append(("runner", grid, args))


class _Jitted:
    """Stands in for a ``@triton.jit`` function: every launch through it counts as Triton's own path."""

    arg_names = ["x_ptr", "n", "B"]
    params = [SimpleNamespace(is_constexpr=False), SimpleNamespace(is_constexpr=False),
              SimpleNamespace(is_constexpr=True)]

    def __init__(self) -> None:
        self.log: list = []

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def run(*args: Any, **kwargs: Any) -> _Compiled:
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log)
        return run

    def warmup(self, *args: Any, grid: tuple[int, ...], **kwargs: Any) -> None:
        self.log.append(("warmup", grid, args, kwargs))


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FastLaunch:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(triton_launch, "_stream_of", lambda device: 7)
    return FastLaunch(_Jitted())


def _paths(k: FastLaunch) -> list[str]:
    return [entry[0] for entry in k.fn.log]


def test_reuses_compiled_kernel_for_same_specialization(kernel):
    x = torch.zeros(64, dtype=torch.float16)
    kernel[(4,)](x, 100, B=32, num_warps=4)
    kernel[(5, 2)](x, 200, B=32, num_warps=4)
    assert _paths(kernel) == ["triton", "fast"]
    assert kernel.fn.log[1] == ("fast", (5, 2, 1), (x, 200, 32)), "full arguments in order, 3D grid"


@pytest.mark.parametrize("first, second", [
    ((0, 100, 32, 4), (1, 100, 32, 4)),  # 16-byte aligned pointer vs offset by 2 bytes
    ((0, 100, 32, 4), (0, 1, 32, 4)),  # an int equal to 1
    ((0, 100, 32, 4), (0, 96, 32, 4)),  # a multiple of 16
    ((0, 100, 32, 4), (0, 2**31 + 1, 32, 4)),  # a 64-bit int
    ((0, 100, 32, 4), (0, 100, 64, 4)),  # another constexpr value
    ((0, 100, 32, 4), (0, 100, 32, 8)),  # another launch option
])
def test_distinct_specializations_go_through_triton(kernel, first, second):
    base = torch.zeros(64, dtype=torch.float16)
    for offset, n, block, warps in (first, second):
        kernel[(1,)](base[offset:], n, B=block, num_warps=warps)
    assert _paths(kernel) == ["triton", "triton"]


def test_dtype_and_values_in_one_class_share(kernel):
    kernel[(1,)](torch.zeros(8), 3, B=1)
    kernel[(1,)](torch.zeros(16), 5, B=1)
    kernel[(1,)](torch.zeros(8, dtype=torch.float64), 5, B=1)
    assert _paths(kernel) == ["triton", "fast", "triton"]


def test_constexpr_passed_by_position_is_keyed_by_value(kernel):
    x = torch.zeros(8)
    kernel[(1,)](x, 3, 32)
    kernel[(1,)](x, 5, 32)
    kernel[(1,)](x, 5, 64)
    assert _paths(kernel) == ["triton", "fast", "triton"]


def test_parameter_left_to_default_always_binds_in_triton(kernel):
    kernel[(1,)](torch.zeros(8), 3)
    kernel[(1,)](torch.zeros(8), 3)
    assert _paths(kernel) == ["triton", "triton"]


def test_interpreted_kernels_are_left_alone():
    interpreted = type("InterpretedFunction", (), {})()
    assert fast_launch(interpreted) is interpreted


def test_parameters_and_none_arguments(kernel):
    """A ``Parameter`` specializes like its tensor; ``None`` and floats by type only."""
    weight = torch.nn.Parameter(torch.zeros(8))
    kernel[(1,)](weight, 3, B=None)
    kernel[(1,)](torch.zeros(8), 5, B=None)
    kernel[(1,)](torch.zeros(8), 2.5, B=None)
    kernel[(1,)](torch.zeros(8), 7.5, B=None)
    assert _paths(kernel) == ["triton", "fast", "triton", "fast"]


def test_launch_hooks_see_every_launch(kernel, monkeypatch):
    """With a launch hook installed, compiled launches go through the kernel's runner, which calls the hooks."""
    x = torch.zeros(8)
    kernel[(1,)](x, 3, B=1)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda *args: None)
    kernel[(2,)](x, 3, B=1)
    assert _paths(kernel) == ["triton", "runner"]
    assert kernel.fn.log[1] == ("runner", (2, 1, 1), (x, 3, 1))


def test_host_grid_arithmetic():
    assert [triton_launch.cdiv(a, 4) for a in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert [triton_launch.pow2_at_least(n) for n in (0, 1, 2, 3, 27, 64)] == [1, 1, 2, 4, 32, 64]


def test_precompiling_compiles_precompilable_kernels_only(monkeypatch):
    """Inside ``precompiling`` a precompilable kernel only compiles (once per specialization) and runs nothing;
    other kernels (whose outputs the host caches) launch as usual."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(triton_launch, "_stream_of", lambda device: 7)
    compute, layout = FastLaunch(_Jitted(), precompilable=True), FastLaunch(_Jitted())
    x = torch.zeros(8)
    compute[(1,)](x, 3, B=1)  # compiled before
    with triton_launch.precompiling(2):
        assert compute[(1,)](x, 5, B=1) is None  # compiled: nothing runs
        compute[(1,)](x, 5, B=2)  # a new specialization: compiled, not run
        layout[(1,)](x, 5, B=2)
        layout[(1,)](x, 6, B=2)
    assert _paths(compute) == ["triton", "warmup"]
    assert _paths(layout) == ["triton", "fast"]
    compute[(1,)](x, 5, B=2)
    assert _paths(compute) == ["triton", "warmup", "triton"], "outside, the new specialization launches"
    assert fast_launch(precompilable=True)(_Jitted()).precompilable


def test_precompiling_leaves_other_threads_alone(monkeypatch):
    """A thread launching while another thread precompiles runs its kernels."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(triton_launch, "_stream_of", lambda device: 7)
    compute = FastLaunch(_Jitted(), precompilable=True)
    x = torch.zeros(8)
    with triton_launch.precompiling(2):
        worker = threading.Thread(target=lambda: compute[(1,)](x, 5, B=1))
        worker.start()
        worker.join()
    assert _paths(compute) == ["triton"]
