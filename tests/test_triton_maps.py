"""The Triton map builder against the PyTorch builder and a brute-force oracle; layouts; table reuse; limits.

On CPU the kernels run in Triton's interpreter (small sizes); the ``gpu`` tests use the real scan.
"""
from __future__ import annotations

import itertools
import math
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from warpsparse.algorithms.triton.layouts import pair_chunks
from warpsparse.coords import triton_hash
from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, submanifold_geometry
from warpsparse.coords.keys import key_radix, pack
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.coords.maps import build_kernel_map
from warpsparse.coords.triton_hash import CACHE_KEY
from warpsparse.coords import triton_maps
from warpsparse.coords.triton_maps import disjoint_lanes, reverse_table, row_mask

from oracle import fresh_seed, random_coords  # noqa: F401

SCAN = Path(__file__).resolve().parents[1] / "warpsparse" / "data" / "waymo-scan-spconv.npz"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels run compiled on a GPU, else interpreted

@pytest.fixture(autouse=True)
def many_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrow interpreter programs, so that work spreads over many programs as on a GPU."""
    monkeypatch.setattr(triton_hash, "INTERPRETER_LANES", 256)


KERNELS = [1, 2, 3, (3, 1, 3)]
STRIDES = [1, 2, 3]


def _t(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else v


def _strided_cases(transposed: bool) -> list[tuple]:
    """kernel x stride, with dilation, padding and batch cycled over the cases."""
    cases = []
    for i, (k, s) in enumerate(itertools.product(KERNELS, STRIDES)):
        dil = (1, 2, (2, 1, 1))[i % 3]
        pad = (0, 1, (2, 0, 1))[i % 3]
        cases.append((ConvGeometry(_t(k), _t(s), _t(pad), _t(dil), transposed), (1, 3)[i % 2]))
    return cases


def random_set(num: int, shape: tuple[int, int, int], batch: int, device: str = DEV) -> CoordSet:
    """Random distinct sites plus the grid's corners (coordinates 0 and shape-1) in the first and last batch."""
    corners = torch.tensor([[b, x0, x1, x2] for b in {0, batch - 1} for x0 in (0, shape[0] - 1)
                            for x1 in (0, shape[1] - 1) for x2 in (0, shape[2] - 1)], dtype=torch.int32)
    return shuffled_set(torch.cat([corners, random_coords(num, shape, batch)]), shape, batch, device)


def shuffled_set(coords: torch.Tensor, shape: tuple[int, int, int], batch: int, device: str = DEV) -> CoordSet:
    """The distinct sites of ``coords`` in random order."""
    coords = torch.unique(coords.cpu(), dim=0)
    return CoordSet(coords[torch.randperm(coords.shape[0])].to(device).contiguous(), shape, batch)


def brute_force_pairs(src: CoordSet, geom: ConvGeometry, out_shape: tuple[int, int, int]) -> list[tuple]:
    """Every (input row, offset, output site) of the conv relation, by enumeration in Python, in (input row,
    offset) order."""
    offsets = list(itertools.product(*(range(k) for k in geom.kernel_size)))
    pairs = []
    for row, (b, *x) in enumerate(src.coords.tolist()):
        for k, pos in enumerate(offsets):
            out = []
            for xi, t, s, d, p, n in zip(x, pos, geom.stride, geom.dilation, geom.padding, out_shape):
                if geom.transposed:
                    o = xi * s + t * d - p
                else:
                    num = xi + p - t * d
                    o = num // s if num >= 0 and num % s == 0 else -1
                out.append(o if 0 <= o < n else None)
            if None not in out:
                pairs.append((row, k, (b, *out)))
    return pairs


def first_reach_order(pairs: list[tuple]) -> list[tuple]:
    """Output sites in the order of the first pair reaching each."""
    return list(dict.fromkeys(p[2] for p in pairs))


def pairs_of(kmap: KernelMap, out: CoordSet) -> set[tuple]:
    coords = [tuple(c) for c in out.coords.tolist()]
    o, k = (kmap.nbr >= 0).nonzero(as_tuple=True)
    return {(int(kmap.nbr[oi, ki]), int(ki), coords[oi]) for oi, ki in zip(o.tolist(), k.tolist())}


