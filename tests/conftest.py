"""Test session setup: a private tuning cache, and Triton's interpreter when there is no GPU."""
import os
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first @triton.jit
os.environ["WARPCONVNET_BENCHMARK_CACHE_DIR"] = tempfile.mkdtemp(prefix="warpsparse-test-cache-")
