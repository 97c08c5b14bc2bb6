"""Every conv variant against the dense PyTorch oracle (float64, CPU): output sites, values and gradients."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import warpsparse
from warpsparse.algorithms.base import Op, Signature
from warpsparse.algorithms.explicit import ExplicitGemm
from warpsparse.coords.geometry import ConvGeometry
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.nn import (SparseConv3d, SparseConvTranspose3d, SparseDepthwiseConv3d, SparseInverseConv3d,
                           SpatiallySparseConv, SubMConv3d)
from warpsparse.nn.functional import conv_features, sparse_conv3d, sparse_inverse_conv3d, subm_conv3d
from warpsparse.nn.functional.kernel_maps import conv_map
from warpsparse.nn.functional.sparse_conv import spatially_sparse_conv
from warpsparse.tuner.search import BUDGET_ENV

from oracle import (EXPLICIT, EXPLICIT_DW, assert_close, assert_sites, check_conv, dense_conv, fresh_seed,  # noqa: F401
                    one_thread, quick_tuning, random_coords, random_input, reached_sites, reference_param, triple,
                    values_at)

KERNELS = [1, 2, 3, (3, 1, 3)]
CHANNELS = [(1, 3), (3, 16), (16, 1), (3, 3)]


def _cases(*axes: list) -> list:
    """The product of ``axes``, each case extended by a (batch, channels, api) cycled over the case index."""
    out = []
    for i, case in enumerate(itertools.product(*axes)):
        batch = (1, 3)[i % 2]
        cin, cout = CHANNELS[(i // 2) % len(CHANNELS)]
        api = ("module", "functional")[(i // 3) % 2]
        out.append(pytest.param(*case, batch, cin, cout, api, id="-".join(map(str, (*case, batch, cin, cout, api)))))
    return out


def _module(cls, cin: int, cout: int, **kw) -> torch.nn.Module:
    return cls(cin, cout, **kw, **EXPLICIT).double()


def _refs(m: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    return reference_param(m.weight), reference_param(m.bias)


@pytest.mark.parametrize("kernel, dilation, batch, cin, cout, api", _cases([1, 3, (3, 1, 3), (1, 3, 5)], [1, 2]) +
                         _cases([3], [(1, 2, 1)]))
def test_subm_conv3d(kernel, dilation, batch, cin, cout, api):
    inp = random_input(40 * batch, cin, batch=batch)
    x = inp.tensor()
    m = _module(SubMConv3d, cin, cout, kernel_size=kernel, dilation=dilation)
    w, b = _refs(m)
    if api == "module":
        out = m(x)
    else:
        out = subm_conv3d(x, m.weight, m.bias, kernel, dilation, **EXPLICIT)
    assert out.coord_set is x.coord_set and torch.equal(out.coords, inp.coords), "subm must keep the input sites"
    assert out.spatial_shape == x.spatial_shape and out.batch_size == batch and out.num_channels == cout
    ks, d = triple(kernel), triple(dilation)
    pad = tuple(di * (k - 1) // 2 for k, di in zip(ks, d))
    ref = dense_conv(inp.dense(), w, ks, 1, pad, d, bias=b)
    assert ref.shape[2:] == inp.dense().shape[2:]
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "subm_conv3d")


@pytest.mark.parametrize("kernel, stride, padding, dilation, batch, cin, cout, api",
                         _cases(KERNELS, [1, 2, 3], [0, 1, (1, 0, 2)], [1, 2]))
def test_sparse_conv3d(kernel, stride, padding, dilation, batch, cin, cout, api):
    inp = random_input(40 * batch, cin, batch=batch)
    x = inp.tensor()
    m = _module(SparseConv3d, cin, cout, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    w, b = _refs(m)
    if api == "module":
        out = m(x)
    else:
        out = sparse_conv3d(x, m.weight, m.bias, kernel, stride, padding, dilation, **EXPLICIT)
    sites, shape = reached_sites(inp, kernel, stride, padding, dilation)
    assert_sites(out.coords, sites, "SparseConv3d output sites")
    assert out.spatial_shape == shape and out.batch_size == batch and out.coords.dtype == torch.int32
    ref = dense_conv(inp.dense(), w, kernel, stride, padding, dilation, bias=b)
    assert tuple(ref.shape[2:]) == shape
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "SparseConv3d")


@pytest.mark.parametrize("kernel, stride, padding, dilation, batch, cin, cout, api",
                         _cases(KERNELS, [1, 2, 3], [0, 1, (1, 0, 2)], [1, 2]))
def test_sparse_conv_transpose3d(kernel, stride, padding, dilation, batch, cin, cout, api):
    inp = random_input(30 * batch, cin, shape=(6, 7, 6), batch=batch)
    x = inp.tensor()
    m = _module(SparseConvTranspose3d, cin, cout, kernel_size=kernel, stride=stride, padding=padding,
                dilation=dilation)
    w, b = _refs(m)
    if api == "module":
        out = m(x)
    else:
        out = sparse_conv3d(x, m.weight, m.bias, kernel, stride, padding, dilation, transposed=True, **EXPLICIT)
    sites, shape = reached_sites(inp, kernel, stride, padding, dilation, transposed=True)
    assert_sites(out.coords, sites, "SparseConvTranspose3d output sites")
    assert out.spatial_shape == shape and out.batch_size == batch
    ref = dense_conv(inp.dense(), w, kernel, stride, padding, dilation, transposed=True, bias=b)
    assert tuple(ref.shape[2:]) == shape
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "SparseConvTranspose3d")


@pytest.mark.parametrize("kernel, stride, padding, dilation, batch, cin, cout, api",
                         _cases([2, 3, (3, 1, 3)], [1, 2, 3], [0, 1], [1, 2]))
def test_sparse_inverse_conv3d(kernel, stride, padding, dilation, batch, cin, cout, api):
    """The inverse conv lands on the sites of the conv stored under the key, with transposed-conv values."""
    inp = random_input(40 * batch, 2, shape=(9, 8, 7), batch=batch)
    x = inp.tensor()
    down = SparseConv3d(2, cin, kernel, stride, padding, dilation, indice_key="down", **EXPLICIT).double()
    y = down(x)
    coarse = random_input(0, cin, shape=y.spatial_shape, batch=batch, coords=y.coords)
    y = y.replace(coarse.feats)  # a leaf on the coarse sites, keeping the key store
    m = _module(SparseInverseConv3d, cin, cout, kernel_size=kernel, indice_key="down")
    w, b = _refs(m)
    if api == "module":
        out = m(y)
    else:
        out = sparse_inverse_conv3d(y, m.weight, m.bias, kernel, "down", **EXPLICIT)
    assert out.coord_set is x.coord_set and torch.equal(out.coords, inp.coords), "inverse must restore the sites"
    assert out.spatial_shape == x.spatial_shape
    ref = dense_conv(coarse.dense(), w, kernel, stride, padding, dilation, transposed=True, bias=b,
                     cover=x.spatial_shape)
    check_conv(out, ref, [(coarse.feats, coarse.ref_feats), (m.weight, w), (m.bias, b)], "SparseInverseConv3d")


def _warp_padding(kernel, dilation) -> tuple[int, int, int]:
    return tuple(d * ((k - 1) // 2) for k, d in zip(triple(kernel), triple(dilation)))  # type: ignore[return-value]


def _spatial(api: str, m: SpatiallySparseConv, x: warpsparse.SparseTensor,
             output: warpsparse.SparseTensor | None = None) -> warpsparse.SparseTensor:
    if api == "module":
        return m(x) if output is None else m(x, output)
    return spatially_sparse_conv(x, m.weight, m.kernel_size, m.stride, m.dilation, m.bias, m.transposed,
                                 m.generative, output, **EXPLICIT)


@pytest.mark.parametrize("kernel, dilation, batch, cin, cout, api", _cases(KERNELS, [1, 2]))
def test_spatially_sparse_conv_stride1(kernel, dilation, batch, cin, cout, api):
    """Stride 1: outputs on the input sites, conv3d with padding d*((k-1)//2) (even kernels too)."""
    inp = random_input(40 * batch, cin, batch=batch)
    x = inp.tensor()
    m = _module(SpatiallySparseConv, cin, cout, kernel_size=kernel, dilation=dilation)
    w, b = _refs(m)
    out = _spatial(api, m, x)
    assert torch.equal(out.coords, inp.coords) and out.spatial_shape == x.spatial_shape
    ref = dense_conv(inp.dense(), w, kernel, 1, _warp_padding(kernel, dilation), dilation, bias=b,
                     cover=x.spatial_shape)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "SpatiallySparseConv stride 1")


