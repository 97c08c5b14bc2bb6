"""warpsparse: spatially sparse 3D convolutions for PyTorch with an autotuning algorithm dispatcher."""
from warpsparse.version import __version__
from warpsparse.coords.kernel_map import KernelMap
from warpsparse.sparse_tensor import SparseTensor
from warpsparse.voxelize import voxelize
from warpsparse import algorithms, nn  # noqa: E402  (registers the algorithms)
from warpsparse.tuner import save_tuning_cache
from warpsparse.tuner.modes import (
    SPARSE_CONV_BWD_ALGO_MODE,
    SPARSE_CONV_FWD_ALGO_MODE,
    SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE,
    SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE,
)

__all__ = [
    "__version__", "SparseTensor", "KernelMap", "voxelize", "nn", "algorithms", "save_tuning_cache",
    "SPARSE_CONV_FWD_ALGO_MODE", "SPARSE_CONV_BWD_ALGO_MODE",
    "SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE", "SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE",
]
