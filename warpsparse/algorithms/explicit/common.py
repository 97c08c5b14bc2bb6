"""Shared pieces of the explicit algorithms: accumulation dtype and padded per-offset batches."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from warpsparse.coords.kernel_map import KernelMap


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@functools.cache
def _cuda_out_dtype() -> bool:
    """Whether this torch's CUDA ``mm`` takes ``out_dtype`` (half inputs, fp32 result)."""
    one = torch.ones(1, 1, dtype=torch.float16, device="cuda")
    try:
        torch.mm(one, one, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


def matmul_acc(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``a @ b`` (2-D or batched 3-D) summed and returned in ``acc``: a half-type result is not rounded to 16
    bits per matmul, so small gradients keep their digits (CUDA ``out_dtype`` matmul where torch has it, else
    a cast)."""
    if a.dtype == acc:
        return a @ b
    if a.is_cuda and _cuda_out_dtype():
        return (torch.bmm if a.dim() == 3 else torch.mm)(a, b, out_dtype=acc)
    return a.to(acc) @ b.to(acc)


def offset_ranges(counts: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(start, stop)`` of every offset's pairs in the pair list."""
    ranges, start = [], 0
    for n in counts:
        ranges.append((start, start + n))
        start += n
    return ranges


def identity_offset(kmap: KernelMap) -> int | None:
    """The centre offset of a symmetric (submanifold) map, whose pairs are (i, i) for every site."""
    if kmap.symmetric and kmap.num_in == kmap.num_out:
        return kmap.kernel_volume // 2
    return None


@dataclass(frozen=True)
class OffsetBatch:
    """Offsets grouped into one padded batch: pair positions ``pos`` [S, M] valid where ``valid``."""

    offsets: torch.Tensor  # [S] int64
    pos: torch.Tensor  # [S, M] int64 positions into the pair list
    valid: torch.Tensor  # [S, M] bool


def split_offsets(kmap: KernelMap, batch_below: float) -> tuple[list[int], OffsetBatch | None]:
    """Offsets to run one by one, and the padded batch of the small ones (fewer pairs than ``batch_below``)."""
    counts = kmap.pairs.counts
    skip = identity_offset(kmap)
    looped: list[int] = []
    small: list[int] = []
    for k, n in enumerate(counts):
        if n == 0 or k == skip:
            continue
        (small if n < batch_below else looped).append(k)
    if not small:
        return looped, None
    dev = kmap.device
    width = max(counts[k] for k in small)
    offs = torch.tensor(small, dtype=torch.int64, device=dev)
    col = torch.arange(width, device=dev)
    valid = col < torch.tensor([counts[k] for k in small], device=dev)[:, None]
    pos = (kmap.pairs.bounds[offs][:, None] + col).masked_fill_(~valid, 0)
    return looped, OffsetBatch(offs, pos, valid)
