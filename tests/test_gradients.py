"""Gradients: torch.autograd.gradcheck on small cases of every op, half/float dtypes on CPU, autocast, and
empty tensors (N=0) through every op with empty outputs and zero gradients."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

import warpsparse
import warpsparse.nn as wnn
from warpsparse.nn.functional import (global_avg_pool, global_max_pool, sparse_avg_pool3d, sparse_conv3d,
                                      sparse_inverse_conv3d, sparse_max_pool3d, spatially_sparse_conv,
                                      spatially_sparse_depthwise_conv, subm_conv3d)
from warpsparse.nn.functional.sparse_conv import warp_conv_map
from warpsparse.nn.functional.sparse_conv_depth import sparse_depthwise_conv3d

from oracle import (EXPLICIT, EXPLICIT_DW, check_conv, dense_conv, dense_pool, densify, fresh_seed,  # noqa: F401
                    one_thread, quick_tuning, random_coords, random_input, reference_param)

SHAPE = (5, 5, 5)


def _small(channels: int = 2, num: int = 14, batch: int = 2) -> warpsparse.SparseTensor:
    inp = random_input(num * batch, channels, shape=SHAPE, batch=batch)
    return inp.tensor()


def _param(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _gradcheck(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_subm():
    x = _small()
    _gradcheck(lambda f, w, b: subm_conv3d(x.replace(f), w, b, 3, **EXPLICIT).features,
               x.features.detach().requires_grad_(), _param(27, 2, 3), _param(3))


@pytest.mark.parametrize("transposed", [False, True])
def test_gradcheck_sparse_conv(transposed):
    x = _small()
    _gradcheck(lambda f, w, b: sparse_conv3d(x.replace(f), w, b, (2, 3, 1), 2, (0, 1, 0), (1, 1, 2), transposed,
                                             **EXPLICIT).features,
               x.features.detach().requires_grad_(), _param(6, 2, 3), _param(3))


def test_gradcheck_inverse():
    x = _small()
    y = sparse_conv3d(x, _param(8, 2, 3).detach(), None, 2, 2, indice_key="k", **EXPLICIT)
    _gradcheck(lambda f, w, b: sparse_inverse_conv3d(y.replace(f), w, b, 2, "k", **EXPLICIT).features,
               torch.randn(y.num_points, 3, dtype=torch.float64, requires_grad=True), _param(8, 3, 2), _param(2))


@pytest.mark.parametrize("mode", ["strided", "generative", "transposed", "transposed_to_output"])
def test_gradcheck_spatially_sparse_conv(mode):
    x = _small()
    if mode == "transposed_to_output":
        fine = x
        x = spatially_sparse_conv(fine, _param(8, 2, 2).detach(), 2, 2, **EXPLICIT)
        kw = dict(stride=2, transposed=True, output_spatially_sparse_tensor=fine)
    else:
        kw = {"strided": dict(stride=2), "generative": dict(generative=True),
              "transposed": dict(stride=2, transposed=True)}[mode]
    _gradcheck(lambda f, w, b: spatially_sparse_conv(x.replace(f), w, 3, bias=b, **kw, **EXPLICIT).features,
               x.features.detach().requires_grad_(), _param(27, 2, 3), _param(3))


@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck_depthwise(stride):
    x = _small(3)
    _gradcheck(lambda f, w, b: sparse_depthwise_conv3d(x.replace(f), w, b, 3, stride, **EXPLICIT_DW).features,
               x.features.detach().requires_grad_(), _param(27, 3), _param(3))
    kmap, dst = warp_conv_map(x, (3, 1, 3), stride, 1, False, False, None)
    _gradcheck(lambda f, w: spatially_sparse_depthwise_conv(f, w, kmap, dst.num_points, **EXPLICIT_DW),
               x.features.detach().requires_grad_(), _param(9, 3))


def _gradgradcheck(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("case", ["subm_relu", "strided", "transposed", "depthwise"])
def test_gradgradcheck(case):
    """Gradients of gradients (create_graph=True: gradient penalties, torch.func) against finite differences."""
    x = _small(3)
    features = x.features.detach().requires_grad_()
    if case == "depthwise":
        _gradgradcheck(lambda f, w, b: sparse_depthwise_conv3d(x.replace(f), w, b, 3, 2, **EXPLICIT_DW).features,
                       features, _param(27, 3), _param(3))
        return
    conv = {"subm_relu": lambda f, w, b: subm_conv3d(x.replace(f), w, b, 3, relu=True, **EXPLICIT),
            "strided": lambda f, w, b: sparse_conv3d(x.replace(f), w, b, 3, 2, 1, **EXPLICIT),
            "transposed": lambda f, w, b: sparse_conv3d(x.replace(f), w, b, 3, 2, 1, transposed=True,
                                                        **EXPLICIT)}[case]
    _gradgradcheck(lambda f, w, b: conv(f, w, b).features, features, _param(27, 3, 2), _param(2))


def test_torch_func_grad_equals_autograd():
    x = _small(3)
    m = wnn.SparseSequential(wnn.SubMConv3d(3, 2, 3, **EXPLICIT), wnn.SparseMaxPool3d(2)).double()
    params = dict(m.named_parameters())

    def loss(p: dict, f: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(m, p, (x.replace(f),)).features.square().sum()

    grads = torch.func.grad(loss, argnums=(0, 1))(params, x.features.detach())
    features = x.features.detach().requires_grad_()
    loss(params, features).backward()
    for name, p in params.items():
        torch.testing.assert_close(grads[0][name], p.grad)
    torch.testing.assert_close(grads[1], features.grad)


@pytest.mark.parametrize("fn", [sparse_max_pool3d, sparse_avg_pool3d], ids=["max", "avg"])
def test_gradcheck_window_pool(fn):
    x = _small(3, num=20)
    _gradcheck(lambda f: fn(x.replace(f), 3, 2, 1).features, x.features.detach().requires_grad_())


@pytest.mark.parametrize("fn", [global_max_pool, global_avg_pool], ids=["max", "avg"])
def test_gradcheck_global_pool(fn):
    x = _small(3, batch=3)
    _gradcheck(lambda f: fn(x.replace(f)), x.features.detach().requires_grad_())


# ---------------------------------------------------------------- dtypes on CPU

LOW_PRECISION = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("layer", ["subm", "conv", "transposed", "strided"])
def test_conv_dtypes(layer, dtype):
    """Forward and gradients in fp16 / bf16 / fp32 stay in that dtype and match the float64 oracle computed
    from the same (rounded) inputs, within the dtype's tolerance."""
    inp = random_input(60, 8, dtype=dtype)
    m = {"subm": lambda: wnn.SubMConv3d(8, 16, 3, **EXPLICIT),
         "conv": lambda: wnn.SparseConv3d(8, 16, 3, 2, 1, **EXPLICIT),
         "transposed": lambda: wnn.SparseConvTranspose3d(8, 16, 2, 2, **EXPLICIT),
         "strided": lambda: wnn.SpatiallySparseConv(8, 16, 3, 2, **EXPLICIT)}[layer]().to(dtype)
    w, b = reference_param(m.weight), reference_param(m.bias)
    out = m(inp.tensor())
    assert out.dtype == dtype
    geometry = {"subm": (3, 1, 1, False), "conv": (3, 2, 1, False), "transposed": (2, 2, 0, True),
                "strided": (3, 2, 1, False)}[layer]
    k, s, p, t = geometry
    ref = dense_conv(inp.dense(), w, k, s, p, transposed=t, bias=b, cover=out.spatial_shape)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], f"{layer} {dtype}")


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_depthwise_and_pool_dtypes(dtype):
    inp = random_input(60, 8, dtype=dtype, distinct=True)  # no ties for max pooling
    x = inp.tensor()
    m = wnn.SparseDepthwiseConv3d(8, 3, **EXPLICIT_DW).to(dtype)
    w, b = reference_param(m.weight), reference_param(m.bias)
    out = m(x)
    assert out.dtype == dtype
    check_conv(out, dense_conv(inp.dense(), w, 3, 1, 1, bias=b, depthwise=True),
               [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], f"depthwise {dtype}")
    for reduce, fn in (("max", sparse_max_pool3d), ("avg", sparse_avg_pool3d)):
        inp.feats.grad = inp.ref_feats.grad = None
        out = fn(x, 2)
        assert out.dtype == dtype
        ref = dense_pool(inp.dense(), inp.occupancy(), 2, 2, 0, 1, reduce, out.spatial_shape)
        check_conv(out, ref, [(inp.feats, inp.ref_feats)], f"{reduce} pool {dtype}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layer", ["conv", "depthwise"])
