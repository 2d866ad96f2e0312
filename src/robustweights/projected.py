"""Projected weights for any ``nn.Module``, BinaryConnect style (method.md section 2).

:func:`attach` turns every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of a model into
a projected layer without touching the model's code: the layer's ``weight``
parameter stays where it is and *is* the hidden float weight ``W`` (so
``state_dict`` keys do not change), and its forward pass uses ``Wp = p(W)``:

* ``fwd+bwd``: ``y = f(x, Wp)`` with the straight-through gradient
  ``dL/dW := dL/dWp``; the error reaches lower layers through ``Wp``.
* ``fwd``: ``y = f(x, W) + (f(x, Wp) - f(x, W)).detach()``: the output is that
  of ``Wp``, the error to the input goes through ``W``, and since ``f`` is
  linear in its weight the weight gradient equals the one of ``fwd+bwd``.
* ``none``: no projection, ``y = f(x, W)``; only the clipping below.

After each optimizer step :func:`clip_` clamps the hidden weights to
``[-H, H]`` (``H=1``, or BinaryConnect's Glorot ``H = sqrt(1.5/(fan_in+fan_out))``
per layer). Biases and batch-norm parameters are never projected or clipped.

Which weights a forward pass uses outside training follows method.md section 3
(:data:`WEIGHTS`): ``auto`` applies a deterministic projection (a sign-trained
net is tested binary) and not a random one (``stoch-sign`` nets are tested
with hidden weights); ``hidden`` and ``projected`` force one or the other. A
sweep can also pin a fixed tensor per layer with :func:`pin` (the hidden
weights are never written, so restoring is dropping the pin).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError
from .transforms import Transform, traceable, transform

__all__ = ["MODES", "WEIGHTS", "attach", "detach", "projected_layers", "clip_", "use_weights",
           "pin", "unpin", "effective_weight", "distort"]

MODES = ("fwd+bwd", "fwd", "none")
WEIGHTS = ("auto", "hidden", "projected")
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class LayerState:
    """What a projected layer needs; held on the layer as ``layer.rw``."""

    projection: Transform            # applied to the hidden weight (identity when mode is "none")
    mode: str                        # one of MODES
    H: float | None                  # clip bound for the hidden weights; None: never clipped
    generator: torch.Generator | None  # the only source of random draws for random projections
    weights: str = "auto"            # which weights to use outside training, one of WEIGHTS
    pinned: Tensor | None = None     # a fixed weight that replaces everything (sweeps)

    def project(self, w: Tensor) -> Tensor:
        return self.projection(w, self.generator, clip=self.H if self.H is not None else 1.0)

    @property
    def plain(self) -> bool:
        """No projection acts: clip-only mode, or the identity (whose projected weights are the hidden ones)."""
        return self.mode == "none" or self.projection.name == "identity"

    def eval_uses_hidden(self) -> bool:
        """Outside training: use the hidden weight as it is (see :data:`WEIGHTS`)?"""
        if self.plain or self.weights == "hidden":
            return True
        return self.weights == "auto" and self.projection.random


class _StraightThrough(torch.autograd.Function):
    """``Wp = p(W)`` forward; the gradient passes to ``W`` unchanged (``dL/dW := dL/dWp``)."""

    @staticmethod
    def forward(ctx, w, state):
        return state.project(w)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Projected:
    """Mixin put in front of a layer's class by :func:`attach` (see the module docstring)."""

    rw: LayerState

    def _f(self, x: Tensor, w: Tensor) -> Tensor:
        if isinstance(self, nn.Linear):
            return F.linear(x, w, self.bias)
        return self._conv_forward(x, w, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        s, w = self.rw, self.weight
        if s.pinned is not None:
            return self._f(x, s.pinned)
        if s.plain or (not self.training and s.eval_uses_hidden()):
            return self._f(x, w)
        if not self.training and not torch.is_grad_enabled():
            return self._f(x, s.project(w))
        if s.mode == "fwd+bwd":
            return self._f(x, _StraightThrough.apply(w, s))
        y = self._f(x, w)                     # carries the gradients (to x through W, to W)
        with torch.no_grad():
            yp = self._f(x, s.project(w))     # the value the layer must output
        return y + (yp - y.detach())


_CLASSES: dict[type, type] = {}


def _projected_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Projected{cls.__name__}", (_Projected, cls), {})
    return _CLASSES[cls]


def _glorot_H(layer: nn.Module) -> float:
    """BinaryConnect's per-layer ``H = sqrt(1.5 / (fan_in + fan_out))``."""
    w = layer.weight
    receptive = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    return math.sqrt(1.5 / (w.shape[1] * receptive + w.shape[0] * receptive))


def projected_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every layer :func:`attach` has made projected, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Projected)]


def candidate_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every linear and convolution layer in ``model.named_modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]


