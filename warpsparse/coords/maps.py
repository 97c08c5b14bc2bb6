"""The one entry point that builds kernel maps; it picks the builder for the coordinates' device."""
from __future__ import annotations

from typing import Literal

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.geometry import ConvGeometry, Triple
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.coords.torch_maps import build_kernel_map_torch

Builder = Literal["torch", "triton"]


def build_kernel_map(src: CoordSet, geom: ConvGeometry, out_shape: Triple, out: CoordSet | None = None,
                     kind: str = "conv", *, builder: Builder | None = None) -> tuple[KernelMap, CoordSet]:
    """Build the map of ``geom`` from ``src`` to the sites of ``out`` (or to every site some pair reaches).

    Returns the :class:`KernelMap` and the output :class:`CoordSet` (``out`` itself when given; otherwise a new
    set, its sites in the order of the first (input row, offset) reaching each). ``builder`` picks the
    implementation: ``"triton"`` (hash tables, the default for CUDA coordinates; on CPU only under
    ``TRITON_INTERPRET=1``) or ``"torch"`` (sort and searchsorted, the CPU default). Both give the same maps.
    """
    if builder is None:
        builder = "triton" if src.device.type == "cuda" else "torch"
    mask = count = None
    if builder == "triton":
        from warpsparse.coords.triton_maps import build_kernel_map_triton  # Triton only where it is used
        nbr, mask, count, out = build_kernel_map_triton(src, geom, out_shape, out)
    elif builder == "torch":
        nbr, out_coords = build_kernel_map_torch(src.coords, src.batch_size, geom, out_shape,
                                                 None if out is None else out.coords)
        if out is None:
            out = CoordSet(out_coords, out_shape, src.batch_size)
    else:
        raise ValueError(f"builder must be 'torch', 'triton' or None, got {builder!r}")
    symmetric = geom.centred_symmetric and out is src and tuple(out_shape) == tuple(src.spatial_shape)
    kmap = KernelMap(nbr, src.num_points, geom.kernel_size, kind=kind, stride=geom.stride, symmetric=symmetric,
                     _mask=mask, _pair_count=count)
    return kmap, out
