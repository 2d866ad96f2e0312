"""Language models built in: the ``text`` dataset (UTF-8 bytes in windows) and a small transformer.

    data = load_text("corpus.txt", window=128)     # a data.Data: train / val / test of byte windows
    model = CausalLM(vocab=256, dim=128, layers=4, heads=4, context=128)
    logits = model(x)                              # x (B, T) int64 -> logits (B, T, 256)
    measures.measure_split(model, data.val, "perplexity")

The dataset: a UTF-8 file, or every file of a folder (sorted by path, hidden
ones skipped, concatenated with nothing between them), read as bytes: the
vocabulary is the 256 byte values, so any text works and nothing is fitted.
The byte stream is cut into contiguous blocks, train first, then validation,
then test (no window crosses from one to another, and none is shuffled into
another: the held-out text is text the model never saw); each block into
windows of ``window + 1`` bytes that start every ``window`` bytes, so
``inputs`` are bytes ``[iT, iT + T)`` and ``targets`` bytes ``[iT + 1, iT + T + 1)``
(the next byte at each position): every byte after a block's first is a
target exactly once. Batches are ``(inputs, targets)``, both int64 ``(B, T)``,
what the ``perplexity`` measure of :mod:`robustweights.measures` takes.

Reading is bounded: a file or folder over ``max_bytes`` (default 64 MiB; the
windows are held in memory as one byte each) and a file that is not UTF-8
text (or holds NUL bytes) are refused in one line naming the file.

For the callers: ``data.load_data`` cannot dispatch here (this module imports
``data``), so whoever loads a dataset by name sends :data:`TEXT_DATASET` to
:func:`load_text`. The model is registered as :data:`MODEL_NAME`
(``create_model("causal-lm", num_classes=256)``) when this module is imported;
``Data.in_shape`` is ``(window,)``, not ``(C, H, W)``: the model takes it
(a window longer than its ``context`` raises the context to the window).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Data, Split
from .errors import UserError
from .models import register_model

__all__ = [
    "TEXT_DATASET",
    "MODEL_NAME",
    "MAX_TEXT_BYTES",
    "VOCAB",
    "TokenSplit",
    "read_text",
    "load_text",
    "CausalLM",
    "causal_lm",
]

TEXT_DATASET = "text"
MODEL_NAME = "causal-lm"
VOCAB = 256  # byte values
MAX_TEXT_BYTES = 64 * 2**20  # 64 MiB: held in memory (one byte per token), split into windows


# ---------------------------------------------------------------------------
# the text dataset


class TokenSplit(Split):
    """Windows of a byte stream: ``inputs`` and ``targets`` uint8 ``(N, T)`` views of one tensor
    (``targets`` is ``inputs`` moved on by one byte); batches are int64 ``(B, T)`` each."""

    def __init__(self, stream: Tensor, window: int):
        n = (len(stream) - 1) // window  # windows of window + 1 bytes, one shared at each seam
        self.inputs = stream[: n * window].view(n, window)  # (N, T)
        self.targets = stream[1 : n * window + 1].view(n, window)  # (N, T)

    def __len__(self) -> int:
        return len(self.inputs)

    def _fetch(self, index_batches):
        for idx in index_batches:
            yield self.inputs[idx].long(), self.targets[idx].long()


def _text_files(path: Path) -> list[Path]:
    """The files of ``path``: itself, or a folder's regular files (sorted, hidden ones skipped)."""
    if not path.exists():
        raise UserError(f"no such file or folder {path} (the text to learn)")
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise UserError(f"{path}: a folder with no files in it; give a UTF-8 text file or a folder")
    return files


def read_text(path: "str | Path", max_bytes: int = MAX_TEXT_BYTES) -> tuple[bytes, list[Path]]:
    """The bytes of a UTF-8 file, or of every file of a folder (see the module docstring), and the
    files read; one line for a missing path, more than ``max_bytes``, or a file that is not text."""
    path = Path(path).expanduser()
    files = _text_files(path)
    total = sum(f.stat().st_size for f in files)
    if total > max_bytes:
        raise UserError(
            f"{path}: {total:,} bytes of text, over the limit of {max_bytes:,} (max_bytes); "
            "give a smaller file or folder"
        )
    parts = []
    for f in files:
        with open(f, "rb") as fh:
            b = fh.read(max_bytes + 1)  # bounded even if the file grew since its size was read
        try:
            b.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{f}: not UTF-8 text (byte {e.start} is not)") from None
        if b"\0" in b:
            raise UserError(f"{f}: not text (a NUL byte at byte {b.index(0)})")
        parts.append(b)
    data = b"".join(parts)
    if len(data) > max_bytes:
        raise UserError(f"{path}: over the limit of {max_bytes:,} bytes (max_bytes)")
    return data, files


