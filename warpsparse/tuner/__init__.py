"""The autotuning dispatcher: picks, per call signature, the fastest correct algorithm and remembers it."""
from warpsparse.tuner.dispatcher import AlgoSpec, dispatch

__all__ = ["AlgoSpec", "dispatch"]
