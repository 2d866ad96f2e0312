"""Sweep fusion: the T trials of one sweep cell as one fused network against one trial at a time.

    python benchmarks/sweep_fusion.py  # mlp width 0.25, 8 trials, 2000 inputs
    python benchmarks/sweep_fusion.py --model cnn --width 0.5 --trials 8 --device cuda

Both sides run the same :func:`robustweights.sweep` of one ``add-gauss`` strength with
``trials`` trials on the same random inputs: ``fuse_trials=1`` (one trial at a time) and
``fuse_trials=trials`` (every trial in one vmap'd pass). Rounds alternate the two so that
machine drift hits both alike; the figure is the ratio of the median times from one run
(below 1: fusion is faster). The rows of the two are compared as the tests compare them (the
same error per trial). Random inputs stand in for the data: the cost does not depend on pixel
values; random labels too (the error is about 90%, the same on both sides).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import robustweights as rw  # noqa: E402
from robustweights.data import TensorSplit  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--n", type=int, default=2000, help="test examples")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--distortion", default="add-gauss:sigma=0.5")
    args = ap.parse_args()
    device = torch.device(args.device)
    shape = (1, 28, 28) if args.model in ("mlp", "cnn") else (3, 32, 32)
    torch.manual_seed(0)
    model = rw.create_model(args.model, num_classes=10, in_shape=shape, width=args.width)
    model.to(device).eval()
    split = TensorSplit(
        torch.randn(args.n, *shape, device=device), torch.randint(0, 10, (args.n,), device=device)
    )

    def run(fuse):
        rows = rw.sweep(
            model,
            split,
            [args.distortion],
            trials=args.trials,
            batch_size=args.batch_size,
            fuse_trials=fuse,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return rows

    alone, fused = run(1), run(args.trials)  # warm-up, and the numbers compared
    same = [a["error"] for a in alone] == [f["error"] for f in fused]
    times = {1: [], args.trials: []}
    for _ in range(args.rounds):
        for fuse in times:
            t = time.perf_counter()
            run(fuse)
            times[fuse].append(time.perf_counter() - t)
    a, f = statistics.median(times[1]), statistics.median(times[args.trials])
    where = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    )
    print(f"machine: {where}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"{args.model} width {args.width}, {args.n} inputs, batch {args.batch_size}, "
        f"{args.distortion}, {args.trials} trials"
    )
    print(
        f"one trial at a time {a:.3f} s; fused {f:.3f} s; ratio fused/alone {f / a:.3f} "
        f"(median of {args.rounds} rounds); same error per trial: {same}"
    )


if __name__ == "__main__":
    main()
