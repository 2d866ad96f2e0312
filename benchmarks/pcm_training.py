"""Training for the device: float, BinaryConnect and PCM-noise-trained networks on one PCM chip.

The Fashion-MNIST CNN of issue 23 (``Conv2d(1,16,5,padding=2)``, ReLU, max-pool 2,
``Conv2d(16,32,5,padding=2)``, ReLU, max-pool 2, ``Linear(1568,128)``, ReLU,
``Linear(128,10)``; no batch norm, unlike the registry's ``cnn``), one epoch of Adam at 1e-3,
batch 100, on ``load_data("fashion-mnist")`` (standardized), trained four ways with
``rw.attach`` and a plain loop:

* ``float``: no projection, never clipped (the issue's recipe);
* ``sign`` and ``stoch-sign``: BinaryConnect, deterministic and stochastic, Glorot clip;
* ``pcm-noise``: the ``pcm`` model as a training projection (a chip programmed and read at
  each forward, ``PROJECTION``), straight-through gradient, never clipped.

Each is then swept with ``pcm:t=1,3600,86400,2.6e6,3.15e7`` (global drift compensation), the
same chips for every network (sweep seed 0, ``--trials`` chips, each read at every time), on
the weights it runs with (``on=auto``: the sign network's binary weights, the others' hidden
ones). Prints a markdown table of error and rise over the undistorted error, mean and spread
(standard deviation over chips), and the machine::

    python benchmarks/pcm_training.py --train-subset 20000 --test-subset 5000   # the README's
    python benchmarks/pcm_training.py          # the issue's recipe in full (30 min on 2 busy cores)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import robustweights as rw
from robustweights.data import load_data
from robustweights.measures import get_measure, measure_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pcm_vs_aihwkit import network  # noqa: E402  the network of issue 23

TIMES = (1.0, 3600.0, 86400.0, 2.6e6, 3.15e7)
LABELS = ("1 s", "1 h", "1 day", "1 month", "1 year")
PROJECTION = "pcm:t=1"
# name: (projection or None, clip)
RECIPES = {
    "float": (None, None),
    "sign": ("sign", "glorot"),
    "stoch-sign": ("stoch-sign", "glorot"),
    "pcm-noise": (PROJECTION, None),
    "pcm-noise-year": ("pcm:t=3.15e7", None),  # not in the default run: noise of a year-old chip
}
DEFAULT = ("float", "sign", "stoch-sign", "pcm-noise")


def train_one(name: str, data, seed: int) -> nn.Module:
    """One epoch of Adam 1e-3, batch 100, with the recipe ``name`` (:data:`RECIPES`)."""
    projection, clip = RECIPES[name]
    torch.manual_seed(seed)
    model = network()
    if projection is not None:
        rw.attach(model, projection, clip=clip, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.train.x, data.train.y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    model.train()
    for i in range(0, len(y), 100):
        batch = order[i : i + 100]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
        if projection is not None:
            rw.clip_(model)
    return model.eval()


def sweep_one(model: nn.Module, data, trials: int) -> tuple[float, dict[float, list[float]]]:
    """The undistorted test error and the error of each chip at each time."""
    plain = measure_split(model, data.test, get_measure("error"), batch_size=1000)["error"]
    spec = "pcm:t=" + ",".join(f"{t:g}" for t in TIMES) + ",compensation=global"
    rows = rw.sweep(model, data, [spec], trials=trials, seed=0)
    per_time: dict[float, list[float]] = {t: [] for t in TIMES}
    for r in rows:
        per_time[float(r["value"])].append(r["error"])
    return plain, per_time


def _mean_std(v: list[float]) -> tuple[float, float]:
    t = torch.tensor(v, dtype=torch.float64)
    return float(t.mean()), float(t.std(correction=0)) if len(v) > 1 else 0.0


def table(results: dict) -> str:
    """Markdown: per network, the undistorted error, then error and rise at each time (%)."""
    head = "| network | undistorted | " + " | ".join(LABELS) + " | rise at 1 year |"
    lines = [head, "|---" * (len(LABELS) + 3) + "|"]
    for name, (plain, per_time) in results.items():
        cells = []
        for t in TIMES:
            m, s = _mean_std(per_time[t])
            cells.append(f"{100 * m:.2f} +- {100 * s:.2f} ({100 * (m - plain):+.2f})")
        year_rise = _mean_std([e - plain for e in per_time[TIMES[-1]]])
        rise = f"{100 * year_rise[0]:+.2f} +- {100 * year_rise[1]:.2f}"
        lines.append(f"| {name} | {100 * plain:.2f} | " + " | ".join(cells) + f" | {rise} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-subset", type=int, default=None, help="training images (all)")
    ap.add_argument("--test-subset", type=int, default=None, help="test images (all 10,000)")
    ap.add_argument("--trials", type=int, default=5, help="chips per network")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--networks", default=",".join(DEFAULT), help=f"of {', '.join(RECIPES)}")
    args = ap.parse_args()
    data = load_data(
        "fashion-mnist", train_subset=args.train_subset, test_subset=args.test_subset, seed=0
    )
    results, clock = {}, {}
    for name in args.networks.split(","):
        t0 = time.perf_counter()
        model = train_one(name, data, args.seed)
        t1 = time.perf_counter()
        results[name] = sweep_one(model, data, args.trials)
        clock[name] = (t1 - t0, time.perf_counter() - t1)
        print(
            f"{name}: trained in {clock[name][0]:.0f} s, swept in {clock[name][1]:.0f} s",
            flush=True,
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"\n{len(data.train.y)} training and {len(data.test.y)} test images, {args.trials} chips, "
        f"pcm compensation global, training projection of pcm-noise: {PROJECTION}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; commit {commit}; {datetime.date.today()}\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
