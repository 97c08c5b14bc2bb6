#!/usr/bin/env bash
# On a CUDA machine: run every gpu-marked test (`tests`), the benchmark suite (`bench`), or in one go the tests,
# the forward tile sweep, the fp16 layer table and the fp16 networks with AUTO's regret (`all`, about 8 minutes
# on an H100), logs under $OUT.
#   bash scripts/gpu_check.sh tests [pytest args]
#   bash scripts/gpu_check.sh bench [python -m bench args]
#   bash scripts/gpu_check.sh all
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
  all)  # every step runs; the status is non-zero when any of them failed
    rc=0
    bash scripts/gpu_check.sh tests -rfxX || rc=1
    python3 bench/tiles.py --channels 128 256 --out "$out" 2>&1 | tee "$out/tiles.log" || rc=1
    python3 bench/layers.py --dtypes fp16 --out "$out" 2>&1 | tee "$out/layers.log" || rc=1
    bash scripts/gpu_check.sh bench --workloads spconv_net,minkunet,regret --dtype float16 --algos auto --no-profile \
      --extra-voxel-sizes "" --regret-s 60 || rc=1
    exit "$rc" ;;
  *) echo "usage: $0 tests|bench [args] | all" >&2; exit 2 ;;
esac
