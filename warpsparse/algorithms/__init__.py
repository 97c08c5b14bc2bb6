"""The algorithm registry and the algorithms that ship with warpsparse."""
from warpsparse.algorithms import registry
from warpsparse.algorithms.base import CONV_OPS, DEPTHWISE_OPS, Algorithm, Op, ParamSpace, Params, Signature
from warpsparse.algorithms.explicit import ExplicitDepthwise, ExplicitGemm

registry.register(ExplicitGemm())
registry.register(ExplicitDepthwise())

# The GPU paths register themselves; importing them needs neither a GPU nor CuPy.
from warpsparse.algorithms import cupy, triton  # noqa: E402,F401

__all__ = ["Algorithm", "Op", "ParamSpace", "Params", "Signature", "CONV_OPS", "DEPTHWISE_OPS", "registry"]
