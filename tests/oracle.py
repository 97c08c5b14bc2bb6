"""The dense oracle shared by the core tests: random sparse inputs, dense PyTorch references, comparisons.

A test module imports the autouse fixtures it wants: :func:`fresh_seed` runs every test on a fresh random
seed, printed at set-up (pytest shows it with a failure) and named in every comparison failure
(``WARPSPARSE_TEST_SEED=<seed>`` replays a run); :func:`quick_tuning` keeps the tuner short and
:func:`one_thread` keeps CPU ops fast on a busy machine.

References are built from PyTorch's dense ops only (``conv3d``, ``conv_transpose3d``, ``max_pool3d``) on
grids made here, never from warpsparse code, so they are independent of the library under test.
"""
from __future__ import annotations

import math
import os
import secrets
import tempfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F

import warpsparse
from warpsparse.tuner.search import BUDGET_ENV
from warpsparse.tuner.store import CACHE_DIR_ENV

SEED_ENV = "WARPSPARSE_TEST_SEED"
_state = {"seed": None}

#: Relative tolerance (of the reference's magnitude) per result dtype.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}

#: The explicit algorithms: deterministic and fast on CPU (the default AUTO would run the tuner).
EXPLICIT = dict(fwd_algo="explicit_gemm", bwd_algo="explicit_gemm")
EXPLICIT_DW = dict(fwd_algo="explicit", bwd_algo="explicit")

Triple = tuple[int, int, int]


@pytest.fixture(autouse=True)
def fresh_seed() -> int:
    """Seed torch's global generator with a fresh (or replayed) seed for one test."""
    seed = int(os.environ.get(SEED_ENV) or secrets.randbits(31))
    torch.manual_seed(seed)
    _state["seed"] = seed
    print(f"random seed {seed} (replay with {SEED_ENV}={seed})")
    return seed


_QUICK_CACHE_DIR = tempfile.mkdtemp(prefix="warpsparse-oracle-cache-")


@pytest.fixture(autouse=True)
def quick_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny tuning budget (correctness is the subject here, and every new signature of these random inputs
    would otherwise be tuned in full), with a cache file of its own so that candidates it leaves untimed are
    not remembered as settled by other tests of the session."""
    monkeypatch.setenv(BUDGET_ENV, "0.001")
    monkeypatch.setenv(CACHE_DIR_ENV, _QUICK_CACHE_DIR)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run each test on one intra-op thread: on a busy 2-core machine PyTorch's OpenMP scatter kernels
    (``index_add_``) take milliseconds per call with two threads, which would dominate these small tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seed_note() -> str:
    return f"[seed {_state['seed']}; replay with {SEED_ENV}={_state['seed']}]"


def triple(v: int | Sequence[int]) -> Triple:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


# ---------------------------------------------------------------- random inputs

def random_coords(num: int, shape: Sequence[int], batch: int = 1, device: str | torch.device = "cpu") -> torch.Tensor:
    """``num`` distinct random sites (batch, x0, x1, x2) of a ``batch`` x ``shape`` grid, int32, random order."""
    s0, s1, s2 = shape
    total = batch * s0 * s1 * s2
    flat = torch.randperm(total)[:min(num, total)]
    coords = torch.stack([flat // (s0 * s1 * s2), flat // (s1 * s2) % s0, flat // s2 % s1, flat % s2], dim=1)
    return coords.to(device=device, dtype=torch.int32)


@dataclass
class SparseInput:
    """A sparse input with a features leaf (any device and dtype), and a second independent float64 CPU leaf
    holding the same values for the dense reference (so both sides get their own gradients)."""

    feats: torch.Tensor
    ref_feats: torch.Tensor
    coords: torch.Tensor
    shape: Triple
    batch: int

    def tensor(self) -> warpsparse.SparseTensor:
        return warpsparse.SparseTensor(self.feats, self.coords, self.shape, self.batch)

    def dense(self) -> torch.Tensor:
        """The reference's dense grid [B, C, D0, D1, D2] (float64 on the CPU, differentiable in ``ref_feats``)."""
        return densify(self.ref_feats, self.coords.cpu(), self.shape, self.batch)

    def occupancy(self) -> torch.Tensor:
        """[B, 1, D0, D1, D2] float64 on the CPU, 1 at active sites."""
        ones = torch.ones(self.coords.shape[0], 1, dtype=torch.float64)
        return densify(ones, self.coords.cpu(), self.shape, self.batch)


