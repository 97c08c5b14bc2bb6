"""SparseTensor construction, defaults, .dense(), .replace(), .to(), and voxelize against a per-point loop."""
from __future__ import annotations

import math

import pytest
import torch

import warpsparse
from warpsparse.nn import SubMConv3d

from oracle import EXPLICIT, assert_close, fresh_seed, one_thread, quick_tuning, random_coords  # noqa: F401


def _tensor(num: int = 50, channels: int = 3, shape=(7, 6, 5), batch: int = 2, **kw) -> warpsparse.SparseTensor:
    coords = random_coords(num, shape, batch)
    return warpsparse.SparseTensor(torch.randn(coords.shape[0], channels, dtype=torch.float64), coords, **kw)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8], ids=str)
def test_construction_defaults(dtype):
    coords = random_coords(40, (7, 6, 5), 3)
    feats = torch.randn(coords.shape[0], 2)
    x = warpsparse.SparseTensor(feats, coords.to(dtype))
    assert x.coords.dtype == torch.int32 and x.coords.is_contiguous() and x.coords.device == feats.device
    assert torch.equal(x.coords, coords), "sites must keep their values and order"
    assert x.spatial_shape == tuple(int(v) + 1 for v in coords[:, 1:].max(dim=0).values)
    assert x.batch_size == int(coords[:, 0].max()) + 1
    assert x.features is feats
    assert (x.num_points, x.num_channels, x.dtype, x.device) == (coords.shape[0], 2, torch.float32, feats.device)
    assert "num_points=" in repr(x)


def test_explicit_shape_and_batch_size():
    coords = random_coords(30, (4, 4, 4), 2)
    x = warpsparse.SparseTensor(torch.randn(30, 1), coords, spatial_shape=[9, 8, 7], batch_size=5)
    assert x.spatial_shape == (9, 8, 7) and x.batch_size == 5
    assert x.dense().shape == (5, 1, 9, 8, 7)


def test_dense_matches_a_loop_and_is_differentiable():
    x = _tensor(batch=3)
    x.features.requires_grad_()
    grid = x.dense()
    b, c = x.batch_size, x.num_channels
    assert grid.shape == (b, c, *x.spatial_shape)
    expected = torch.zeros(b, c, *x.spatial_shape, dtype=torch.float64)
    for row, (bi, i0, i1, i2) in enumerate(x.coords.tolist()):
        expected[bi, :, i0, i1, i2] = x.features[row]
    assert torch.equal(grid, expected)
    cot = torch.randn_like(grid)
    (grid * cot).sum().backward()
    c = x.coords.long()
    assert torch.equal(x.features.grad, cot.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1], c[:, 2], c[:, 3]])


def test_replace_shares_sites_and_key_store():
    x = _tensor()
    SubMConv3d(3, 3, 3, indice_key="s", **EXPLICIT).double()(x)
    new = torch.randn(x.num_points, 7, dtype=torch.float64)
    y = x.replace(features=new)
    assert y.features is new and y.num_channels == 7
    assert y.coord_set is x.coord_set and y.indice_store is x.indice_store and "s" in y.indice_store
    with pytest.raises(ValueError, match=f"{x.num_points} rows"):
        x.replace(torch.randn(x.num_points + 1, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="features must be float16, bfloat16, float32 or float64, got torch.int64"):
        x.replace(torch.ones(x.num_points, 3, dtype=torch.int64))


def test_assigned_features_are_checked_and_spconv_names_work():
    """``x.features = ...`` (spconv 1 style) is checked like ``replace``; ``replace_feature`` and ``indices`` are
    spconv 2's names for ``replace`` and ``coords``."""
    x = _tensor()
    new = torch.randn(x.num_points, 2, dtype=torch.float64)
    x.features = new
    assert x.features is new and x.num_channels == 2 and x.indices is x.coords
    for bad, error in ((torch.randn(x.num_points + 1, 2, dtype=torch.float64), ValueError),
                       (torch.ones(x.num_points, 2, dtype=torch.int64), TypeError)):
        with pytest.raises(error):
            x.features = bad
    assert x.features is new
    y = x.replace_feature(new * 2)
    assert y.coord_set is x.coord_set and torch.equal(y.features, new * 2)


def test_to_dtype_and_device():
    x = _tensor()
    y = x.to(torch.float32)
    assert y.dtype == torch.float32 and y.coord_set is x.coord_set and y.indice_store is x.indice_store
    assert torch.equal(y.features, x.features.float())
    assert x.to("cpu").coord_set is x.coord_set
    m = x.to("meta")  # a device move copies the sites and starts fresh caches
    assert m.device.type == "meta" and m.coords.device.type == "meta" and m.coord_set is not x.coord_set
    assert m.spatial_shape == x.spatial_shape and m.batch_size == x.batch_size and m.indice_store == {}


def test_empty_tensor():
    x = warpsparse.SparseTensor(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.int64), (3, 4, 5), 2)
    assert x.num_points == 0 and x.coords.dtype == torch.int32
    assert x.dense().shape == (2, 4, 3, 4, 5) and not x.dense().any()


