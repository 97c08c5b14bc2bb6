"""PyTorch gather-matmul-scatter algorithms: run everywhere, and are the reference for the others."""
from warpsparse.algorithms.explicit.depthwise import ExplicitDepthwise
from warpsparse.algorithms.explicit.gemm import ExplicitGemm

__all__ = ["ExplicitGemm", "ExplicitDepthwise"]
