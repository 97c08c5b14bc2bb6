"""Per-map layouts of the Triton kernels (row blocks and their offsets, the mirrored order of symmetric maps)
and the Triton max-pool kernels, against direct PyTorch computations on random maps, fresh each run.

On CPU the kernels run in Triton's interpreter; on CUDA on the device.
"""
from __future__ import annotations

import pytest
import torch

from warpsparse.algorithms.triton.layouts import block_offsets, group_columns, pair_chunks
from warpsparse.algorithms.triton.pooling import max_pool_backward, max_pool_forward
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.coords.maps import build_kernel_map
from warpsparse.coords.geometry import submanifold_geometry

from oracle import fresh_seed, random_coords  # noqa: F401  (fresh_seed: autouse fixture)
from test_triton_conv import DEV, coord_set, make_map


def block_reads(lay, b: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a kernel reads for row block ``b``: the weight offsets it multiplies and its rows' sources through
    each ([count, rows of the block]), taken from the layout's table as the kernels take them."""
    n = lay.table.shape[0]
    rows = torch.arange(b * block_m, min((b + 1) * block_m, n), device=lay.table.device)
    if lay.order is not None:
        rows = lay.order.long()[rows]
    cols = lay.active[b, :int(lay.count[b])].long()
    offsets = cols if lay.flip == 0 else lay.table.shape[1] - 1 - cols
    return offsets, lay.table[rows][:, cols].t()


def _random_table(n_out: int, n_in: int, kvol: int, density: float) -> torch.Tensor:
    nbr = torch.randint(0, max(n_in, 1), (n_out, kvol), dtype=torch.int32)
    return nbr.masked_fill(torch.rand(n_out, kvol) > density, -1).to(DEV)


@pytest.mark.parametrize("variant", ["subm", "strided", "transposed", "isolated"])
@pytest.mark.parametrize("chunk", [1, 3, 16, 4096])
def test_pair_chunks_tile_each_offsets_pairs(variant, chunk):
    """Chunks cover every offset's pairs in order, at most ``chunk`` each, never straddling two offsets; the
    chunks past the last (up to the bound ``ceil(P / chunk) + K``) are empty."""
    kmap = make_map(variant)
    chunks = pair_chunks(kmap, chunk)
    pairs = kmap.pairs
    start, stop, offset = chunks.start.tolist(), chunks.stop.tolist(), chunks.offset.tolist()
    bounds = chunks.bounds.tolist()
    assert chunks.num_chunks == len(start) == len(stop) == len(offset) == -(-kmap.num_pairs // chunk) + len(bounds) - 1
    assert bounds[0] == 0 and bounds[-1] <= chunks.num_chunks
    assert all(start[c] == stop[c] and 0 <= offset[c] < kmap.kernel_volume for c in range(bounds[-1], len(start)))
    assert len(bounds) == kmap.kernel_volume + 1 and chunks.start.device == kmap.device
    assert {t.dtype for t in (chunks.start, chunks.stop, chunks.offset, chunks.bounds)} == {torch.int64}
    parts = (chunks.start, chunks.stop, chunks.offset, chunks.bounds)  # aligned: one kernel specialization
    assert all(t.data_ptr() % 16 == 0 for t in parts), [t.data_ptr() % 16 for t in parts]
    pair_bounds = pairs.bounds.tolist()
    for k in range(kmap.kernel_volume):
        mine = range(bounds[k], bounds[k + 1])
        assert all(offset[c] == k for c in mine)
        covered = [p for c in mine for p in range(start[c], stop[c])]
        assert covered == list(range(pair_bounds[k], pair_bounds[k + 1])), f"offset {k}"
        assert all(0 < stop[c] - start[c] <= chunk for c in mine)


def test_pair_chunks_of_a_map_without_pairs():
    kmap = KernelMap(torch.full((5, 8), -1, dtype=torch.int32, device=DEV), 4, (2, 2, 2))
    chunks = pair_chunks(kmap, 16)
    assert chunks.num_chunks == 0 and chunks.start.numel() == chunks.stop.numel() == chunks.offset.numel() == 0
    assert chunks.bounds.tolist() == [0] * 9


@pytest.mark.parametrize("sort", [False, True])
@pytest.mark.parametrize("variant", ["subm", "strided", "transposed", "inverse", "isolated"])
@pytest.mark.parametrize("block_m", [16, 64])
def test_block_offsets_match_direct_layout(variant, sort, block_m):
    """Per block: the offsets any row uses, in increasing order, and each row's source through each."""
    kmap = make_map(variant)
    lay = block_offsets(kmap, sort, block_m)
    order = kmap.sorted_order.long() if sort else torch.arange(kmap.num_out, device=DEV)
    assert (lay.order is not None) == sort
    table = kmap.nbr[order]
    for b in range(-(-kmap.num_out // block_m)):
        rows = table[b * block_m:(b + 1) * block_m]
        want = torch.nonzero((rows >= 0).any(dim=0)).flatten()
        count = int(lay.count[b])
        assert count == want.numel(), f"block {b}: {count} offsets, expected {want.numel()}"
        offsets, sources = block_reads(lay, b, block_m)
        assert lay.flip == 0 and torch.equal(offsets, want)
        assert torch.equal(sources, rows[:, want].t()), f"block {b}: sources differ"


@pytest.mark.parametrize("kvol", [1, 8, 27, 125])
def test_block_offsets_random_tables(kvol):
    """Tables of any kernel volume, including empty rows and offsets no row of a block uses."""
    nbr = _random_table(150, 90, kvol, 0.1)
    kmap = KernelMap(nbr, 90, (kvol, 1, 1))
    lay = block_offsets(kmap, False, 32)
    for b in range(-(-150 // 32)):
        rows = nbr[b * 32:(b + 1) * 32]
        want = torch.nonzero((rows >= 0).any(dim=0)).flatten()
        offsets, sources = block_reads(lay, b, 32)
        assert torch.equal(offsets, want) and torch.equal(sources, rows[:, want].t())


@pytest.mark.parametrize("kvol,groups", [(27, 2), (27, 3), (125, 3)])
def test_block_offsets_of_column_groups(kvol, groups):
    """Each column group's layout orders the rows by that group's columns alone (rows with one pattern together)
    and lists per block only the group's columns its rows use; over the groups every pair is read once. With
    125 offsets the later groups lie past the map mask's 62 exact bits."""
    nbr = _random_table(300, 200, kvol, 0.15)
    kmap = KernelMap(nbr, 200, (kvol, 1, 1))
    seen = torch.zeros_like(nbr, dtype=torch.int64)
    for group in range(groups):
        lo, hi = group_columns(kvol, group, groups)
        lay = block_offsets(kmap, True, 32, group, groups)
        order = lay.order.long()
        assert torch.equal(order.sort().values, torch.arange(300, device=DEV)), "the order must be a permutation"
        bits = torch.arange(hi - lo, device=DEV)
        patterns = ((nbr[order, lo:hi] >= 0).long() << bits).sum(dim=1)  # the group's mask, fewer than 62 bits
        assert bool((patterns[1:] >= patterns[:-1]).all()), f"group {group}: rows not sorted by its mask"
        runs = torch.unique_consecutive(nbr[order, lo:hi] >= 0, dim=0).shape[0]
        assert runs == torch.unique(nbr[:, lo:hi] >= 0, dim=0).shape[0], "rows of one pattern must form one run"
        for b in range(-(-300 // 32)):
            rows = order[b * 32:(b + 1) * 32]
            want = lo + torch.nonzero((nbr[rows, lo:hi] >= 0).any(dim=0)).flatten()
            offsets, sources = block_reads(lay, b, 32)
            assert torch.equal(offsets, want) and torch.equal(sources, nbr[rows][:, want].t())
            seen[rows[:, None], want[None, :]] += (sources.t() >= 0).long()
    assert torch.equal(seen, (nbr >= 0).long()), "every pair must be read once over the groups"


def test_reverse_of_symmetric_map_mirrors_each_column_group():
    """The reverse of a subm map reuses each column group's layout of its source, flipped."""
    src = coord_set(random_coords(250, (9, 9, 9), 2))
    kmap, _ = build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), src.spatial_shape, src, "subm")
    for group in range(3):
        fwd, rev = block_offsets(kmap, True, 32, group, 3), block_offsets(kmap.reversed(), True, 32, group, 3)
        assert rev.order is fwd.order and rev.active is fwd.active and (fwd.flip, rev.flip) == (0, 1)
    assert block_offsets(kmap, True, 32, 0, 3).order is not kmap.sorted_order


def test_mirror_of_symmetric_map_shares_row_groups():
    """The reverse of a symmetric subm map reuses its source's order; rows of one mask stay together."""
    src = coord_set(random_coords(300, (10, 10, 10), 2))
    kmap, _ = build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), src.spatial_shape, src, "subm")
    assert kmap.symmetric
    rev = kmap.reversed()
    assert rev.sorted_order is kmap.sorted_order
    assert torch.equal(rev.sorted_nbr, rev.nbr[rev.sorted_order.long()])
    masks = rev.mask[rev.sorted_order.long()]
    changes = int((masks[1:] != masks[:-1]).sum())
    assert changes == masks.unique().numel() - 1, "rows with one mask must form one run"


def _torch_max_pool(x: torch.Tensor, nbr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = nbr.long()
    window = x.double()[idx.clamp(min=0)].masked_fill((idx < 0).unsqueeze(-1), float("-inf"))
    best, arg = window.max(dim=1)
    return best, idx.gather(1, arg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("c", [1, 5, 70])
def test_max_pool_kernels(dtype, c):
    """Window max and arg-max rows, then the gradient added to the arg-max rows (overlapping windows too)."""
    n_in, n_out, kvol = 120, 80, 8
    nbr = _random_table(n_out, n_in, kvol, 0.4)
    nbr[:, 3] = torch.randperm(n_in, device=DEV)[:n_out].to(torch.int32)  # every window has an input
    x = torch.randn(n_in, c, device=DEV).to(dtype)
    y, src = max_pool_forward(x, nbr)
    best, arg = _torch_max_pool(x, nbr)
    assert torch.equal(y.double(), best)
    y_only, none = max_pool_forward(x, nbr, with_source=False)  # inference: no arg-max rows kept
    assert none is None and torch.equal(y_only, y)
    assert torch.equal(x.double().gather(0, src.long()), best), "the arg-max row must hold the max"
    grad = torch.randn(n_out, c, device=DEV).to(dtype)
    dx = max_pool_backward(grad, src, n_in)
    want = torch.zeros(n_in, c, dtype=torch.float64, device=DEV).scatter_add_(0, arg, grad.double())
    assert dx.dtype == dtype
    torch.testing.assert_close(dx.double(), want, rtol=1e-3 if dtype == torch.float16 else 1e-6, atol=1e-3)


def test_max_pool_kernel_row_without_inputs():
    """A row whose window is empty gets 0 and no arg-max row, and sends no gradient."""
    nbr = torch.tensor([[-1, -1], [0, 1]], dtype=torch.int32, device=DEV)
    x = torch.tensor([[1.0], [3.0]], device=DEV)
    y, src = max_pool_forward(x, nbr)
    assert y.flatten().tolist() == [0.0, 3.0] and src.flatten().tolist() == [-1, 1]
    dx = max_pool_backward(torch.tensor([[5.0], [7.0]], device=DEV), src, 2)
    assert dx.flatten().tolist() == [0.0, 7.0]


@pytest.mark.parametrize("sort", [False, True])
def test_reverse_of_symmetric_map_mirrors_the_source_layout(sort):
    """The reverse of a subm map reads its source's table and blocks with offsets mirrored; it equals the direct
    layout offset for offset (listed in decreasing order)."""
    src = coord_set(random_coords(250, (9, 9, 9), 2))
    kmap, _ = build_kernel_map(src, submanifold_geometry((3, 3, 3), (1, 1, 1)), src.spatial_shape, src, "subm")
    fwd = block_offsets(kmap, sort, 32)
    rev_map = kmap.reversed()
    rev = block_offsets(rev_map, sort, 32)
    assert rev.table is fwd.table and rev.count is fwd.count and rev.active is fwd.active and rev.flip == 1
    assert "nbr" not in vars(rev_map), "the mirrored layout must not materialize the reverse table"
    assert (rev_map.num_out, rev_map.num_in, rev_map.num_pairs) == (kmap.num_in, kmap.num_out, kmap.num_pairs)
    o, k = (kmap.nbr >= 0).nonzero(as_tuple=True)
    reverse = torch.full((kmap.num_in, kmap.kernel_volume), -1, dtype=torch.int32, device=DEV)
    reverse[kmap.nbr[o, k].long(), k] = o.to(torch.int32)  # nbr_T[nbr[o, k], k] = o
    assert torch.equal(rev_map.nbr, reverse)
    order = rev_map.sorted_order.long() if sort else torch.arange(rev_map.num_out, device=DEV)
    table = rev_map.nbr[order]
    for b in range(-(-rev_map.num_out // 32)):
        rows = table[b * 32:(b + 1) * 32]
        offsets, sources = block_reads(rev, b, 32)
        assert torch.equal(offsets.sort().values, torch.nonzero((rows >= 0).any(dim=0)).flatten())
        assert torch.equal(sources, rows[:, offsets].t())
