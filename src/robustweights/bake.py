"""Baking: the weights a network runs with, as a plain state_dict, and packed 1-bit files of it.

An attached model's own ``state_dict()`` holds the *hidden* float weights (that
is what training resumes from), so loaded into the plain class it runs as the
float network, not the binary one. :func:`bake` gives what a forward pass in
evaluation reads instead, under the keys of the plain, unattached model::

    import robustweights as rw
    model, config = rw.load("runs/sign")
    plain = create_my_model()
    plain.load_state_dict(rw.bake(model))    # the binary network, outputs bit for bit equal
    rw.save_baked(rw.bake(model), "sign.pt", packed=True)   # +-a tensors at 1 bit per weight

Which weights (:data:`robustweights.projected.WEIGHTS`): ``auto`` follows the
evaluation rule of docs/method.md section 3 (a deterministic projection such as
``sign`` is applied; a random one such as ``stoch-sign`` is tested, so baked,
with its hidden weights); ``hidden`` and ``projected`` force one or the other. A
weight pinned by :func:`robustweights.distort` is baked as pinned (it is what
the network runs with inside the block). Buffers (batch-norm statistics) are
taken as they are. The given model is never written.

Packed files (:func:`save_baked`): every floating tensor of two or more values
that are all ``+a`` or ``-a`` for one ``a > 0`` (``sign`` and ``stoch-sign``
scale a whole tensor by one ``H``) is stored as its signs, 8 to a byte, with
``a`` and its shape: 1/32 of its float32 size. :func:`load_baked` reads it
back (``torch.load(weights_only=True)``) to the exact state_dict.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from . import projected
from .errors import UserError
from .evaluation import weights_label
from .runs import check_writable, safe_load, save_tensors
from .checkpoints import load

__all__ = ["bake", "bake_model", "save_baked", "load_baked", "packed_sizes", "export_run", "FORMAT"]

FORMAT = "robustweights-baked"
VERSION = 1
_ENTRY = ("bits", "scale", "shape")  # a packed tensor
# the value of bit j of a byte, the first value of a tensor in the highest bit
_BIT = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@torch.no_grad()
def _baked_weight(site: projected.Site, weights: str) -> Tensor:
    """The weight ``site`` gives an evaluation forward pass with ``weights`` (site untouched)."""
    view = site if weights == "auto" else dataclasses.replace(site, weights=weights)
    if view.pinned is None and not view.eval_uses_hidden() and view.projection.random:
        raise UserError(
            f"{site.name}: the projection {view.projection.name} is random and draws new weights "
            f"at every forward pass, so no one set of weights is what the network runs with; bake "
            f"weights='auto' or 'hidden' (its hidden weights, with which it is tested)"
        )
    return projected.effective_weight(view).detach().clone()


def bake(model: nn.Module, weights: str = "auto") -> dict[str, Tensor]:
    """A plain state_dict of ``model`` holding the weights it runs with (see the module docstring).

    Its keys are those of the unattached model, so it loads into the user's own
    class; a tied weight (an embedding shared with a language-model head) gives
    one tensor under each of its keys. Every tensor is a copy: writing into it
    leaves ``model`` as it was.
    """
    if weights not in projected.WEIGHTS:
        raise UserError(
            f"unknown weights {weights!r}; choose one of: {', '.join(projected.WEIGHTS)}"
        )
    by_param = {id(s.hidden): s for s in projected.sites(model)}
    done: dict[int, Tensor] = {}  # id of the stored tensor -> its baked copy (tied keys share it)
    out = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) not in done:
            site = by_param.get(id(t))
            done[id(t)] = _baked_weight(site, weights) if site else t.detach().clone()
        out[key] = done[id(t)]
    return out


def bake_model(model: nn.Module, weights: str = "auto") -> nn.Module:
    """A detached deep copy of ``model`` (its own class, plain attribute reads) holding
    :func:`bake`'s weights."""
    state = bake(model, weights)
    # the sites are shared, not copied (a generator may not deep-copy); detach drops them
    memo = {id(s): s for s in projected.sites(model)}
    plain = copy.deepcopy(model, memo)
    projected.detach(plain)
    plain.load_state_dict(state)
    return plain


# ---------------------------------------------------------------------------
# Packed files
# ---------------------------------------------------------------------------


def _binary_scale(t: Tensor) -> Tensor | None:
    """``a`` (0-dim, ``t``'s dtype) when every value of ``t`` is ``+a`` or ``-a``, ``a > 0``."""
    if not t.is_floating_point() or t.numel() < 2:
        return None
    a = t.abs().amax()
    if not (a > 0 and torch.isfinite(a) and bool((t.abs() == a).all())):
        return None
    return a.clone()


def _pack(t: Tensor, a: Tensor) -> dict:
    """The signs of ``t`` (``+a`` -> 1) 8 to a byte, first value in the highest bit, with ``a``
    and the shape."""
    bits = (t.flatten() > 0).to(torch.uint8)  # (n,)
    bits = torch.cat([bits, bits.new_zeros(-bits.numel() % 8)]).view(-1, 8)  # (n/8, 8)
    return {"bits": (bits * _BIT).sum(1).to(torch.uint8), "scale": a, "shape": list(t.shape)}


