"""The benchmark networks, written once against a small backend interface and built in warpsparse or spconv.

A :class:`Backend` makes the layers (submanifold conv, strided conv, inverse conv, max-pool, sequential) and
the sparse tensors of one library; the networks only call the backend, so both libraries run exactly the same
architecture on the same voxels. :func:`copy_weights` gives a spconv network the weights of a warpsparse one,
so their outputs can be compared.
"""
from __future__ import annotations

import contextlib
import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator

import torch
from torch import nn

import warpsparse
from warpsparse import nn as wnn
from warpsparse.demo import ROTATION_SEED, SCAN_BOX, load_scan, rotation_angles

#: Channels of spconv's benchmark network: SubM in->64->64, then six [max-pool 2/2, SubM c->c', SubM c'->c'].
SPCONV_NET_WIDTHS = (64, 96, 128, 160, 192, 224, 256)
#: MinkUNet-style widths: stem, the four encoder levels, the four decoder levels.
MINKUNET_STEM = 32
MINKUNET_ENCODER = (32, 64, 128, 256)
MINKUNET_DECODER = (256, 128, 96, 96)
MINKUNET_CLASSES = 20
#: Smallest grid extent per axis: six 2/2 pools (spconv's network) leave one cell of 64.
MIN_GRID = 2 ** 6


@dataclass(frozen=True)
class ScanInput:
    """Voxels of the bundled scan: features [N, C] fp32, coords [N, 4] int32 (batch, x0, x1, x2); the copies of
    a batch are rotated about the vertical axis by ``angles_deg``, drawn from ``seed``."""

    features: torch.Tensor
    coords: torch.Tensor
    spatial_shape: tuple[int, int, int]
    batch_size: int
    voxel_size: float
    seed: int
    angles_deg: tuple[float, ...]

    @property
    def num_sites(self) -> int:
        return int(self.coords.shape[0])

    @property
    def label(self) -> str:
        scans = "scan" if self.batch_size == 1 else f"{self.batch_size} rotated scans"
        return f"{scans} @ {self.voxel_size:g} m"

    def to(self, dtype: torch.dtype) -> "ScanInput":
        return ScanInput(self.features.to(dtype), self.coords, self.spatial_shape, self.batch_size, self.voxel_size,
                         self.seed, self.angles_deg)


def box_grid(voxel_size: float) -> tuple[int, int, int]:
    """The grid of the scan's box at ``voxel_size`` (1600 x 1600 x 80 at 0.1 m, as in spconv's benchmark), at
    least :data:`MIN_GRID` cells per axis so that coarse voxels still pool six times."""
    lo, hi = SCAN_BOX
    return tuple(max(MIN_GRID, math.ceil((h - l) / voxel_size - 1e-6)) for l, h in zip(lo, hi))  # type: ignore


def load_input(voxel_size: float, device: torch.device, batch_size: int = 1, seed: int = ROTATION_SEED) -> ScanInput:
    """The bundled scan voxelized at ``voxel_size`` on ``device`` (``batch_size`` > 1: copies rotated by angles
    drawn from ``seed``), on the grid :func:`box_grid`."""
    scan = load_scan(voxel_size, device, batch_size, seed)
    angles = tuple(math.degrees(a) for a in rotation_angles(batch_size, seed).tolist())
    return ScanInput(scan.features.float().contiguous(), scan.coords.contiguous(), box_grid(voxel_size),
                     scan.batch_size, voxel_size, seed, angles)


class Backend(ABC):
    """The layers and tensors of one sparse-convolution library."""

    name: str

    @abstractmethod
    def subm(self, c_in: int, c_out: int, key: str) -> nn.Module:
        """Submanifold 3x3x3 conv without bias; maps shared through ``key``."""

    @abstractmethod
    def down(self, c_in: int, c_out: int, key: str) -> nn.Module:
        """2x2x2 conv of stride 2 without bias, stored under ``key`` for :meth:`up`."""

    @abstractmethod
    def up(self, c_in: int, c_out: int, key: str) -> nn.Module:
        """Inverse of the :meth:`down` conv stored under ``key``: back onto its input sites."""

    @abstractmethod
    def pool(self) -> nn.Module:
        """2x2x2 max-pool of stride 2."""

    @abstractmethod
    def sequential(self, *layers: nn.Module) -> nn.Module:
        """A container passing sparse tensors along (plain torch layers act on the features)."""

    @abstractmethod
    def tensor(self, inp: ScanInput) -> Any:
        """A fresh sparse tensor on ``inp``'s voxels (no maps cached)."""

    @abstractmethod
    def features(self, x: Any) -> torch.Tensor:
        """The features [N, C] of a sparse tensor."""

    @abstractmethod
    def coords(self, x: Any) -> torch.Tensor:
        """The sites [N, 4] (batch, x0, x1, x2) of a sparse tensor."""

    @abstractmethod
    def concat(self, x: Any, skip: Any) -> Any:
        """``x`` with ``skip``'s features appended; both live on the same sites in the same order."""


