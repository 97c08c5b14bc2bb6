"""The algorithm registry and the algorithms that ship with warpsparse."""
from warpsparse.algorithms import registry
from warpsparse.algorithms.base import CONV_OPS, DEPTHWISE_OPS, Algorithm, Op, ParamSpace, Params, Signature
from warpsparse.algorithms.explicit import ExplicitDepthwise, ExplicitGemm

registry.register(ExplicitGemm())
registry.register(ExplicitDepthwise())

__all__ = ["Algorithm", "Op", "ParamSpace", "Params", "Signature", "CONV_OPS", "DEPTHWISE_OPS", "registry"]
