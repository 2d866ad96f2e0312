"""Your own model, trained your way, stress-tested by robustweights: a transformer image classifier.

    python examples/transformer_classifier.py          # about 10 s on 2 CPU cores

A 28x28 Fashion-MNIST image (the subset shipped with robustweights) is read as
28 tokens of 28 pixels by a plain nn.TransformerEncoder. It is trained in a
plain PyTorch loop on raw pixels in [0, 1]; robustweights then distorts every
weight matrix (attention's in_proj_weight and out_proj included, also on the
fused fast path PyTorch takes under torch.no_grad) and measures the test error.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import robustweights as rw
from robustweights.results import spec_lines
from robustweights.data import load_data


class RowTransformer(nn.Module):
    def __init__(self, num_classes: int = 10, dim: int = 32, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(28, dim)
        self.pos = nn.Parameter(torch.randn(1, 28, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.view(len(x), 28, 28)) + self.pos
        return self.head(self.norm(self.encoder(h)).mean(1))


def train(data, epochs: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = RowTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, y in data.train.batches(100, shuffle=True, generator=g):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    p.add_argument(
        "--trials", type=int, default=3, help="random draws per noise strength (default: 3)"
    )
    p.add_argument(
        "--out",
        default="runs/transformer-classifier",
        help="sweep result folder (default: runs/transformer-classifier)",
    )
    args = p.parse_args(argv)
    data = load_data("demo", preprocess="none")  # the raw pixels the model is trained on
    model = train(data, args.epochs)
    base = rw.evaluation.evaluate_split(model, data.test)["error"]
    print(f"test error {base:.2%} ({data.description}; inputs {data.preprocessing})")
    rows = rw.sweep(
        model,
        data,
        ["add-gauss:sigma=0.25,0.5,1", "quant:bits=1..6"],
        trials=args.trials,
        progress=True,
    )
    rw.sweeps.save_sweep(
        f"{args.out}/sweep",
        rows,
        label="row transformer",
        baseline=base,
        description=data.description,
        model="RowTransformer",
    )
    print("\n".join(spec_lines(rows, width=28)))
    rw.report([f"{args.out}/sweep"], f"{args.out}/report")
    print(f"report: {args.out}/report/report.html")


if __name__ == "__main__":
    main()