def mask_oracle(nbr: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(nbr.shape[0], dtype=torch.int64)
    for k in range(nbr.shape[1]):
        mask |= (nbr[:, k].cpu() >= 0).long() << min(k, 62)
    return mask


def reverse_oracle(nbr: torch.Tensor, num_in: int) -> torch.Tensor:
    """``nbr_T[nbr[o, k], k] = o`` by indexing."""
    o, k = (nbr >= 0).nonzero(as_tuple=True)
    rev = torch.full((num_in, nbr.shape[1]), -1, dtype=torch.int32, device=nbr.device)
    rev[nbr[o, k].long(), k] = o.to(torch.int32)
    return rev


def both_builders(src: CoordSet, geom: ConvGeometry, out_shape, out: CoordSet | None = None, kind: str = "conv"):
    km_t, out_t = build_kernel_map(src, geom, out_shape, out, kind, builder="torch")
    km_x, out_x = build_kernel_map(src, geom, out_shape, out, kind, builder="triton")
    return km_t, out_t, km_x, out_x


def check_same(km_t: KernelMap, out_t: CoordSet, km_x: KernelMap, out_x: CoordSet) -> None:
    """Identical output sites (in the same order), tables, flags and layouts."""
    assert torch.equal(out_x.coords, out_t.coords)
    assert out_x.spatial_shape == out_t.spatial_shape and out_x.batch_size == out_t.batch_size
    assert torch.equal(km_x.nbr, km_t.nbr)
    assert (km_x.num_in, km_x.kernel_size, km_x.stride, km_x.kind, km_x.symmetric) == \
        (km_t.num_in, km_t.kernel_size, km_t.stride, km_t.kind, km_t.symmetric)
    assert torch.equal(km_x.mask.cpu(), mask_oracle(km_t.nbr))
    assert km_x._pair_count is not None and km_x.num_pairs == km_t.num_pairs == int((km_t.nbr >= 0).sum())
    assert torch.equal(km_x.sorted_order.long(), torch.argsort(km_x.mask, stable=True))
    assert torch.equal(km_x.reversed().nbr, reverse_oracle(km_t.nbr, km_t.num_in))
    assert torch.equal(km_t.reversed().nbr, km_x.reversed().nbr)


def check_own_table(out: CoordSet) -> None:
    """A discovered output set has no table until queried; the one it then builds maps its sites to their rows."""
    assert CACHE_KEY not in out.cache
    table = triton_hash.coord_table(out)
    rows = table.lookup(pack(out.coords, key_radix(out.spatial_shape, out.batch_size)))
    assert torch.equal(rows.cpu(), torch.arange(out.num_points))


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 1), (3, 2), ((3, 1, 3), (1, 1, 2)), ((1, 3, 5), 1),
                                             (5, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_submanifold_equals_torch_and_oracle(kernel, dilation, batch: int) -> None:
    geom = submanifold_geometry(_t(kernel), _t(dilation))
    src = random_set(250, (7, 5, 9), batch)
    km_t, out_t, km_x, out_x = both_builders(src, geom, src.spatial_shape, src, "subm")
    assert out_x is src and km_x.symmetric
    check_same(km_t, out_t, km_x, out_x)
    sites = {tuple(c) for c in src.coords.tolist()}
    assert pairs_of(km_x, src) == {p for p in brute_force_pairs(src, geom, src.spatial_shape) if p[2] in sites}
    assert CACHE_KEY in src.cache


def _refuse(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``triton_maps.<kernel>`` fail when launched."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"{kernel} ran")
    monkeypatch.setattr(triton_maps, kernel, type("Refuse", (), {"__getitem__": lambda self, grid: refuse})())


@pytest.mark.parametrize("kernel,dilation,half", [(3, 1, True), ((1, 3, 5), 1, True), (3, (2, 1, 3), True),
                                                  (5, 1, True), (7, 1, True), ((3, 5, 7), (2, 1, 1), True),
                                                  (1, 1, False), ((9, 9, 11), 1, False)])
def test_submanifold_maps_look_up_half_the_offsets(kernel, dilation, half: bool, monkeypatch) -> None:
    """A symmetric map of 3 to 729 offsets is filled by the half-lookup kernel (mirrored writes), never by the
    full map kernel; 1x1x1 and larger kernels take the full map kernel."""
    geom = submanifold_geometry(_t(kernel), _t(dilation))
    assert triton_maps.half_mapped(geom) == half
    _refuse("_map_kernel" if half else "_half_map_kernel", monkeypatch)
    src = random_set(300 if half else 60, (6, 6, 6), 2)
    check_same(*both_builders(src, geom, src.spatial_shape, src, "subm"))


@pytest.mark.parametrize("num", [59, 60])
def test_half_map_outputs_are_aligned_for_any_site_count(num: int) -> None:
    """The masks and the pair count are 16-byte aligned whatever the parity of the site count, so the half kernel
    compiles once, not once per alignment."""
    flat = torch.randperm(216)[:num]
    src = CoordSet(torch.stack([flat * 0, flat // 36, flat // 6 % 6, flat % 6], 1).int().to(DEV), (6, 6, 6), 1)
    geom = submanifold_geometry((3, 3, 3), (1, 1, 1))
    _, mask, count = triton_maps._half_map(src, geom, triton_maps.coord_table(src))
    assert mask.shape == (num,) and count.shape == (1,)
    assert mask.data_ptr() % 16 == 0 and count.data_ptr() % 16 == 0


def test_half_maps_onto_a_smaller_output_grid_take_the_full_kernel(monkeypatch) -> None:
    """Sites of ``src`` outside a given output grid get no inputs: the half kernel (which maps every site of
    ``src``) is not used; the map equals the full kernel's onto a copy of the sites."""
    geom = submanifold_geometry((3, 3, 3), (1, 1, 1))
    src = random_set(200, (6, 6, 6), 2)
    small = (5, 6, 4)
    copy = CoordSet(src.coords.clone(), src.spatial_shape, src.batch_size)
    want = triton_maps.fill_map(src, geom, small, copy)
    _refuse("_half_map_kernel", monkeypatch)
    got = triton_maps.fill_map(src, geom, small, src)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    outside = (src.coords[:, 1:] >= torch.tensor(small, device=src.device)).any(1)
    assert bool(outside.any()) and bool((got[0][outside] == -1).all())
    km_t, out_t, km_x, out_x = both_builders(src, geom, small, src, "subm")
    assert not km_t.symmetric and not km_x.symmetric, "a map clipped to a smaller grid is not its own mirror"
    check_same(km_t, out_t, km_x, out_x)


@pytest.mark.parametrize("geom,batch", _strided_cases(transposed=False))
def test_strided_conv_equals_torch_and_oracle(geom: ConvGeometry, batch: int) -> None:
    src = random_set(200, (9, 7, 8), batch)
    out_shape = geom.output_shape(src.spatial_shape)
    km_t, out_t, km_x, out_x = both_builders(src, geom, out_shape)
    check_same(km_t, out_t, km_x, out_x)
    pairs = brute_force_pairs(src, geom, out_shape)
    assert pairs_of(km_x, out_x) == set(pairs)
    assert [tuple(c) for c in out_x.coords.tolist()] == first_reach_order(pairs)  # check_same: out_t too
    check_own_table(out_x)


@pytest.mark.parametrize("geom,batch", _strided_cases(transposed=True))
def test_transposed_conv_equals_torch_and_oracle(geom: ConvGeometry, batch: int) -> None:
    src = random_set(50, (5, 4, 6), batch)
    out_shape = geom.output_shape(src.spatial_shape)
    km_t, out_t, km_x, out_x = both_builders(src, geom, out_shape, kind="transposed")
    check_same(km_t, out_t, km_x, out_x)
    pairs = brute_force_pairs(src, geom, out_shape)
    assert pairs_of(km_x, out_x) == set(pairs)
    assert [tuple(c) for c in out_x.coords.tolist()] == first_reach_order(pairs)  # check_same: out_t too
    check_own_table(out_x)


@pytest.mark.parametrize("geom", [ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True),
                                  ConvGeometry((2, 1, 3), (2, 1, 3), transposed=True),
                                  ConvGeometry((2, 2, 1), (3, 3, 2), (0, 0, 0), (2, 1, 1), transposed=True)])
def test_disjoint_transposed_maps_need_no_discovery(geom: ConvGeometry, monkeypatch) -> None:
    """Kernel positions in distinct residues of the stride: every lane is its own output, found without a table."""
    src = random_set(60, (5, 4, 6), 2)
    out_shape = geom.output_shape(src.spatial_shape)
    assert disjoint_lanes(geom, src.spatial_shape, out_shape)
    expected = build_kernel_map(src, geom, out_shape, kind="transposed", builder="torch")

    def no_discovery(*args, **kwargs):
        raise AssertionError("discover_map called")
    monkeypatch.setattr(triton_maps, "discover_map", no_discovery)
    got = build_kernel_map(src, geom, out_shape, kind="transposed", builder="triton")
    check_same(*expected, *got)
    pairs = brute_force_pairs(src, geom, out_shape)
    assert pairs_of(*got) == set(pairs) and len(pairs) == src.num_points * geom.kernel_volume
    assert [tuple(c) for c in got[1].coords.tolist()] == first_reach_order(pairs)
    assert type(got[0]._pair_count) is int  # known on the host: num_pairs reads nothing back
    check_own_table(got[1])


@pytest.mark.parametrize("geom,owned", [
    (ConvGeometry((3, 3, 3), (2, 2, 2), transposed=True), True),  # up to 8 lanes per output
    (ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), transposed=True), True),  # padded: some outputs outside
    (ConvGeometry((4, 3, 2), (2, 3, 1), (1, 0, 0), (1, 1, 1), transposed=True), True),  # 2 x 1 x 2 per output
    (ConvGeometry((3, 2, 3), (2, 2, 2), (0, 0, 0), (1, 2, 1), transposed=True), True),  # dilated onto a residue
    (ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1), transposed=True), False),  # 27 per output: discovered
    (ConvGeometry((3, 3, 3), (2, 2, 2), (0, 0, 0), (2, 2, 2), transposed=True), False),  # 27: discovered
    (ConvGeometry((2, 2, 2), (2, 2, 2)), True),  # one output per input, 8 inputs per output
    (ConvGeometry((2, 2, 2), (2, 2, 2), (1, 1, 1)), True),  # padded
    (ConvGeometry((2, 1, 3), (2, 1, 3)), True),  # uneven
    (ConvGeometry((2, 2, 2), (3, 3, 3)), True),  # gaps: some inputs reach no output
    (ConvGeometry((2, 2, 1), (4, 4, 1), (0, 0, 0), (2, 2, 1)), True),  # dilated within the stride
    (ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1)), False),  # two outputs per input along each axis
    (ConvGeometry((3, 3, 3), (3, 3, 3)), False),  # one output per input but 27 inputs per output
])
def test_maps_with_few_lanes_per_output_are_owned(geom: ConvGeometry, owned: bool, monkeypatch) -> None:
    """Few lanes per output: each lane finds its output's first lane in the input table (no output table, no
    discovery); many: discovered. Both equal the PyTorch builder and the brute-force first-reach order."""
    src = random_set(70, (5, 4, 6), 2)
    out_shape = geom.output_shape(src.spatial_shape)
    assert triton_maps.owned_lanes(geom) == owned
    kind = "transposed" if geom.transposed else "conv"
    expected = build_kernel_map(src, geom, out_shape, kind=kind, builder="torch")

    def not_called(*args, **kwargs):
        raise AssertionError("the other builder was called")
    monkeypatch.setattr(triton_maps, "discover_map" if owned else "owned_map", not_called)
    got = build_kernel_map(src, geom, out_shape, kind=kind, builder="triton")
    check_same(*expected, *got)
    pairs = brute_force_pairs(src, geom, out_shape)
    assert pairs_of(*got) == set(pairs) and len(pairs) > len(first_reach_order(pairs))  # outputs are shared
    assert [tuple(c) for c in got[1].coords.tolist()] == first_reach_order(pairs)
    check_own_table(got[1])