def attach(
    model: nn.Module,
    projection: "str | Transform" = "identity",
    *,
    mode: str = "fwd+bwd",
    clip: "float | str | None" = 1.0,
    float_first: bool = False,
    float_last: bool = False,
    skip: tuple[str, ...] = (),
    generator: torch.Generator | None = None,
) -> list[str]:
    """Make the linear and convolution layers of ``model`` projected, in place; returns their names.

    ``projection`` is a transform spec; unless it names its own ``scale`` it maps
    onto the clip bound ``H`` (``scale=clip``), as training should. ``clip`` is a
    number ``H``, ``"glorot"`` (per layer) or ``None`` (never clip).
    ``float_first``/``float_last`` leave the first/last such layer (module order)
    as it is, and ``skip`` leaves layers by name.
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if isinstance(clip, str) and clip != "glorot":
        try:
            clip = float(clip)
        except ValueError:
            raise UserError(f"clip must be a positive number, 'glorot' or 'none', not {clip!r}") from None
    if isinstance(clip, float | int) and not (clip > 0 and math.isfinite(clip)):
        raise UserError(f"clip must be a positive number, 'glorot' or 'none', not {clip!r}")
    t = transform(projection).with_defaults(scale="clip")
    if mode == "none":
        t = transform("identity")
    if t.random:
        traceable(generator)  # torch.compile draws from it inside the graph (see transforms._draw)
    layers = candidate_layers(model)
    if not layers:
        raise UserError(f"{type(model).__name__} has no nn.Linear or nn.Conv layer to project")
    names = {n for n, _ in layers}
    unknown = [s for s in skip if s not in names]
    if unknown:
        raise UserError(f"no layer named {unknown[0]!r}; layers: {', '.join(sorted(names))}")
    chosen = [(n, m) for i, (n, m) in enumerate(layers)
              if not (float_first and i == 0) and not (float_last and i == len(layers) - 1) and n not in skip]
    for _, layer in chosen:
        H = _glorot_H(layer) if clip == "glorot" else clip
        if not isinstance(layer, _Projected):
            layer.__class__ = _projected_class(type(layer))
        # H rounded to float32 (as BinaryConnect's np.float32 H) so the clamp bound is exactly H.
        layer.rw = LayerState(t, mode, None if H is None else float(torch.tensor(H, dtype=torch.float32)), generator)
    return [n for n, _ in chosen]


def detach(model: nn.Module) -> None:
    """Undo :func:`attach`: every projected layer becomes its original class again."""
    for _, layer in projected_layers(model):
        layer.__class__ = layer.__class__.__mro__[2]
        del layer.rw


@torch.no_grad()
def clip_(model: nn.Module) -> None:
    """Clamp every projected layer's hidden weight to ``[-H, H]`` in place (after an optimizer step)."""
    for _, layer in projected_layers(model):
        if layer.rw.H is not None:
            layer.weight.clamp_(-layer.rw.H, layer.rw.H)


@contextmanager
def use_weights(model: nn.Module, weights: str = "auto"):
    """Within the block, evaluate with ``weights`` (one of :data:`WEIGHTS`); restored after."""
    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}; choose one of: {', '.join(WEIGHTS)}")
    layers = [m for _, m in projected_layers(model)]
    before = [m.rw.weights for m in layers]
    for m in layers:
        m.rw.weights = weights
    try:
        yield model
    finally:
        for m, w in zip(layers, before):
            m.rw.weights = w


def pin(layer: nn.Module, weight: Tensor) -> None:
    """Make ``layer`` use ``weight`` in every forward pass until :func:`unpin`; the hidden weight is untouched."""
    layer.rw.pinned = weight


def unpin(model: nn.Module) -> None:
    for _, layer in projected_layers(model):
        layer.rw.pinned = None


@torch.no_grad()
def effective_weight(layer: nn.Module) -> Tensor:
    """The weight a projected layer uses in an evaluation forward pass right now."""
    s = layer.rw
    if s.pinned is not None:
        return s.pinned
    return layer.weight if s.eval_uses_hidden() else s.project(layer.weight)


@contextmanager
def distort(model: nn.Module, t: "str | Transform", generator: torch.Generator | None = None,
            *, on: str = "hidden", exclude: "set[str] | tuple[str, ...]" = ()):
    """Within the block every projected layer uses ``t(W)`` (one draw per layer, fixed for the block).

    ``on="hidden"`` distorts the hidden weights, ``on="projected"`` the weights
    evaluation would otherwise use. Layers named in ``exclude`` keep their
    evaluation weights. The hidden weights are never written: the distorted
    tensors are pinned beside them and dropped on exit, error or not.
    """
    if on not in ("hidden", "projected"):
        raise UserError(f"distort on must be 'hidden' or 'projected', not {on!r}")
    t = transform(t)
    layers = [m for n, m in projected_layers(model) if n not in exclude]
    before = [m.rw.pinned for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                base = m.weight if on == "hidden" else effective_weight(m)
                pin(m, t(base, generator, clip=m.rw.H if m.rw.H is not None else 1.0))
        yield model
    finally:
        for m, p in zip(layers, before):
            m.rw.pinned = p
