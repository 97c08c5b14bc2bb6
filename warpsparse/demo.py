"""Demo: voxelize the bundled LiDAR scan and run a sparse UNet forward + backward.

Run with ``python -m warpsparse.demo [--voxel-size 0.1] [--device cuda] [--dtype float16]``.
"""
from __future__ import annotations

import argparse
import time
from importlib import resources

import numpy as np
import torch
from torch import nn

import warpsparse
from warpsparse import SparseTensor, voxelize
from warpsparse.nn import BatchNorm, ReLU, SparseConv3d, SparseInverseConv3d, SparseSequential, SubMConv3d

SCAN_BOX = ((-80.0, -80.0, -2.0), (80.0, 80.0, 6.0))  # metres: x, y, z
#: seed of the rotations of a batch of copies of the scan (:func:`rotation_angles`)
ROTATION_SEED = 0


def load_points() -> torch.Tensor:
    """The bundled outdoor LiDAR sweep (Waymo Open Dataset, non-commercial terms): float32 [198130, 3] xyz."""
    with resources.files("warpsparse.data").joinpath("waymo-scan-spconv.npz").open("rb") as f:
        return torch.from_numpy(np.load(f)["pc"])


def rotation_angles(batch_size: int, seed: int = ROTATION_SEED) -> torch.Tensor:
    """Angles (radians, float32 [batch_size]) of the batch's copies about the vertical axis: 0 for the first (the
    scan as recorded), uniform in [0, 2 pi) from a generator seeded with ``seed`` for the others."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    drawn = torch.rand(batch_size - 1, generator=torch.Generator().manual_seed(seed)) * 2 * torch.pi
    return torch.cat([torch.zeros(1), drawn])


def load_scan(voxel_size: float = 0.1, device: str | torch.device = "cpu", batch_size: int = 1,
              seed: int = ROTATION_SEED) -> SparseTensor:
    """The bundled scan voxelized in the box [-80,-80,-2]..[80,80,6) m; features = mean xyz of each voxel.

    With ``batch_size > 1`` the batch holds the scan and copies rotated about the vertical axis by
    :func:`rotation_angles` of ``seed``: the same seed gives the same batch.
    """
    pts = load_points()
    lo, hi = torch.tensor(SCAN_BOX[0]), torch.tensor(SCAN_BOX[1])
    clouds, batch = [], []
    for b, a in enumerate(rotation_angles(batch_size, seed)):
        p = pts
        if b:
            rot = torch.tensor([[torch.cos(a), -torch.sin(a), 0.0], [torch.sin(a), torch.cos(a), 0.0], [0, 0, 1]])
            p = p @ rot.T
        p = p[((p >= lo) & (p < hi)).all(dim=1)]
        clouds.append(p)
        batch.append(torch.full((p.shape[0],), b, dtype=torch.long))
    points = torch.cat(clouds).to(device)
    return voxelize(points, voxel_size, batch=torch.cat(batch).to(device), origin=SCAN_BOX[0])


def _block(c_in: int, c_out: int, key: str) -> SparseSequential:
    return SparseSequential(SubMConv3d(c_in, c_out, 3, bias=False, indice_key=key), BatchNorm(c_out), ReLU())


class SparseUNet(nn.Module):
    """A small encoder-decoder: SubM blocks, stride-2 convs down, inverse convs up, skip concatenation."""

    def __init__(self, in_channels: int, num_classes: int = 8, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.stem = _block(in_channels, widths[0], "subm0")
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i, (c, c_next) in enumerate(zip(widths[:-1], widths[1:])):
            self.down.append(SparseSequential(
                SparseConv3d(c, c_next, 2, stride=2, bias=False, indice_key=f"down{i}"), BatchNorm(c_next), ReLU(),
                _block(c_next, c_next, f"subm{i + 1}")))
            self.up.append(SparseSequential(
                SparseInverseConv3d(c_next, c, 2, indice_key=f"down{i}", bias=False), BatchNorm(c), ReLU()))
            self.fuse.append(_block(2 * c, c, f"subm{i}"))
        self.head = SubMConv3d(widths[0], num_classes, 1)

    def forward(self, x: SparseTensor) -> SparseTensor:
        x = self.stem(x)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for up, fuse, skip in zip(reversed(self.up), reversed(self.fuse), reversed(skips)):
            x = up(x)
            x = fuse(skip.replace(torch.cat([skip.features, x.features], dim=1)))
        return self.head(x)

    def level_sizes(self, x: SparseTensor) -> list[int]:
        """Sites at each encoder level for input ``x``."""
        sizes = [x.num_points]
        with torch.no_grad():
            x = self.stem(x)
            for down in self.down:
                x = down(x)
                sizes.append(x.num_points)
        return sizes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-size", type=float, default=0.2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    scan = load_scan(args.voxel_size, device)
    model = SparseUNet(scan.num_channels).to(device)
    print(f"warpsparse {warpsparse.__version__} | torch {torch.__version__} | device {device} | dtype {args.dtype}")
    print(f"scan: {load_points().shape[0]} points -> {scan.num_points} voxels of {args.voxel_size} m, "
          f"grid {scan.spatial_shape}")
    print("sites per level:", " -> ".join(str(n) for n in model.level_sizes(scan)))
    for it in range(args.iters):
        x = load_scan(args.voxel_size, device)  # a fresh tensor: maps are built every iteration
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x)
            loss = out.features.float().square().mean()
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        label = "first call (tunes)" if it == 0 else f"call {it + 1}"
        print(f"{label:>20}: forward {1e3 * (t1 - t0):8.1f} ms, backward {1e3 * (t2 - t1):8.1f} ms, "
              f"loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
