"""`cupy_implicit_gemm` and `cupy_implicit`: their contracts (CPU) and their results against the explicit
algorithms on real and random maps (GPU with CuPy, `gpu` marker).

GPU references run the explicit algorithms on upcast inputs (fp32 -> fp64, half types -> fp32), so the
comparison measures the CuPy kernels' own error. Outputs are poisoned (NaN-filled memory handed back to the
caching allocator right before each call), so rows a kernel never writes fail the comparison.
"""
from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import warpsparse.algorithms  # noqa: F401  (registers the explicit algorithms)
import warpsparse.algorithms.cupy  # noqa: F401  (registers the CuPy algorithms)
from warpsparse.algorithms import registry
from warpsparse.algorithms.base import Op, Signature, workspace_limit
from warpsparse.algorithms.cupy import runtime
from warpsparse.algorithms.cupy.configs import (DT_CODE, NOMINAL_DEVICE, DeviceInfo, conv_points, dw_points,
                                                gemm_kernel, space_of)
from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.coords.maps import build_kernel_map

HAS_GPU = torch.cuda.is_available() and runtime.unavailable_reason() is None
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device and CuPy")
SCAN = Path(__file__).resolve().parents[1] / "warpsparse" / "data" / "waymo-scan-spconv.npz"

GEMM, DW = "cupy_implicit_gemm", "cupy_implicit"
CONV = (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD)
DEPTHWISE = (Op.DW_FWD, Op.DW_DGRAD, Op.DW_WGRAD)
#: Error bound relative to the reference's largest magnitude, per (dtype, TF32 allowed).
TOL = {(torch.float32, False): 1e-4, (torch.float32, True): 1e-2, (torch.float16, False): 4e-3,
       (torch.bfloat16, False): 2e-2}


# ---------------------------------------------------------------- contracts (CPU)

def _sig(op: Op, c_in: int, c_out: int, dtype: torch.dtype = torch.float16, tf32: bool = False,
         device: str = "cuda") -> Signature:
    return Signature(op, 30000, 30000, c_in, c_out, 27, dtype, device, 300000, tf32)


def test_registered_for_their_ops():
    assert registry.get(GEMM).ops == frozenset(CONV)
    assert registry.get(DW).ops == frozenset(DEPTHWISE)
    assert registry.get(GEMM).applies_to(_sig(Op.DW_FWD, 8, 8)) is not None


def test_applies_to_gives_reasons(monkeypatch):
    algo = registry.get(GEMM)
    if runtime.unavailable_reason() is not None:
        assert "CuPy" in algo.applies_to(_sig(Op.CONV_FWD, 16, 16))
    monkeypatch.setattr(runtime, "unavailable_reason", lambda: None)
    monkeypatch.setattr(runtime, "device_info", lambda index=None: NOMINAL_DEVICE)
    assert algo.applies_to(_sig(Op.CONV_FWD, 16, 16, device="cpu")) == "needs a CUDA tensor"
    assert "float64" in algo.applies_to(_sig(Op.CONV_FWD, 16, 16, torch.float64))
    assert algo.applies_to(_sig(Op.CONV_WGRAD, 16, 16, torch.bfloat16)) is None
    monkeypatch.setattr(runtime, "device_info", lambda index=None: DeviceInfo((6, 1), 48 * 1024, 20))
    assert "compute capability" in algo.applies_to(_sig(Op.CONV_FWD, 16, 16))


@pytest.mark.skipif(runtime.unavailable_reason() is None, reason="CuPy is installed")
def test_naming_it_without_cupy_is_a_clear_error():
    kmap = KernelMap(torch.tensor([[0]], dtype=torch.int32), 1, (1, 1, 1))
    with pytest.raises(RuntimeError, match="CuPy"):
        registry.get(GEMM).run(Op.CONV_FWD, {}, torch.ones(1, 4), torch.ones(1, 4, 4), kmap)


