"""The one entry point that builds kernel maps; it picks the builder for the coordinates' device."""
from __future__ import annotations

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, Triple
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.coords.torch_maps import build_kernel_map_torch


def build_kernel_map(src: CoordSet, geom: ConvGeometry, out_shape: Triple, out: CoordSet | None = None,
                     kind: str = "conv") -> tuple[KernelMap, CoordSet]:
    """Build the map of ``geom`` from ``src`` to the sites of ``out`` (or to every site some pair reaches).

    Returns the :class:`KernelMap` and the output :class:`CoordSet` (``out`` itself when given).
    """
    nbr, out_coords = build_kernel_map_torch(src.coords, src.batch_size, geom, out_shape,
                                             None if out is None else out.coords)
    if out is None:
        out = CoordSet(out_coords, out_shape, src.batch_size)
    symmetric = geom.centred_symmetric and out is src
    kmap = KernelMap(nbr, src.num_points, geom.kernel_size, kind=kind, stride=geom.stride, symmetric=symmetric)
    return kmap, out