@pytest.mark.parametrize("geom", [ConvGeometry((3, 3, 3), (2, 2, 2), transposed=True),
                                  ConvGeometry((2, 2, 2), (2, 2, 2))])
def test_owned_map_of_no_sites(geom: ConvGeometry) -> None:
    src = shuffled_set(torch.zeros((0, 4), dtype=torch.int32), (5, 4, 6), 1)
    nbr, count, out = triton_maps.owned_map(src, geom, geom.output_shape(src.spatial_shape))
    assert nbr.shape == (0, geom.kernel_volume) and out.num_points == 0 and int(count) == 0


def test_disjoint_transposed_map_of_no_sites() -> None:
    geom = ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True)
    src = shuffled_set(torch.zeros((0, 4), dtype=torch.int32), (5, 4, 6), 1)
    km, out = build_kernel_map(src, geom, geom.output_shape(src.spatial_shape), kind="transposed", builder="triton")
    assert km.nbr.shape == (0, 8) and out.num_points == 0 and km.num_pairs == 0


def test_overlapping_padded_or_clipped_transposed_maps_are_discovered() -> None:
    shape = (5, 4, 6)
    full = ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True)
    assert disjoint_lanes(full, shape, full.output_shape(shape))
    assert not disjoint_lanes(full, shape, (10, 8, 11))  # the last plane of outputs falls outside the grid
    for geom in (ConvGeometry((3, 3, 3), (2, 2, 2), transposed=True),  # overlapping
                 ConvGeometry((2, 2, 2), (2, 2, 2), (1, 1, 1), transposed=True),  # padded: some lanes outside
                 ConvGeometry((2, 2, 2), (2, 2, 2), (0, 0, 0), (2, 2, 2), transposed=True),  # dilated onto a residue
                 ConvGeometry((2, 2, 2), (2, 2, 2))):  # not transposed
        assert not disjoint_lanes(geom, shape, geom.output_shape(shape))
    src = random_set(40, shape, 1)
    check_same(*both_builders(src, full, (10, 8, 11), kind="transposed"))  # clipped: discovered, equal