def test_autocast_casts_features_and_weight(layer, dtype):
    """Under torch.autocast the conv runs in the autocast dtype (features, weight and bias cast); gradients
    reach the float32 leaves in float32."""
    inp = random_input(60, 8, dtype=torch.float32)
    if layer == "conv":
        m = wnn.SparseConv3d(8, 16, 3, 2, 1, **EXPLICIT)
    else:
        m = wnn.SparseDepthwiseConv3d(8, 3, **EXPLICIT_DW)
    with torch.autocast("cpu", dtype=dtype):
        out = m(inp.tensor())
    assert out.dtype == dtype, f"autocast to {dtype} gave {out.dtype}"
    f, w, b = (reference_param(t.to(dtype)) for t in (inp.feats, m.weight, m.bias))
    grid = densify(f, inp.coords, inp.shape, inp.batch)
    if layer == "conv":
        ref = dense_conv(grid, w, 3, 2, 1, bias=b)
    else:
        ref = dense_conv(grid, w, 3, 1, 1, bias=b, depthwise=True)
    check_conv(out, ref, [(inp.feats, f), (m.weight, w), (m.bias, b)], f"autocast {dtype} {layer}", dtype)
    assert inp.feats.grad.dtype == m.weight.grad.dtype == m.bias.grad.dtype == torch.float32