class WarpsparseBackend(Backend):
    """warpsparse layers running the algorithms ``algo`` allows (``"auto"``: the tuner's choice)."""

    def __init__(self, algo: str = "auto") -> None:
        self.algo = algo
        self.name = f"warpsparse-{'explicit' if algo == 'explicit_gemm' else algo}"

    def subm(self, c_in: int, c_out: int, key: str) -> nn.Module:
        return wnn.SubMConv3d(c_in, c_out, 3, bias=False, indice_key=key, fwd_algo=self.algo, bwd_algo=self.algo)

    def down(self, c_in: int, c_out: int, key: str) -> nn.Module:
        return wnn.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key, fwd_algo=self.algo,
                                bwd_algo=self.algo)

    def up(self, c_in: int, c_out: int, key: str) -> nn.Module:
        return wnn.SparseInverseConv3d(c_in, c_out, 2, indice_key=key, bias=False, fwd_algo=self.algo,
                                       bwd_algo=self.algo)

    def pool(self) -> nn.Module:
        return wnn.SparseMaxPool3d(2, 2)

    def sequential(self, *layers: nn.Module) -> nn.Module:
        return wnn.SparseSequential(*layers)

    def tensor(self, inp: ScanInput) -> Any:
        return warpsparse.SparseTensor(inp.features, inp.coords, inp.spatial_shape, inp.batch_size)

    def features(self, x: Any) -> torch.Tensor:
        return x.features

    def coords(self, x: Any) -> torch.Tensor:
        return x.coords

    def concat(self, x: Any, skip: Any) -> Any:
        return x.replace(torch.cat([x.features, skip.features], dim=1))


class SpconvBackend(Backend):
    """spconv 2.x layers (``spconv.pytorch``) with the MaskImplicitGemm algorithm."""

    def __init__(self, spconv: ModuleType) -> None:
        self.sp = spconv
        self.algo = spconv.ConvAlgo.MaskImplicitGemm
        self.name = "spconv"

    def subm(self, c_in: int, c_out: int, key: str) -> nn.Module:
        return self.sp.SubMConv3d(c_in, c_out, 3, bias=False, indice_key=key, algo=self.algo)

    def down(self, c_in: int, c_out: int, key: str) -> nn.Module:
        return self.sp.SparseConv3d(c_in, c_out, 2, 2, bias=False, indice_key=key, algo=self.algo)

    def up(self, c_in: int, c_out: int, key: str) -> nn.Module:
        return self.sp.SparseInverseConv3d(c_in, c_out, 2, indice_key=key, bias=False, algo=self.algo)

    def pool(self) -> nn.Module:
        return self.sp.SparseMaxPool3d(2, 2, algo=self.algo)

    def sequential(self, *layers: nn.Module) -> nn.Module:
        return self.sp.SparseSequential(*layers)

    def tensor(self, inp: ScanInput) -> Any:
        return self.sp.SparseConvTensor(inp.features, inp.coords, list(inp.spatial_shape), inp.batch_size)

    def features(self, x: Any) -> torch.Tensor:
        return x.features

    def coords(self, x: Any) -> torch.Tensor:
        return x.indices

    def concat(self, x: Any, skip: Any) -> Any:
        return x.replace_feature(torch.cat([x.features, skip.features], dim=1))


def import_spconv() -> tuple[ModuleType | None, str]:
    """``(spconv.pytorch, version)`` when spconv imports, else ``(None, why not)``."""
    try:
        module = importlib.import_module("spconv.pytorch")
        version = getattr(importlib.import_module("spconv"), "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001 - any import failure just leaves the peer columns blank
        return None, f"spconv not importable ({type(exc).__name__}: {exc})"
    return module, str(version)


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm1d(c), nn.ReLU()]


