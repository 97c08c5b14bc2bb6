"""Every bad input of the issue's error list gives a ValueError / TypeError that names the argument, what was
given and what is allowed."""
from __future__ import annotations

import pytest
import torch

import warpsparse
import warpsparse.nn as wnn
from warpsparse.nn.functional import (global_avg_pool, global_max_pool, sparse_conv3d, spatially_sparse_conv,
                                      subm_conv3d)

from oracle import EXPLICIT, EXPLICIT_DW, fresh_seed, one_thread, quick_tuning, random_coords  # noqa: F401


def _coords(num: int = 10) -> torch.Tensor:
    return random_coords(num, (5, 5, 5), 2)


def _x(channels: int = 3, num: int = 20) -> warpsparse.SparseTensor:
    return warpsparse.SparseTensor(torch.randn(num, channels), _coords(num))


@pytest.mark.parametrize("coords, match", [
    (torch.zeros(4, 3, dtype=torch.int32), r"coords must have shape \[N, 4\].*got \(4, 3\)"),
    (torch.zeros(4, dtype=torch.int32), r"coords must have shape \[N, 4\].*got \(4,\)"),
    (torch.zeros(4, 4, 1, dtype=torch.int32), r"coords must have shape \[N, 4\]"),
])
def test_wrong_coord_shape(coords, match):
    with pytest.raises(ValueError, match=match):
        warpsparse.SparseTensor(torch.randn(4, 2), coords)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool], ids=str)
def test_wrong_coord_dtype(dtype):
    with pytest.raises(TypeError, match=f"coords must be an integer tensor, got {dtype}"):
        warpsparse.SparseTensor(torch.randn(10, 2), _coords().to(dtype))


def test_coords_not_a_tensor():
    with pytest.raises(TypeError, match="coords must be a torch.Tensor, got list"):
        warpsparse.SparseTensor(torch.randn(1, 2), [[0, 0, 0, 0]])


def test_negative_coordinates():
    coords = _coords()
    coords[6, 2] = -1
    with pytest.raises(ValueError, match=r"non-negative; row 6 is \[.*-1.*\]"):
        warpsparse.SparseTensor(torch.randn(10, 2), coords)


@pytest.mark.parametrize("column, limit_name", [(0, "batch_size=2"), (1, "spatial_shape"), (3, "spatial_shape")])
def test_coordinates_outside_shape(column, limit_name):
    coords = _coords()
    coords[4, column] = 5 if column else 2
    with pytest.raises(ValueError, match=rf"coords row 4 = .* lies outside .*{limit_name}"):
        warpsparse.SparseTensor(torch.randn(10, 2), coords, spatial_shape=(5, 5, 5), batch_size=2)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])])
@pytest.mark.parametrize("given", [False, True], ids=["inferred", "given"])
def test_duplicate_sites_report_count_and_first_row(device, given):
    """Counted by sorting on CPU and by the coordinate hash table on CUDA (which the tensor then keeps)."""
    coords = _coords()
    coords[7] = coords[2]  # the first row repeating an earlier one
    coords[9] = coords[1]
    coords[8] = coords[1]
    shape = dict(spatial_shape=(5, 5, 5), batch_size=2) if given else {}
    with pytest.raises(ValueError, match=r"3 duplicate site\(s\); the first repeated one is row 7 = .*voxelize"):
        warpsparse.SparseTensor(torch.randn(10, 2, device=device), coords.to(device), **shape)
    unique = warpsparse.SparseTensor(torch.randn(7, 2, device=device), _coords()[:7].to(device), **shape)
    assert ("hash" in unique.coord_set.cache) == (device == "cuda")


def test_features_coords_length_mismatch():
    with pytest.raises(ValueError, match="features has 9 rows but coords has 10"):
        warpsparse.SparseTensor(torch.randn(9, 2), _coords())


def test_features_on_another_device():
    with pytest.raises(ValueError, match="coords are on cpu but features on meta"):
        warpsparse.SparseTensor(torch.randn(10, 2, device="meta"), _coords())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.float8_e4m3fn, torch.complex64],
                         ids=str)
def test_unsupported_feature_dtypes(dtype):
    with pytest.raises(TypeError, match=f"features must be float16, bfloat16, float32 or float64, got {dtype}"):
        warpsparse.SparseTensor(torch.ones(10, 2).to(dtype), _coords())


