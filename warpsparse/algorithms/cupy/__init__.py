"""CUDA C++ algorithms compiled at run time by NVRTC through CuPy (``pip install warpsparse[cupy]``).

Importing this package never imports CuPy: the algorithms register always, and ``applies_to`` says why they
cannot run where CuPy or a CUDA device is missing.
"""
from warpsparse.algorithms import registry
from warpsparse.algorithms.cupy.depthwise import CupyImplicit
from warpsparse.algorithms.cupy.gemm import CupyImplicitGemm

registry.register(CupyImplicitGemm())
registry.register(CupyImplicit())

__all__ = ["CupyImplicitGemm", "CupyImplicit"]