def test_generative_conv_equals_torch() -> None:
    geom = ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), transposed=True)
    src = random_set(40, (6, 6, 6), 2)
    check_same(*both_builders(src, geom, src.spatial_shape, kind="generative"))


@pytest.mark.parametrize("geom", [ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1)),
                                  ConvGeometry((2, 2, 2), (2, 2, 2)),
                                  ConvGeometry((3, 1, 3), (2, 1, 3), (1, 0, 1), (2, 1, 1)),
                                  ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1), transposed=True),
                                  ConvGeometry((2, 3, 2), (2, 1, 2), (0, 1, 0), (1, 2, 1), transposed=True)])
def test_given_outputs_in_any_order_equal_torch(geom: ConvGeometry) -> None:
    """Outputs given (some unreached, in random order): both builders fill the same rows."""
    src = random_set(40 if geom.transposed else 120, (8, 6, 7), 3)
    out_shape = geom.output_shape(src.spatial_shape)
    reached = build_kernel_map(src, geom, out_shape, builder="torch")[1].coords
    extra = random_coords(30, out_shape, 3)
    out = shuffled_set(torch.cat([reached.cpu()[torch.rand(reached.shape[0]) < 0.7], extra]), out_shape, 3)
    km_t, out_t, km_x, out_x = both_builders(src, geom, out_shape, out)
    assert out_t is out and out_x is out
    check_same(km_t, out_t, km_x, out_x)
    given = {tuple(c) for c in out.coords.tolist()}
    assert pairs_of(km_x, out) == {p for p in brute_force_pairs(src, geom, out_shape) if p[2] in given}


