"""Functional sparse convolutions and pooling."""
from warpsparse.nn.functional.conv_function import conv_features
from warpsparse.nn.functional.sparse_conv import (
    SPARSE_CONV_BWD_ALGO_MODE,
    SPARSE_CONV_FWD_ALGO_MODE,
    sparse_conv3d,
    sparse_inverse_conv3d,
    spatially_sparse_conv,
    subm_conv3d,
)
from warpsparse.nn.functional.sparse_conv_depth import (
    SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE,
    SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE,
    sparse_depthwise_conv3d,
    spatially_sparse_depthwise_conv,
)
from warpsparse.nn.functional.sparse_pool import global_avg_pool, global_max_pool, sparse_avg_pool3d, sparse_max_pool3d

__all__ = [
    "SPARSE_CONV_FWD_ALGO_MODE", "SPARSE_CONV_BWD_ALGO_MODE", "SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE",
    "SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE", "conv_features", "sparse_conv3d", "subm_conv3d",
    "sparse_inverse_conv3d", "spatially_sparse_conv", "spatially_sparse_depthwise_conv", "sparse_depthwise_conv3d",
    "sparse_max_pool3d", "sparse_avg_pool3d", "global_max_pool", "global_avg_pool",
]
