"""Sweep overhead: one sweep cell (distort, evaluate, restore) against plain inference \
on the same test set.

    python benchmarks/sweep_overhead.py  # bc-vgg width 0.25, 2000 CIFAR-sized inputs
    python benchmarks/sweep_overhead.py --model bc-vgg --width 1 --n 10000 --device cuda

A cell draws the distorted weights once (``add-gauss``, the most expensive
transform: a normal draw and a std per tensor), pins them, runs the test set
and drops them; plain inference runs the same test set with the weights as
they are. Rounds alternate the two so that machine drift hits both alike; the
figure is the ratio of the median times from one run (target: at most 1.10).
Random inputs stand in for the data: the cost does not depend on pixel values.
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
from robustweights.training import evaluate_split  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bc-vgg")
    ap.add_argument("--width", type=float, default=0.25)
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
    rw.attach(model, "identity", mode="none", clip=None)
    model.to(device).eval()
    split = TensorSplit(
        torch.randn(args.n, *shape, device=device), torch.randint(0, 10, (args.n,), device=device)
    )
    g = torch.Generator(device=device)

    def plain():
        evaluate_split(model, split, batch_size=args.batch_size, device=device)

    def cell():
        g.manual_seed(0)
        with rw.distort(model, args.distortion, g):
            evaluate_split(model, split, batch_size=args.batch_size, device=device)

    plain(), cell()  # warm-up
    times = {"plain": [], "cell": []}
    for _ in range(args.rounds):
        for name, f in (("plain", plain), ("cell", cell)):
            t = time.perf_counter()
            f()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    p, c = statistics.median(times["plain"]), statistics.median(times["cell"])
    where = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    )
    print(f"machine: {where}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"{args.model} width {args.width}, {args.n} inputs, batch {args.batch_size}, "
        f"{args.distortion}"
    )
    print(
        f"plain inference {p:.3f} s ({args.n / p:.0f} img/s); "
        f"sweep cell {c:.3f} s ({args.n / c:.0f} img/s); "
        f"ratio {c / p:.3f} (median of {args.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