@pytest.mark.parametrize("kernel, stride, dilation, batch, cin, cout, api",
                         _cases(KERNELS, [2, 3, (2, 1, 2)], [1, 2]))
def test_spatially_sparse_conv_strided(kernel, stride, dilation, batch, cin, cout, api):
    """Stride > 1 without an output tensor: outputs on the unique floor(coords / stride)."""
    inp = random_input(40 * batch, cin, shape=(9, 8, 7), batch=batch)
    x = inp.tensor()
    m = _module(SpatiallySparseConv, cin, cout, kernel_size=kernel, stride=stride, dilation=dilation)
    w, b = _refs(m)
    out = _spatial(api, m, x)
    s = triple(stride)
    expected = {(c[0], c[1] // s[0], c[2] // s[1], c[3] // s[2]) for c in inp.coords.tolist()}
    assert_sites(out.coords, expected, "SpatiallySparseConv strided output sites")
    assert out.spatial_shape == tuple(-(-n // st) for n, st in zip(x.spatial_shape, s))
    ref = dense_conv(inp.dense(), w, kernel, stride, _warp_padding(kernel, dilation), dilation, bias=b,
                     cover=out.spatial_shape)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "SpatiallySparseConv strided")


@pytest.mark.parametrize("kernel, stride, dilation, batch, cin, cout, api",
                         _cases([2, 3, (3, 1, 3)], [1, 2], [1, 2]))
def test_spatially_sparse_conv_generative(kernel, stride, dilation, batch, cin, cout, api):
    """Generative: every reached site of the dense output grid."""
    inp = random_input(25 * batch, cin, batch=batch)
    x = inp.tensor()
    m = _module(SpatiallySparseConv, cin, cout, kernel_size=kernel, stride=stride, dilation=dilation,
                generative=True)
    w, b = _refs(m)
    out = _spatial(api, m, x)
    pad = _warp_padding(kernel, dilation)
    sites, shape = reached_sites(inp, kernel, stride, pad, dilation)
    assert_sites(out.coords, sites, "generative output sites")
    assert out.spatial_shape == shape
    ref = dense_conv(inp.dense(), w, kernel, stride, pad, dilation, bias=b)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "SpatiallySparseConv generative")


@pytest.mark.parametrize("kernel, stride, dilation, batch, cin, cout, api",
                         _cases([2, 3, (3, 1, 3)], [1, 2, 3], [1, 2]))
def test_spatially_sparse_conv_transposed(kernel, stride, dilation, batch, cin, cout, api):
    """Transposed without an output tensor: every site some input reaches (conv_transpose3d grid)."""
    inp = random_input(20 * batch, cin, shape=(5, 6, 5), batch=batch)
    x = inp.tensor()
    m = _module(SpatiallySparseConv, cin, cout, kernel_size=kernel, stride=stride, dilation=dilation,
                transposed=True)
    w, b = _refs(m)
    out = _spatial(api, m, x)
    pad = _warp_padding(kernel, dilation)
    sites, shape = reached_sites(inp, kernel, stride, pad, dilation, transposed=True)
    assert_sites(out.coords, sites, "transposed output sites")
    assert out.spatial_shape == shape
    ref = dense_conv(inp.dense(), w, kernel, stride, pad, dilation, transposed=True, bias=b)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "SpatiallySparseConv transposed")


@pytest.mark.parametrize("kernel, stride, dilation, batch, cin, cout, api",
                         _cases([1, 2, 3, (3, 1, 3)], [2, 3], [1, 2]))
def test_spatially_sparse_conv_transposed_to_output(kernel, stride, dilation, batch, cin, cout, api):
    """Down with stride s, then transposed with stride s onto the fine tensor: outputs on its sites."""
    fine = random_input(40 * batch, 2, shape=(9, 8, 7), batch=batch)
    xf = fine.tensor()
    y = SpatiallySparseConv(2, cin, 3, stride, **EXPLICIT).double()(xf)
    coarse = random_input(0, cin, shape=y.spatial_shape, batch=batch, coords=y.coords)
    y = y.replace(coarse.feats)
    m = _module(SpatiallySparseConv, cin, cout, kernel_size=kernel, stride=stride, dilation=dilation,
                transposed=True)
    w, b = _refs(m)
    out = _spatial(api, m, y, xf)
    assert torch.equal(out.coords, fine.coords) and out.spatial_shape == xf.spatial_shape
    ref = dense_conv(coarse.dense(), w, kernel, stride, _warp_padding(kernel, dilation), dilation, transposed=True,
                     bias=b, cover=xf.spatial_shape)
    check_conv(out, ref, [(coarse.feats, coarse.ref_feats), (m.weight, w), (m.bias, b)],
               "SpatiallySparseConv transposed onto output tensor")


@pytest.mark.parametrize("kernel, stride, dilation, batch, cin, cout, api",
                         _cases([1, 2, 3, (3, 1, 3)], [1, 2], [1, 2]))
def test_spatially_sparse_conv_to_output(kernel, stride, dilation, batch, cin, cout, api):
    """A regular conv onto a given output tensor (other sites, same batch) evaluates conv3d at its sites."""
    inp = random_input(40 * batch, cin, batch=batch)
    x = inp.tensor()
    s = triple(stride)
    out_shape = tuple(-(-n // st) for n, st in zip(inp.shape, s))
    target = warpsparse.SparseTensor(torch.zeros(30 * batch, 1, dtype=torch.float64),
                                     random_coords(30 * batch, out_shape, batch), out_shape, batch)
    m = _module(SpatiallySparseConv, cin, cout, kernel_size=kernel, stride=stride, dilation=dilation)
    w, b = _refs(m)
    out = _spatial(api, m, x, target)
    assert torch.equal(out.coords, target.coords) and out.spatial_shape == target.spatial_shape
    ref = dense_conv(inp.dense(), w, kernel, stride, _warp_padding(kernel, dilation), dilation, bias=b,
                     cover=out_shape)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)],
               "SpatiallySparseConv onto output tensor")


