"""The dense oracle on CUDA: every registered algorithm (by name, where it applies) and AUTO, in float32 and
float16, against a float64 CPU reference computed from the same rounded inputs."""
from __future__ import annotations

import pytest
import torch

import warpsparse
import warpsparse.nn as wnn
from warpsparse.algorithms import registry
from warpsparse.algorithms.base import Op, Signature
from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry
from warpsparse.nn.functional import sparse_avg_pool3d, sparse_max_pool3d
from warpsparse.nn.functional.kernel_maps import conv_map, inverse_map
from warpsparse.nn.functional.sparse_conv import warp_conv_map
from warpsparse.tuner.search import BUDGET_ENV

from oracle import (assert_close, assert_sites, check_conv, dense_conv, dense_pool, fresh_seed,  # noqa: F401
                    random_input, reached_sites, reference_param)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = "cuda"
DTYPES = [torch.float32, torch.float16]
CONV_LAYERS = ["subm", "conv", "transposed", "inverse", "strided", "transposed_to_output"]
CHANNELS = [(3, 16), (32, 48)]


def _names(op: Op) -> list[str]:
    return [a.name for a in registry.algorithms_for(op)]


@pytest.fixture(autouse=True)
def short_tuning(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Named algorithms: a short tuning budget (their points are checked by the tuner against the reference);
    AUTO runs with the library's default budget."""
    algo = request.node.callspec.params.get("algo") if hasattr(request.node, "callspec") else None
    if algo == "auto":
        monkeypatch.delenv(BUDGET_ENV, raising=False)
    else:
        monkeypatch.setenv(BUDGET_ENV, "50")


def _skip_unless_applies(algo: str, kmap, cin: int, cout: int, dtype: torch.dtype, depthwise: bool = False) -> None:
    """Skip when the named algorithm cannot run one of the three ops of this call."""
    if algo == "auto":
        return
    alg = registry.get(algo)
    n_in, n_out, k = kmap.num_in, kmap.num_out, kmap.kernel_volume
    x = torch.empty(n_in, cin, dtype=dtype, device=CUDA)
    g = torch.empty(n_out, cout, dtype=dtype, device=CUDA)
    w = torch.empty((k, cin) if depthwise else (k, cin, cout), dtype=dtype, device=CUDA)
    ops = (Op.DW_FWD, Op.DW_DGRAD, Op.DW_WGRAD) if depthwise else (Op.CONV_FWD, Op.CONV_DGRAD, Op.CONV_WGRAD)
    for op, a, b in zip(ops, (x, g, x), (w, w, g)):
        why = alg.applies_to(Signature.of(op, a, b, kmap))
        if why is not None:
            pytest.skip(f"{algo} does not apply to {op.value}: {why}")


def _layer(name: str, cin: int, cout: int, algo: str) -> torch.nn.Module:
    kw = dict(fwd_algo=algo, bwd_algo=algo)
    return {
        "subm": lambda: wnn.SubMConv3d(cin, cout, 3, relu=True, **kw),
        "conv": lambda: wnn.SparseConv3d(cin, cout, 3, 2, 1, **kw),
        "transposed": lambda: wnn.SparseConvTranspose3d(cin, cout, 3, 2, 1, relu=True, **kw),
        "inverse": lambda: wnn.SparseInverseConv3d(cin, cout, 3, "down", **kw),
        "strided": lambda: wnn.SpatiallySparseConv(cin, cout, 3, 2, **kw),
        "transposed_to_output": lambda: wnn.SpatiallySparseConv(cin, cout, 3, 2, transposed=True, **kw),
    }[name]()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layer, cin, cout",
                         [(name, *CHANNELS[i % len(CHANNELS)]) for i, name in enumerate(CONV_LAYERS)])
