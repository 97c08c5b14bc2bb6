#!/usr/bin/env bash
# Set up and run the demo: voxelize the bundled LiDAR scan and run a sparse UNet forward + backward.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
exec python3 -m warpsparse.demo "$@"