def test_autocast_leaves_float64_alone():
    """As torch's own ops under autocast: float64 features and weight stay float64 (and are exact)."""
    inp = random_input(40, 4, dtype=torch.float64)
    m = wnn.SubMConv3d(4, 4, 3, **EXPLICIT).double()
    expected = m(inp.tensor()).features
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(inp.tensor()).features
    assert out.dtype == torch.float64 and torch.equal(out, expected)


def test_float32_stays_float32():
    inp = random_input(40, 4, dtype=torch.float32)
    m = wnn.SubMConv3d(4, 4, 3, **EXPLICIT)
    out = m(inp.tensor())
    assert out.dtype == torch.float32
    out.features.sum().backward()
    assert inp.feats.grad.dtype == m.weight.grad.dtype == torch.float32


# ---------------------------------------------------------------- empty tensors

def _empty(channels: int = 3, batch: int = 2) -> warpsparse.SparseTensor:
    feats = torch.zeros(0, channels, dtype=torch.float64, requires_grad=True)
    return warpsparse.SparseTensor(feats, torch.zeros(0, 4, dtype=torch.int32), (6, 6, 6), batch)


Layer = Callable[[warpsparse.SparseTensor], object]


def _layer(name: str) -> tuple[Layer, list[torch.Tensor]]:
    """The op called ``name`` as a callable on a SparseTensor, and the parameters it uses."""
    if name == "inverse":
        down = wnn.SparseConv3d(3, 4, 2, 2, indice_key="e", **EXPLICIT).double()
        up = wnn.SparseInverseConv3d(4, 3, 2, "e", **EXPLICIT).double()
        return (lambda x: up(down(x))), [*down.parameters(), *up.parameters()]
    if name == "spatial_to_given":
        empty_target = _empty(1)
        m = wnn.SpatiallySparseConv(3, 4, 3, 2, **EXPLICIT).double()
        return (lambda x: m(x, empty_target)), list(m.parameters())
    if name == "depthwise_functional":
        w = torch.randn(27, 3, dtype=torch.float64, requires_grad=True)
        return (lambda x: spatially_sparse_depthwise_conv(
            x.features, w, warp_conv_map(x, 3, 1, 1, False, False, None)[0], 0, **EXPLICIT_DW)), [w]
    m = {
        "subm": lambda: wnn.SubMConv3d(3, 4, 3, **EXPLICIT),
        "conv": lambda: wnn.SparseConv3d(3, 4, 3, 2, 1, **EXPLICIT),
        "transposed": lambda: wnn.SparseConvTranspose3d(3, 4, 2, 2, **EXPLICIT),
        "spatial": lambda: wnn.SpatiallySparseConv(3, 4, 3, **EXPLICIT),
        "spatial_strided": lambda: wnn.SpatiallySparseConv(3, 4, 3, 2, **EXPLICIT),
        "spatial_generative": lambda: wnn.SpatiallySparseConv(3, 4, 3, generative=True, **EXPLICIT),
        "spatial_transposed": lambda: wnn.SpatiallySparseConv(3, 4, 3, 2, transposed=True, **EXPLICIT),
        "depthwise": lambda: wnn.SparseDepthwiseConv3d(3, 3, 2, **EXPLICIT_DW),
        "max_pool": lambda: wnn.SparseMaxPool3d(2, 2),
        "avg_pool": lambda: wnn.SparseAvgPool3d(3, 1, 1),
        "global_max": wnn.SparseGlobalMaxPool,
        "global_avg": wnn.SparseGlobalAvgPool,
        "sequential": lambda: wnn.SparseSequential(wnn.SubMConv3d(3, 4, 3, **EXPLICIT), wnn.BatchNorm(4), wnn.ReLU(),
                                                   torch.nn.Linear(4, 2)),
        "dense": wnn.ToDense,
    }[name]().double()
    return m, list(m.parameters())


