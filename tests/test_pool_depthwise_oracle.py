"""Pooling (window and global) and depthwise convs against dense PyTorch references (float64, CPU)."""
from __future__ import annotations

import itertools

import pytest
import torch

import warpsparse
from warpsparse.algorithms.base import Op, Signature
from warpsparse.algorithms.explicit import ExplicitDepthwise
from warpsparse.nn import (SparseAvgPool3d, SparseDepthwiseConv3d, SparseGlobalAvgPool, SparseGlobalMaxPool,
                           SparseMaxPool3d)
from warpsparse.nn.functional import (global_avg_pool, global_max_pool, sparse_avg_pool3d, sparse_max_pool3d,
                                      spatially_sparse_depthwise_conv)
from warpsparse.nn.functional.sparse_conv import warp_conv_map
from warpsparse.nn.functional.sparse_conv_depth import spatially_sparse_depthwise_conv as dw_from_module_path

from oracle import (EXPLICIT_DW, assert_close, assert_sites, check_conv, check_grads, dense_conv,  # noqa: F401
                    dense_pool, fresh_seed, one_thread, quick_tuning, random_input, reached_sites, reference_param,
                    triple, values_at)


def _pool_cases() -> list:
    out = []
    for i, (k, s, p, d) in enumerate(itertools.product([2, 3, (3, 1, 3)], [None, 1, 2], [0, 1], [1, 2])):
        batch, api = (1, 3)[i % 2], ("module", "functional")[(i // 2) % 2]
        out.append(pytest.param(k, s, p, d, batch, api, id=f"k{k}-s{s}-p{p}-d{d}-b{batch}-{api}"))
    return out


@pytest.mark.parametrize("reduce", ["max", "avg"])
@pytest.mark.parametrize("kernel, stride, padding, dilation, batch, api", _pool_cases())
def test_window_pool(kernel, stride, padding, dilation, batch, api, reduce):
    """Max / mean over the active inputs of each window, on the sites of SparseConv3d (stride defaults to the
    kernel size)."""
    inp = random_input(40 * batch, 3, batch=batch)
    x = inp.tensor()
    if api == "module":
        module = (SparseMaxPool3d if reduce == "max" else SparseAvgPool3d)(kernel, stride, padding, dilation)
        out = module(x)
    else:
        fn = sparse_max_pool3d if reduce == "max" else sparse_avg_pool3d
        out = fn(x, kernel, stride, padding, dilation)
    step = kernel if stride is None else stride
    sites, shape = reached_sites(inp, kernel, step, padding, dilation)
    assert_sites(out.coords, sites, f"{reduce} pool output sites")
    assert out.spatial_shape == shape and out.num_channels == 3 and out.batch_size == batch
    ref = dense_pool(inp.dense(), inp.occupancy(), kernel, step, padding, dilation, reduce, shape)
    check_conv(out, ref, [(inp.feats, inp.ref_feats)], f"{reduce} pool")


@pytest.mark.parametrize("reduce", ["max", "avg"])
@pytest.mark.parametrize("api", ["module", "functional"])
def test_global_pool(reduce, api):
    """Per batch item over its sites; an item without sites gives zeros."""
    inp = random_input(60, 4, batch=3)
    keep = inp.coords[:, 0] != 1  # batch item 1 has no sites
    inp = random_input(0, 4, batch=3, coords=inp.coords[keep])
    x = inp.tensor()
    if api == "module":
        out = (SparseGlobalMaxPool() if reduce == "max" else SparseGlobalAvgPool())(x)
    else:
        out = (global_max_pool if reduce == "max" else global_avg_pool)(x)
    rows = []
    for b in range(3):
        mine = inp.ref_feats[inp.coords[:, 0] == b]
        if mine.shape[0] == 0:
            rows.append(torch.zeros(4, dtype=torch.float64))
        else:
            rows.append(mine.amax(dim=0) if reduce == "max" else mine.mean(dim=0))
    ref = torch.stack(rows)
    assert_close(out, ref, f"global {reduce} pool")
    check_grads(out, ref, [(inp.feats, inp.ref_feats)], f"global {reduce} pool")


def _dw_cases() -> list:
    out = []
    for i, (k, s, d) in enumerate(itertools.product([1, 2, 3, (3, 1, 3)], [1, 2, (2, 1, 2)], [1, 2])):
        c = (1, 3, 16)[i % 3]
        batch = (1, 3)[(i // 3) % 2]
        out.append(pytest.param(k, s, d, c, batch, id=f"k{k}-s{s}-d{d}-c{c}-b{batch}"))
    return out


def _warp_padding(kernel, dilation) -> tuple[int, int, int]:
    return tuple(d * ((k - 1) // 2) for k, d in zip(triple(kernel), triple(dilation)))  # type: ignore[return-value]


@pytest.mark.parametrize("kernel, stride, dilation, channels, batch", _dw_cases())
def test_depthwise_module(kernel, stride, dilation, channels, batch):
    """SparseDepthwiseConv3d: grouped conv3d (groups=C) on the sites of SpatiallySparseConv."""
    inp = random_input(40 * batch, channels, shape=(9, 8, 7), batch=batch)
    x = inp.tensor()
    m = SparseDepthwiseConv3d(channels, kernel, stride, dilation, **EXPLICIT_DW).double()
    k0, k1, k2 = triple(kernel)
    assert m.weight.shape == (k0 * k1 * k2, channels) and m.bias.shape == (channels,)
    w, b = reference_param(m.weight), reference_param(m.bias)
    out = m(x)
    s = triple(stride)
    expected = {(c[0], c[1] // s[0], c[2] // s[1], c[3] // s[2]) for c in inp.coords.tolist()}
    assert_sites(out.coords, expected, "depthwise output sites")
    ref = dense_conv(inp.dense(), w, kernel, stride, _warp_padding(kernel, dilation), dilation, bias=b,
                     depthwise=True, cover=out.spatial_shape)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "SparseDepthwiseConv3d")


@pytest.mark.parametrize("kernel, stride, generative", [(3, 1, False), ((3, 1, 3), 2, False), (2, 1, True),
                                                        (3, 2, True)])
def test_spatially_sparse_depthwise_conv(kernel, stride, generative):
    """The functional form over a kernel map: [num_out_coords, C], grouped conv3d values and gradients."""
    inp = random_input(50, 5)
    x = inp.tensor()
    kmap, dst = warp_conv_map(x, kernel, stride, 1, False, generative, None)
    weight = torch.randn(kmap.kernel_volume, 5, dtype=torch.float64, requires_grad=True)
    w = weight.detach().clone().requires_grad_()
    out = spatially_sparse_depthwise_conv(inp.feats, weight, kmap, dst.num_points, **EXPLICIT_DW)
    assert dw_from_module_path is spatially_sparse_depthwise_conv
    assert out.shape == (dst.num_points, 5)
    if generative:
        assert_sites(dst.coords, reached_sites(inp, kernel, stride, _warp_padding(kernel, 1))[0], "generative sites")
    ref_grid = dense_conv(inp.dense(), w, kernel, stride, _warp_padding(kernel, 1), depthwise=True,
                          cover=dst.spatial_shape)
    ref = values_at(ref_grid, dst.coords)
    assert_close(out, ref, "spatially_sparse_depthwise_conv")
    check_grads(out, ref, [(inp.feats, inp.ref_feats), (weight, w)], "spatially_sparse_depthwise_conv")


@pytest.mark.parametrize("stride", [1, 2])
def test_explicit_depthwise_every_param_point(stride):
    """Both parameter points of the explicit depthwise algorithm compute all three ops exactly."""
    inp = random_input(60, 4)
    x = inp.tensor()
    kmap, dst = warp_conv_map(x, 3, stride, 1, False, False, None)
    weight = torch.randn(27, 4, dtype=torch.float64)
    w = weight.clone().requires_grad_()
    ref = values_at(dense_conv(inp.dense(), w, 3, stride, 1, depthwise=True, cover=dst.spatial_shape), dst.coords)
    grad_out = torch.randn_like(ref)
    (ref * grad_out).sum().backward()
    algo = ExplicitDepthwise()
    feats = inp.feats.detach()
    points = list(algo.param_space(Signature.of(Op.DW_FWD, feats, weight, kmap)).points())
    assert len(points) > 1
    for params in points:
        assert_close(algo.run(Op.DW_FWD, params, feats, weight, kmap), ref, f"dw fwd {params}")
        assert_close(algo.run(Op.DW_DGRAD, params, grad_out, weight, kmap), inp.ref_feats.grad, f"dw dgrad {params}")
        assert_close(algo.run(Op.DW_WGRAD, params, feats, grad_out, kmap), w.grad, f"dw wgrad {params}")


def test_depthwise_num_out_coords_mismatch():
    x = random_input(20, 2).tensor()
    kmap, dst = warp_conv_map(x, 3, 1, 1, False, False, None)
    with pytest.raises(ValueError, match=f"num_out_coords={dst.num_points + 1}.*{dst.num_points} outputs"):
        spatially_sparse_depthwise_conv(x.features, torch.randn(27, 2, dtype=torch.float64), kmap,
                                        dst.num_points + 1, **EXPLICIT_DW)


def test_max_pool_window_of_minus_infinity():
    """A window whose inputs are all -inf returns -inf from one of them (never an empty slot), and its
    gradient goes to that input."""
    inp = random_input(30, 2, shape=(4, 4, 4))
    feats = inp.feats.detach().clone()
    feats[:, 0] = float("-inf")
    feats.requires_grad_(True)
    x = warpsparse.SparseTensor(feats, inp.coords, inp.shape, 1)
    out = sparse_max_pool3d(x, 2, 2)
    assert bool((out.features[:, 0] == float("-inf")).all())
    out.features[:, 0].sum().backward()
    assert float(feats.grad[:, 0].sum()) == out.num_points and bool((feats.grad[:, 1] == 0).all())


def test_half_averages_sum_in_float32():
    """Means of half features that overflow when summed in half (8 x 10000 > 65504) stay exact."""
    sites = torch.tensor([[0, i // 4, i // 2 % 2, i % 2] for i in range(8)], dtype=torch.int32)
    for dtype in (torch.float16, torch.bfloat16):
        x = warpsparse.SparseTensor(torch.full((8, 2), 10000.0, dtype=dtype), sites, (2, 2, 2), 1)
        for out in (SparseAvgPool3d(2)(x).features, SparseGlobalAvgPool()(x)):
            assert out.dtype == dtype and torch.equal(out, torch.full((1, 2), 10000.0, dtype=dtype))
    points = torch.cat([torch.rand(40, 3) * 0.05, torch.full((40, 1), 2000.0)], 1).half()
    assert warpsparse.voxelize(points, 0.1).features.tolist() == [[2000.0]]


def test_average_pool_trains_after_an_inference_pass():
    """A map cached on the sites by a pass under ``torch.inference_mode`` serves a later pass with gradients."""
    x = random_input(40, 3).tensor()
    pool = SparseAvgPool3d(2)
    with torch.inference_mode():
        expected = pool(x).features.clone()
    features = x.features.detach().clone().requires_grad_()
    out = pool(x.replace(features)).features
    grad = torch.randn_like(out)
    out.backward(grad)
    uncached = warpsparse.SparseTensor(features.detach().clone().requires_grad_(), x.coords.clone(),
                                       x.spatial_shape, x.batch_size)  # new sites: the map is built afresh
    pool(uncached).features.backward(grad)
    assert torch.equal(out.detach(), expected)
    assert features.grad is not None and torch.equal(features.grad, uncached.features.grad)