def test_sparse_layout_features():
    with pytest.raises(TypeError, match="features must be a dense \\(strided\\) tensor, got layout torch.sparse_coo"):
        warpsparse.SparseTensor(torch.ones(10, 2).to_sparse(), _coords())


def test_features_wrong_rank():
    with pytest.raises(ValueError, match=r"features must have shape \[N, C\], got \(10,\)"):
        warpsparse.SparseTensor(torch.randn(10), _coords())


@pytest.mark.parametrize("shape, batch, match", [
    (None, None, "empty SparseTensor needs spatial_shape and batch_size"),
    ((4, 4), 1, r"spatial_shape must be 3 positive ints, got \(4, 4\)"),
    ((4, 0, 4), 1, r"spatial_shape must be 3 positive ints"),
    ((4, 4, 4), 0, "batch_size must be a positive int, got 0"),
])
def test_bad_shape_arguments(shape, batch, match):
    with pytest.raises(ValueError, match=match):
        warpsparse.SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32), shape, batch)


@pytest.mark.parametrize("shape, batch, match", [
    ("666", 1, "spatial_shape must be 3 positive ints, got '666'"),
    ((6.7, 6, 6), 1, r"spatial_shape must be 3 positive ints, got \(6.7, 6, 6\)"),
    ((6, 6, 6), 1.5, "batch_size must be a positive int, got 1.5"),
    ((6, 6, 6), "2", "batch_size must be a positive int, got '2'"),
])
def test_shape_arguments_of_other_types(shape, batch, match):
    with pytest.raises(TypeError, match=match):
        warpsparse.SparseTensor(torch.zeros(2, 1), _coords()[:2], shape, batch)


@pytest.mark.parametrize("coords, shape", [([[0, 3_000_000_000, 0, 0], [0, 1, 0, 0]], None),
                                           ([[0, 1, 0, 0], [0, 2, 0, 0]], (2**31, 4, 4))])
def test_coordinates_past_int32_are_a_clear_error(coords, shape):
    with pytest.raises(ValueError, match=r"coordinates are stored as int32, .* at most 2\*\*31 - 1"):
        warpsparse.SparseTensor(torch.zeros(2, 1), torch.tensor(coords), shape, None if shape is None else 1)
    with pytest.raises(ValueError, match="coordinates are stored as int32"):  # an empty tensor on such a grid
        warpsparse.SparseTensor(torch.zeros(0, 1), torch.zeros(0, 4, dtype=torch.int32), (2**40, 4, 4), 1)


def test_output_grids_past_int32_are_a_clear_error():
    x = warpsparse.SparseTensor(torch.randn(2, 1), torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]]), (2, 1, 1), 1)
    with pytest.raises(ValueError, match="coordinates are stored as int32"):
        wnn.SparseConvTranspose3d(1, 1, 1, stride=(2**31 - 1, 1, 1), **EXPLICIT)(x)


@pytest.mark.parametrize("make", [
    lambda: wnn.SubMConv3d(4, 2, 3, **EXPLICIT),
    lambda: wnn.SparseConv3d(4, 2, 3, **EXPLICIT),
    lambda: wnn.SparseConvTranspose3d(4, 2, 3, **EXPLICIT),
    lambda: wnn.SpatiallySparseConv(4, 2, 3, **EXPLICIT),
    lambda: wnn.SparseDepthwiseConv3d(4, 3, **EXPLICIT_DW),
], ids=["subm", "conv", "transposed", "spatial", "depthwise"])
def test_channel_mismatch_with_module(make):
    m = make()
    with pytest.raises(ValueError, match=f"{type(m).__name__} expects 4 input channels, got 3"):
        m(_x(3))


def test_channel_mismatch_functional():
    with pytest.raises(ValueError, match=r"does not fit kernel_size \(3, 3, 3\) \(K=27\) and 3 input channels"):
        subm_conv3d(_x(3), torch.randn(27, 4, 2), None, 3, **EXPLICIT)
    with pytest.raises(ValueError, match=r"weight of shape \(8, 3, 2\) does not fit kernel_size \(3, 3, 3\)"):
        spatially_sparse_conv(_x(3), torch.randn(8, 3, 2), 3, **EXPLICIT)


@pytest.mark.parametrize("kernel", [2, (3, 4, 3)])
def test_even_kernel_for_submanifold(kernel):
    with pytest.raises(ValueError, match="submanifold convolution needs odd kernel sizes"):
        wnn.SubMConv3d(2, 2, kernel, **EXPLICIT)
    with pytest.raises(ValueError, match="odd kernel sizes"):
        subm_conv3d(_x(2), torch.randn(27, 2, 2), None, kernel, **EXPLICIT)


