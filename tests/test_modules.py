"""Modules: parameters, indice_key reuse and inversion, SparseSequential and the feature-wise layers, import
paths and algorithm-mode arguments."""
from __future__ import annotations

import math

import pytest
import torch

import warpsparse
import warpsparse.nn as wnn
import warpsparse.nn.functional.kernel_maps as kernel_maps
from warpsparse import SPARSE_CONV_BWD_ALGO_MODE, SPARSE_CONV_FWD_ALGO_MODE

from oracle import (EXPLICIT, assert_close, check_conv, dense_conv, fresh_seed, one_thread, quick_tuning,  # noqa: F401
                    random_input, reference_param)


@pytest.fixture
def map_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the kind of every kernel map actually built (cache misses)."""
    calls: list[str] = []
    real = kernel_maps.build_kernel_map

    def counting(src, geom, out_shape, out=None, kind="conv"):
        calls.append(kind)
        return real(src, geom, out_shape, out, kind)

    monkeypatch.setattr(kernel_maps, "build_kernel_map", counting)
    return calls


def test_parameter_shapes_and_init():
    m = wnn.SparseConv3d(3, 5, (3, 1, 2), bias=True)
    assert m.weight.shape == (6, 3, 5) and m.bias.shape == (5,)
    bound = 1 / math.sqrt(6 * 3)
    assert m.weight.abs().max() <= bound and m.bias.abs().max() <= bound
    assert m.weight.std() > bound / 4, "weights must be initialised, not left empty"
    assert wnn.SubMConv3d(2, 4, 3, bias=False).bias is None
    dw = wnn.SparseDepthwiseConv3d(7, 3)
    assert dw.weight.shape == (27, 7) and dw.bias.shape == (7,)
    assert "kernel_size=(3, 1, 2)" in repr(m)
    state = m.state_dict()
    assert set(state) == {"weight", "bias", "_extra_state"} and state["_extra_state"].tolist() == [3, 1, 2]
    m2 = wnn.SparseConv3d(3, 5, (3, 1, 2))
    m2.load_state_dict(state)
    assert torch.equal(m2.weight, m.weight)
    other = wnn.SparseConv3d(3, 5, (1, 2, 3))  # same weight shape, another kernel
    before = other.weight.detach().clone()
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"weights of a kernel of size \(3, 1, 2\), this module's kernel "
                                               r"size is \(1, 2, 3\)"):
            other.load_state_dict(state, strict=strict)
    assert torch.equal(other.weight, before), "nothing is copied from a mismatched kernel"
    del state["_extra_state"]  # a checkpoint saved before the kernel size was: loads, checked by shape only
    wnn.SparseConv3d(3, 5, (3, 1, 2)).load_state_dict(state)
    m.weight = torch.nn.Parameter(torch.randn(6, 3, 7))
    with pytest.raises(ValueError, match=r"a weight of shape \(6, 3, 7\) was assigned to a module of 5 output"):
        m(random_input(20, 3).tensor().to(torch.float32))


def test_subm_indice_key_reuses_one_map(map_builds):
    """Layers sharing an indice_key on the same sites reuse the stored map object; no second build."""
    x = random_input(60, 4).tensor()
    a = wnn.SubMConv3d(4, 4, 3, indice_key="subm0", **EXPLICIT).double()
    b = wnn.SubMConv3d(4, 4, 3, indice_key="subm0", **EXPLICIT).double()
    h = a(x)
    entry = x.indice_store["subm0"]
    h = wnn.ReLU()(wnn.BatchNorm(4).double()(h))
    h = b(h)
    assert h.indice_store["subm0"] is entry and h.coord_set is x.coord_set
    assert map_builds == ["subm"], f"expected one map build, got {map_builds}"


def test_unet_inverse_restores_sites_and_reuses_maps(map_builds):
    """down (stored key) -> subm -> inverse: back on the original sites, whose subm map is reused."""
    inp = random_input(80, 3, shape=(9, 9, 9), batch=2)
    x = inp.tensor()
    net = wnn.SparseSequential(
        wnn.SubMConv3d(3, 4, 3, indice_key="s0", **EXPLICIT),
        wnn.SparseConv3d(4, 8, 3, 2, 1, indice_key="d1", **EXPLICIT),
        wnn.SubMConv3d(8, 8, 3, indice_key="s1", **EXPLICIT),
        wnn.SparseInverseConv3d(8, 4, 3, "d1", **EXPLICIT),
        wnn.SubMConv3d(4, 2, 3, indice_key="s0", **EXPLICIT),
    ).double()
    out = net(x)
    assert out.coord_set is x.coord_set and torch.equal(out.coords, inp.coords)
    assert out.spatial_shape == x.spatial_shape and out.num_channels == 2
    assert sorted(map_builds) == ["conv", "subm", "subm"], f"maps built: {map_builds}"
    down_entry = x.indice_store["d1"]
    assert down_entry.src is x.coord_set
    # the inverse map is the stored map reversed (one object, cached)
    assert down_entry.kmap.reversed() is down_entry.kmap.reversed()
    out.features.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_sequential_matches_manual_composition():
    inp = random_input(50, 3)
    x = inp.tensor()
    conv = wnn.SubMConv3d(3, 6, 3, **EXPLICIT).double()
    bn = wnn.BatchNorm(6).double()
    lin = torch.nn.Linear(6, 2).double()
    seq = wnn.SparseSequential(conv, bn, torch.nn.ReLU(), lin)
    bn_copy = torch.nn.BatchNorm1d(6).double()
    out = seq(x)
    assert isinstance(out, warpsparse.SparseTensor) and out.coord_set is x.coord_set
    manual = lin(torch.relu(bn_copy(conv(x).features)))
    assert_close(out.features, manual, "SparseSequential")
    assert torch.allclose(bn.running_mean, bn_copy.running_mean)


class _Residual(torch.nn.Module):
    """A user's block that takes SparseTensors."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = wnn.SubMConv3d(channels, channels, 3, **EXPLICIT)
        self.gain = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: warpsparse.SparseTensor) -> warpsparse.SparseTensor:
        return x.replace(x.features + self.gain * self.conv(x).features)


