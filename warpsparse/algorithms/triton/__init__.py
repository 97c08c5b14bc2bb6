"""Triton algorithms: `implicit_gemm` (convolution) and `implicit` (depthwise), registered on import."""
from warpsparse.algorithms import registry
from warpsparse.algorithms.triton.depthwise import TritonImplicitDepthwise
from warpsparse.algorithms.triton.implicit_gemm import TritonImplicitGemm

registry.register(TritonImplicitGemm())
registry.register(TritonImplicitDepthwise())

__all__ = ["TritonImplicitGemm", "TritonImplicitDepthwise"]
