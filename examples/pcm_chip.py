"""Your own CNN and transformer on a phase-change-memory chip: the test error after 1 s to 1 year.

    python examples/pcm_chip.py                 # trains both, sweeps both: about 5 min on 2 cores
    python examples/pcm_chip.py --train-subset 2000 --test-subset 500 --trials 2   # a quick look

Two networks of your own, in plain PyTorch (``cnn``: the Fashion-MNIST CNN of issue 23;
``transformer``: a 28x28 image read as 28 tokens of 28 pixels by an nn.TransformerEncoder),
each trained for one epoch in a plain loop on Fashion-MNIST (standardized, as
``load_data("fashion-mnist")`` does), then programmed onto the ``pcm`` model (Joshi et al.
2020; ``docs/devices.md``) and read 1 s, 1 hour, 1 day, 1 month and 1 year later, with the
chip's global drift compensation and without. Each trial is one chip, read at every time.
It writes the state_dicts (``cnn.pt``, ``transformer.pt``), one sweep folder per network and a
report with ``error_vs_time.png`` under ``--out``. The same sweep from the command line, from
the repository root (``examples.pcm_chip:cnn`` is importable from there)::

    robustweights sweep --model-factory examples.pcm_chip:cnn --state-dict runs/pcm-chip/cnn.pt \\
        --dataset fashion-mnist --test-subset 2000 --distortion "pcm:t=1,3600,86400,2.6e6,3.15e7" \\
        --distortion "pcm:t=1,3600,86400,2.6e6,3.15e7,compensation=none" --out runs/pcm-chip/cli-cnn
    robustweights report runs/pcm-chip/cli-cnn runs/pcm-chip/cli-transformer --out runs/pcm-chip/cli

gives the numbers ``rw.sweep`` gives here, cell for cell (same seed, same chips).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import robustweights as rw
from robustweights.data import load_data

TIMES = "1,3600,86400,2.6e6,3.15e7"  # 1 s, 1 hour, 1 day, 1 month, 1 year
SPECS = [f"pcm:t={TIMES}", f"pcm:t={TIMES},compensation=none"]


def cnn() -> nn.Module:
    """The Fashion-MNIST CNN of issue 23 (no batch norm)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1568, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


class RowTransformer(nn.Module):
    """A 28x28 image as 28 tokens of 28 pixels, two encoder layers, mean-pooled to 10 classes."""

    def __init__(self, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Linear(28, dim)
        self.pos = nn.Parameter(torch.randn(1, 28, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(len(x), 28, 28)) + self.pos
        return self.head(self.norm(self.encoder(h)).mean(1))


def transformer() -> nn.Module:
    return RowTransformer()


MODELS = {"cnn": (cnn, 1e-3), "transformer": (transformer, 2e-3)}  # factory, Adam's rate


def train(name: str, data, train_subset: int | None = None, seed: int = 0) -> nn.Module:
    """One epoch of Adam, batch 100, on the first ``train_subset`` images of a seeded order."""
    factory, lr = MODELS[name]
    torch.manual_seed(seed)
    model = factory()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.randperm(len(data.train.y), generator=torch.Generator().manual_seed(seed))
    model.train()
    for idx in order[:train_subset].split(100):
        loss = F.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def run(out: Path, train_subset, test_subset, trials: int, seed: int = 0) -> dict:
    """Train both networks, save their state_dicts, sweep them, write a report; the rows."""
    data = load_data("fashion-mnist", test_subset=test_subset)
    out.mkdir(parents=True, exist_ok=True)
    swept = {}
    for name in MODELS:
        model = train(name, data, train_subset, seed)
        torch.save(model.state_dict(), out / f"{name}.pt")
        base = rw.evaluation.evaluate_split(model, data.test)["error"]
        print(f"{name}: undistorted test error {base:.2%}")
        rows = rw.sweep(model, data, SPECS, trials=trials, seed=seed)
        rw.sweeps.save_sweep(
            out / name, rows, label=name, baseline=base, description=data.description
        )
        swept[name] = (base, rows)
    rw.report([out / name for name in MODELS], out / "report")  # error_vs_time.png among them
    return swept


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-subset", type=int, default=20000, help="training images (20000)")
    p.add_argument("--test-subset", type=int, default=2000, help="test images (default: 2000)")
    p.add_argument("--trials", type=int, default=5, help="chips (default: 5)")
    p.add_argument("--out", type=Path, default=Path("runs/pcm-chip"), help="(runs/pcm-chip)")
    args = p.parse_args(argv)
    swept = run(args.out, args.train_subset, args.test_subset, args.trials)
    for name, (base, rows) in swept.items():
        for comp in ("global", "none"):
            rise = {}
            for r in rows:
                if f"compensation={comp}" in r["spec"]:
                    rise.setdefault(r["value"], []).append(100 * (r["error"] - base))
            cells = "  ".join(f"{t:g} s {sum(v) / len(v):+.2f}" for t, v in rise.items())
            print(f"{name}, compensation {comp}, mean rise in points: {cells}")
    print(f"report: {args.out / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