def _relu_layer(kind: str, x: warpsparse.SparseTensor, cin: int, cout: int
                ) -> tuple[torch.nn.Module, warpsparse.SparseTensor, dict]:
    """A ``relu=True`` layer of ``kind``, the input it runs on and its dense reference's arguments."""
    if kind == "inverse":
        down = SparseConv3d(cin, cin, 3, 2, 1, indice_key="down", bias=False, **EXPLICIT).double()
        return (_module(SparseInverseConv3d, cin, cout, kernel_size=3, indice_key="down", relu=True), down(x),
                dict(stride=2, padding=1, transposed=True, cover=x.spatial_shape))
    if kind == "depthwise":
        return (SparseDepthwiseConv3d(cin, 3, relu=True, **EXPLICIT_DW).double(), x, dict(padding=1, depthwise=True))
    cls, kw, ref = {
        "subm": (SubMConv3d, dict(kernel_size=3), dict(padding=1)),
        "strided": (SparseConv3d, dict(kernel_size=3, stride=2, padding=1), dict(stride=2, padding=1)),
        "transposed": (SparseConvTranspose3d, dict(kernel_size=3, stride=2, padding=1),
                       dict(stride=2, padding=1, transposed=True)),
        "spatially_sparse": (SpatiallySparseConv, dict(kernel_size=3, stride=2), dict(stride=2, padding=1)),
    }[kind]
    return _module(cls, cin, cout, relu=True, **kw), x, ref


