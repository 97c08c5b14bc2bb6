"""Cache keys: the in-memory hot key of a call and the persistent :class:`EntryKey` it maps to."""
from __future__ import annotations

import math
from typing import Hashable

import torch

from warpsparse.algorithms.base import Op, Signature, tf32_allowed
from warpsparse.cache_schema import EntryKey, SignatureFields
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.tuner.identity import device_info, versions


def half_octave(n: int) -> int:
    """``floor(2 * log2(n))`` for ``n >= 1`` (exact, integer arithmetic); ``-1`` for 0."""
    return (n * n).bit_length() - 1 if n > 0 else -1


def density_bucket(num_pairs: int, n_out: int) -> int:
    """Half-octave bucket of the mean neighbours per output; ``-1`` when there are no pairs."""
    if num_pairs <= 0 or n_out <= 0:
        return -1
    return math.floor(2.0 * math.log2(num_pairs / n_out))


def hot_key(op: Op, a: torch.Tensor, b: torch.Tensor, kmap: KernelMap) -> Hashable:
    """What the in-memory table is keyed on: the bucketed call (as fine as :func:`entry_key`) and the device.

    Built from raw shapes, without a :class:`Signature`, so that a cache hit stays cheap; the TF32 flag
    follows :meth:`Signature.of`.
    """
    n_out = kmap.num_out
    tf32 = a.is_cuda and a.dtype is torch.float32 and tf32_allowed()
    return (op, half_octave(kmap.num_in), half_octave(n_out), a.shape[1], b.shape[1:], kmap.kernel_size,
            kmap.kind, kmap.stride, a.dtype, tf32, density_bucket(kmap.num_pairs, n_out), a.device)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def entry_key(sig: Signature, kmap: KernelMap, device: torch.device) -> EntryKey:
    """The persistent key of a call: bucketed signature, device identity, versions."""
    fields = SignatureFields(
        op=sig.op.value, n_in_bucket=half_octave(sig.n_in), n_out_bucket=half_octave(sig.n_out),
        c_in=sig.c_in, c_out=sig.c_out, kernel_size=kmap.kernel_size, kind=kmap.kind, stride=kmap.stride,
        dtype=dtype_name(sig.dtype), tf32=sig.tf32,
        density_bucket=density_bucket(sig.num_pairs, sig.n_out))
    return EntryKey(signature=fields, device=device_info(device), versions=versions())


def bucket_range(bucket: int) -> str:
    """Human-readable range ``lo-hi`` of the integers in a half-octave bucket."""
    if bucket < 0:
        return "0"
    lo = math.isqrt((1 << bucket) - 1) + 1  # smallest n with n*n >= 2**bucket
    hi = math.isqrt((1 << (bucket + 1)) - 1)  # largest n with n*n < 2**(bucket+1)
    return f"{lo}" if hi <= lo else f"{lo}-{hi}"