def scaled(widths: tuple[int, ...], divisor: int) -> tuple[int, ...]:
    """``widths`` divided by ``divisor`` (at least 4 channels each): the tiny smoke-run networks."""
    return tuple(max(4, w // divisor) for w in widths)


class SpconvBenchmarkNet(nn.Module):
    """spconv's benchmark network: SubM in->64->64, then six [max-pool 2/2, SubM c->c', SubM c'->c'] to 256."""

    def __init__(self, backend: Backend, in_channels: int = 3, width_divisor: int = 1) -> None:
        super().__init__()
        self.backend = backend
        widths = scaled(SPCONV_NET_WIDTHS, width_divisor)
        layers = [backend.subm(in_channels, widths[0], "c0"), backend.subm(widths[0], widths[0], "c0")]
        for i, (c, c_next) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers += [backend.pool(), backend.subm(c, c_next, f"c{i}"), backend.subm(c_next, c_next, f"c{i}")]
        self.net = backend.sequential(*layers)

    def forward(self, inp: ScanInput) -> Any:
        return self.net(self.backend.tensor(inp))


class MinkUNet(nn.Module):
    """MinkUNet-style segmentation network; BatchNorm + ReLU after every conv.

    Stem: two SubM convs. Encoder, four levels: a 2x2x2 stride-2 conv, then two SubM convs. Decoder, four
    levels: the inverse of the matching strided conv, concatenation of the encoder features of that level,
    two SubM convs. Head: a per-site linear layer to the classes.
    """

    def __init__(self, backend: Backend, in_channels: int = 3, width_divisor: int = 1,
                 num_classes: int = MINKUNET_CLASSES) -> None:
        super().__init__()
        self.backend = backend
        stem, = scaled((MINKUNET_STEM,), width_divisor)
        enc = scaled(MINKUNET_ENCODER, width_divisor)
        dec = scaled(MINKUNET_DECODER, width_divisor)
        seq, subm = backend.sequential, backend.subm
        self.stem = seq(subm(in_channels, stem, "s0"), *_bn_relu(stem), subm(stem, stem, "s0"), *_bn_relu(stem))
        self.down = nn.ModuleList()
        skip_widths, c = [stem], stem
        for level, width in enumerate(enc, start=1):
            self.down.append(seq(backend.down(c, c, f"d{level}"), *_bn_relu(c),
                                 subm(c, width, f"s{level}"), *_bn_relu(width),
                                 subm(width, width, f"s{level}"), *_bn_relu(width)))
            skip_widths.append(width)
            c = width
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for step, width in enumerate(dec):
            level = len(enc) - step  # the decoder goes from this level to the one below
            skip = skip_widths[level - 1]
            self.up.append(seq(backend.up(c, width, f"d{level}"), *_bn_relu(width)))
            self.fuse.append(seq(subm(width + skip, width, f"s{level - 1}"), *_bn_relu(width),
                                 subm(width, width, f"s{level - 1}"), *_bn_relu(width)))
            c = width
        self.head = seq(nn.Linear(c, num_classes))

    def forward(self, inp: ScanInput) -> Any:
        x = self.stem(self.backend.tensor(inp))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips)):
            x = fuse(self.backend.concat(up(x), skip))
        return self.head(x)


NETWORKS: dict[str, type[nn.Module]] = {"spconv_net": SpconvBenchmarkNet, "minkunet": MinkUNet}


@dataclass(frozen=True)
class Precision:
    """How a network runs: weights and inputs in ``storage``, and autocast to ``autocast`` if set."""

    name: str
    storage: torch.dtype
    autocast: torch.dtype | None = None

    @staticmethod
    def of(dtype: torch.dtype, amp: bool) -> "Precision":
        """fp32; pure half (``amp=False``); or fp32 storage with half autocast (``amp=True``)."""
        if dtype == torch.float32:
            return Precision("fp32", torch.float32)
        short = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        return Precision(f"amp-{short}", torch.float32, dtype) if amp else Precision(short, dtype)

    @contextlib.contextmanager
    def context(self, device: torch.device) -> Iterator[None]:
        with torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            yield


def build(network: str, backend: Backend, precision: Precision, device: torch.device, in_channels: int = 3,
          width_divisor: int = 1) -> nn.Module:
    """Network ``network`` of ``backend`` on ``device`` in ``precision``'s storage dtype, in training mode."""
    try:
        cls = NETWORKS[network]
    except KeyError:
        raise ValueError(f"unknown network {network!r}; known: {sorted(NETWORKS)}") from None
    model = cls(backend, in_channels, width_divisor)
    return model.to(device=device, dtype=precision.storage).train()