@pytest.mark.parametrize("kernel, error, match", [
    (0, ValueError, r"kernel_size must be >= 1 on every axis, got \(0, 0, 0\)"),
    ((3, -1, 3), ValueError, r"kernel_size must be >= 1 on every axis"),
    ((3, 3), TypeError, r"kernel_size must be an int or a tuple of 3 ints, got \(3, 3\)"),
    (2.5, TypeError, r"kernel_size must be an int or a tuple of 3 ints, got 2.5"),
    (True, TypeError, r"kernel_size must be an int or a tuple of 3 ints, got True"),
    ((3, True, 3), TypeError, r"kernel_size must be an int or a tuple of 3 ints, got \(3, True, 3\)"),
    ((3, 3, 2.0), TypeError, r"kernel_size must be an int or a tuple of 3 ints, got \(3, 3, 2.0\)"),
    ((3, 3, 0), ValueError, r"kernel_size must be >= 1 on every axis, got \(3, 3, 0\)"),
])
def test_unsupported_kernel_sizes(kernel, error, match):
    for make in (lambda: wnn.SparseConv3d(2, 2, kernel), lambda: wnn.SpatiallySparseConv(2, 2, kernel),
                 lambda: wnn.SparseMaxPool3d(kernel)(_x(2))):
        with pytest.raises(error, match=match):
            make()


@pytest.mark.parametrize("name, value", [("stride", 0), ("dilation", 0), ("padding", -1)])
def test_bad_geometry_arguments(name, value):
    with pytest.raises(ValueError, match=f"{name} must be >= "):
        wnn.SparseConv3d(2, 2, 3, **{name: value})


@pytest.mark.parametrize("name, value", [("stride", 2**70), ("dilation", (1, 2**31, 1)), ("padding", [0, 0, 2**40]),
                                         ("kernel_size", 2**31)])
def test_geometry_arguments_past_int32(name, value):
    """Values that int32 coordinates cannot hold are refused by name, not by an overflow deep inside torch."""
    args = {"kernel_size": 3, name: value}
    with pytest.raises(ValueError, match=f"{name} must be at most 2\\*\\*31 - 1 on every axis"):
        wnn.SparseConv3d(2, 2, **args)


def test_unknown_indice_key():
    x = _x(2)
    y = wnn.SparseConv3d(2, 2, 2, 2, indice_key="down1", **EXPLICIT)(x)
    with pytest.raises(ValueError, match=r"unknown indice_key 'down2'; stored keys: \['down1'\]"):
        wnn.SparseInverseConv3d(2, 2, 2, "down2", **EXPLICIT)(y)


def test_indice_key_misuse():
    x = _x(2)
    y = wnn.SparseConv3d(2, 2, 2, 2, indice_key="down", **EXPLICIT)(x)
    with pytest.raises(ValueError, match=r"kernel_size \(3, 3, 3\) differs from the \(2, 2, 2\)"):
        wnn.SparseInverseConv3d(2, 2, 3, "down", **EXPLICIT)(y)
    with pytest.raises(ValueError, match="an inverse conv takes the output of the conv stored there"):
        wnn.SparseInverseConv3d(2, 2, 2, "down", **EXPLICIT)(x)
    with pytest.raises(ValueError, match="indice_key 'down' holds a map built on other sites"):
        wnn.SparseConv3d(2, 2, 2, 2, indice_key="down", **EXPLICIT)(y)
    with pytest.raises(ValueError, match="indice_key 'down' holds a map of .*; use a new key"):
        wnn.SparseConv3d(2, 2, 3, 2, indice_key="down", **EXPLICIT)(x)
    with pytest.raises(TypeError, match="indice_key must be the str key"):
        wnn.SparseInverseConv3d(2, 2, 2, None)


def test_not_a_sparse_tensor():
    with pytest.raises(TypeError, match="SubMConv3d takes a warpsparse.SparseTensor, got Tensor"):
        wnn.SubMConv3d(2, 2, 3)(torch.randn(4, 2))
    with pytest.raises(TypeError, match="input must be a warpsparse.SparseTensor, got Tensor"):
        sparse_conv3d(torch.randn(4, 2), torch.randn(27, 2, 2))