# ---------------------------------------------------------------- voxelize

def _voxel_reference(points: torch.Tensor, size, origin, batch, reduce: str) -> dict[tuple[int, ...], torch.Tensor]:
    """Per site, the reduction of its points' features (xyz when there are none), by a loop over points."""
    size = torch.as_tensor(size, dtype=points.dtype).expand(3)
    base = points[:, :3].min(dim=0).values if origin is None else torch.as_tensor(origin, dtype=points.dtype)
    feats = points[:, 3:] if points.shape[1] > 3 else points[:, :3]
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for i in range(points.shape[0]):
        cell = torch.floor((points[i, :3] - base) / size).long().tolist()
        b = 0 if batch is None else int(batch[i])
        groups.setdefault((b, *cell), []).append(feats[i])
    reducer = {"mean": lambda t: t.mean(0), "sum": lambda t: t.sum(0), "max": lambda t: t.amax(0),
               "min": lambda t: t.amin(0)}[reduce]
    return {k: reducer(torch.stack(v)) for k, v in groups.items()}


@pytest.mark.parametrize("reduce", ["mean", "sum", "max", "min"])
@pytest.mark.parametrize("num_features", [0, 2])
@pytest.mark.parametrize("with_batch, origin, size", [(False, None, 0.5), (True, None, (0.5, 0.3, 0.7)),
                                                      (True, (-3.0, -2.5, -4.0), 0.6)])
def test_voxelize(reduce, num_features, with_batch, origin, size):
    n = 300
    xyz = torch.rand(n, 3, dtype=torch.float64) * torch.tensor([3.0, 2.0, 4.0]) - 1.0
    points = torch.cat([xyz, torch.randn(n, num_features, dtype=torch.float64)], dim=1)
    batch = torch.randint(0, 3, (n,)) if with_batch else None
    x = warpsparse.voxelize(points, size, batch=batch, origin=origin, reduce=reduce)
    expected = _voxel_reference(points, size, origin, batch, reduce)
    assert x.num_channels == (num_features or 3)
    assert x.num_points == len(expected) and x.coords.dtype == torch.int32
    got = {tuple(c): x.features[i] for i, c in enumerate(x.coords.tolist())}
    assert set(got) == set(expected), "voxel sites differ from floor((xyz - origin) / voxel_size)"
    keys = sorted(expected)
    assert_close(torch.stack([got[k] for k in keys]), torch.stack([expected[k] for k in keys]), f"voxelize {reduce}")
    c = x.coords.long()
    assert x.spatial_shape == tuple(int(v) + 1 for v in c[:, 1:].max(dim=0).values)
    assert x.batch_size == int(c[:, 0].max()) + 1
    assert (c >= 0).all()


def test_voxelize_with_a_fixed_batch_size_and_grid():
    """Batch items without points and a grid of a fixed size are kept; points outside them are named."""
    points = torch.rand(10, 4)
    batch = torch.tensor([0] * 5 + [1] * 5)
    x = warpsparse.voxelize(points, 0.1, batch=batch, batch_size=4, spatial_shape=(12, 11, 10))
    auto = warpsparse.voxelize(points, 0.1, batch=batch)
    assert x.batch_size == 4 and x.spatial_shape == (12, 11, 10) and auto.batch_size == 2
    assert torch.equal(x.coords, auto.coords) and torch.equal(x.features, auto.features)
    assert x.dense().shape == (4, 1, 12, 11, 10)
    with pytest.raises(ValueError, match="batch_size 1: the batch indices go up to 1"):
        warpsparse.voxelize(points, 0.1, batch=batch, batch_size=1)
    with pytest.raises(ValueError, match=r"outside spatial_shape \(2, 2, 2\)"):
        warpsparse.voxelize(points, 0.1, spatial_shape=(2, 2, 2))
    empty = warpsparse.voxelize(points[:0], 0.1, batch_size=3, spatial_shape=(4, 4, 4))
    assert empty.num_points == 0 and empty.batch_size == 3 and empty.spatial_shape == (4, 4, 4)


def test_voxelize_result_is_a_valid_tensor():
    """The sites of voxelize are unique and feed a conv like any constructed tensor."""
    points = torch.rand(500, 4, dtype=torch.float64) * 5
    x = warpsparse.voxelize(points, 0.7)
    rebuilt = warpsparse.SparseTensor(x.features, x.coords, x.spatial_shape, x.batch_size)  # validates the sites
    assert rebuilt.num_points == x.num_points
    assert math.prod(x.spatial_shape) >= x.num_points
    out = SubMConv3d(1, 2, 3, **EXPLICIT).double()(x)
    assert out.num_points == x.num_points