class NetworkCall:
    """One call of a network on a fresh sparse tensor: forward without grad, or forward and backward.

    The backward pass starts from a fixed random gradient of the output features (made on the first call);
    parameter gradients are reset to ``None`` before every call.
    """

    def __init__(self, model: nn.Module, backend: Backend, inp: ScanInput, precision: Precision,
                 backward: bool) -> None:
        self.model, self.backend, self.precision, self.backward = model, backend, precision, backward
        self.inp = inp.to(precision.storage)
        self.device = inp.features.device
        self.grad: torch.Tensor | None = None

    def __call__(self) -> Any:
        if not self.backward:
            with torch.no_grad(), self.precision.context(self.device):
                return self.model(self.inp)
        self.model.zero_grad(set_to_none=True)
        with self.precision.context(self.device):
            out = self.model(self.inp)
        features = self.backend.features(out)
        if self.grad is None or self.grad.shape != features.shape or self.grad.dtype != features.dtype:
            self.grad = torch.randn_like(features)
        features.backward(self.grad)
        return out


def conv_layers(model: nn.Module) -> list[nn.Module]:
    """The convolutions of ``model`` (weights of 3 dims in warpsparse, 5 in spconv), in definition order."""
    return [m for m in model.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.dim() in (3, 5)]


@torch.no_grad()
def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Give the spconv network ``target`` the weights of the warpsparse network ``source``.

    warpsparse weights are ``[K, C_in, C_out]`` with ``k = (i0*k1 + i1)*k2 + i2``; spconv's implicit-GEMM
    layout is ``[C_out, k0, k1, k2, C_in]`` over the same coordinate axes. Other parameters (norms, head)
    are copied as they are. ``ValueError`` when the two networks do not line up.
    """
    src_convs, dst_convs = conv_layers(source), conv_layers(target)
    if len(src_convs) != len(dst_convs):
        raise ValueError(f"networks differ: {len(src_convs)} warpsparse convs, {len(dst_convs)} spconv convs")
    conv_params = set()
    for s, d in zip(src_convs, dst_convs):
        k0, k1, k2 = s.kernel_size
        c_in, c_out = s.weight.shape[1], s.weight.shape[2]
        w = s.weight.reshape(k0, k1, k2, c_in, c_out).permute(4, 0, 1, 2, 3)
        if tuple(d.weight.shape) != tuple(w.shape):
            raise ValueError(f"spconv weight {tuple(d.weight.shape)} is not the [C_out, k0, k1, k2, C_in] layout "
                             f"{tuple(w.shape)}")
        d.weight.copy_(w)
        conv_params.update((id(s.weight), id(d.weight)))
    src_rest = [p for p in source.parameters() if id(p) not in conv_params]
    dst_rest = [p for p in target.parameters() if id(p) not in conv_params]
    if [p.shape for p in src_rest] != [p.shape for p in dst_rest]:
        raise ValueError("networks differ in their non-conv parameters")
    for s, d in zip(src_rest, dst_rest):
        d.copy_(s)


def _sorted_by_site(coords: torch.Tensor, features: torch.Tensor, span: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = coords.long()
    key = ((c[:, 0] * span + c[:, 1]) * span + c[:, 2]) * span + c[:, 3]
    order = torch.argsort(key)
    return key[order], features[order].float()


def output_difference(a_coords: torch.Tensor, a_features: torch.Tensor, b_coords: torch.Tensor,
                      b_features: torch.Tensor) -> dict[str, Any]:
    """Compare two sparse outputs site by site: same sites, and the relative L2 error of ``a`` against ``b``."""
    out: dict[str, Any] = {"sites_a": int(a_coords.shape[0]), "sites_b": int(b_coords.shape[0])}
    if min(out["sites_a"], out["sites_b"]) == 0:
        out["same_sites"] = out["sites_a"] == out["sites_b"]
        return out
    span = int(max(int(a_coords.max()), int(b_coords.max()))) + 1
    ka, fa = _sorted_by_site(a_coords, a_features, span)
    kb, fb = _sorted_by_site(b_coords, b_features, span)
    out["same_sites"] = bool(ka.shape == kb.shape and torch.equal(ka, kb))
    if out["same_sites"] and fa.shape == fb.shape:
        scale = float(torch.linalg.vector_norm(fb))
        diff = float(torch.linalg.vector_norm(fa - fb))
        out["rel_error"] = diff / scale if scale > 0 else diff
    return out