def _check_fraction(what: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise UserError(f"{what} must be a number in [0, 1), not {v!r}")
    return float(v)


def load_text(
    path: "str | Path",
    *,
    window: int = 256,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_bytes: int = MAX_TEXT_BYTES,
) -> Data:
    """The ``text`` dataset of ``path`` (see the module docstring): train, validation (``None``
    if ``val_fraction`` is 0) and test splits of byte windows of length ``window``, their sizes
    stated in the description. The fractions are of the bytes, the last ``test_fraction`` being
    the test text and the ``val_fraction`` before it the validation text."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise UserError(f"window must be a positive integer (bytes), not {window!r}")
    val_f = _check_fraction("val_fraction", val_fraction)
    test_f = _check_fraction("test_fraction", test_fraction)
    if test_f == 0 or val_f + test_f >= 1:
        raise UserError(
            f"test_fraction ({test_fraction}) must be above 0 and, with val_fraction "
            f"({val_fraction}), leave text to train on"
        )
    raw, files = read_text(path, max_bytes)
    stream = (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.zeros(0, dtype=torch.uint8)
    )
    n = len(raw)
    ends = [n - round(n * (val_f + test_f)), n - round(n * test_f), n]
    blocks = [stream[a:b] for a, b in zip([0] + ends[:2], ends)]
    splits = [TokenSplit(b, window) for b in blocks]
    names = ["train", "validation", "test"]
    for name, s, b in zip(names, splits, blocks):
        if len(s) == 0 and (name != "validation" or val_f > 0):
            raise UserError(
                f"{path}: {n:,} bytes leave the {name} text {len(b):,} bytes, not one window of "
                f"{window + 1}; give more text or a shorter window"
            )
    sizes = ", ".join(f"{name} {len(s):,}" for name, s in zip(names, splits) if len(s))
    where = str(path) if len(files) == 1 else f"{path} ({len(files)} files)"
    description = (
        f"text {where}: {n:,} UTF-8 bytes as tokens (vocabulary {VOCAB}); windows of {window} "
        f"bytes: {sizes} (contiguous blocks in this order)"
    )
    return Data(
        TEXT_DATASET,
        description,
        VOCAB,
        (window,),
        [bytes([b]).decode("latin-1") for b in range(VOCAB)],
        splits[0],
        splits[2],
        preprocessing="none (each byte is a token id, 0..255)",
        val=splits[1] if val_f > 0 else None,
    )


# ---------------------------------------------------------------------------
# a small causal transformer (nanoGPT's shape, from torch.nn layers)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` sees positions ``<= t``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, T, D/H) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """A pre-norm transformer block: attention, then a 4x feed-forward, each on a residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CausalLM(nn.Module):
    """Token and position embeddings, ``layers`` blocks, a final norm and a linear head: tokens
    ``(B, T)`` int64 with ``T <= context`` to logits ``(B, T, vocab)`` for the next token at each
    position. ``tie`` makes the head read the embedding matrix (one tensor, two holders; a
    projection or distortion treats it once). The embeddings start at N(0, 0.02^2) (GPT-2's): at
    PyTorch's N(0, 1) a tied head's first logits have a spread of about sqrt(dim)."""

    def __init__(
        self,
        vocab: int = VOCAB,
        dim: int = 128,
        layers: int = 4,
        heads: int = 4,
        context: int = 256,
        tie: bool = True,
    ):
        super().__init__()
        self.context = context
        # built in forward order: the first weight is the input layer, the last the output layer
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:  # (B, T) int64
        t = tokens.shape[1]
        if t > self.context:
            raise ValueError(f"{t} tokens in a sequence; this model's context is {self.context}")
        h = self.embed(tokens) + self.pos(torch.arange(t, device=tokens.device))  # (B, T, D)
        return self.head(self.norm(self.blocks(h)))  # (B, T, vocab)


def _positive_int(what: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UserError(f"{what} {v!r} is not allowed; use a positive integer")
    return v


@register_model(MODEL_NAME)
def causal_lm(
    num_classes: int = VOCAB,
    width: float = 1.0,
    dim: int = 128,
    layers: int = 4,
    heads: int = 4,
    context: int = 256,
    tie: bool = True,
    in_shape: tuple | None = None,
) -> CausalLM:
    """:class:`CausalLM` for ``create_model``: ``num_classes`` is the vocabulary (256 for
    ``text``); ``width`` scales ``dim``, rounded to a multiple of ``heads`` (each head gets
    ``dim / heads``); ``in_shape`` ``(T,)``, the data's windows, raises ``context`` to ``T``
    when it is longer (any other shape, such as ``create_model``'s image default, says nothing
    about tokens and is not read)."""
    if in_shape is not None and len(in_shape) == 1 and isinstance(context, int):
        context = max(context, in_shape[0])
    sizes = dict(num_classes=num_classes, dim=dim, layers=layers, heads=heads, context=context)
    for what, v in sizes.items():
        _positive_int(what, v)
    ok = isinstance(width, (int, float)) and not isinstance(width, bool) and math.isfinite(width)
    if not ok or width <= 0:
        raise UserError(f"width {width!r} is not allowed; use a finite number > 0")
    size = heads * max(1, round(dim * width / heads))
    return CausalLM(num_classes, size, layers, heads, context, bool(tie))
