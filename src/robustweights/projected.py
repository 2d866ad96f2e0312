"""Projected weights for any ``nn.Module``, BinaryConnect style: the public face and test-time use.

:mod:`robustweights.attachment` makes weight parameters projected (:func:`attach`,
:func:`detach`, :func:`sites`, :func:`clip_`, the training modes); this module
re-exports those names and holds what acts on an attached model outside
training.

Which weights a forward pass uses outside training (:data:`WEIGHTS`): ``auto``
applies a deterministic projection (a sign-trained net is tested binary) and
not a random one (``stoch-sign`` nets are tested with hidden weights);
``hidden`` and ``projected`` force one or the other. A sweep can also pin a
fixed tensor per parameter (:func:`distort`): the hidden weights are never
written, so restoring is dropping the pin.

Selection (one vocabulary for ``attach``, ``distort``, ``sweep``, ``train``
and the command line, :func:`select`): ``include``/``exclude`` are shell
patterns matched against a parameter's full name (``encoder.layers.0.linear1.weight``)
and against the name of the module that holds it (``encoder.layers.0.linear1``);
``types`` / ``exclude_types`` filter by the holding module's class name
(``Linear``, ``Embedding``, ``MultiheadAttention``); ``first``/``last`` name the
first and last chosen parameter in ``named_parameters`` order.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .attachment import (
    MODES,
    WEIGHTS,
    Site,
    attach,
    clip_,
    detach,
    glorot_bound,
    hidden,
    reading,
    sites,
)
from .errors import UserError
from .selection import select, shorten
from .transforms import Transform, transform

__all__ = [
    "MODES",
    "WEIGHTS",
    "Site",
    "attach",
    "detach",
    "hidden",
    "sites",
    "select",
    "coverage",
    "clip_",
    "glorot_bound",
    "use_weights",
    "effective_weight",
    "distort",
    "reading",
    "saved_buffers",
    "put_back",
]


def coverage(model: nn.Module, exclude=(), *, verb: str = "projected", extra_left_out=()) -> dict:
    """What is covered: ``{"summary", "covered": [...], "left_out": [...], "parametrized"}``.

    Each entry of ``covered`` and ``left_out`` has name, shape, count (and reason).

    ``exclude`` names sites left alone this time (a sweep's ``--keep``), with
    the reason given in ``extra_left_out`` entries or "kept undistorted".
    """
    extra = {d["name"]: d for d in extra_left_out}
    covered, kept = [], []
    for s in sites(model):
        entry = {"name": s.name, "shape": list(s.hidden.shape), "count": s.hidden.numel()}
        if s.name in exclude or s.name in extra:
            kept.append(
                {**entry, "reason": extra.get(s.name, {}).get("reason", "kept undistorted (keep)")}
            )
        else:
            covered.append(entry)
    left_out = list(model.__dict__.get("_rw_left_out", [])) + kept
    total = sum(d["count"] for d in covered + left_out)
    n_cov = sum(d["count"] for d in covered)
    tensors = [
        d
        for d in left_out
        if len(d["shape"]) >= 2 and not d["reason"].startswith("bias or normalization")
    ]
    summary = (
        f"{verb} {len(covered)} of {len(covered) + len(tensors)} weight tensors, "
        f"{100 * n_cov / max(total, 1):.1f}% of the weights"
    )
    if tensors:
        summary += (
            f"; left out: {shorten([d['name'] + ' (' + d['reason'] + ')' for d in tensors], 3)}"
        )
    small = len(left_out) - len(tensors)
    if small:
        summary += f"; {small} biases/normalization parameters left as they are"
    stored = _parametrized(model, {d["name"] for d in covered})
    if stored:
        summary += (
            "; parametrized (weight_norm, spectral_norm, ...): "
            + ", ".join(
                f"{t} from {', '.join(n.rpartition('.')[2] for n in names)}"
                for t, names in stored.items()
            )
            + ": the stored tensors are acted on, not the weight they compute "
            "(remove the parametrization to act on that)"
        )
    return {"summary": summary, "covered": covered, "left_out": left_out, "parametrized": stored}


_STORED = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original\d*$")


def _parametrized(model: nn.Module, names: set[str]) -> dict[str, list[str]]:
    """The tensors ``torch.nn.utils.parametrize`` computes from stored parameters among ``names``.

    (``weight_norm``, ``spectral_norm``, ...):
    ``{"0.weight": ["0.parametrizations.weight.original0", ...]}``.
    """
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    out: dict[str, list[str]] = {}
    for s in sites(model):
        m = _STORED.match(s.name)
        if s.name in names and m and isinstance(s.module, parametrize.ParametrizationList):
            out.setdefault(f"{m[1]}.{m[2]}" if m[1] else m[2], []).append(s.name)
        for hook in (
            s.module._forward_pre_hooks.values() if s.name in names else []
        ):  # the older, hook-based ones
            stored = (
                (f"{hook.name}_g", f"{hook.name}_v")
                if isinstance(hook, WeightNorm)
                else (f"{hook.name}_orig",)
                if isinstance(hook, SpectralNorm)
                else ()
            )
            if s.attr in stored:
                prefix = s.name.rpartition(".")[0]
                out.setdefault(f"{prefix}.{hook.name}" if prefix else hook.name, []).append(s.name)
    return out


@contextmanager
def use_weights(model: nn.Module, weights: str = "auto"):
    """Within the block, evaluate with ``weights`` (one of :data:`WEIGHTS`); restored after."""
    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}; choose one of: {', '.join(WEIGHTS)}")
    ss = sites(model)
    before = [s.weights for s in ss]
    for s in ss:
        s.weights = weights
    try:
        yield model
    finally:
        for s, w in zip(ss, before):
            s.weights = w


@torch.no_grad()
def effective_weight(site: Site) -> Tensor:
    """The weight a projected parameter gives in an evaluation forward pass right now."""
    if site.pinned is not None:
        return site.pinned
    return site.hidden if site.eval_uses_hidden() else site.project(site.hidden)


@contextmanager
def distort(
    model: nn.Module,
    t: "str | Transform",
    generator: torch.Generator | None = None,
    *,
    on: str = "hidden",
    exclude=(),
):
    """Within the block every projected parameter reads as ``t(W)``.

    One draw per tensor, fixed for the block.

    ``on="hidden"`` distorts the hidden weights, ``on="projected"`` the weights
    evaluation would otherwise use. Parameters named in ``exclude`` keep their
    evaluation weights. The hidden weights are never written: the distorted
    tensors are pinned beside them and dropped on exit, error or not. A model
    never attached has every weight parameter distorted for the block (as
    :func:`attach` selects them by default).
    """
    if on not in ("hidden", "projected"):
        raise UserError(f"distort on must be 'hidden' or 'projected', not {on!r}")
    t = transform(t)
    plain = not sites(model)
    # a model never attached: its weights for the block (before: nothing was distorted, silently)
    if plain:
        attach(model, "identity", mode="none", clip=None)
    ss = [s for s in sites(model) if s.name not in exclude]
    before, buffers = [s.pinned for s in ss], saved_buffers(model)
    try:
        with torch.no_grad():
            for s in ss:
                base = s.hidden if on == "hidden" else effective_weight(s)
                # requiring grad as the weight does: PyTorch picks the same kernels (attention's
                # fast path)
                pinned = t(base, generator, clip=s.test_bound)
                s.pinned = pinned.requires_grad_(s.hidden.requires_grad)
        yield model
    finally:
        for s, p in zip(ss, before):
            s.pinned = p
        # a forward that updates buffers (a QAT observer's range) leaves the next cell as before
        put_back(buffers)
        if plain:
            detach(model)


def saved_buffers(model: nn.Module) -> list:
    """Copies of every buffer of ``model``, for :func:`put_back`."""
    return [(b, b.detach().clone()) for b in model.buffers()]


@torch.no_grad()
def put_back(saved: list) -> None:
    """Every buffer as :func:`saved_buffers` found it, in place.

    Resized back if a forward resized it.
    """
    for b, old in saved:
        if b.shape != old.shape:
            b.resize_(old.shape)
        b.copy_(old)
