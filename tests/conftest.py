"""Test session setup: a private tuning cache, and Triton's interpreter when there is no GPU."""
import logging
import os
import tempfile
from typing import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first @triton.jit
os.environ["WARPCONVNET_BENCHMARK_CACHE_DIR"] = tempfile.mkdtemp(prefix="warpsparse-test-cache-")

_FALLBACKS = ("rejected", "every candidate failed")


@pytest.fixture
def no_fallback(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test where the tuner rejected a wrong candidate or fell back to the reference algorithm: an
    oracle test of a named algorithm must have run that algorithm."""
    with caplog.at_level(logging.WARNING, logger="warpsparse.tuner"):
        yield
    fallbacks = [r.getMessage() for r in caplog.records
                 if r.name == "warpsparse.tuner" and any(f in r.getMessage() for f in _FALLBACKS)]
    assert not fallbacks, f"the tuner replaced a candidate: {fallbacks}"


@pytest.fixture(autouse=True)
def _release_gpu_memory(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a GPU test, hand the memory PyTorch keeps cached back to the device: the GPU suite runs in many
    worker processes on one card, and one worker's cache must not starve another's large test."""
    yield
    if request.node.get_closest_marker("gpu") is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
