#!/usr/bin/env bash
# Set up and run the test suite (GPU tests skip without CUDA; Triton kernels run in the interpreter on CPU).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec python3 -m pytest -q "$@"