def test_mixed_dtypes_outside_autocast():
    x = _x(2)
    with pytest.raises(TypeError, match="features are torch.float32 but the weight is torch.float64.*autocast"):
        subm_conv3d(x, torch.randn(27, 2, 2, dtype=torch.float64), None, 3, **EXPLICIT)


@pytest.mark.parametrize("name, value", [("in_channels", 0), ("out_channels", -2), ("in_channels", 2.0)])
def test_bad_channel_counts(name, value):
    kw = {"in_channels": 2, "out_channels": 2, name: value}
    with pytest.raises(ValueError, match=f"{name} must be a positive int, got {value!r}"):
        wnn.SubMConv3d(**kw)


def test_output_tensor_of_another_batch_size():
    x = _x(2)
    target = warpsparse.SparseTensor(torch.randn(3, 1), random_coords(3, (5, 5, 5), 1), (5, 5, 5), 5)
    with pytest.raises(ValueError, match="output_spatially_sparse_tensor has batch_size 5, input 2"):
        spatially_sparse_conv(x, torch.randn(27, 2, 2), 3, output_spatially_sparse_tensor=target, **EXPLICIT)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(reduce="median"), ValueError, r"reduce must be one of .*'median'"),
    (dict(voxel_size=0.0), ValueError, "voxel_size must be a positive number or 3 positive numbers, got 0.0"),
    (dict(voxel_size=(0.5, 0.5)), ValueError, r"voxel_size must be .*, got \(0.5, 0.5\)"),
    (dict(voxel_size=(0.5, -1.0, 0.5)), ValueError, "voxel_size must be a positive number or 3"),
    (dict(batch=torch.zeros(7)), ValueError, r"batch must be an integer tensor of shape \[10\]"),
    (dict(origin=(1.0, 1.0, 1.0)), ValueError, r"point row \d+ at .* lies below origin \[1.0, 1.0, 1.0\]"),
    (dict(origin=(0.0, 0.0)), ValueError, r"origin must be 3 numbers \(finite\), got \(0.0, 0.0\)"),
    (dict(voxel_size="abc"), ValueError, "voxel_size must be 1 number or 3 numbers, got 'abc'"),
    (dict(batch=[0] * 10), ValueError, r"batch must be an integer tensor of shape \[10\], got list"),
    (dict(batch=torch.tensor([0] * 9 + [-2])), ValueError, "batch indices must be non-negative; row 9 is -2"),
])
def test_voxelize_errors(kwargs, error, match):
    points = torch.rand(10, 4)
    args = {"voxel_size": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        warpsparse.voxelize(points, **args)


def test_voxelize_non_finite_and_far_apart_points():
    points = torch.rand(6, 3)
    points[4, 2] = float("inf")
    with pytest.raises(ValueError, match="points must have finite xyz; row 4 is"):
        warpsparse.voxelize(points, 1.0)
    for far in (3e9, 1e19, 1e30):  # past int32, past int64
        with pytest.raises(ValueError, match="coordinates are stored as int32"):
            warpsparse.voxelize(torch.tensor([[0.0, 0.0, 0.0], [far, 0.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="origin must be 3 numbers"):
        warpsparse.voxelize(torch.zeros(0, 3), 1.0, origin="abc")


def test_voxelize_of_no_points_gives_no_sites():
    x = warpsparse.voxelize(torch.zeros(0, 5), 0.5)
    assert x.num_points == 0 and x.features.shape == (0, 2) and x.coords.shape == (0, 4)


def test_voxelize_bad_points():
    with pytest.raises(TypeError, match="points must be a floating-point tensor"):
        warpsparse.voxelize(torch.ones(5, 3, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match=r"points must have shape \[N, 3\+F\], got \(5, 2\)"):
        warpsparse.voxelize(torch.rand(5, 2), 1.0)


def test_conv_with_empty_output_grid():
    x = warpsparse.SparseTensor(torch.randn(5, 2), random_coords(5, (3, 3, 3), 1), (3, 3, 3), 1)
    with pytest.raises(ValueError, match=r"gives an empty output grid .* for input grid \(3, 3, 3\)"):
        wnn.SparseConv3d(2, 2, 5, **EXPLICIT)(x)


@pytest.mark.parametrize("bias, match", [(torch.randn(7), r"\(8,\), got \(7,\)"),
                                         (torch.randn(5, 8), r"\(8,\), got \(5, 8\)"),
                                         ([0.0] * 8, r"\(8,\), got list")])
def test_bias_of_the_wrong_shape(bias, match):
    x = _x(1)
    with pytest.raises(ValueError, match="bias must be a tensor of shape \\[C_out\\] = " + match):
        subm_conv3d(x, torch.randn(27, x.num_channels, 8), bias, 3, **EXPLICIT)


def test_indice_key_must_be_a_string():
    with pytest.raises(TypeError, match=r"indice_key must be a str or None, got \[1\]"):
        wnn.SubMConv3d(3, 3, 3, indice_key=[1], **EXPLICIT)(_x(3))


@pytest.mark.parametrize("first, second", [("conv", "subm"), ("subm", "conv")])
def test_indice_key_of_another_conv_kind_is_refused(first, second):
    """A submanifold conv and a regular conv cannot share an indice_key (their maps differ)."""
    layers = {"conv": wnn.SparseConv3d(3, 3, 3, padding=1, indice_key="k", **EXPLICIT),
              "subm": wnn.SubMConv3d(3, 3, 3, indice_key="k", **EXPLICIT)}
    x = _x(3)
    layers[first](x)
    with pytest.raises(ValueError, match=f"indice_key 'k' holds a {first} map; a {second} conv cannot reuse it"):
        layers[second](x)


def test_conv_features_checks_its_arguments():
    """The functional conv over a kernel map names what is wrong with its operands."""
    from warpsparse.nn.functional import conv_features
    x = _x(3)
    kmap = wnn.SubMConv3d(3, 4, 3, indice_key="k", **EXPLICIT)(x).indice_store["k"].kmap
    w = torch.randn(27, 3, 4)
    cases = [((torch.randn(20), w, kmap), ValueError, r"features must have shape \[N_in, C_in\], got \(20,\)"),
             ((x.features[:, :, None], w, kmap), ValueError, r"got \(20, 3, 1\)"),
             ((x.features, w, None), TypeError, "kernel map must be a warpsparse KernelMap, got NoneType"),
             ((x.features, [[1.0]], kmap), TypeError, "weight must be a torch.Tensor, got list"),
             (([[1.0]], w, kmap), TypeError, "features must be a torch.Tensor, got list")]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            conv_features(*args, **EXPLICIT)


def test_bad_bwd_algo_fails_in_the_forward_call():
    x = _x(3)
    with pytest.raises(ValueError, match="bwd_algo: unknown algorithm 'bogus'"):
        subm_conv3d(x, torch.randn(27, 3, 4), None, 3, bwd_algo="bogus")
    with torch.no_grad(), pytest.raises(TypeError, match="bwd_algo must be an algorithm name"):
        subm_conv3d(x, torch.randn(27, 3, 4), None, 3, bwd_algo=12345)


def test_epilogue_arguments_are_checked():
    """bias and relu belong to forward ops; the bias must be [C_out] of the features' dtype and device."""
    from warpsparse.algorithms.base import Op
    from warpsparse.tuner import dispatch
    x = _x(3)
    kmap = wnn.SubMConv3d(3, 4, 3, indice_key="k", **EXPLICIT)(x).indice_store["k"].kmap
    feats, weight, grad = x.features, torch.randn(27, 3, 4), torch.randn(x.num_points, 4)
    with pytest.raises(ValueError, match="epilogue of a forward op; conv_dgrad takes neither"):
        dispatch(Op.CONV_DGRAD, grad, weight, kmap, "explicit_gemm", relu=True)
    for bias in (torch.zeros(3), torch.zeros(4, dtype=torch.float64), [0.0] * 4):
        with pytest.raises(ValueError, match=r"bias must be a \[4\] tensor of torch.float32 on cpu"):
            dispatch(Op.CONV_FWD, feats, weight, kmap, "explicit_gemm", bias=bias)
    with pytest.raises(TypeError, match="relu must be a bool, got 'yes'"):
        wnn.SubMConv3d(3, 4, 3, relu="yes")


def test_dispatch_checks_its_operands():
    """``dispatch`` is public: operands that do not fit the op and the map are named, before any algorithm runs."""
    from warpsparse.algorithms.base import Op
    from warpsparse.tuner import dispatch
    x = _x(3)
    kmap = wnn.SubMConv3d(3, 4, 3, indice_key="k", **EXPLICIT)(x).indice_store["k"].kmap
    n = x.num_points
    feats, weight, grad = x.features, torch.randn(27, 3, 4), torch.randn(n, 4)
    cases = [
        (("conv", feats, weight, kmap), TypeError, "op must be a warpsparse Op"),
        ((Op.CONV_FWD, feats, weight, None), TypeError, "must be a warpsparse KernelMap, got NoneType"),
        ((Op.CONV_FWD, feats[:-1], weight, kmap), ValueError, rf"conv_fwd: features must be \[{n}, C\]"),
        ((Op.CONV_FWD, feats[:, 0], weight, kmap), ValueError, r"conv_fwd: features must be"),
        ((Op.CONV_FWD, feats, weight[:9], kmap), ValueError, r"weight must be \[27, 3, C_out\]"),
        ((Op.CONV_FWD, feats, weight.double(), kmap), ValueError, "must share a dtype and a device"),
        ((Op.CONV_FWD, feats.int(), weight.int(), kmap), TypeError, "features must be a dense floating-point"),
        ((Op.CONV_DGRAD, grad, torch.randn(27, 3, 5), kmap), ValueError, r"weight must be \[27, C_in, 4\]"),
        ((Op.CONV_WGRAD, feats, grad[:-1], kmap), ValueError, rf"grad_out must be \[{n}, C_out\]"),
        ((Op.DW_FWD, feats, torch.randn(27, 4), kmap), ValueError, r"weight must be \[27, 3\]"),
        ((Op.DW_WGRAD, feats, grad, kmap), ValueError, rf"grad_out must be \[{n}, 3\]"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            dispatch(*args, "explicit" if args[0] in (Op.DW_FWD, Op.DW_WGRAD) else "explicit_gemm")
    out = dispatch(Op.CONV_FWD, feats, weight, kmap, "explicit_gemm")
    assert out.shape == (n, 4)
    with pytest.raises(TypeError, match="relu must be a bool, got 'no'"):
        subm_conv3d(x, weight, None, 3, relu="no", **EXPLICIT)
    with pytest.raises(TypeError, match="weight must be a dense floating-point tensor"):
        subm_conv3d(x, weight.to_sparse(), None, 3, **EXPLICIT)


@pytest.mark.parametrize("call, match", [
    (lambda t: global_max_pool(t), "input must be a warpsparse.SparseTensor, got Tensor"),
    (lambda t: global_avg_pool(t), "input must be a warpsparse.SparseTensor, got Tensor"),
    (lambda t: wnn.ToDense()(t), "ToDense takes a warpsparse.SparseTensor, got Tensor"),
    (lambda t: subm_conv3d(_x(1), t.tolist(), None, 3, **EXPLICIT),
     r"weight must be a torch.Tensor \(\[K, C_in, C_out\]\), got list"),
    (lambda t: spatially_sparse_conv(_x(2), torch.randn(27, 2, 2), 3, output_spatially_sparse_tensor=t, **EXPLICIT),
     "output_spatially_sparse_tensor must be a warpsparse.SparseTensor, got Tensor"),
], ids=["global_max", "global_avg", "to_dense", "weight", "output_tensor"])
def test_plain_objects_where_tensors_belong(call, match):
    """Each argument given the wrong kind of object is named in the error, with what it got."""
    with pytest.raises(TypeError, match=match):
        call(torch.randn(5, 2))


def test_unknown_algorithm_names_fail_when_the_module_is_made():
    with pytest.raises(ValueError, match="bwd_algo: unknown algorithm 'bogus'"):
        wnn.SubMConv3d(2, 2, 3, bwd_algo="bogus")
    with pytest.raises(ValueError, match="fwd_algo: unknown algorithm 'bogus'"):
        wnn.SparseDepthwiseConv3d(2, 3, fwd_algo=["explicit", "bogus"])


@pytest.mark.parametrize("make, error, match", [
    (lambda: wnn.SparseMaxPool3d(0), ValueError, r"kernel_size must be >= 1 on every axis, got \(0, 0, 0\)"),
    (lambda: wnn.SparseAvgPool3d(2, stride=-1), ValueError, r"stride must be >= 1 on every axis, got \(-1, -1, -1\)"),
    (lambda: wnn.SparseMaxPool3d(2, padding=(1, 1)), TypeError,
     r"padding must be an int or a tuple of 3 ints, got \(1, 1\)")])
def test_bad_pooling_windows_fail_when_the_module_is_made(make, error, match):
    with pytest.raises(error, match=match):
        make()