def random_input(num: int, channels: int, shape: Sequence[int] = (8, 8, 8), batch: int = 1,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                 coords: torch.Tensor | None = None, distinct: bool = False) -> SparseInput:
    """Random features (in ``dtype``) on random (or the given) sites; the reference leaf is their float64 copy.

    ``distinct``: every channel holds distinct values, exact in ``dtype`` (integers below N, scaled by a power
    of two; N <= 256 for bfloat16, 2048 for float16), so that maxima have no ties whose gradient could split.
    """
    coords = random_coords(num, shape, batch, device) if coords is None else coords
    n = coords.shape[0]
    if distinct:
        feats = (torch.rand(n, channels, device=device).argsort(dim=0) - n // 2).to(dtype) / 2 ** n.bit_length()
    else:
        feats = torch.randn(n, channels, device=device).to(dtype)
    return SparseInput(feats.clone().requires_grad_(), reference_param(feats), coords,
                       tuple(shape), batch)  # type: ignore[arg-type]


def reference_param(p: torch.Tensor | None) -> torch.Tensor | None:
    """A float64 CPU leaf holding the values of ``p`` (a parameter or input), for the dense side."""
    return None if p is None else p.detach().to("cpu", torch.float64).clone().requires_grad_()


# ---------------------------------------------------------------- dense references

def densify(feats: torch.Tensor, coords: torch.Tensor, shape: Sequence[int], batch: int) -> torch.Tensor:
    """[B, C, D0, D1, D2] grid with ``feats`` at ``coords`` and zeros elsewhere (differentiable)."""
    s0, s1, s2 = shape
    c = coords.long()
    flat = ((c[:, 0] * s0 + c[:, 1]) * s1 + c[:, 2]) * s2 + c[:, 3]
    grid = feats.new_zeros(batch * s0 * s1 * s2, feats.shape[1]).index_copy(0, flat, feats)
    return grid.view(batch, s0, s1, s2, feats.shape[1]).permute(0, 4, 1, 2, 3)


def values_at(grid: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Rows ``grid[b, :, x0, x1, x2]`` for every site of ``coords``: [N, C] (on ``grid``'s device)."""
    c = coords.to(grid.device).long()
    return grid.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1], c[:, 2], c[:, 3]]


def dense_weight(weight: torch.Tensor, kernel_size: Triple, transposed: bool = False,
                 depthwise: bool = False) -> torch.Tensor:
    """(K, C_in, C_out) -> conv3d (C_out, C_in, k) or conv_transpose3d (C_in, C_out, k); depthwise (K, C) ->
    (C, 1, k)."""
    if depthwise:
        return weight.t().reshape(weight.shape[1], 1, *kernel_size)
    w = weight.permute(1, 2, 0) if transposed else weight.permute(2, 1, 0)
    return w.reshape(w.shape[0], w.shape[1], *kernel_size)


def _high_pad(n: int, m: int, k: int, s: int, p: int, d: int) -> int:
    """Zeros to add above an axis of ``n`` (padded by ``p`` below): ``p`` as PyTorch does, or more where a
    regular conv's output needs more to have ``m`` sites."""
    return max(p, (m - 1) * s + d * (k - 1) + 1 - n - p)


def dense_conv(x: torch.Tensor, weight: torch.Tensor, kernel_size: Sequence[int] | int, stride: Sequence[int] | int = 1,
               padding: Sequence[int] | int = 0, dilation: Sequence[int] | int = 1, transposed: bool = False,
               bias: torch.Tensor | None = None, depthwise: bool = False,
               cover: Sequence[int] | None = None) -> torch.Tensor:
    """Dense reference of a conv (weight in warpsparse's (K, C_in, C_out) layout, or (K, C) depthwise).

    Equals ``F.conv3d`` / ``F.conv_transpose3d`` with these arguments wherever those define a value, and is
    extended with the same formula (zero inputs outside the grid) until it covers at least ``cover`` sites per
    axis, for output sites past PyTorch's output grid.
    """
    ks, s, p, d = triple(kernel_size), triple(stride), triple(padding), triple(dilation)
    w = dense_weight(weight, ks, transposed, depthwise)
    groups = x.shape[1] if depthwise else 1
    cover = cover or (1, 1, 1)
    if transposed:
        full = F.conv_transpose3d(x, w, None, s, 0, 0, groups, d)  # PyTorch crops p at both ends of it
        keep = [max(full.shape[2 + a] - 2 * p[a], cover[a]) for a in range(3)]
        y = full[..., p[0]:p[0] + keep[0], p[1]:p[1] + keep[1], p[2]:p[2] + keep[2]]
        y = F.pad(y, [v for a in (2, 1, 0) for v in (0, keep[a] - y.shape[2 + a])])
    else:
        high = [_high_pad(x.shape[2 + a], cover[a], ks[a], s[a], p[a], d[a]) for a in range(3)]
        xp = F.pad(x, [v for a in (2, 1, 0) for v in (p[a], high[a])])
        y = F.conv3d(xp, w, None, s, 0, d, groups)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1, 1)
    return y


