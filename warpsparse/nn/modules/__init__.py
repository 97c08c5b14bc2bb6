"""Sparse convolution, pooling and feature-wise modules."""
from warpsparse.nn.modules.conv import (
    SparseConv3d,
    SparseConvTranspose3d,
    SparseDepthwiseConv3d,
    SparseInverseConv3d,
    SpatiallySparseConv,
    SubMConv3d,
)
from warpsparse.nn.modules.featurewise import (
    GELU,
    BatchNorm,
    Dropout,
    LayerNorm,
    LeakyReLU,
    Linear,
    ReLU,
    SiLU,
    SparseSequential,
    ToDense,
)
from warpsparse.nn.modules.pooling import SparseAvgPool3d, SparseGlobalAvgPool, SparseGlobalMaxPool, SparseMaxPool3d

__all__ = [
    "SubMConv3d", "SparseConv3d", "SparseConvTranspose3d", "SparseInverseConv3d", "SpatiallySparseConv",
    "SparseDepthwiseConv3d", "SparseMaxPool3d", "SparseAvgPool3d", "SparseGlobalMaxPool", "SparseGlobalAvgPool",
    "SparseSequential", "BatchNorm", "LayerNorm", "ReLU", "LeakyReLU", "GELU", "SiLU", "Dropout", "Linear", "ToDense",
]