@pytest.mark.parametrize("dtype,tf32", list(TOL))
@pytest.mark.parametrize("op", CONV + DEPTHWISE)
def test_parameter_spaces_are_modest_and_valid(op, dtype, tf32):
    small = DeviceInfo((8, 0), 99 * 1024, 108)
    for dev in (NOMINAL_DEVICE, small):
        for c_in, c_out in ((1, 1), (3, 16), (16, 3), (17, 17), (64, 64), (100, 100), (256, 256)):
            if op.depthwise and c_in != c_out:
                continue
            sig = _sig(op, c_in, c_out, dtype, tf32)
            points = dw_points(sig, dev) if op.depthwise else conv_points(sig, dev)
            assert 1 <= len(points) <= 40, (op, dtype, c_in, c_out, len(points))
            in_space = sorted(tuple(sorted(p.items())) for p in space_of(points).points())
            assert in_space == sorted(tuple(sorted(p.items())) for p in points)
            if op.depthwise:
                continue
            for p in points:
                k = gemm_kernel(op == Op.CONV_WGRAD, DT_CODE[dtype], p["engine"], p["block_m"], p["block_n"],
                                p["block_k"], p["warps"], p["stages"], 1, 1)
                assert k.dynamic_smem + k.static_smem <= dev.smem_per_block
                assert p["engine"] == "simt" or dtype != torch.float32 or tf32


def test_atomic_reduction_only_when_nondeterminism_is_allowed():
    sig = _sig(Op.CONV_WGRAD, 64, 64)
    assert any(p["reduce"] == "atomic" for p in conv_points(sig, NOMINAL_DEVICE))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert all(p["reduce"] == "ordered" for p in conv_points(sig, NOMINAL_DEVICE))
    finally:
        torch.use_deterministic_algorithms(previous)


def test_ordered_reductions_keep_their_workspace_within_the_limit():
    """Split shares summed in order need a workspace of split x K x C_in x C_out fp32: past the operands' size
    only the atomic sum is offered, unless determinism is required (then nothing else is allowed)."""
    sig = Signature(Op.CONV_WGRAD, 67000, 67000, 96, 96, 27, torch.float16, "cuda", 2_000_000)
    share = 27 * 96 * 96 * 4
    points = conv_points(sig, NOMINAL_DEVICE)
    assert all(p["split"] * share <= workspace_limit(sig) for p in points if p["reduce"] == "ordered")
    assert any(p["split"] * share > workspace_limit(sig) for p in points if p["reduce"] == "atomic")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        strict = conv_points(sig, NOMINAL_DEVICE)
        assert {p["split"] for p in strict} == {p["split"] for p in points}
        assert all(p["reduce"] == "ordered" for p in strict)
    finally:
        torch.use_deterministic_algorithms(previous)


def test_runtime_compiles_a_kernel_once_under_concurrent_requests(monkeypatch):
    """Threads asking for the same kernel at once get one compile and the same function."""
    compiled: list[str] = []

    def slow_compile(family: str, name: str, device: int, dynamic_smem: int) -> object:
        time.sleep(0.05)
        compiled.append(name)
        return object()

    monkeypatch.setattr(runtime, "_compile", slow_compile)
    monkeypatch.setattr(runtime, "_functions", {})
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: runtime.function("gemm", f"k{i % 2}", 0), range(16)))
    assert sorted(compiled) == ["k0", "k1"]
    assert len({id(f) for f in got[0::2]}) == 1 and len({id(f) for f in got[1::2]}) == 1 and got[0] is not got[1]


# ---------------------------------------------------------------- GPU helpers

def _coord_set(xyz: torch.Tensor, voxel: float) -> CoordSet:
    q = torch.floor((xyz - xyz.min(0).values) / voxel).int()
    q = torch.unique(q, dim=0)
    coords = torch.cat([torch.zeros_like(q[:, :1]), q], dim=1).contiguous()
    shape = tuple(int(v) + 1 for v in q.max(0).values.tolist())
    return CoordSet(coords, shape, 1)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=None)
def _scan_set() -> CoordSet:
    pc = torch.from_numpy(np.load(SCAN)["pc"]).cuda()
    return _coord_set(pc, 0.1)


def _random_set(n: int, extent: float) -> CoordSet:
    return _coord_set(torch.rand(n, 3, device="cuda") * extent, 1.0)


def _maps(cs: CoordSet) -> dict[str, KernelMap]:
    """Subm, stride-2 and transposed (back to ``cs``) 3x3x3 maps, from the PyTorch builder."""
    subm, _ = build_kernel_map(cs, submanifold_geometry((3, 3, 3), (1, 1, 1)), cs.spatial_shape, out=cs,
                               kind="subm", builder="torch")
    down = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
    strided, coarse = build_kernel_map(cs, down, down.output_shape(cs.spatial_shape), builder="torch")
    up = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), transposed=True)
    transposed, _ = build_kernel_map(coarse, up, cs.spatial_shape, out=cs, kind="transposed",
                                     builder="torch")
    return {"subm": subm, "strided": strided, "transposed": transposed}


