"""The CuPy algorithms' CUDA sources compile with the machine's nvcc for sm_90 (skipped without nvcc).

Every instantiation the parameter spaces can select is grouped by the template features that change the
generated code (kernel, dtype, engine, copy widths, stages, tile shape class); one of each group is compiled,
so a syntax or inline-PTX error in any branch cannot land unseen.
"""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import torch

from warpsparse.algorithms.base import Op, Signature
from warpsparse.algorithms.cupy import depthwise, gemm, runtime
from warpsparse.algorithms.cupy.configs import (DT_CODE, NOMINAL_DEVICE, GemmKernel, conv_points, dw_points,
                                                 sum_splits_name)

NVCC = shutil.which("nvcc")
_DTYPES = ((torch.float16, False), (torch.bfloat16, False), (torch.float32, False), (torch.float32, True))
_CHANNELS = ((1, 3), (3, 16), (17, 17), (16, 64), (64, 64), (100, 100), (128, 256))


def _gemm_kernels() -> Iterator[GemmKernel]:
    """Every instantiation the spaces of varied signatures select (repeats included)."""
    for dtype, tf32 in _DTYPES:
        for c_in, c_out in _CHANNELS:
            for op in (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD):
                sig = Signature(op, 5000, 5000, c_in, c_out, 27, dtype, "cuda", 50000, tf32)
                c_a, c_b = (c_in, c_out) if op != Op.CONV_DGRAD else (c_out, c_in)
                for p in conv_points(sig, NOMINAL_DEVICE):
                    yield gemm.kernel_for(op == Op.CONV_WGRAD, p, dtype, c_a, c_b)


def _gemm_names() -> list[str]:
    """One instantiation per group of code-changing features."""
    chosen: dict[tuple, str] = {}
    for k in _gemm_kernels():
        shape_class = (k.block_m >= 64, k.warps_m > 1, k.warps_n > 1)
        key = (k.wgrad, k.dt, k.mma, k.vec_a, k.vec_b, k.stages == 2, shape_class)  # copy widths: dt sets the size
        chosen.setdefault(key, k.name)
    return sorted(set(chosen.values()))


def _depthwise_names() -> list[str]:
    names = set()
    for dtype, _ in _DTYPES:
        for c in (3, 16, 64):
            for op in (Op.DW_FWD, Op.DW_WGRAD):
                sig = Signature(op, 5000, 5000, c, c, 27, dtype, "cuda", 50000)
                for p in dw_points(sig, NOMINAL_DEVICE):
                    names.add(depthwise.kernel_for(op == Op.DW_WGRAD, p, dtype, c).name)
    return sorted(names)


def _translation_unit(family: str, names: list[str]) -> str:
    refs = ",\n".join(f"  (void*)&{n}" for n in names)
    return f"{runtime.source(family)}\nvoid* const ws_instantiations[] = {{\n{refs}\n}};\n"


def _nvcc(path: Path) -> subprocess.CompletedProcess:
    cmd = [NVCC, "-arch=sm_90", "-std=c++17", "-c", str(path), "-o", str(path.with_suffix(".o"))]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_instantiation_names_are_unique_per_point():
    kernels = set(_gemm_kernels())
    assert len({k.name for k in kernels}) == len(kernels), "two instantiations share a name"
    names = _gemm_names()
    assert len(names) >= 20 and all(n.startswith("wsk::ws_conv_") for n in names)
    assert any("ws_conv_wgrad" in n for n in names) and any(n.endswith("false>") for n in names)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_sources_compile_for_sm90(tmp_path):
    names = _gemm_names()
    units = {
        "gemm_a": _translation_unit("gemm", names[0::2]),
        "gemm_b": _translation_unit("gemm", names[1::2] + [sum_splits_name(dt) for dt in DT_CODE.values()]),
        "depthwise": _translation_unit("depthwise", _depthwise_names()),
    }
    paths = []
    for name, text in units.items():
        path = tmp_path / f"{name}.cu"
        path.write_text(text)
        paths.append(path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_nvcc, paths))
    for path, res in zip(paths, results):
        assert res.returncode == 0, f"nvcc failed on {path.name}:\n{res.stderr[-4000:]}"
        assert "error" not in res.stderr.lower(), res.stderr[-4000:]