def test_given_outputs_outside_the_output_grid_get_no_inputs() -> None:
    geom = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
    src = random_set(150, (8, 8, 8), 1)
    out_shape = geom.output_shape(src.spatial_shape)
    out = shuffled_set(random_coords(100, (6, 6, 6), 1), (6, 6, 6), 1)  # a larger grid than out_shape
    km, _ = build_kernel_map(src, geom, out_shape, out, builder="triton")
    outside = (out.coords[:, 1:] >= torch.tensor(out_shape, device=DEV)).any(1)
    assert bool(outside.any()) and bool((km.nbr[outside] == -1).all())
    inside = {tuple(c) for c in out.coords[~outside].tolist()}
    assert pairs_of(km, out) == {p for p in brute_force_pairs(src, geom, out_shape) if p[2] in inside}
    check_same(*both_builders(src, geom, out_shape, out))  # the PyTorch builder's keys past the grid do not alias


def test_floor_downsampled_outputs_like_spatially_sparse_conv() -> None:
    """Outputs = unique floor(coords / 2) given to a centred 3x3x3 conv of stride 2."""
    src = random_set(150, (10, 9, 8), 2)
    half = src.coords.clone()
    half[:, 1:] //= 2
    shape = (5, 5, 4)
    out = shuffled_set(half, shape, 2)
    geom = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
    check_same(*both_builders(src, geom, shape, out))


def test_tables_are_built_once_and_reused() -> None:
    src = random_set(80, (6, 7, 5), 2)
    build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), src.spatial_shape, src, "subm",
                     builder="triton")
    table = src.cache[CACHE_KEY]
    geom = ConvGeometry((2, 2, 2), (2, 2, 2))
    out_shape = geom.output_shape(src.spatial_shape)
    _, down = build_kernel_map(src, geom, out_shape, builder="triton")
    assert src.cache[CACHE_KEY] is table  # the strided map queried the same table
    assert CACHE_KEY not in down.cache  # discovery's lane table is dropped
    km_x, _ = build_kernel_map(down, submanifold_geometry((3, 3, 3), (1, 1, 1)), out_shape, down, "subm",
                               builder="triton")
    down_table = down.cache[CACHE_KEY]
    assert down_table.packed and down_table.reserved == down.num_points  # sized for the outputs, not the lanes
    build_kernel_map(down, submanifold_geometry((3, 3, 3), (1, 1, 1)), out_shape, down, "subm", builder="triton")
    up = ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True)
    build_kernel_map(down, up, src.spatial_shape, src, "inverse", builder="triton")
    assert down.cache[CACHE_KEY] is down_table and src.cache[CACHE_KEY] is table  # built once, then reused
    km_t, _ = build_kernel_map(down, submanifold_geometry((3, 3, 3), (1, 1, 1)), out_shape, down, "subm",
                               builder="torch")
    assert torch.equal(km_x.nbr, km_t.nbr)


def test_empty_inputs_and_outputs() -> None:
    empty = CoordSet(torch.zeros((0, 4), dtype=torch.int32, device=DEV), (4, 4, 4), 2)
    geom = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
    km, out = build_kernel_map(empty, geom, geom.output_shape((4, 4, 4)), builder="triton")
    assert km.nbr.shape == (0, 27) and out.num_points == 0 and out.coords.shape == (0, 4)
    given = random_set(5, (2, 2, 2), 2)
    km, _ = build_kernel_map(empty, geom, (2, 2, 2), given, builder="triton")
    assert km.nbr.shape == (given.num_points, 27) and bool((km.nbr == -1).all())
    km, _ = build_kernel_map(empty, submanifold_geometry((3, 3, 3), (1, 1, 1)), (4, 4, 4), empty, "subm",
                             builder="triton")
    assert km.nbr.shape == (0, 27) and km.reversed().nbr.shape == (0, 27) and km.sorted_order.numel() == 0


