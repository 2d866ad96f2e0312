"""What the reach probe costs before a sweep's first cell, against one plain evaluation.

The probe reads each weight tensor as NaN once to find weights that never reach the scored
output; it runs one forward pass per tensor on at most ``PROBE_EXAMPLES`` examples, however large
the loader's batches. The model is a 4-layer BERT-sized encoder classifier built from
``torch.nn`` (vocabulary 30,522, width 256, 4 heads, sequence 128; transformers is not needed),
measured on a ``DataLoader`` of batch 2000, as the issue that found the cost (22x) had it.

    python benchmarks/probe_cost.py            # prints the ratio and the machine
"""

from __future__ import annotations

import platform
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustweights as rw
from robustweights.evaluation import PROBE_EXAMPLES
from robustweights.measures import get_measure, measure_split


class Encoder(nn.Module):
    def __init__(self, vocab=30522, dim=256, layers=4, heads=4, seq=128, classes=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.encoder(self.tok(x) + self.pos).mean(1))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = Encoder().eval()
    x = torch.randint(0, 30522, (4000, 128))
    loader = DataLoader(TensorDataset(x, torch.randint(0, 2, (4000,))), batch_size=2000)
    error = get_measure("error")
    measure_split(model, loader, error)  # warm-up
    t0 = time.perf_counter()
    measure_split(model, loader, error)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = rw.sweep(model, loader, ["add-gauss:sigma=0"], trials=1)
    swept = time.perf_counter() - t0
    probe = swept - plain  # the sweep is the probe and one cell (one plain evaluation)
    cov = rows.coverage
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{cov['summary']}; probe examples at most {PROBE_EXAMPLES}")
    print(f"one plain evaluation (4000 examples, batch 2000): {plain:.2f} s")
    print(f"sweep of one cell (probe + one evaluation): {swept:.2f} s")
    print(f"probe cost / one plain evaluation: {probe / plain:.2f}")


if __name__ == "__main__":
    main()