@pytest.mark.parametrize("kind", ["subm", "strided", "transposed", "spatially_sparse", "inverse", "depthwise"])
def test_fused_relu_on_every_conv_kind(kind):
    """``relu=True`` gives ReLU(conv + bias) at the output sites, gradients included (masked where the output
    is not positive)."""
    inp = random_input(60, 3)
    m, x, ref_args = _relu_layer(kind, inp.tensor(), 3, 3 if kind == "depthwise" else 4)
    if kind == "inverse":  # the reference convolves the coarse sites' features: make them a leaf
        coarse = random_input(0, 3, shape=x.spatial_shape, coords=x.coords)
        x, inp = x.replace(coarse.feats), coarse
    w, b = _refs(m)
    out = m(x)
    assert "relu=True" in repr(m)
    ref_args.setdefault("cover", out.spatial_shape)
    ref = dense_conv(inp.dense(), w, 3, bias=b, **ref_args)
    assert bool((out.features > 0).any()) and bool((out.features == 0).any()), "the ReLU must bite somewhere"
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], f"{kind} relu=True", relu=True)


@pytest.mark.parametrize("algo, dtype", [("explicit_gemm", torch.float64), ("implicit_gemm", torch.float32)])
def test_epilogue_on_rows_without_inputs(algo, dtype, no_fallback):
    """Output rows no input reaches hold ReLU(bias), through the algorithms and through the no-input shortcut."""
    weight = torch.randn(27, 3, 4, dtype=dtype)
    bias = torch.tensor([1.0, -2.0, 0.5, -0.1], dtype=dtype, requires_grad=True)
    nbr = torch.full((5, 27), -1, dtype=torch.int32)
    nbr[0, 13] = 1  # only output row 0 has an input: input row 1 at the centre offset
    x = torch.randn(2, 3, dtype=dtype)
    out = conv_features(x, weight, KernelMap(nbr, 2, (3, 3, 3)), bias, relu=True, fwd_algo=algo, bwd_algo=algo)
    assert_close(out[0], torch.relu(x[1] @ weight[13] + bias.detach()), f"{algo}: the row with an input")
    assert torch.equal(out[1:], torch.relu(bias.detach()).expand(4, 4)), f"{algo}: rows without inputs"
    empty = KernelMap(torch.full((5, 27), -1, dtype=torch.int32), 0, (3, 3, 3))
    out = conv_features(torch.empty(0, 3, dtype=dtype), weight, empty, bias, relu=True, fwd_algo=algo)
    assert torch.equal(out, torch.relu(bias.detach()).expand(5, 4))
    out.sum().backward()
    assert torch.equal(bias.grad, torch.tensor([5.0, 0.0, 5.0, 0.0], dtype=dtype))


