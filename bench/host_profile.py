"""Where the host time of a network call goes: cProfile over tuned calls on a fresh sparse tensor each.

    python bench/host_profile.py --network spconv_net --dtype float16 --calls 20 [--backward] [--top 40]

Prints the wall time per call (device synchronized around each call) and the functions with the most own
(``tottime``) and cumulative time per call.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import networks as nets  # noqa: E402
from warpsparse.tuner import save_tuning_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="spconv_net", choices=sorted(nets.NETWORKS))
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--amp", action="store_true", help="fp32 storage with half autocast")
    parser.add_argument("--backward", action="store_true", help="profile forward+backward calls")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--voxel-size", type=float, default=0.1)
    parser.add_argument("--algo", default="auto")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = nets.Precision.of(getattr(torch, args.dtype), args.amp)
    backend = nets.WarpsparseBackend(args.algo)
    model = nets.build(args.network, backend, precision, device)
    call = nets.NetworkCall(model, backend, nets.load_input(args.voxel_size, device), precision, args.backward)
    for _ in range(3):  # tuning and compilation
        call()
    save_tuning_cache()  # written now, not by the background writer during the profiled calls
    if device.type == "cuda":
        torch.cuda.synchronize()
    walls = []
    profiler = cProfile.Profile()
    for _ in range(args.calls):
        start = time.perf_counter()
        profiler.enable()
        call()
        profiler.disable()
        if device.type == "cuda":
            torch.cuda.synchronize()
        walls.append((time.perf_counter() - start) * 1e3)
    walls.sort()
    print(f"{args.network} {precision.name} {'fwd+bwd' if args.backward else 'fwd'}: median "
          f"{walls[len(walls) // 2]:.2f} ms per call (min {walls[0]:.2f}) over {args.calls} calls")
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats(key).print_stats(args.top)
        print(f"--- by {key} (totals over {args.calls} calls) ---")
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[-12000:])


if __name__ == "__main__":
    main()