@pytest.mark.parametrize("algo", [*_names(Op.CONV_FWD), "auto"])
def test_gpu_conv(algo, layer, cin, cout, dtype, no_fallback):
    batch, shape = 2, (16, 14, 12)
    fine = random_input(500 * batch, cin, shape=shape, batch=batch, dtype=dtype, device=CUDA)
    x = fine.tensor()
    inp = fine
    output = None
    if layer == "inverse":  # input: the output of a strided conv stored under "down"
        down = wnn.SparseConv3d(2, cin, 3, 2, 1, indice_key="down", fwd_algo="explicit_gemm").to(CUDA, dtype)
        y = down(x.replace(torch.randn(x.num_points, 2, device=CUDA, dtype=dtype)))
        inp = random_input(0, cin, shape=y.spatial_shape, batch=batch, dtype=dtype, device=CUDA, coords=y.coords)
        x = y.replace(inp.feats)
        kmap, _ = inverse_map(x, "down", (3, 3, 3))
    elif layer == "transposed_to_output":  # input: a coarse level; output: the fine sites
        output = x
        coarse = wnn.SpatiallySparseConv(cin, cin, 2, 2, fwd_algo="explicit_gemm").to(CUDA, dtype)(x)
        inp = random_input(0, cin, shape=coarse.spatial_shape, batch=batch, dtype=dtype, device=CUDA,
                           coords=coarse.coords)
        x = coarse.replace(inp.feats)
        kmap, _ = warp_conv_map(x, 3, 2, 1, True, False, output)
    elif layer == "subm":
        kmap, _ = conv_map(x, submanifold_geometry((3, 3, 3), (1, 1, 1)), "subm")
    elif layer == "conv":
        kmap, _ = conv_map(x, ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1)), "conv")
    elif layer == "transposed":
        kmap, _ = conv_map(x, ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), transposed=True), "transposed")
    else:
        kmap, _ = warp_conv_map(x, 3, 2, 1, False, False, None)
    _skip_unless_applies(algo, kmap, cin, cout, dtype)
    m = _layer(layer, cin, cout, algo).to(CUDA, dtype)
    w, b = reference_param(m.weight), reference_param(m.bias)
    out = m(x) if output is None else m(x, output)
    assert out.dtype == dtype and out.device.type == "cuda"
    k, s, p = {"subm": (3, 1, 1), "conv": (3, 2, 1), "transposed": (3, 2, 1), "inverse": (3, 2, 1),
               "strided": (3, 2, 1), "transposed_to_output": (3, 2, 1)}[layer]
    transposed = layer in ("transposed", "inverse", "transposed_to_output")
    if layer in ("conv", "transposed"):
        sites, _ = reached_sites(inp, k, s, p, transposed=transposed)
        assert_sites(out.coords, sites, f"{layer} output sites on CUDA")
    grid = dense_conv(inp.dense(), w, k, s, p, transposed=transposed, bias=b, cover=out.spatial_shape)
    check_conv(out, grid, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], f"{algo} {layer} {dtype}", dtype,
               relu=layer in ("subm", "transposed"))  # built with the fused ReLU


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("algo", [*_names(Op.DW_FWD), "auto"])
def test_gpu_depthwise(algo, stride, dtype, no_fallback):
    c = 32
    inp = random_input(1000, c, shape=(16, 14, 12), batch=2, dtype=dtype, device=CUDA)
    x = inp.tensor()
    kmap, _ = warp_conv_map(x, 3, stride, 1, False, False, None)
    _skip_unless_applies(algo, kmap, c, c, dtype, depthwise=True)
    m = wnn.SparseDepthwiseConv3d(c, 3, stride, fwd_algo=algo, bwd_algo=algo).to(CUDA, dtype)
    w, b = reference_param(m.weight), reference_param(m.bias)
    out = m(x)
    grid = dense_conv(inp.dense(), w, 3, stride, 1, bias=b, depthwise=True, cover=out.spatial_shape)
    check_conv(out, grid, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], f"depthwise {algo} {dtype}",
               dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduce", ["max", "avg"])