def test_no_bias_and_default_spatial_shape():
    """bias=False adds nothing; a tensor built without spatial_shape uses coords.max + 1."""
    inp = random_input(50, 3)
    x = warpsparse.SparseTensor(inp.feats, inp.coords)
    assert x.spatial_shape == tuple(int(v) + 1 for v in inp.coords[:, 1:].max(dim=0).values)
    m = SparseConv3d(3, 4, 3, 2, 1, bias=False, **EXPLICIT).double()
    assert m.bias is None
    out = m(x)
    inp.shape = x.spatial_shape  # the reference grid is the default one
    w = reference_param(m.weight)
    sites, shape = reached_sites(inp, 3, 2, 1)
    assert_sites(out.coords, sites, "default-shape output sites")
    assert out.spatial_shape == shape
    check_conv(out, dense_conv(inp.dense(), w, 3, 2, 1), [(inp.feats, inp.ref_feats), (m.weight, w)], "no bias")


def test_default_auto_algorithm_is_correct(monkeypatch):
    """The default algorithm choice (AUTO, tuned with the default budget over every algorithm that applies to
    float32 on this device) on a tiny input gives the oracle's values and gradients."""
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    inp = random_input(12, 2, shape=(4, 4, 4), dtype=torch.float32)
    m = SubMConv3d(2, 3, 3)
    w, b = _refs(m)
    out = m(inp.tensor())
    ref = dense_conv(inp.dense(), w, 3, 1, 1, bias=b)
    check_conv(out, ref, [(inp.feats, inp.ref_feats), (m.weight, w), (m.bias, b)], "AUTO subm")


