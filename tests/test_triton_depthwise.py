"""`implicit` (Triton depthwise) against `explicit` in float64: map variants, ops, channels, dtypes, parameter
points, poisoned allocations, determinism. On CPU through Triton's interpreter; ``gpu`` tests on the scan."""
from __future__ import annotations

from typing import Any

import pytest
import torch

import warpsparse.algorithms.triton  # noqa: F401  (registers the Triton algorithms)
from warpsparse.algorithms import Op, Signature, registry
from warpsparse.algorithms.triton import depthwise
from warpsparse.coords.kernel_map import KernelMap

from oracle import fresh_seed, seed_note  # noqa: F401  (fresh_seed: autouse fixture)
from test_triton_conv import (TOLERANCE, VARIANTS, count_reductions, make_map, needs_cuda, poisoned,  # noqa: F401
                              relative_error, scan_map)

ALGO = registry.get("implicit")
EXPLICIT = registry.get("explicit")
DW_OPS = (Op.DW_FWD, Op.DW_DGRAD, Op.DW_WGRAD)


def operands(op: Op, kmap: KernelMap, c: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    dev = kmap.device
    x = torch.randn(kmap.num_in, c, device=dev).to(dtype)
    w = (torch.randn(kmap.kernel_volume, c, device=dev) / 4).to(dtype)
    g = torch.randn(kmap.num_out, c, device=dev).to(dtype)
    return {Op.DW_FWD: (x, w), Op.DW_DGRAD: (g, w), Op.DW_WGRAD: (x, g)}[op]


def check(op: Op, kmap: KernelMap, a: torch.Tensor, b: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    ref = EXPLICIT.run(op, {"flat": True}, a.double(), b.double(), kmap)
    out = ALGO.run(op, params, a, b, kmap)
    assert out.dtype == a.dtype and out.device == a.device
    err = relative_error(out, ref)
    assert err <= TOLERANCE[a.dtype], f"{op.value} {a.dtype} params={params}: relative error {err:.3g} {seed_note()}"
    return out


def run_points(op: Op, kmap: KernelMap, c: int, dtype: torch.dtype, extra: int | None) -> None:
    """The default point and ``extra`` random others (every point when ``extra`` is None)."""
    a, b = operands(op, kmap, c, dtype)
    sig = Signature.of(op, a, b, kmap)
    assert ALGO.applies_to(sig) is None
    default = ALGO.default_params(sig)
    others = [p for p in ALGO.param_space(sig).points() if p != default]
    assert default in list(ALGO.param_space(sig).points())
    picked = others if extra is None else [others[i] for i in torch.randperm(len(others))[:extra].tolist()]
    for params in [default, *picked]:
        check(op, kmap, a, b, params)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("c", [1, 3, 16, 17, 64])
@pytest.mark.parametrize("op", DW_OPS, ids=lambda o: o.value)
def test_matches_explicit(variant: str, c: int, op: Op, poisoned: None) -> None:
    run_points(op, make_map(variant), c, torch.float32, extra=1)


@pytest.mark.parametrize("variant", ["subm", "isolated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_epilogue_matches_explicit(variant: str, dtype: torch.dtype, poisoned: None) -> None:
    """Bias and ReLU fused into the depthwise forward (sorted and unsorted rows) equal the explicit epilogue."""
    kmap = make_map(variant)
    x, w = operands(Op.DW_FWD, kmap, 17, dtype)
    bias = torch.randn(17, device=kmap.device).to(dtype)
    for sort in (True, False):
        params = {**ALGO.default_params(Signature.of(Op.DW_FWD, x, w, kmap)), "sorted": sort}
        for b, relu in ((bias, False), (None, True), (bias, True)):
            ref = EXPLICIT.run(Op.DW_FWD, {"flat": True}, x.double(), w.double(), kmap,
                               None if b is None else b.double(), relu)
            err = relative_error(ALGO.run(Op.DW_FWD, params, x, w, kmap, b, relu), ref)
            assert err <= TOLERANCE[dtype], f"bias={b is not None} relu={relu} {params}: {err:.3g} {seed_note()}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", DW_OPS, ids=lambda o: o.value)
def test_half_types(dtype: torch.dtype, op: Op, poisoned: None) -> None:
    run_points(op, make_map("strided"), 17, dtype, extra=1)


@pytest.mark.parametrize("op", DW_OPS, ids=lambda o: o.value)
def test_every_point(op: Op, poisoned: None) -> None:
    run_points(op, make_map("subm", sites=64), 24, torch.float32, extra=None)


def test_deterministic_wgrad(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the conv's: bit-identical through the reduction, which an atomic point runs only under the flag."""
    kmap = make_map("subm")
    a, b = operands(Op.DW_WGRAD, kmap, 16, torch.float32)
    sig = Signature.of(Op.DW_WGRAD, a, b, kmap)
    det = next(p for p in ALGO.param_space(sig).points() if p["deterministic"])
    atomic = {**det, "deterministic": False}
    reductions = count_reductions(depthwise, monkeypatch)
    first = ALGO.run(Op.DW_WGRAD, det, a, b, kmap)
    assert torch.equal(first, ALGO.run(Op.DW_WGRAD, det, a, b, kmap)) and len(reductions) == 2
    ALGO.run(Op.DW_WGRAD, atomic, a, b, kmap)
    assert len(reductions) == 2, "an atomic point reduces with atomics"
    torch.use_deterministic_algorithms(True)
    try:
        assert all(p["deterministic"] for p in ALGO.param_space(sig).points())
        assert torch.equal(first, ALGO.run(Op.DW_WGRAD, atomic, a, b, kmap))
        assert len(reductions) == 3, "under the flag an atomic point runs the deterministic reduction"
    finally:
        torch.use_deterministic_algorithms(False)


def test_applies_and_errors() -> None:
    assert "fp64" in ALGO.applies_to(Signature(Op.DW_FWD, 5, 5, 8, 8, 27, torch.float64, "cuda", 9))
    assert "does not implement" in ALGO.applies_to(Signature(Op.CONV_FWD, 5, 5, 8, 8, 27, torch.float32, "cuda", 9))
    kmap = make_map("subm", sites=40)
    x, w = operands(Op.DW_FWD, kmap, 8, torch.float32)
    params = ALGO.default_params(Signature.of(Op.DW_FWD, x, w, kmap))
    with pytest.raises(ValueError, match="weight"):
        ALGO.run(Op.DW_FWD, params, x, w[:, :4], kmap)
    with pytest.raises(ValueError, match="grad_out"):
        ALGO.run(Op.DW_WGRAD, params, x, x[:-1], kmap)


@pytest.mark.parametrize("variant", ["subm", "strided", "transposed", "inverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c", [3, 64, 100])
@pytest.mark.parametrize("op", DW_OPS, ids=lambda o: o.value)
@pytest.mark.gpu
@needs_cuda
def test_gpu_scan(variant: str, dtype: torch.dtype, c: int, op: Op, poisoned: None) -> None:
    run_points(op, scan_map(variant), c, dtype, extra=2)


@pytest.mark.gpu
@needs_cuda
def test_gpu_deterministic_wgrad() -> None:
    """Every deterministic depthwise weight-gradient point gives bit-identical results on the GPU."""
    kmap = scan_map("subm")
    a, b = operands(Op.DW_WGRAD, kmap, 64, torch.float16)
    points = [p for p in ALGO.param_space(Signature.of(Op.DW_WGRAD, a, b, kmap)).points() if p["deterministic"]]
    assert points
    for p in points:
        assert torch.equal(ALGO.run(Op.DW_WGRAD, p, a, b, kmap), ALGO.run(Op.DW_WGRAD, p, a, b, kmap)), p
