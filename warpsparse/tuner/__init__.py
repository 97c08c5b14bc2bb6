"""The autotuning dispatcher: picks, per call signature, the fastest correct algorithm and remembers it."""
from warpsparse.tuner.dispatcher import Call, collect_calls, dispatch, pretune, reset, save_tuning_cache
from warpsparse.tuner.modes import (
    AUTO,
    SPARSE_CONV_BWD_ALGO_MODE,
    SPARSE_CONV_FWD_ALGO_MODE,
    SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE,
    SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE,
    AlgoSpec,
    Mode,
    mode_for,
)
from warpsparse.tuner.store import cache_dir, cache_file

__all__ = ["AUTO", "AlgoSpec", "Call", "Mode", "SPARSE_CONV_BWD_ALGO_MODE", "SPARSE_CONV_FWD_ALGO_MODE",
           "SPARSE_DEPTHWISE_CONV_BWD_ALGO_MODE", "SPARSE_DEPTHWISE_CONV_FWD_ALGO_MODE", "cache_dir", "cache_file",
           "collect_calls", "dispatch", "mode_for", "pretune", "reset", "save_tuning_cache"]
