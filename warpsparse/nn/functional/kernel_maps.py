"""Finding or building the kernel map of a conv on a SparseTensor: geometry caches and ``indice_key`` store."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry
from warpsparse.coords.keys import key_radix, pack, unpack
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.coords.maps import build_kernel_map
from warpsparse.sparse_tensor import SparseTensor


@dataclass(frozen=True)
class IndiceEntry:
    """A map stored under an ``indice_key``: its geometry and kind, and the input and output site sets."""

    geom: ConvGeometry
    kind: str
    kmap: KernelMap
    src: CoordSet
    dst: CoordSet


def _cached(src: CoordSet, geom: ConvGeometry, kind: str, out: CoordSet | None) -> tuple[KernelMap, CoordSet]:
    key = (kind, geom, None if out is None else id(out))
    hit = src.maps.get(key)
    if hit is not None and (out is None or hit[1] is out):
        return hit
    if kind == "subm":
        out_shape = src.spatial_shape
    elif out is not None:
        out_shape = out.spatial_shape
    else:
        out_shape = geom.output_shape(src.spatial_shape)
    built = build_kernel_map(src, geom, out_shape, out, kind)
    src.maps[key] = built
    return built


def conv_map(x: SparseTensor, geom: ConvGeometry, kind: str, indice_key: str | None = None,
             out: CoordSet | None = None) -> tuple[KernelMap, CoordSet]:
    """The map of ``geom`` from ``x``'s sites: to ``x``'s own sites (``kind="subm"``), to ``out``, or to every
    site reached. Maps are cached per site set; with ``indice_key`` the map is also stored under that key, and a
    key already stored for these sites, this geometry and kind (and these output sites) is reused."""
    if indice_key is not None and not isinstance(indice_key, str):
        raise TypeError(f"indice_key must be a str or None, got {indice_key!r}")
    if indice_key is not None and indice_key in x.indice_store:
        entry = x.indice_store[indice_key]
        if entry.src is not x.coord_set:
            raise ValueError(f"indice_key {indice_key!r} holds a map built on other sites "
                             f"({entry.src.num_points} sites, this input has {x.num_points}); use a new key")
        if entry.kind != kind:
            raise ValueError(f"indice_key {indice_key!r} holds a {entry.kind} map; a {kind} conv cannot reuse it; "
                             "use a new key")
        if entry.geom != geom:
            raise ValueError(f"indice_key {indice_key!r} holds a map of {entry.geom}, not {geom}; use a new key")
        if out is not None and entry.dst is not out:
            raise ValueError(f"indice_key {indice_key!r} holds a map to other output sites; use a new key")
        return entry.kmap, entry.dst
    kmap, dst = _cached(x.coord_set, geom, kind, x.coord_set if kind == "subm" else out)
    if indice_key is not None:
        x.indice_store[indice_key] = IndiceEntry(geom, kind, kmap, x.coord_set, dst)
    return kmap, dst


def inverse_map(x: SparseTensor, indice_key: str, kernel_size: tuple[int, int, int]) -> tuple[KernelMap, CoordSet]:
    """The reverse of the map stored under ``indice_key``: back from its output sites to its input sites."""
    entry = x.indice_store.get(indice_key)
    if entry is None:
        raise ValueError(f"unknown indice_key {indice_key!r}; stored keys: {sorted(x.indice_store)} (keys pass from "
                         "a SparseTensor to the outputs of its layers; a SparseTensor built anew starts without any)")
    if entry.dst is not x.coord_set:
        raise ValueError(f"indice_key {indice_key!r} maps to {entry.dst.num_points} sites, but this input lies on "
                         f"another site set ({x.num_points} sites); an inverse conv takes the output of the conv "
                         "stored there (or a tensor on its sites)")
    if entry.geom.kernel_size != kernel_size:
        raise ValueError(f"kernel_size {kernel_size} differs from the {entry.geom.kernel_size} of the conv stored "
                         f"under indice_key {indice_key!r}")
    return entry.kmap.reversed(), entry.src


def downsampled_sites(src: CoordSet, stride: tuple[int, int, int]) -> CoordSet:
    """Unique ``floor(coords / stride)`` sites (cached per site set and stride)."""
    key = ("downsample", stride)
    hit = src.maps.get(key)
    if hit is None:
        s = torch.tensor([1, *stride], device=src.device)
        (n0, n1, n2), (s0, s1, s2) = src.spatial_shape, stride
        shape = (-(-n0 // s0), -(-n1 // s1), -(-n2 // s2))
        radix = key_radix(shape, src.batch_size)
        keys = torch.unique(pack(torch.div(src.coords.long(), s, rounding_mode="floor"), radix))
        hit = CoordSet(unpack(keys, radix), shape, src.batch_size)
        src.maps[key] = hit
    return hit