def dense_pool(x: torch.Tensor, occ: torch.Tensor, kernel_size: Sequence[int] | int, stride: Sequence[int] | int,
               padding: Sequence[int] | int, dilation: Sequence[int] | int, reduce: str,
               cover: Sequence[int]) -> torch.Tensor:
    """Max / mean over the active sites (``occ`` > 0) of each window, on a grid covering ``cover``."""
    ks, s, p, d = triple(kernel_size), triple(stride), triple(padding), triple(dilation)
    high = [_high_pad(x.shape[2 + a], cover[a], ks[a], s[a], p[a], d[a]) for a in range(3)]
    pads = [v for a in (2, 1, 0) for v in (p[a], high[a])]
    if reduce == "max":
        masked = torch.where(occ > 0, x, torch.full_like(x, -math.inf))
        return F.max_pool3d(F.pad(masked, pads, value=-math.inf), ks, s, 0, d)
    c = x.shape[1]
    ones = torch.ones(c, 1, *ks, dtype=x.dtype, device=x.device)
    total = F.conv3d(F.pad(x, pads), ones, None, s, 0, d, c)
    count = F.conv3d(F.pad(occ, pads), ones[:1], None, s, 0, d)
    return total / count.clamp(min=1)


def reached_sites(inp: SparseInput, kernel_size: Sequence[int] | int, stride: Sequence[int] | int = 1,
                  padding: Sequence[int] | int = 0, dilation: Sequence[int] | int = 1,
                  transposed: bool = False) -> tuple[set[tuple[int, ...]], Triple]:
    """Sites of PyTorch's dense output grid whose receptive field holds an active input, and that grid's shape
    (from ``conv3d`` / ``conv_transpose3d`` of the occupancy with a ones kernel)."""
    ks = triple(kernel_size)
    ones = torch.ones(1, 1, *ks, dtype=torch.float64)
    op = F.conv_transpose3d if transposed else F.conv3d
    counts = op(inp.occupancy(), ones, None, triple(stride), triple(padding), dilation=triple(dilation))
    hit = (counts[:, 0] > 0.5).nonzero()
    return {tuple(r) for r in hit.tolist()}, tuple(counts.shape[2:])  # type: ignore[return-value]


def site_set(coords: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in coords.long().tolist()}


# ---------------------------------------------------------------- comparisons

def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, dtype: torch.dtype | None = None) -> None:
    """``actual`` equals ``expected`` within the tolerance of ``dtype`` (default ``actual``'s), scaled to the
    reference's magnitude; the message names ``what``, the worst element and the seed."""
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)} {seed_note()}"
    if actual.numel() == 0:
        return
    tol = TOLERANCE[dtype or actual.dtype]
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = max(1.0, float(e.abs().max()))
    err = (a - e).abs()
    bad = err > tol * scale + tol * e.abs()
    if bad.any() or not torch.isfinite(a).all():
        worst = int(err.nan_to_num(math.inf).argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), err.shape))
        raise AssertionError(f"{what}: {int(bad.sum())} of {err.numel()} elements differ; worst at {idx}: "
                             f"{float(a.reshape(-1)[worst])} vs reference {float(e.reshape(-1)[worst])} "
                             f"(tol {tol} x scale {scale:.3g}) {seed_note()}")


def assert_sites(coords: torch.Tensor, expected: set[tuple[int, ...]], what: str) -> None:
    """``coords`` are exactly the ``expected`` sites, each once."""
    got = site_set(coords)
    assert len(got) == coords.shape[0], f"{what}: {coords.shape[0] - len(got)} duplicate output sites {seed_note()}"
    missing, extra = sorted(expected - got), sorted(got - expected)
    assert not missing and not extra, (f"{what}: {len(missing)} sites missing (e.g. {missing[:3]}), {len(extra)} "
                                       f"unexpected (e.g. {extra[:3]}) {seed_note()}")


def check_grads(out: torch.Tensor, ref: torch.Tensor, pairs: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]],
                what: str, dtype: torch.dtype | None = None) -> None:
    """Back-propagate one random cotangent through ``out`` and ``ref``; compare the grads of every
    ``(leaf, reference leaf)`` pair (a missing grad counts as zeros)."""
    cot = torch.randn(out.shape, device=out.device).to(out.dtype)
    (out * cot).sum().backward()
    (ref * cot.to(device=ref.device, dtype=ref.dtype)).sum().backward()
    for i, (leaf, ref_leaf) in enumerate(pairs):
        if leaf is None:
            continue
        got = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        want = ref_leaf.grad if ref_leaf.grad is not None else torch.zeros_like(ref_leaf)
        assert got.dtype == leaf.dtype, f"{what}: grad {i} has dtype {got.dtype}, leaf {leaf.dtype}"
        assert_close(got, want, f"{what}: grad of input {i}", dtype)


def check_conv(out: warpsparse.SparseTensor, ref_grid: torch.Tensor,
               pairs: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]], what: str,
               dtype: torch.dtype | None = None, relu: bool = False) -> None:
    """Values of ``out`` equal ``ref_grid`` at its sites (after a ReLU with ``relu``), and so do the gradients of
    ``pairs``. With ``relu`` the reference's gradient passes where ``out`` is positive: within rounding of zero a
    half-precision kernel may land on the other side of the ReLU than the float64 reference."""
    ref = values_at(ref_grid, out.coords)
    assert_close(out.features, torch.relu(ref) if relu else ref, f"{what}: forward", dtype)
    if relu:
        ref = ref * (out.features.detach() > 0).to(ref.device)
    check_grads(out.features, ref, pairs, what, dtype)
