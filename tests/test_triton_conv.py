"""`implicit_gemm` (Triton) against `explicit_gemm` in float64: every map variant, op, channel size, dtype and
parameter point, with poisoned allocations so that unwritten rows show.

On CPU the kernels run in Triton's interpreter at a few hundred sites; the ``gpu`` tests use the real scan.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

import warpsparse.algorithms.triton  # noqa: F401  (registers the Triton algorithms)
from warpsparse.algorithms import Op, Signature, registry
from warpsparse.algorithms.triton import common, implicit_gemm
from warpsparse.algorithms.triton.layouts import block_offsets
from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.coords.maps import build_kernel_map
from warpsparse.triton_launch import pow2_at_least

from oracle import fresh_seed, random_coords, seed_note  # noqa: F401  (fresh_seed: autouse fixture)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SCAN = Path(__file__).resolve().parents[1] / "warpsparse" / "data" / "waymo-scan-spconv.npz"

VARIANTS = ["subm", "strided", "transposed", "overlapping_transposed", "inverse", "isolated"]
# every variant sees channel sizes 1, 3, 16, 17 and 64 (as input or output channels)
CHANNELS = [(1, 16), (3, 17), (17, 64), (64, 3)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
CONV_OPS = (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD)

ALGO = registry.get("implicit_gemm")
EXPLICIT = registry.get("explicit_gemm")


def coord_set(coords: torch.Tensor, device: str = DEV) -> CoordSet:
    shape = tuple(int(v) + 1 for v in coords[:, 1:].amax(dim=0))
    return CoordSet(coords.to(device), shape, int(coords[:, 0].max()) + 1)  # type: ignore[arg-type]


def make_map(variant: str, sites: int = 100, shape: tuple[int, int, int] = (8, 8, 8), device: str = DEV) -> KernelMap:
    """A map of ``variant`` on random sites of two batches of a ``shape`` grid.

    ``inverse`` is the reversed map of a stride-2 conv (what an inverse conv runs on); ``isolated`` maps
    onto output sites of which many have no input in reach (rows of -1 only); ``transposed`` (2x2x2, stride 2)
    gives each output one input, ``overlapping_transposed`` (3x3x3, stride 2) several.
    """
    src = CoordSet(random_coords(sites, shape, 2).to(device), shape, 2)
    if variant in ("subm", "isolated"):
        geom = submanifold_geometry((3, 3, 3), (1, 1, 1))
        out = src if variant == "subm" else CoordSet(random_coords(sites, shape, 2).to(device), shape, 2)
        return build_kernel_map(src, geom, shape, out=out, kind="subm")[0]
    if variant in ("strided", "inverse"):
        geom = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))
        kmap = build_kernel_map(src, geom, geom.output_shape(shape))[0]
        return kmap.reversed() if variant == "inverse" else kmap
    if variant in ("transposed", "overlapping_transposed"):
        size, pad = (2, 0) if variant == "transposed" else (3, 1)
        geom = ConvGeometry((size,) * 3, (2, 2, 2), (pad,) * 3, (1, 1, 1), transposed=True)
        return build_kernel_map(src, geom, geom.output_shape(shape), kind="transposed")[0]
    raise ValueError(variant)


def operands(op: Op, kmap: KernelMap, c_in: int, c_out: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random ``(a, b)`` of ``op`` on ``kmap`` (weights scaled to keep sums near unit size)."""
    dev = kmap.device
    x = torch.randn(kmap.num_in, c_in, device=dev).to(dtype)
    w = (torch.randn(kmap.kernel_volume, c_in, c_out, device=dev) / (c_in * 4) ** 0.5).to(dtype)
    g = torch.randn(kmap.num_out, c_out, device=dev).to(dtype)
    return {Op.CONV_FWD: (x, w), Op.CONV_DGRAD: (g, w), Op.CONV_WGRAD: (x, g)}[op]


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every floating tensor from ``torch.empty`` starts as NaN, so rows a kernel fails to write show up."""
    real_empty = torch.empty

    def empty(*args: Any, **kwargs: Any) -> torch.Tensor:
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape
    return float((out.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def check(op: Op, kmap: KernelMap, a: torch.Tensor, b: torch.Tensor, params: dict[str, Any],
          algo: Any = ALGO, reference: Any = EXPLICIT) -> torch.Tensor:
    """Run ``params`` and compare with the reference in float64; returns the result."""
    ref = reference.run(op, reference.default_params(Signature.of(op, a.double(), b.double(), kmap)), a.double(),
                        b.double(), kmap)
    out = algo.run(op, params, a, b, kmap)
    assert out.dtype == a.dtype and out.device == a.device
    err = relative_error(out, ref)
    assert err <= TOLERANCE[a.dtype], f"{op.value} {a.dtype} params={params}: relative error {err:.3g} {seed_note()}"
    return out


def sample_points(op: Op, kmap: KernelMap, a: torch.Tensor, b: torch.Tensor, extra: int) -> Iterator[dict[str, Any]]:
    """The default point and ``extra`` other points drawn at random from the space."""
    sig = Signature.of(op, a, b, kmap)
    assert ALGO.applies_to(sig) is None
    default = ALGO.default_params(sig)
    others = [p for p in ALGO.param_space(sig).points() if p != default]
    yield default
    yield from (others[i] for i in torch.randperm(len(others))[:extra].tolist())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("c_in,c_out", CHANNELS)
@pytest.mark.parametrize("op", CONV_OPS, ids=lambda o: o.value)
def test_matches_explicit(variant: str, c_in: int, c_out: int, op: Op, poisoned: None) -> None:
    kmap = make_map(variant)
    a, b = operands(op, kmap, c_in, c_out, torch.float32)
    for params in sample_points(op, kmap, a, b, extra=1):
        check(op, kmap, a, b, params)


@pytest.mark.parametrize("variant,c_in,c_out,dtype", [("subm", 100, 100, torch.float32),
                                                       ("inverse", 37, 100, torch.float16),
                                                       ("transposed", 100, 5, torch.bfloat16)], ids=str)
@pytest.mark.parametrize("op", CONV_OPS, ids=lambda o: o.value)
def test_unaligned_wide_channels(variant: str, c_in: int, c_out: int, dtype: torch.dtype, op: Op,
                                 poisoned: None) -> None:
    """100 channels (masked tails past 64 and 96 within 128-wide tiles), in every dtype and the variants the
    other tests give half types least."""
    kmap = make_map(variant, sites=60)
    a, b = operands(op, kmap, c_in, c_out, dtype)
    for params in sample_points(op, kmap, a, b, extra=1):
        check(op, kmap, a, b, params)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant,c_in,c_out", [("subm", 3, 17), ("strided", 17, 64)])
@pytest.mark.parametrize("op", CONV_OPS, ids=lambda o: o.value)
def test_half_types(dtype: torch.dtype, variant: str, c_in: int, c_out: int, op: Op, poisoned: None) -> None:
    kmap = make_map(variant)
    a, b = operands(op, kmap, c_in, c_out, dtype)
    for params in sample_points(op, kmap, a, b, extra=1):
        check(op, kmap, a, b, params)


@pytest.mark.parametrize("variant", ["subm", "isolated", "strided"])
@pytest.mark.parametrize("c_in,c_out", [(3, 17), (17, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_epilogue_matches_explicit(variant: str, c_in: int, c_out: int, dtype: torch.dtype, poisoned: None) -> None:
    """Bias and ReLU fused into the forward kernels' store (packed, gathered, sorted and unsorted forms) equal
    the explicit algorithm's epilogue, on rows with and without inputs."""
    kmap = make_map(variant)
    x, w = operands(Op.CONV_FWD, kmap, c_in, c_out, dtype)
    bias = torch.randn(c_out, device=kmap.device).to(dtype)
    points = ALGO.param_space(Signature.of(Op.CONV_FWD, x, w, kmap)).points()
    forms = {(p["mode"], p.get("sorted")): p for p in points}  # 3 channels: packed; 17: gathered too
    for params in forms.values():
        for b, relu in ((bias, False), (None, True), (bias, True)):
            ref = EXPLICIT.run(Op.CONV_FWD, {"batch_below": 0}, x.double(), w.double(), kmap,
                               None if b is None else b.double(), relu)
            out = ALGO.run(Op.CONV_FWD, params, x, w, kmap, b, relu)
            err = relative_error(out, ref)
            assert err <= TOLERANCE[dtype], f"bias={b is not None} relu={relu} {params}: {err:.3g} {seed_note()}"
            assert not relu or bool((out >= 0).all())


