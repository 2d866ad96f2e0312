"""A model nobody here wrote for: a small causal transformer language model, swept for perplexity.

    python examples/char_lm.py                 # about 20 s on 2 CPU cores
    python examples/char_lm.py --steps 50      # a quick look

Corpus: the licence texts in /usr/share/common-licenses (Debian's base-files
package, on every Debian and Ubuntu system; about 250 KB of English). Each of
those texts permits verbatim copying; nothing is downloaded. Characters are
the tokens. The network is plain PyTorch (an nn.TransformerEncoder with a
causal mask, tied input and output embeddings), trained in a plain loop; then
robustweights distorts every weight matrix (the embedding, attention's
in_proj_weight, out_proj, the feed-forward layers, the positions) and
measures validation perplexity with the user's own evaluation function.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import robustweights as rw
from robustweights.results import spec_lines

CORPUS = Path("/usr/share/common-licenses")


def read_corpus(folder: Path = CORPUS) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    if not files:
        raise SystemExit(f"no text in {folder}; any folder of plain-text files will do (--corpus)")
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


class CharLM(nn.Module):
    def __init__(
        self, vocab: int, dim: int = 64, layers: int = 2, heads: int = 4, context: int = 64
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: one matrix, read by two modules

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        h = self.blocks(self.embed(tokens) + self.pos[:, :t], mask=mask, is_causal=True)
        return self.head(self.norm(h))


def windows(ids: torch.Tensor, context: int, n: int, generator: torch.Generator) -> torch.Tensor:
    start = torch.randint(0, len(ids) - context - 1, (n,), generator=generator)
    return torch.stack([ids[s : s + context + 1] for s in start.tolist()])


def build(
    steps: int = 600, context: int = 64, batch: int = 32, seed: int = 0, corpus: Path = CORPUS
):
    """Train the model; returns ``(model, evaluate)`` where ``evaluate(model)`` gives validation
    perplexity."""
    text = read_corpus(corpus)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    torch.manual_seed(seed)
    model = CharLM(len(chars), context=context)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        w = windows(train_ids, context, batch, g)
        loss = F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = windows(
        val_ids, context, 256, torch.Generator().manual_seed(1)
    )  # fixed validation windows

    @torch.no_grad()
    def evaluate(m: nn.Module) -> dict:
        m.eval()
        ce = sum(
            F.cross_entropy(m(v[:, :-1]).flatten(0, 1), v[:, 1:].flatten(), reduction="sum").item()
            for v in val.split(64)
        )
        ce /= val[:, 1:].numel()
        return {"perplexity": math.exp(ce), "loss": ce}

    return model.eval(), evaluate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps", type=int, default=600, help="training steps of the language model (default: 600)"
    )
    p.add_argument(
        "--trials", type=int, default=3, help="random draws per noise strength (default: 3)"
    )
    p.add_argument(
        "--corpus", type=Path, default=CORPUS, help="text file to learn (default: %(default)s)"
    )
    p.add_argument(
        "--out", default="runs/char-lm", help="sweep result folder (default: runs/char-lm)"
    )
    args = p.parse_args(argv)
    model, evaluate = build(args.steps, corpus=args.corpus)
    base = evaluate(model)["perplexity"]
    print(f"validation perplexity {base:.2f} (characters; {args.steps} training steps)")
    rows = rw.sweep(
        model,
        None,
        ["add-gauss:sigma=0.25,0.5,1", "quant:bits=2..6", "sign"],
        evaluate=evaluate,
        metric="perplexity",
        trials=args.trials,
        progress=True,
    )
    rw.sweeps.save_sweep(
        f"{args.out}/sweep",
        rows,
        label="char-level transformer LM",
        baseline=base,
        description=f"licence texts of {args.corpus}, last 10% held out",
        model="CharLM",
    )
    print("\n".join(spec_lines(rows, width=32)))
    rw.report([f"{args.out}/sweep"], f"{args.out}/report")
    print(f"report: {args.out}/report/report.html")


if __name__ == "__main__":
    main()