class _Double(torch.nn.Module):
    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return 2 * value


class _Scale(torch.nn.Linear):
    """A user's subclass of a torch layer: it takes features."""


def test_sequential_routes_by_what_a_module_takes():
    """Torch layers and their subclasses (parametrized, compiled, or a user's) get features; warpsparse modules
    (parametrized too) and a user's own blocks get the SparseTensor; a torch Sequential inside is routed layer by
    layer."""
    x = random_input(50, 3).tensor()
    conv = wnn.SubMConv3d(3, 4, 3, **EXPLICIT).double()
    torch.nn.utils.parametrizations.weight_norm(conv, "weight", dim=2)
    scale = _Scale(4, 4).double()
    block = _Residual(4).double()
    torch.nn.utils.parametrize.register_parametrization(block, "gain", _Double())  # a parametrized user block
    inner = torch.nn.Sequential(wnn.SubMConv3d(4, 4, 3, **EXPLICIT), torch.nn.ReLU()).double()
    compiled_inner = torch.compile(torch.nn.Sequential(wnn.SubMConv3d(4, 4, 3, **EXPLICIT)).double(),
                                   backend="eager")
    plain = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()).double()
    compiled = torch.compile(torch.nn.Identity(), backend="eager")
    out = wnn.SparseSequential(conv, scale, block, inner, compiled_inner, compiled, plain)(x)
    h = conv(x)
    h = block(h.replace(scale(h.features)))
    h = compiled_inner._orig_mod[0](inner[0](h).replace(torch.relu(inner[0](h).features)))
    manual = plain(h.features)
    assert out.coord_set is x.coord_set
    assert_close(out.features, manual, "routed SparseSequential")


