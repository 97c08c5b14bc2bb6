"""The algorithm registry: algorithms register by name; the tuner asks which apply to a call."""
from __future__ import annotations

from warpsparse.algorithms.base import Algorithm, Op

_REGISTRY: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> Algorithm:
    """Add ``algo`` to the registry (replacing one of the same name) and return it."""
    _REGISTRY[algo.name] = algo
    return algo


def get(name: str) -> Algorithm:
    """The registered algorithm called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; registered: {sorted(_REGISTRY)}") from None


def algorithms_for(op: Op) -> list[Algorithm]:
    """Every registered algorithm implementing ``op``, in registration order."""
    return [a for a in _REGISTRY.values() if op in a.ops]


def names() -> list[str]:
    return list(_REGISTRY)