@pytest.mark.parametrize("variant", ["subm", "isolated", "strided", "inverse", "overlapping_transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_offset_groups_match_explicit(variant: str, dtype: torch.dtype, poisoned: None) -> None:
    """Forward (with bias and ReLU) and input gradient in 2 and 3 column-group passes equal the explicit
    algorithm: the first pass writes every row, the later ones add into theirs, the last applies ReLU; on fp16
    values near the smallest subnormal they equal one pass (partial sums in fp32)."""
    kmap = make_map(variant, sites=200, shape=(16, 16, 16))  # sparse: later passes hold blocks without offsets
    for op in (Op.CONV_FWD, Op.CONV_DGRAD):
        a, b = operands(op, kmap, 17, 20, dtype)
        sig = Signature.of(op, a, b, kmap)
        points = [p for p in ALGO.param_space(sig).points() if p["offset_groups"] > 1]
        assert {p["offset_groups"] for p in points} == {2, 3}
        if variant == "subm":  # the input gradient reads these layouts mirrored
            idle = block_offsets(kmap, True, 64, 2, 3).count  # offsets 18-26 (the centre, 13, is in group 1)
            assert int(idle.min()) == 0, "a later pass must have blocks that skip their rows"
        for params in (points[0], points[-1]):  # two groups at the smallest tile, three at the largest
            check(op, kmap, a, b, params)
            if dtype == torch.float16:  # results near fp16's smallest values: partial sums must stay in fp32
                tiny = a * 2 ** -21
                one_pass = ALGO.run(op, {**params, "offset_groups": 1}, tiny, b, kmap)
                err = relative_error(ALGO.run(op, params, tiny, b, kmap), one_pass.double())
                assert err <= 1e-2, f"{params} on tiny values: {err:.3g} from one pass {seed_note()}"
            if op == Op.CONV_FWD:
                bias = torch.randn(20, device=kmap.device).to(dtype)
                ref = EXPLICIT.run(op, {"batch_below": 0}, a.double(), b.double(), kmap, bias.double(), True)
                err = relative_error(ALGO.run(op, params, a, b, kmap, bias, True), ref)
                assert err <= TOLERANCE[dtype], f"{params}: {err:.3g} {seed_note()}"


@pytest.mark.parametrize("op", [Op.CONV_FWD, Op.CONV_DGRAD], ids=lambda o: o.value)
def test_offset_groups_past_62_offsets(op: Op, poisoned: None) -> None:
    """A 5x5x5 submanifold map (125 offsets, groups past the mask's 62 exact bits) in 2 and 3 passes."""
    src = CoordSet(random_coords(80, (7, 7, 7), 1).to(DEV), (7, 7, 7), 1)
    kmap = build_kernel_map(src, submanifold_geometry((5, 5, 5), (1, 1, 1)), (7, 7, 7), out=src, kind="subm")[0]
    a, b = operands(op, kmap, 16, 16, torch.float32)
    points = [p for p in ALGO.param_space(Signature.of(op, a, b, kmap)).points() if p["offset_groups"] > 1]
    for groups in (2, 3):
        check(op, kmap, a, b, next(p for p in points if p["offset_groups"] == groups))


def test_offset_groups_of_half_types_keep_their_workspace_within_the_operands() -> None:
    """Half types keep the partial sums of several passes in an fp32 workspace: offered only where it is no
    larger than the operands (a 16 -> 256 layer's would be 2x them); fp32 keeps them in the output."""
    def groups(c_in: int, c_out: int, dtype: torch.dtype) -> set[int]:
        sig = Signature(Op.CONV_FWD, 10**6, 10**6, c_in, c_out, 27, dtype, "cpu", 6 * 10**6)
        return {p["offset_groups"] for p in ALGO.param_space(sig).points()}

    assert groups(16, 256, torch.float16) == {1} and groups(16, 256, torch.float32) == {1, 2, 3}
    assert groups(128, 128, torch.float16) == groups(256, 128, torch.bfloat16) == {1, 2, 3}


def test_estimate_ranks_exact_fp32_points_as_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact fp32 (FMA) propagation: 64 x 64 tiles in three offset groups were the fastest points of every sweep
    on an H100 and an H200 (the scan at 0.1 m, 128 and 256 channels, forward and input gradient, bench/README.md
    runs V and W); the cost estimate ranks them first, so a first tuning round times them."""
    monkeypatch.setattr(implicit_gemm, "device_limits", lambda device_type: (132, 227 * 1024))
    for c in (128, 256):
        for op in (Op.CONV_FWD, Op.CONV_DGRAD):
            sig = Signature(op, 125655, 125655, c, c, 27, torch.float32, "cuda", 791727)
            best = min(ALGO.param_space(sig).points(), key=lambda p: implicit_gemm.estimate_seconds(sig, p))
            assert (best["BLOCK_M"], best["BLOCK_N"], best["offset_groups"]) == (64, 64, 3), best


@pytest.mark.parametrize("c_in,c_out", [(16, 8), (3, 5)])
@pytest.mark.parametrize("op", CONV_OPS, ids=lambda o: o.value)
def test_every_point(c_in: int, c_out: int, op: Op, poisoned: None) -> None:
    """Every point of the space (gather and packed forms, FMA tiles, chunkings, both reductions) is right; the
    passes of offset groups are tested by test_offset_groups_match_explicit."""
    kmap = make_map("subm", sites=64)
    a, b = operands(op, kmap, c_in, c_out, torch.float32)
    points = [p for p in ALGO.param_space(Signature.of(op, a, b, kmap)).points() if p.get("offset_groups", 1) == 1]
    assert 4 <= len(points) <= 48
    for params in points:
        check(op, kmap, a, b, params)


def test_space_follows_channels() -> None:
    """Tiles never wider than the channels' power of two (16 at least); packed forms only under 32 reduction
    channels, gathered tiles only from 16; offset groups only over mask-sorted rows."""
    kmap = make_map("subm", sites=64)
    wide = pow2_at_least
    for c_in, c_out in [(3, 64), (64, 256), (17, 100), (128, 1)]:
        for op in CONV_OPS:
            a, b = operands(op, kmap, c_in, c_out, torch.float16)
            points = list(ALGO.param_space(Signature.of(op, a, b, kmap)).points())
            kernels = {tuple((k, v) for k, v in p.items() if k != "offset_groups") for p in points}
            assert 4 <= len(kernels) <= 48  # offset groups run the kernel of their point in more passes
            for p in points:
                if op == Op.CONV_WGRAD:
                    assert p["BLOCK_N"] <= max(16, wide(c_out))
                    assert p["mode"] in ("pairs", "rows") and p["BLOCK_M"] <= max(16, wide(c_in)) or \
                        p["mode"] == "packed" and c_in < 32
                    continue
                c_red, c_n = (c_in, c_out) if op == Op.CONV_FWD else (c_out, c_in)
                assert p["BLOCK_N"] <= max(16, wide(c_n))
                assert p["mode"] == "gather" and c_red >= 16 and p["BLOCK_K"] <= wide(c_red) or \
                    p["mode"] == "packed" and c_red < 32
                assert p["offset_groups"] == 1 or p["sorted"] and p["offset_groups"] in (2, 3)


def test_deterministic_wgrad_workspaces_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deterministic weight gradient's workspace (one fp32 K x C_in x C_out slice per chunk) stays within
    the operands' size: on an H100-sized GPU (short chunks) a large layer loses the deterministic forms of its
    shortest chunks, a small one none."""
    monkeypatch.setattr(implicit_gemm, "device_limits", lambda device_type: (132, 227 * 1024))

    def forms(sig: Signature, deterministic: bool) -> set[tuple]:
        return {(p["mode"], p["BLOCK_M"], p["BLOCK_N"], p["chunk"]) for p in ALGO.param_space(sig).points()
                if p["deterministic"] == deterministic}

    big = Signature(Op.CONV_WGRAD, 28000, 28000, 128, 128, 27, torch.float16, DEV, 400_000)
    assert forms(big, True) < forms(big, False)
    small = Signature(Op.CONV_WGRAD, 3000, 3000, 32, 32, 27, torch.float16, DEV, 40_000)
    assert forms(small, True) == forms(small, False)
    wide = Signature(Op.CONV_WGRAD, 3000, 3000, 512, 512, 27, torch.float16, DEV, 40_000)  # one slice: 28 MB
    assert not forms(wide, True) and ALGO.default_params(wide)["deterministic"] is False
    assert ALGO.default_params(big)["deterministic"]  # the untuned point stays deterministic where it can
    every_form = forms(big, False)
    torch.use_deterministic_algorithms(True)
    try:  # nothing else is allowed: every workspace is
        assert forms(wide, True) and ALGO.default_params(wide)["deterministic"]
        assert forms(big, True) == every_form and not forms(big, False)
    finally:
        torch.use_deterministic_algorithms(False)


def count_reductions(module: Any, monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """One entry per deterministic reduction (``segment_sum``) that ``module`` runs from now on."""
    calls: list[None] = []
    real = module.segment_sum

    def spy(*args: Any) -> torch.Tensor:
        calls.append(None)
        return real(*args)

    monkeypatch.setattr(module, "segment_sum", spy)
    return calls


def test_deterministic_wgrad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic mode gives bit-identical gradients through the workspace reduction, an atomic point skips
    it; with torch's deterministic flag no atomic point is offered and an atomic point runs the reduction."""
    kmap = make_map("subm")
    a, b = operands(Op.CONV_WGRAD, kmap, 17, 16, torch.float32)
    sig = Signature.of(Op.CONV_WGRAD, a, b, kmap)
    points = list(ALGO.param_space(sig).points())
    assert any(not p["deterministic"] for p in points)
    det = next(p for p in points if p["deterministic"] and p["mode"] == "pairs")
    atomic = {**det, "deterministic": False}
    reductions = count_reductions(implicit_gemm, monkeypatch)
    first = ALGO.run(Op.CONV_WGRAD, det, a, b, kmap)
    assert torch.equal(first, ALGO.run(Op.CONV_WGRAD, det, a, b, kmap)) and len(reductions) == 2
    torch.testing.assert_close(ALGO.run(Op.CONV_WGRAD, atomic, a, b, kmap), first)
    assert len(reductions) == 2, "an atomic point reduces with atomics"
    torch.use_deterministic_algorithms(True)
    try:
        assert all(p["deterministic"] for p in ALGO.param_space(sig).points())
        assert torch.equal(first, ALGO.run(Op.CONV_WGRAD, atomic, a, b, kmap))
        assert len(reductions) == 3, "under the flag an atomic point runs the deterministic reduction"
    finally:
        torch.use_deterministic_algorithms(False)


def test_applies_to(monkeypatch: pytest.MonkeyPatch) -> None:
    sig = Signature(Op.CONV_FWD, 10, 10, 16, 16, 27, torch.float32, "cuda", 50)
    assert ALGO.applies_to(sig) is None
    assert "fp64" in ALGO.applies_to(Signature(Op.CONV_FWD, 10, 10, 16, 16, 27, torch.float64, "cuda", 50))
    assert "int32" in ALGO.applies_to(Signature(Op.CONV_FWD, 10, 10, 16, 16, 27, torch.int32, "cuda", 50))
    assert "does not implement" in ALGO.applies_to(Signature(Op.DW_FWD, 10, 10, 16, 16, 27, torch.float32,
                                                             "cuda", 50))
    cpu = Signature(Op.CONV_FWD, 10, 10, 16, 16, 27, torch.float16, "cpu", 50)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET" in ALGO.applies_to(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    interpreted = common.kernels_interpreted(warpsparse.algorithms.triton.conv_kernels.propagate_gather_kernel)
    assert (ALGO.applies_to(cpu) is None) == interpreted


def test_bad_operands() -> None:
    kmap = make_map("subm", sites=40)
    x, w = operands(Op.CONV_FWD, kmap, 4, 8, torch.float32)
    params = ALGO.default_params(Signature.of(Op.CONV_FWD, x, w, kmap))
    with pytest.raises(ValueError, match="features"):
        ALGO.run(Op.CONV_FWD, params, x[:-1], w, kmap)
    with pytest.raises(ValueError, match="weight"):
        ALGO.run(Op.CONV_FWD, params, x, w[:, :3], kmap)
    with pytest.raises(ValueError, match="grad_out"):
        ALGO.run(Op.CONV_WGRAD, params, x, x[:-1], kmap)


def test_empty_input() -> None:
    """No input sites: every output row is zero; no pairs: a zero weight gradient."""
    shape = (4, 4, 4)
    src = CoordSet(torch.zeros(0, 4, dtype=torch.int32, device=DEV), shape, 1)
    out = CoordSet(random_coords(10, shape).to(DEV), shape, 1)
    kmap = build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), shape, out=out)[0]
    x, w = operands(Op.CONV_FWD, kmap, 3, 5, torch.float32)
    y = ALGO.run(Op.CONV_FWD, ALGO.default_params(Signature.of(Op.CONV_FWD, x, w, kmap)), x, w, kmap)
    assert y.shape == (10, 5) and not y.any()
    g = torch.randn(10, 5, device=DEV)
    dw = ALGO.run(Op.CONV_WGRAD, ALGO.default_params(Signature.of(Op.CONV_WGRAD, x, g, kmap)), x, g, kmap)
    assert dw.shape == (27, 3, 5) and not dw.any()


# ---------------------------------------------------------------- GPU, at real size on the scan


def scan_set(voxel: float = 0.1) -> CoordSet:
    """The bundled scan voxelized at ``voxel`` m (floor of the offset from the minimum, unique), on CUDA."""
    xyz = torch.from_numpy(np.load(SCAN)["pc"][:, :3].astype(np.float32))
    cells = torch.unique(torch.floor((xyz - xyz.min(dim=0).values) / voxel).long(), dim=0)
    coords = torch.cat([torch.zeros(len(cells), 1, dtype=torch.long), cells], dim=1).int()
    return coord_set(coords, "cuda")


def scan_map(variant: str) -> KernelMap:
    src = scan_set()
    shape = src.spatial_shape
    if variant == "subm":
        return build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), shape, out=src, kind="subm")[0]
    if variant in ("strided", "inverse"):
        geom = ConvGeometry((2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1))
        kmap = build_kernel_map(src, geom, geom.output_shape(shape))[0]
        return kmap.reversed() if variant == "inverse" else kmap
    geom = ConvGeometry((2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), transposed=True)
    return build_kernel_map(src, geom, geom.output_shape(shape), kind="transposed")[0]


