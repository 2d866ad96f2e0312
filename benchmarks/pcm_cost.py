"""What a ``pcm`` sweep cell costs against one plain evaluation of the same model on the CPU.

    python benchmarks/pcm_cost.py               # the Fashion-MNIST CNN, 10k inputs; bc-vgg 0.25
    python benchmarks/pcm_cost.py --n-vgg 10000 --threads 2

Two models: the Fashion-MNIST CNN of the PCM check (``Conv2d(1,16,5,padding=2)``, ReLU,
max-pool 2, ``Conv2d(16,32,5,padding=2)``, ReLU, max-pool 2, ``Linear(1568,128)``, ReLU,
``Linear(128,10)``; 206k weights) on a 10k test set, and ``bc-vgg`` at width 0.25 (0.9M
weights) on CIFAR-sized inputs. Random inputs stand in for the data: the cost does not depend
on pixel values. Per model, rounds alternate a plain evaluation (``measure_split``), a cell
(``rw.distort`` with ``pcm:t=86400`` from a fresh seed, then the same evaluation) and the same
cell with ``add-gauss`` for comparison; the figures are the medians' ratios from one run (the
target: a ``pcm`` cell at most 1.2 plain evaluations). Then a sweep cell as ``rw.sweep`` runs it
(bits figures and all): the time of a sweep of ``1 + k`` trials less that of one trial, over
``k``. Last, the distortion alone on an 8.4M-weight matrix against ``add-gauss``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import robustweights as rw  # noqa: E402
from robustweights.measures import measure_split  # noqa: E402
from robustweights.splits import TensorSplit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pcm_vs_aihwkit import network  # noqa: E402  the network of the PCM check (issue 23)

PCM = "pcm:t=86400"
GAUSS = "add-gauss:sigma=0.1"


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def compare(name: str, model: nn.Module, shape, n: int, rounds: int, k: int) -> None:
    """Print the plain evaluation, the cells and the sweep cell of ``model`` on ``n`` inputs."""
    model.eval()
    split = TensorSplit(torch.randn(n, *shape), torch.randint(0, 10, (n,)))
    g = torch.Generator()

    def plain():
        measure_split(model, split, "error", batch_size=1000)

    def cell(spec):
        def run():
            g.manual_seed(0)
            with rw.distort(model, spec, g):
                plain()

        return run

    runs = {"plain": plain, PCM: cell(PCM), GAUSS: cell(GAUSS)}
    for f in runs.values():  # warm-up
        f()
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, f in runs.items():
            times[key].append(_timed(f))
    med = {key: statistics.median(v) for key, v in times.items()}
    weights = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    print(f"\n{name}: {weights / 1e6:.2f}M weights, {n} inputs, batch 1000, {rounds} rounds")
    print(f"  plain evaluation            {med['plain']:.3f} s")
    for key in (PCM, GAUSS):
        print(f"  cell {key:<22} {med[key]:.3f} s   ratio {med[key] / med['plain']:.3f}")
    one = _timed(lambda: rw.sweep(model, split, [PCM], trials=1))
    more = _timed(lambda: rw.sweep(model, split, [PCM], trials=1 + k))
    per = (more - one) / k
    print(f"  rw.sweep cell {PCM:<13} {per:.3f} s   ratio {per / med['plain']:.3f} ({k} cells)")


def alone(rounds: int) -> None:
    """The distortions alone on one 2048 x 4096 matrix (8.4M weights)."""
    w = torch.randn(2048, 4096)
    g = torch.Generator().manual_seed(0)
    med = {}
    for spec in (GAUSS, PCM, PCM + ",compensation=none"):
        t = rw.transform(spec)
        t(w, g)
        med[spec] = statistics.median(_timed(lambda: t(w, g)) for _ in range(rounds))
    print("\n8.4M weights (2048 x 4096), the distortion alone:")
    for spec, s in med.items():
        print(f"  {spec:<32} {s:.3f} s   {s / med[GAUSS]:.1f}x add-gauss")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cnn", type=int, default=10000, help="test inputs of the CNN")
    ap.add_argument("--n-vgg", type=int, default=2000, help="test inputs of bc-vgg")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sweep-cells", type=int, default=3, help="k of the rw.sweep figure")
    ap.add_argument("--threads", type=int, default=1, help="1: a shared machine measures its load")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    torch.manual_seed(0)
    compare("Fashion-MNIST CNN", network(), (1, 28, 28), args.n_cnn, args.rounds, args.sweep_cells)
    vgg = rw.create_model("bc-vgg", num_classes=10, in_shape=(3, 32, 32), width=0.25)
    compare("bc-vgg width 0.25", vgg, (3, 32, 32), args.n_vgg, args.rounds, args.sweep_cells)
    alone(args.rounds)


if __name__ == "__main__":
    main()