@pytest.mark.parametrize("geometry", ["subm", "strided", "transposed"])
def test_explicit_gemm_every_param_point(geometry):
    """Every parameter point of explicit_gemm (looped and batched offsets) computes all three ops exactly."""
    inp = random_input(60, 3)
    x = inp.tensor()
    geom = {"subm": ConvGeometry((3, 3, 3), padding=(1, 1, 1)),
            "strided": ConvGeometry((3, 1, 3), (2, 2, 2), (1, 0, 1)),
            "transposed": ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True)}[geometry]
    kind = {"subm": "subm", "strided": "conv", "transposed": "transposed"}[geometry]
    kmap, dst = conv_map(x, geom, kind)
    weight = torch.randn(geom.kernel_volume, 3, 5, dtype=torch.float64, requires_grad=True)
    ref_w = weight.detach().clone().requires_grad_()
    ref = dense_conv(inp.dense(), ref_w, geom.kernel_size, geom.stride, geom.padding, geom.dilation,
                     geom.transposed, cover=dst.spatial_shape)
    ref_out = values_at(ref, dst.coords)
    grad_out = torch.randn_like(ref_out)
    (ref_out * grad_out).sum().backward()
    algo = ExplicitGemm()
    sig = Signature.of(Op.CONV_FWD, inp.feats.detach(), weight.detach(), kmap)
    points = list(algo.param_space(sig).points())
    assert len(points) > 1
    for params in points:
        got = algo.run(Op.CONV_FWD, params, inp.feats.detach(), weight.detach(), kmap)
        assert_close(got, ref_out, f"fwd {params}")
        got = algo.run(Op.CONV_DGRAD, params, grad_out, weight.detach(), kmap)
        assert_close(got, inp.ref_feats.grad, f"dgrad {params}")
        got = algo.run(Op.CONV_WGRAD, params, inp.feats.detach(), grad_out, kmap)
        assert_close(got, ref_w.grad, f"wgrad {params}")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_explicit_gemm_half_rounds_once(device, dtype):
    """Half inputs: every op of explicit_gemm (looped and batched offsets) keeps its per-offset partial results
    in fp32 and rounds once, so each result is within one 16-bit step of the float64 result, plus what fp32
    sums of its terms may lose (``terms * 2**-24`` times the sum of their magnitudes), even where tiny values
    would lose their digits to a rounding per offset (forward and input gradient; the weight gradient computes
    each offset with one matmul anyway)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    inp = random_input(200, 32, shape=(6, 6, 6))
    kmap, _ = conv_map(inp.tensor().to(device), ConvGeometry((3, 3, 3), padding=(1, 1, 1)), "subm")
    tiny = 2.0 ** -22 if dtype == torch.float16 else 2.0 ** -100  # fp16: subnormal results, coarse steps
    x = inp.feats.detach().to(device, dtype)
    w = (torch.randn(27, 32, 32, dtype=torch.float64) / 8).to(device, dtype)
    dy = (torch.randn(kmap.num_out, 32, dtype=torch.float64) * tiny).to(device, dtype)
    algo = ExplicitGemm()
    for op, a, b in ((Op.CONV_FWD, x * tiny, w), (Op.CONV_DGRAD, dy, w), (Op.CONV_WGRAD, x, dy)):
        exact = algo.run(op, {"batch_below": 0}, a.double(), b.double(), kmap)
        magnitude = algo.run(op, {"batch_below": 0}, a.double().abs(), b.double().abs(), kmap)
        terms = kmap.num_out if op == Op.CONV_WGRAD else 27 * 32  # products summed into one result
        step = (torch.nextafter(exact.abs().to(dtype), torch.tensor(math.inf, dtype=dtype, device=device))
                - exact.abs().to(dtype)).double() + terms * 2.0 ** -24 * magnitude
        for params in algo.param_space(Signature.of(op, a, b, kmap)).points():
            got = algo.run(op, params, a, b, kmap)
            assert got.dtype == dtype
            err = (got.double() - exact).abs()
            assert bool((err <= step).all()), f"{op.value} {params}: {float((err / step).max()):.1f} steps off"


def test_non_contiguous_inputs():
    """Strided views of features and weight give the same values and gradients as contiguous ones."""
    inp = random_input(60, 6)
    n = inp.coords.shape[0]
    wide = torch.stack([inp.feats.detach(), torch.zeros_like(inp.feats)], dim=2).reshape(n, 12).requires_grad_()
    x = warpsparse.SparseTensor(wide[:, ::2], inp.coords, inp.shape)
    weight_t = torch.randn(5, 6, 27, dtype=torch.float64, requires_grad=True)
    w = reference_param(weight_t.permute(2, 1, 0))
    out = sparse_conv3d(x, weight_t.permute(2, 1, 0), None, 3, 2, 1, **EXPLICIT)
    ref = dense_conv(inp.dense(), w, 3, 2, 1)
    ref_out = values_at(ref, out.coords)
    assert_close(out.features, ref_out, "non-contiguous forward")
    cot = torch.randn_like(out.features)
    (out.features * cot).sum().backward()
    (ref_out * cot).sum().backward()
    assert_close(wide.grad[:, ::2], inp.ref_feats.grad, "non-contiguous features grad")
    assert not wide.grad[:, 1::2].any()
    assert_close(weight_t.grad.permute(2, 1, 0), w.grad, "non-contiguous weight grad")