@pytest.mark.parametrize("shape,batch", [((1 << 20, 1 << 20, 1 << 20), 4), ((1 << 17, 1 << 17, 1 << 17), 1024)])
def test_largest_key_spaces_equal_torch(shape: tuple[int, int, int], batch: int) -> None:
    corner = [batch - 1, *(s - 1 for s in shape)]
    base = torch.tensor([[0, 0, 0, 0], corner, [batch - 1, shape[0] - 2, shape[1] - 1, shape[2] - 2],
                         [batch // 2, shape[0] // 2, 1, shape[2] // 3]], dtype=torch.int32)
    near = (base[:, None, :] + torch.tensor([[0, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 1], [0, 1, -1, 0]])).view(-1, 4)
    hi = torch.tensor([batch - 1, *(s - 1 for s in shape)])
    near = torch.unique(torch.minimum(near.clamp(min=0), hi), dim=0)
    src = shuffled_set(near.int(), shape, batch)
    check_same(*both_builders(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), shape, src, "subm"))
    geom = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
    check_same(*both_builders(src, geom, geom.output_shape(shape)))


def test_key_space_past_two_to_the_62_is_a_clear_error() -> None:
    src = CoordSet(torch.zeros((3, 4), dtype=torch.int32, device=DEV), (1 << 20, 1 << 20, 1 << 20), 1024)
    with pytest.raises(ValueError, match=r"2\*\*62"):
        build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), src.spatial_shape, src, "subm",
                         builder="triton")
    with pytest.raises(ValueError, match=r"2\*\*62"):
        build_kernel_map(src, ConvGeometry((2, 2, 2), (2, 2, 2)), (1 << 19,) * 3, builder="triton")


@pytest.mark.parametrize("geom", [ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1)),  # discovered
                                  ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True),  # spread
                                  ConvGeometry((3, 3, 3), (2, 2, 2), transposed=True)])  # owned
def test_too_many_lanes_is_a_clear_error(geom: ConvGeometry, monkeypatch) -> None:
    """Every builder that walks (input, position) lanes refuses more than int32 lane numbers can hold."""
    src = random_set(20, (5, 4, 6), 1)
    monkeypatch.setattr(triton_maps, "_MAX_LANES", src.num_points * 2)
    with pytest.raises(ValueError, match=r"input sites x \d+ kernel positions = \d+ lanes, more than the \d+ "
                                         r"one map build supports; split the batch"):
        build_kernel_map(src, geom, geom.output_shape(src.spatial_shape), builder="triton")


def test_unknown_builder_is_a_clear_error() -> None:
    src = random_set(5, (3, 3, 3), 1)
    with pytest.raises(ValueError, match="builder must be"):
        build_kernel_map(src, ConvGeometry((2, 2, 2)), (2, 2, 2), builder="cuda")  # type: ignore[arg-type]


@pytest.mark.parametrize("n,kv", [(0, 27), (1, 1), (37, 27), (23, 125), (50, 8), (9, 64)])
def test_pair_list_kernels_equal_torch(n: int, kv: int, monkeypatch) -> None:
    """The Triton pair lists (blocks of a few rows, so that each column's run spans many blocks, and tiles of
    32 columns) equal the PyTorch ones: columns in order, rows in order within a column, and the bounds of
    each column's run."""
    monkeypatch.setattr(triton_hash, "INTERPRETER_LANES", 1)
    monkeypatch.setattr(triton_maps, "PAIRS", triton_hash.Launch(64, 4))
    nbr = torch.randint(0, 40, (n, kv), dtype=torch.int32)  # the test's fresh seed
    nbr[torch.rand(n, kv) < 0.6] = -1
    expected = KernelMap(nbr, 40, (kv, 1, 1)).pairs
    in_idx, out_idx, bounds = triton_maps.pair_lists(nbr, int((nbr >= 0).sum()))
    assert in_idx.dtype == out_idx.dtype == torch.int32 and bounds.dtype == torch.int64
    assert torch.equal(in_idx, expected.in_idx) and torch.equal(out_idx, expected.out_idx)
    assert torch.equal(bounds, expected.bounds)
    short = max(in_idx.numel() - 3, 0)  # a count short of the table's: the entries past it are not written
    assert torch.equal(triton_maps.pair_lists(nbr, short)[0], expected.in_idx[:short])


