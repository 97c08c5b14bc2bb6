"""Kernel-map construction with PyTorch ops (any device): candidate keys, unique, sort and searchsorted."""
from __future__ import annotations

import torch

from warpsparse.coords.geometry import ConvGeometry, Triple
from warpsparse.coords.keys import key_radix, pack, unpack


def candidate_outputs(in_coords: torch.Tensor, geom: ConvGeometry,
                      out_shape: Triple) -> tuple[torch.Tensor, torch.Tensor]:
    """Output positions every (input, offset) pair reaches: coords [N, K, 4] and a validity mask [N, K]."""
    dev = in_coords.device
    offs = geom.offsets(dev)  # [K, 3]
    s = torch.tensor(geom.stride, device=dev)
    p = torch.tensor(geom.padding, device=dev)
    hi = torch.tensor(out_shape, device=dev)
    c = in_coords[:, None, 1:].long()  # [N, 1, 3]
    if geom.transposed:
        pos = c * s + offs - p
        valid = ((pos >= 0) & (pos < hi)).all(dim=-1)
    else:
        num = c + p - offs
        pos = torch.div(num, s, rounding_mode="floor")
        valid = ((num >= 0) & (num % s == 0) & (pos < hi)).all(dim=-1)
    batch = in_coords[:, None, :1].long().expand(-1, pos.shape[1], 1)
    return torch.cat([batch, pos], dim=-1), valid


def build_kernel_map_torch(in_coords: torch.Tensor, batch_size: int, geom: ConvGeometry, out_shape: Triple,
                           out_coords: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour table ``nbr[N_out, K]`` (int32) and the output coordinates.

    With ``out_coords`` given, outputs are exactly those sites (pairs reaching other sites are dropped, and
    sites outside ``out_shape`` get none); otherwise they are every site some pair reaches, in the order of the
    first (input row, offset) reaching it.
    """
    k = geom.kernel_volume
    radix = key_radix(out_shape, batch_size)
    cand, valid = candidate_outputs(in_coords, geom, out_shape)
    in_idx, k_idx = valid.nonzero(as_tuple=True)
    keys = pack(cand[in_idx, k_idx], radix)
    if out_coords is None:
        uniq, inverse = torch.unique(keys, return_inverse=True)
        first = torch.full_like(uniq, keys.numel()).scatter_reduce_(0, inverse, torch.arange(keys.numel(),
                                                                                          device=keys.device), "amin")
        order = torch.argsort(first)  # pairs run in (input row, offset) order: number outputs by their first pair
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        out_idx = rank[inverse]
        out_coords = unpack(uniq[order], radix)
    else:
        inside = (out_coords[:, 1:] < torch.tensor(out_shape, device=out_coords.device)).all(1)
        out_keys = pack(out_coords, radix).masked_fill_(~inside, -1)  # a key past the grid could alias one inside
        sorted_keys, perm = torch.sort(out_keys)
        pos = torch.searchsorted(sorted_keys, keys).clamp_(max=max(out_keys.numel() - 1, 0))
        found = sorted_keys[pos] == keys if out_keys.numel() else torch.zeros_like(keys, dtype=torch.bool)
        in_idx, k_idx, out_idx = in_idx[found], k_idx[found], perm[pos[found]]
    nbr = torch.full((out_coords.shape[0], k), -1, dtype=torch.int32, device=in_coords.device)
    nbr[out_idx, k_idx] = in_idx.to(torch.int32)
    return nbr, out_coords