def _operands(op: Op, kmap: KernelMap, c_in: int, c_out: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Fresh random (a, b) of ``op`` (see Op), scaled so results are O(1)."""
    k = kmap.kernel_volume
    x = torch.randn(kmap.num_in, c_in, device="cuda")
    dy = torch.randn(kmap.num_out, c_out, device="cuda")
    if op == Op.CONV_FWD:
        a, b = x, torch.randn(k, c_in, c_out, device="cuda") / (k * c_in) ** 0.5
    elif op == Op.CONV_DGRAD:
        a, b = dy, torch.randn(k, c_in, c_out, device="cuda") / (k * c_out) ** 0.5
    elif op == Op.DW_FWD:
        a, b = x, torch.randn(k, c_in, device="cuda") / k ** 0.5
    elif op == Op.DW_DGRAD:
        a, b = dy, torch.randn(k, c_out, device="cuda") / k ** 0.5
    else:
        a, b = x, dy
    return a.to(dtype), b.to(dtype)


def _poison(*shapes_and_dtypes: tuple[tuple[int, ...], torch.dtype]) -> None:
    """Hand NaN-filled blocks of these sizes to the caching allocator, so the next allocations get them."""
    blocks = [torch.full(s, float("nan"), dtype=d, device="cuda") for s, d in shapes_and_dtypes]
    del blocks


def _reference(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    wide = torch.float64 if a.dtype == torch.float32 else torch.float32
    name = "explicit" if op.depthwise else "explicit_gemm"
    return registry.get(name).run(op, {}, a.to(wide), b.to(wide), kmap)


def _out_shape(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> tuple[int, ...]:
    return {Op.CONV_FWD: (kmap.num_out, b.shape[-1]), Op.CONV_DGRAD: (kmap.num_in, b.shape[1]),
            Op.CONV_WGRAD: (kmap.kernel_volume, a.shape[1], b.shape[1]), Op.DW_FWD: (kmap.num_out, a.shape[1]),
            Op.DW_DGRAD: (kmap.num_in, a.shape[1]), Op.DW_WGRAD: (kmap.kernel_volume, a.shape[1])}[op]


def _check(op: Op, kmap: KernelMap, c_in: int, c_out: int, dtype: torch.dtype,
           params: dict[str, Any] | None = None) -> torch.Tensor:
    """Run the CuPy algorithm of ``op`` with ``params`` (default: its default point) on fresh random
    operands and poisoned memory; assert it matches the explicit reference. Returns the result."""
    algo = registry.get(DW if op.depthwise else GEMM)
    a, b = _operands(op, kmap, c_in, c_out, dtype)
    sig = Signature.of(op, a, b, kmap)
    assert algo.applies_to(sig) is None
    params = algo.default_params(sig) if params is None else params
    ref = _reference(op, a, b, kmap)
    shape = _out_shape(op, a, b, kmap)
    _poison((shape, dtype), ((params.get("split", 1),) + shape, torch.float32))
    out = algo.run(op, params, a, b, kmap)
    assert out.shape == ref.shape and out.dtype == dtype
    err = (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0
    scale = max(ref.abs().max().item(), 1e-6) if ref.numel() else 1.0
    tol = TOL[(dtype, sig.tf32)]
    assert err <= tol * scale, f"{op.value} {kmap.kind} {c_in}->{c_out} {dtype} {params}: error {err:.3g}, " \
                               f"bound {tol * scale:.3g}"
    return out


# ---------------------------------------------------------------- GPU tests

@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels", [(1, 16), (3, 16), (16, 17), (17, 3), (64, 64), (128, 128)])
def test_conv_random_maps(dtype, channels):
    for kmap in _maps(_random_set(3000, 24.0)).values():
        for op in CONV:
            _check(op, kmap, *channels, dtype)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("c", [1, 3, 16, 17, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_depthwise_random_maps(dtype, c):
    for kmap in _maps(_random_set(3000, 24.0)).values():
        for op in DEPTHWISE:
            _check(op, kmap, c, c, dtype)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_conv_fp32_tf32_switch(tf32, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    kmap = _maps(_random_set(3000, 24.0))["subm"]
    for op in CONV:
        _check(op, kmap, 32, 48, torch.float32)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("c", [16, 64, 128])
def test_conv_on_the_scan(dtype, c):
    maps = _maps(_scan_set())
    for kind, kmap in maps.items():
        for op in CONV:
            if kind != "subm" and op == Op.CONV_DGRAD and c == 128:
                continue  # the subm map covers the large-channel gradient; keep the run short
            _check(op, kmap, c, c, dtype)
    for op in DEPTHWISE:
        _check(op, maps["subm"], c, c, dtype)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("op", CONV + DEPTHWISE)
def test_every_parameter_point(op, dtype, monkeypatch):
    """Each point of a mid-size signature's space (a sample of it for the large spaces) is correct, and loads
    exactly the kernels its ``point_instantiations`` (hence its ``compile_jobs``) name."""
    kmap = _maps(_random_set(4000, 20.0))["subm"]
    c_in, c_out = (64, 64) if op.depthwise else (64, 48)
    a, b = _operands(op, kmap, c_in, c_out, dtype)
    algo = registry.get(DW if op.depthwise else GEMM)
    sig = Signature.of(op, a, b, kmap)
    points = list(algo.param_space(sig).points())
    loaded: list[tuple[str, str, int]] = []
    real = runtime.function

    def spy(family: str, name: str, device: int, *rest: int) -> Any:
        loaded.append((family, name, device))
        return real(family, name, device, *rest)

    monkeypatch.setattr(runtime, "function", spy)
    for params in points[:: max(1, len(points) // 12)]:
        loaded.clear()
        _check(op, kmap, c_in, c_out, dtype, params)
        named = {(k.family, k.name) for k in algo.point_instantiations(sig, params)}
        assert {(f, n) for f, n, _ in loaded} == named, params
        jobs = algo.compile_jobs(sig, params)
        assert {(j.args[0], j.args[1]) for j in jobs} == named
        assert {j.args[2] for j in jobs} == {d for _, _, d in loaded} == {torch.cuda.current_device()}


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("op", CONV + DEPTHWISE)
def test_deterministic_runs_are_bit_identical(op):
    kmap = _maps(_random_set(3000, 24.0))["strided"]
    a, b = _operands(op, kmap, 32, 32, torch.float16)
    algo = registry.get(DW if op.depthwise else GEMM)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        points = list(algo.param_space(Signature.of(op, a, b, kmap)).points())
        for params in points[:: max(1, len(points) // 8)]:
            first = algo.run(op, params, a, b, kmap)
            _poison((tuple(first.shape), first.dtype))
            assert torch.equal(first, algo.run(op, params, a, b, kmap)), params
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("op", [Op.CONV_FWD, Op.CONV_WGRAD, Op.DW_FWD])
def test_runs_on_the_current_torch_stream(op):
    """Inputs finished late on a side stream: a kernel launched on any other stream would read NaNs."""
    kmap = _maps(_random_set(3000, 24.0))["subm"]
    a_src, b = _operands(op, kmap, 32, 32, torch.float16)
    ref = _reference(op, a_src, b, kmap)
    algo = registry.get(DW if op.depthwise else GEMM)
    params = algo.default_params(Signature.of(op, a_src, b, kmap))
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        a = torch.full_like(a_src, float("nan"))
        torch.cuda._sleep(50_000_000)
        a.copy_(a_src)
        out = algo.run(op, params, a, b, kmap)
    side.synchronize()
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= TOL[(torch.float16, False)] * ref.abs().max().item()


@pytest.mark.gpu
@needs_gpu
def test_cache_hit_host_time_is_small():
    """A repeated call of a compiled 32-channel layer costs little host time (validation + one launch)."""
    import time
    kmap = _maps(_random_set(3000, 24.0))["subm"]
    a, b = _operands(Op.CONV_FWD, kmap, 32, 32, torch.float16)
    algo = registry.get(GEMM)
    params = algo.default_params(Signature.of(Op.CONV_FWD, a, b, kmap))
    for _ in range(5):
        algo.run(Op.CONV_FWD, params, a, b, kmap)
    torch.cuda.synchronize()
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        algo.run(Op.CONV_FWD, params, a, b, kmap)
    host_us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    print(f"cupy_implicit_gemm cache-hit host time: {host_us:.1f} us per call")
    assert host_us < 200