@pytest.mark.parametrize("kernel", [(3, 3, 3), (5, 5, 5), (1, 1, 1)])
def test_layouts_row_mask_reverse_sorted_and_pairs(kernel: tuple[int, int, int]) -> None:
    """The Triton layout kernels and the lazily built layouts against direct computations."""
    src = random_set(60, (6, 5, 6), 2)
    geom = ConvGeometry(kernel, (2, 2, 2), tuple(k // 2 for k in kernel))  # type: ignore[arg-type]
    km, out = build_kernel_map(src, geom, geom.output_shape(src.spatial_shape), builder="torch")
    assert torch.equal(row_mask(km.nbr).cpu(), mask_oracle(km.nbr))
    assert torch.equal(km.mask.cpu(), mask_oracle(km.nbr))
    expected = torch.full((src.num_points, km.kernel_volume), -1, dtype=torch.int32)
    nbr = km.nbr.cpu()
    for o, k in (nbr >= 0).nonzero().tolist():
        expected[nbr[o, k], k] = o
    assert torch.equal(reverse_table(km.nbr, src.num_points).cpu(), expected)
    assert torch.equal(km.reversed().nbr.cpu(), expected)
    order = km.sorted_order.long()
    assert torch.equal(order, torch.argsort(km.mask, stable=True))
    assert torch.equal(km.sorted_nbr, km.nbr[order])
    p = km.pairs
    assert "counts" not in p.__dict__, "the host counts are read only when asked for"
    assert p.in_idx.dtype == p.out_idx.dtype == torch.int32, "4 bytes per index: the lists live as long as the map"
    assert p.counts == tuple((km.nbr >= 0).sum(0).tolist())
    assert bool((km.nbr[p.out_idx, p.offset_of_pair] == p.in_idx).all())
    assert torch.equal(p.offset_of_pair, (km.nbr >= 0).t().nonzero()[:, 0])


# ----------------------------------------------------------------------------------------------- GPU, real scale

def scan_coords(voxel: float, batch: int = 1) -> CoordSet:
    """The bundled scan voxelized at ``voxel`` metres (copies shifted by a fraction of a voxel per batch)."""
    pc = torch.from_numpy(np.load(SCAN)["pc"]).cuda()
    parts = []
    for b in range(batch):
        xyz = pc + b * voxel / 3
        grid = torch.floor((xyz - pc.min(0).values) / voxel).int()
        grid = torch.unique(grid, dim=0)
        parts.append(torch.cat([torch.full_like(grid[:, :1], b), grid], 1))
    coords = torch.cat(parts)
    shape = tuple(int(v) + 1 for v in coords[:, 1:].max(0).values.tolist())
    return CoordSet(coords.contiguous(), shape, batch)  # type: ignore[arg-type]


def fresh(cs: CoordSet) -> CoordSet:
    return CoordSet(cs.coords.clone(), cs.spatial_shape, cs.batch_size)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("voxel,batch", [(0.1, 1), (0.05, 1), (0.1, 3)])
def test_scan_maps_equal_torch_on_gpu(voxel: float, batch: int) -> None:
    src = scan_coords(voxel, batch)
    subm = submanifold_geometry((3, 3, 3), (1, 1, 1))
    built = both_builders(src, subm, src.spatial_shape, src, "subm")
    check_same(*built)
    km = built[2]  # the Triton pair lists at full scale against PyTorch's on the CPU
    got, want = km.pairs, KernelMap(km.nbr.cpu(), km.num_in, km.kernel_size).pairs
    assert torch.equal(got.in_idx.cpu(), want.in_idx) and torch.equal(got.out_idx.cpu(), want.out_idx)
    assert torch.equal(got.bounds.cpu(), want.bounds)
    for geom in [ConvGeometry((2, 2, 2), (2, 2, 2)), ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))]:
        out_shape = geom.output_shape(src.spatial_shape)
        km_t, out_t, km_x, out_x = both_builders(src, geom, out_shape)
        check_same(km_t, out_t, km_x, out_x)
        check_own_table(out_x)
        assert torch.equal(km_x.pairs.in_idx, km_t.pairs.in_idx) and km_x.pairs.counts == km_t.pairs.counts
        given = CoordSet(out_t.coords[torch.randperm(out_t.num_points, device="cuda")], out_shape, batch)
        check_same(*both_builders(src, geom, out_shape, given))
        up = ConvGeometry(geom.kernel_size, geom.stride, geom.padding, transposed=True)
        check_same(*both_builders(out_x, up, src.spatial_shape, src, "inverse"))
        up_shape = up.output_shape(out_shape)
        check_same(*both_builders(out_x, up, up_shape, kind="transposed"))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 9])
def test_scan_submanifold_maps_of_every_size_equal_torch_on_gpu(kernel: int) -> None:
    """Onto its own sites (the half kernel where it applies) and onto a copy of them (the full map kernel), each
    map equals the PyTorch builder's."""
    src = scan_coords(0.1)
    geom = submanifold_geometry(_t(kernel), (1, 1, 1))
    km_t, out_t, km_x, out_x = both_builders(src, geom, src.spatial_shape, src, "subm")
    check_same(km_t, out_t, km_x, out_x)
    nbr, mask, count = triton_maps.fill_map(src, geom, src.spatial_shape, fresh(src))
    assert torch.equal(nbr, km_t.nbr) and torch.equal(mask.cpu(), mask_oracle(nbr)) and int(count) == km_t.num_pairs


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kernel, dilation", [(3, 1), (3, 2), (5, 1), (7, 1), (9, 1), ((7, 3, 5), (1, 2, 1))])
def test_half_map_kernel_on_gpu(kernel, dilation) -> None:
    """The half-lookup kernel itself (bypassing the routing) against the PyTorch builder, up to 9x9x9 (Triton 3.6
    miscompiled the in-kernel offset arithmetic it had before at 7x7x7). From 7x7x7 on the scan is voxelized at
    0.2 m (67k sites): the PyTorch builder's candidates at 0.1 m took 2 GiB, too much beside 13 other workers on
    an 80 GiB GPU."""
    geom = submanifold_geometry(_t(kernel), _t(dilation))
    src = scan_coords(0.1 if math.prod(geom.kernel_size) < 343 else 0.2)
    km_t, _ = build_kernel_map(src, geom, src.spatial_shape, src, "subm", builder="torch")
    own = fresh(src)
    nbr, _, count = triton_maps._half_map(own, geom, triton_maps.coord_table(own))
    assert torch.equal(nbr, km_t.nbr) and int(count) == km_t.num_pairs


HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def test_builds_read_the_device_as_the_gpu_test_demands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU test below's sync rule, in part, on any machine: warpsparse's Python-level reads of tensor values
    (``item``, ``tolist``, conversions to bool, int or float; not the interpreter's reads of launch arguments)
    while building maps. Subm and spread maps read nothing; discovered and owned maps read their counts once.
    Syncs inside torch ops (``nonzero``, boolean indexing) are not seen here: the GPU test catches those."""
    reads: list[str] = []

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            frames = traceback.extract_stack()[:-1]
            if (any("warpsparse" in f.filename for f in frames)
                    and not any("interpreter" in f.filename for f in frames)):
                reads.append(f"{name} at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}")
            return original(self, *args, **kwargs)
        return read

    src = random_set(300, (8, 8, 8), 2)
    cases = {"subm": (submanifold_geometry((3, 3, 3), (1, 1, 1)), "subm", 0),
             "discovered 3x3x3/2": (ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1)), "conv", 1),
             "owned 2x2x2/2": (ConvGeometry((2, 2, 2), (2, 2, 2)), "conv", 1),
             "owned transposed 3x3x3/2": (ConvGeometry((3, 3, 3), (2, 2, 2), transposed=True), "transposed", 1),
             "spread transposed 2x2x2/2": (ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True), "transposed", 0)}
    for name, (geom, kind, allowed) in cases.items():
        out_shape = src.spatial_shape if kind == "subm" else geom.output_shape(src.spatial_shape)
        sites = CoordSet(src.coords.clone(), src.spatial_shape, src.batch_size)
        with monkeypatch.context() as patched:
            for read in HOST_READS:
                patched.setattr(torch.Tensor, read, counted(read))
            build_kernel_map(sites, geom, out_shape, sites if kind == "subm" else None, kind, builder="triton")
        assert len(reads) == allowed, (name, reads)
        reads.clear()


@pytest.mark.gpu
@gpu
def test_submanifold_build_never_syncs_and_strided_syncs_once() -> None:
    """Subm maps and their layouts build without host reads; discovered and owned maps read their output and
    pair counts in one read, and need none for their layouts; a map's pair lists need no read beyond its pair
    count."""
    src = scan_coords(0.1)
    subm = submanifold_geometry((3, 3, 3), (1, 1, 1))
    down = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
    out_shape = down.output_shape(src.spatial_shape)
    for _ in range(2):  # compile first: the checks below see steady-state calls only
        f = fresh(src)
        build_kernel_map(f, subm, f.spatial_shape, f, "subm")[0].sorted_order
        build_kernel_map(f, down, out_shape)[0].reversed()
    a = fresh(src)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        km, _ = build_kernel_map(a, subm, a.spatial_shape, a, "subm")  # hash table + map + masks
        km.sorted_order, km.sorted_nbr, km.reversed()
        up = ConvGeometry((2, 2, 2), (2, 2, 2), transposed=True)
        build_kernel_map(a, up, up.output_shape(a.spatial_shape), kind="transposed")  # every lane its own output
    finally:
        torch.cuda.set_sync_debug_mode(0)
    up3 = ConvGeometry((3, 3, 3), (2, 2, 2), transposed=True)
    pool = ConvGeometry((2, 2, 2), (2, 2, 2))
    for build in (lambda s: build_kernel_map(s, down, out_shape),  # discovered
                  lambda s: build_kernel_map(s, up3, up3.output_shape(s.spatial_shape), kind="transposed"),  # owned
                  lambda s: build_kernel_map(s, pool, pool.output_shape(s.spatial_shape))):  # owned, regular
        build(fresh(src))
        b = fresh(src)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                km2, out = build(b)
                km2.sorted_order, km2.reversed(), km2.num_pairs, km2.pairs
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) == 1, [str(w.message) for w in syncs]
        assert out.num_points == km2.num_out
    assert km.num_out == src.num_points
    assert km.num_pairs > 0  # the map's one host read: its pair lists and chunks (weight gradients) need no other
    torch.cuda.set_sync_debug_mode("error")
    try:
        km.pairs, km.reversed().pairs, pair_chunks(km, 256)
    finally:
        torch.cuda.set_sync_debug_mode(0)