@pytest.mark.parametrize("sparse_layer, torch_layer", [
    (lambda: wnn.BatchNorm(5), lambda: torch.nn.BatchNorm1d(5)),
    (lambda: wnn.LayerNorm(5), lambda: torch.nn.LayerNorm(5)),
    (lambda: wnn.ReLU(), lambda: torch.nn.ReLU()),
    (lambda: wnn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2)),
    (lambda: wnn.GELU(), lambda: torch.nn.GELU()),
    (lambda: wnn.SiLU(), lambda: torch.nn.SiLU()),
    (lambda: wnn.Dropout(0.5).eval(), lambda: torch.nn.Dropout(0.5).eval()),
    (lambda: wnn.Linear(5, 3), lambda: torch.nn.Linear(5, 3)),
], ids=["BatchNorm", "LayerNorm", "ReLU", "LeakyReLU", "GELU", "SiLU", "Dropout", "Linear"])
def test_featurewise_layers(sparse_layer, torch_layer):
    """Feature-wise layers act on the features of a SparseTensor (same sites), and on plain tensors too."""
    x = random_input(40, 5).tensor()
    ours, theirs = sparse_layer().double(), torch_layer().double()
    theirs.load_state_dict(ours.state_dict())
    out = ours(x)
    assert isinstance(out, warpsparse.SparseTensor) and out.coord_set is x.coord_set
    assert_close(out.features, theirs(x.features), type(ours).__name__)
    assert_close(ours(x.features), theirs(x.features), f"{type(ours).__name__} on a tensor")


def test_dropout_in_training_keeps_sites():
    x = random_input(40, 5).tensor()
    out = wnn.Dropout(0.5)(x)
    assert out.coord_set is x.coord_set and out.features.shape == x.features.shape
    dropped = out.features == 0
    assert bool(dropped.any()) and not bool(dropped.all()), "p=0.5 over 200 values drops some and keeps some"
    assert torch.allclose(out.features[~dropped], 2 * x.features[~dropped]), "kept values are scaled by 1/(1-p)"


def test_to_dense():
    x = random_input(40, 3, batch=2).tensor()
    grid = torch.zeros(2, 3, *x.spatial_shape, dtype=x.dtype)
    for (b, i, j, k), f in zip(x.coords.tolist(), x.features):
        grid[b, :, i, j, k] = f
    assert torch.equal(wnn.ToDense()(x), grid)


def test_warpconvnet_import_paths():
    from warpsparse.nn.functional.sparse_conv import (SPARSE_CONV_BWD_ALGO_MODE as B, SPARSE_CONV_FWD_ALGO_MODE as F,
                                                      spatially_sparse_conv)
    from warpsparse.nn.functional.sparse_conv_depth import (SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE,
                                                            spatially_sparse_depthwise_conv)
    from warpsparse.nn.modules import SpatiallySparseConv
    assert F is SPARSE_CONV_FWD_ALGO_MODE and B is SPARSE_CONV_BWD_ALGO_MODE
    assert callable(spatially_sparse_conv) and callable(spatially_sparse_depthwise_conv)
    assert SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE.EXPLICIT.value == "explicit"
    assert SpatiallySparseConv is wnn.SpatiallySparseConv


@pytest.mark.parametrize("fwd, bwd", [
    (SPARSE_CONV_FWD_ALGO_MODE.EXPLICIT_GEMM, SPARSE_CONV_BWD_ALGO_MODE.EXPLICIT_GEMM),
    ([SPARSE_CONV_FWD_ALGO_MODE.EXPLICIT_GEMM], ["explicit_gemm"]),
    ("explicit_gemm", "explicit_gemm"),
], ids=["enum", "list", "str"])
def test_algorithm_mode_arguments(fwd, bwd):
    """Enum, list and string forms of fwd_algo / bwd_algo all run (and stay correct)."""
    inp = random_input(40, 3)
    m = wnn.SpatiallySparseConv(3, 4, 3, 2, fwd_algo=fwd, bwd_algo=bwd).double()
    w, b = reference_param(m.weight), reference_param(m.bias)
    out = m(inp.tensor())
    ref = dense_conv(inp.dense(), w, 3, 2, 1, bias=b, cover=out.spatial_shape)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], f"fwd_algo={fwd!r}")