EMPTY_CASES = ["subm", "conv", "transposed", "inverse", "spatial", "spatial_strided", "spatial_generative",
               "spatial_transposed", "spatial_to_given", "depthwise", "depthwise_functional", "max_pool", "avg_pool",
               "global_max", "global_avg", "sequential", "dense"]


@pytest.mark.parametrize("name", EMPTY_CASES)
def test_empty_tensor_flows_through(name):
    """N=0 gives an empty output (zeros for global pools and dense grids) and zero gradients, never an error."""
    layer, params = _layer(name)
    x = _empty()
    out = layer(x)
    data = out.features if isinstance(out, warpsparse.SparseTensor) else out
    if name.startswith("global"):
        assert data.shape == (2, 3) and not data.any()
    elif name == "dense":
        assert data.shape == (2, 3, 6, 6, 6) and not data.any()
    else:
        assert isinstance(out, torch.Tensor) or out.batch_size == 2
        assert data.shape[0] == 0
    data.sum().backward()
    assert x.features.grad is not None and x.features.grad.shape == (0, 3)
    for p in params:
        assert p.grad is not None and not p.grad.any(), f"{name}: missing or nonzero grad for an empty input"


def test_empty_input_onto_given_sites():
    """An empty input convolved onto non-empty given sites gives the bias there and a zero weight grad."""
    target = warpsparse.SparseTensor(torch.zeros(5, 1, dtype=torch.float64), random_coords(5, (6, 6, 6), 2),
                                     (6, 6, 6), 2)
    m = wnn.SpatiallySparseConv(3, 4, 3, transposed=True, **EXPLICIT).double()
    x = _empty()
    out = m(x, target)
    assert torch.equal(out.coords, target.coords)
    assert torch.equal(out.features, m.bias.detach().expand(5, -1))
    out.features.sum().backward()
    assert not m.weight.grad.any() and torch.equal(m.bias.grad, torch.full((4,), 5.0, dtype=torch.float64))