@pytest.mark.parametrize("variant", ["subm", "strided", "transposed", "inverse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c_in,c_out", [(3, 32), (64, 64), (17, 100)])
@pytest.mark.parametrize("op", CONV_OPS, ids=lambda o: o.value)
@pytest.mark.gpu
@needs_cuda
def test_gpu_scan(variant: str, dtype: torch.dtype, c_in: int, c_out: int, op: Op, poisoned: None) -> None:
    kmap = scan_map(variant)
    a, b = operands(op, kmap, c_in, c_out, dtype)
    for params in sample_points(op, kmap, a, b, extra=2):
        check(op, kmap, a, b, params)


@pytest.mark.gpu
@needs_cuda
def test_gpu_deterministic_and_tf32() -> None:
    """Deterministic weight gradients are bit-identical on the GPU; fp32 is exact unless TF32 is allowed."""
    kmap = scan_map("subm")
    a, b = operands(Op.CONV_WGRAD, kmap, 64, 64, torch.float16)
    for p in ALGO.param_space(Signature.of(Op.CONV_WGRAD, a, b, kmap)).points():
        if p["deterministic"]:
            assert torch.equal(ALGO.run(Op.CONV_WGRAD, p, a, b, kmap), ALGO.run(Op.CONV_WGRAD, p, a, b, kmap)), p
    x = torch.randn(4, 4, device="cuda")
    allowed = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert common.dot_precision(x) == "ieee"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert common.dot_precision(x) == "tf32"
        assert common.dot_precision(x.half()) == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("variant", ["subm", "strided"])
def test_gpu_epilogue(variant: str, poisoned: None) -> None:
    """The fused bias and ReLU on the scan, every forward form, against the explicit epilogue."""
    kmap = scan_map(variant)
    x, w = operands(Op.CONV_FWD, kmap, 64, 64, torch.float16)
    bias = torch.randn(64, device="cuda").half()
    ref = EXPLICIT.run(Op.CONV_FWD, {"batch_below": 0}, x.double(), w.double(), kmap, bias.double(), True)
    forms = {(p["mode"], p.get("sorted")): p for p in ALGO.param_space(Signature.of(Op.CONV_FWD, x, w, kmap)).points()}
    for params in forms.values():
        err = relative_error(ALGO.run(Op.CONV_FWD, params, x, w, kmap, bias, True), ref)
        assert err <= TOLERANCE[torch.float16], f"{params}: {err:.3g} {seed_note()}"