def _unpack(key: str, entry, where) -> Tensor:
    """The tensor :func:`_pack` packed, exactly; one line if ``entry`` is not one."""
    bits, a, shape = (entry.get(k) if isinstance(entry, dict) else None for k in _ENTRY)
    if not (
        isinstance(bits, Tensor)
        and bits.dtype == torch.uint8
        and isinstance(a, Tensor)
        and a.dim() == 0
        and a.is_floating_point()
        and isinstance(shape, list)
        and all(isinstance(n, int) and n >= 0 for n in shape)
        and bits.numel() == math.ceil(math.prod(shape) / 8)
    ):
        raise UserError(f"{where} is a damaged packed file: {key} is not a packed tensor")
    signs = (bits.view(-1, 1) & _BIT).ne(0).flatten()[: math.prod(shape)]  # (n,)
    return torch.where(signs, a, -a).view(shape)


def _storage_key(t: Tensor) -> tuple:
    """What makes two tensors one (tied weights loaded from a file are views of one storage)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.stride(), t.dtype)


def save_baked(state: dict[str, Tensor], path: "str | os.PathLike", packed: bool = False) -> int:
    """Write ``state`` to ``path`` atomically; returns the file's size in bytes.

    Unpacked, the file is the state_dict itself (``torch.load`` it). Packed,
    every binary tensor (see the module docstring) is stored at 1 bit per value
    and a key tied to an earlier one is stored as that key's name; read it with
    :func:`load_baked`.
    """
    path = Path(path)
    on_cpu: dict[tuple, Tensor] = {}  # one copy per tensor: tied keys stay tied off a GPU too
    state = {k: on_cpu.setdefault(_storage_key(v), v.detach().cpu()) for k, v in state.items()}
    if not packed:
        save_tensors(path, state)
        return path.stat().st_size
    seen: dict[tuple, str] = {}
    tensors, packs, tied = {}, {}, {}
    for key, t in state.items():
        first = seen.setdefault(_storage_key(t), key)
        a = _binary_scale(t)
        if first != key:
            tied[key] = first
        elif a is not None:
            packs[key] = _pack(t, a)
        else:
            tensors[key] = t
    doc = {"format": FORMAT, "version": VERSION, "keys": list(state)}
    doc.update(tensors=tensors, packed=packs, tied=tied)
    save_tensors(path, doc)
    return path.stat().st_size


def load_baked(path: "str | os.PathLike") -> dict[str, Tensor]:
    """The state_dict :func:`save_baked` wrote, packed or not, exactly (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no baked file at {p}")
    doc = safe_load(p, "baked file")
    if isinstance(doc, dict) and doc.get("format") != FORMAT:
        if all(isinstance(k, str) and isinstance(v, Tensor) for k, v in doc.items()):
            return doc  # an unpacked file: a plain state_dict
    parts = ("keys", "tensors", "packed", "tied")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), (list, dict)) for k in parts):
        raise UserError(f"{p} is neither a state_dict nor a robustweights baked file")
    out = dict(doc["tensors"])
    out.update({k: _unpack(k, e, p) for k, e in doc["packed"].items()})
    out.update({k: out.get(first) for k, first in doc["tied"].items()})
    if set(out) != set(doc["keys"]) or not all(isinstance(v, Tensor) for v in out.values()):
        raise UserError(f"{p} is a damaged baked file: its tensors do not match its keys")
    return {k: out[k] for k in doc["keys"]}


_SIZES = (
    "binary_tensors",
    "binary_weights",
    "binary_float32_bytes",
    "binary_packed_bytes",
    "other_bytes",
)


def packed_sizes(state: dict[str, Tensor]) -> dict:
    """How much of ``state`` packs, each tensor counted once: ``{"binary_tensors", "binary_weights",
    "binary_float32_bytes", "binary_packed_bytes", "other_bytes"}``."""
    seen, out = set(), dict.fromkeys(_SIZES, 0)
    for t in state.values():
        if _storage_key(t) in seen:
            continue
        seen.add(_storage_key(t))
        if _binary_scale(t) is None:
            out["other_bytes"] += t.numel() * t.element_size()
            continue
        out["binary_tensors"] += 1
        out["binary_weights"] += t.numel()
        out["binary_float32_bytes"] += 4 * t.numel()
        out["binary_packed_bytes"] += math.ceil(t.numel() / 8)
    return out


# ---------------------------------------------------------------------------
# A run folder
# ---------------------------------------------------------------------------


def export_run(
    run: "str | os.PathLike",
    out: "str | os.PathLike",
    *,
    packed: bool = False,
    weights: str = "auto",
    model_factory: str | None = None,
) -> dict:
    """Bake the network a run folder (or checkpoint) keeps into ``out`` (``robustweights export``).

    Returns what to print: ``{"out", "bytes", "weights", "packed", "keys"}`` and
    :func:`packed_sizes`' counts. The run is loaded as :func:`robustweights.load`
    loads it (``model_factory`` as there).
    """
    out = Path(out)
    if out.is_dir():
        raise UserError(f"out={str(out)!r} is a folder; give the file to write")
    check_writable(out.parent)
    model, _ = load(run, model_factory=model_factory)
    state = bake(model, weights)
    with projected.use_weights(model, weights):  # our own copy of the run: setting it is harmless
        label = weights_label(model)
    size = save_baked(state, out, packed=packed)
    return {
        "out": str(out),
        "bytes": size,
        "weights": label,
        "packed": packed,
        "keys": len(state),
        **packed_sizes(state),
    }