def test_gpu_pool(reduce, dtype):
    inp = random_input(800, 8, shape=(12, 12, 12), batch=2, dtype=dtype, device=CUDA, distinct=True)
    out = (sparse_max_pool3d if reduce == "max" else sparse_avg_pool3d)(inp.tensor(), 3, 2, 1)
    assert out.device.type == "cuda"
    sites, shape = reached_sites(inp, 3, 2, 1)
    assert_sites(out.coords, sites, f"{reduce} pool sites on CUDA")
    ref = dense_pool(inp.dense(), inp.occupancy(), 3, 2, 1, 1, reduce, shape)
    check_conv(out, ref, [(inp.feats, inp.ref_feats)], f"{reduce} pool CUDA {dtype}", dtype)


def test_gpu_max_pool_float64_and_deterministic_backward():
    """fp64 pools on CUDA take the exact gather path; deterministic mode scatters the Triton arg-max rows with
    PyTorch and gives the same gradient as the atomic kernel."""
    inp = random_input(600, 5, shape=(10, 10, 10), batch=2, dtype=torch.float64, device=CUDA, distinct=True)
    out = sparse_max_pool3d(inp.tensor(), 2, 2)
    ref = sparse_max_pool3d(inp.tensor().to("cpu"), 2, 2)
    assert torch.equal(out.features.cpu(), ref.features)
    grads = []
    for deterministic in (False, True):
        feats = inp.feats.detach().float().requires_grad_(True)
        x = warpsparse.SparseTensor(feats, inp.coords.to(CUDA), inp.shape, 2)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        try:
            sparse_max_pool3d(x, 2, 2).features.sum().backward()
        finally:
            torch.use_deterministic_algorithms(False)
        grads.append(feats.grad)
    assert torch.equal(grads[0], grads[1])


def test_gpu_autocast_and_tensor_moves():
    """autocast(float16) on CUDA; .to("cuda") and back keeps sites; voxelize on CUDA equals the CPU result."""
    inp = random_input(300, 16, dtype=torch.float32)
    x = inp.tensor().to(CUDA)
    assert x.device.type == "cuda" and x.coords.device.type == "cuda"
    assert torch.equal(x.coords.cpu(), inp.coords) and x.spatial_shape == inp.shape
    m = wnn.SubMConv3d(16, 16, 3).to(CUDA)
    with torch.autocast("cuda", dtype=torch.float16):
        out = m(x)
    assert out.dtype == torch.float16
    back = out.to("cpu")
    assert back.device.type == "cpu" and torch.equal(back.coords, inp.coords)
    points = torch.rand(2000, 5) * 10
    gpu = warpsparse.voxelize(points.to(CUDA), 0.5, reduce="mean")
    cpu = warpsparse.voxelize(points, 0.5, reduce="mean")
    assert torch.equal(gpu.coords.cpu(), cpu.coords)
    assert_close(gpu.features.cpu(), cpu.features, "voxelize on CUDA", torch.float32)


def test_gpu_empty_tensor():
    x = warpsparse.SparseTensor(torch.zeros(0, 4, device=CUDA, requires_grad=True),
                                torch.zeros(0, 4, dtype=torch.int32, device=CUDA), (8, 8, 8), 2)
    for m in (wnn.SubMConv3d(4, 8, 3), wnn.SparseConv3d(4, 8, 3, 2), wnn.SpatiallySparseConv(4, 8, 3, 2)):
        out = m.to(CUDA)(x)
        assert out.num_points == 0 and out.device.type == "cuda"
        out.features.sum().backward()
        assert not m.weight.grad.any()


def test_gpu_unet_step_is_bit_identical_when_deterministic() -> None:
    """Under ``torch.use_deterministic_algorithms(True)`` two forward+backward passes of the demo UNet (AUTO,
    fp16, the scan at 0.2 m: strided, inverse and submanifold convs, BatchNorm) give the same output and
    parameter gradients, bit for bit."""
    from warpsparse.demo import SparseUNet, load_scan

    scan = load_scan(0.2, device=CUDA)
    x = scan.replace(scan.features.half())
    model = SparseUNet(3).to(CUDA).half()

    def step() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.features.float().square().sum().backward()
        return [out.features.detach().clone(), *(p.grad.clone() for p in model.parameters())]

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        step()  # tunes every signature
        first, second = step(), step()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
