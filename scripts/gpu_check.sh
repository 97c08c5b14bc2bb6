#!/usr/bin/env bash
# On a CUDA machine: run every gpu-marked test (`tests`) or the benchmark suite (`bench`), logs under $OUT.
#   bash scripts/gpu_check.sh tests [pytest args]
#   bash scripts/gpu_check.sh bench [python -m bench args]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
what=${1:-tests}
shift || true
case "$what" in
  tests)  # spread over GPU_TEST_WORKERS processes when pytest-xdist is installed (the compiles dominate)
    par=()
    python3 -c "import xdist" 2>/dev/null && par=(-n "${GPU_TEST_WORKERS:-4}")
    python3 -m pytest -q -m gpu -p no:cacheprovider "${par[@]}" "$@" 2>&1 | tee "$out/gpu-tests.log" ;;
  bench) python3 -m bench --out "$out" "$@" 2>&1 | tee "$out/bench.log" ;;
  *) echo "usage: $0 tests|bench [args]" >&2; exit 2 ;;
esac
