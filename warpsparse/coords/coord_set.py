"""`CoordSet`: one set of sparse sites, shared by every tensor living on it, with its map and table caches."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from warpsparse.coords.geometry import Triple


@dataclass(eq=False)
class CoordSet:
    """Sites ``coords`` [N, 4] int32 (batch, x0, x1, x2) in a ``spatial_shape`` grid of ``batch_size`` batches.

    ``maps`` caches kernel maps whose *input* is this set (keyed by geometry); ``cache`` holds whatever the
    builders keep per set (the GPU hash table). Both live as long as the set.
    """

    coords: torch.Tensor
    spatial_shape: Triple
    batch_size: int
    maps: dict[Any, Any] = field(default_factory=dict, repr=False)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_points(self) -> int:
        return self.coords.shape[0]

    @property
    def device(self) -> torch.device:
        return self.coords.device
