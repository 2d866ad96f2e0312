"""Attaching projected weights to any ``nn.Module``: one Site per parameter, straight-through reads.

:func:`attach` makes weight *parameters* projected without touching the
model's code: by default every floating-point parameter with two or more
dimensions (linear and convolution weights, embedding tables, attention
projections such as ``nn.MultiheadAttention.in_proj_weight``, a user's own
``nn.Parameter``), and never biases or normalization parameters (one
dimension). The parameter stays registered where it was and *is* the hidden
float weight ``W`` (so ``state_dict`` keys and the optimizer's parameters do
not change), but **reading the attribute** (``module.weight``,
``module.in_proj_weight``, ``self.pos``) returns the weight the network should
use now: code that reads the attribute directly, and PyTorch's fused fast
paths (``nn.TransformerEncoderLayer`` under ``torch.no_grad()``), see the
projected or distorted tensor. (This is what ``torch.nn.utils.parametrize``
does; unlike it, the ``state_dict`` keys stay those of the plain model, so a
user's state_dict loads both ways.) Training modes:

* ``fwd+bwd``: the attribute read returns ``Wp = p(W)`` with the
  straight-through gradient ``dL/dW := dL/dWp``; the error reaches lower
  layers through ``Wp``.
* ``fwd``: ``y = f(x, W) + (f(x, Wp) - f(x, W)).detach()``: the output is that
  of ``Wp``, the error to the input goes through ``W``, and since ``f`` is
  linear in its weight the weight gradient equals the one of ``fwd+bwd``.
  It needs the layer's own output function, so it applies to the ``weight``
  of ``nn.Linear``/``nn.Conv1d/2d/3d`` only (other parameters are refused).
* ``none``: no projection, ``y = f(x, W)``; only the clipping below.

In training a random projection draws at every read (a tied weight's readers get
independent draws) from its Site's generator: the stochastic rules (``stoch-sign``,
``stoch-mult``), noise (``add-gauss``, ``mult-gauss``) and device models (``pcm:t=86400``: a
chip programmed and read at each forward, as noise-injection training does), each with the
straight-through gradient; a distortion (:func:`robustweights.projected.distort`) is drawn once
and pinned.

After each optimizer step :func:`clip_` clamps the hidden weights to
``[-H, H]`` (``H=1``, or BinaryConnect's Glorot ``H = sqrt(1.5/(fan_in+fan_out))``
per tensor).

Which weights a forward pass uses outside training is a :class:`Site`'s
``weights`` (:data:`WEIGHTS`); their test-time use (distortions, evaluation
weights, coverage) is :mod:`robustweights.projected`, which re-exports this
module's public names.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError
from .registry import as_projection
from .selection import holders_of, select, shorten
from .transforms import Transform, transform

__all__ = [
    "MODES",
    "WEIGHTS",
    "Site",
    "attach",
    "detach",
    "hidden",
    "sites",
    "clip_",
    "glorot_bound",
    "reading",
]

MODES = ("fwd+bwd", "fwd", "none")
WEIGHTS = ("auto", "hidden", "projected")
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(eq=False)
class Site:
    """One projected parameter: what it needs, and where it lives (``module._parameters[attr]``)."""

    name: str  # full parameter name, as in model.named_parameters()
    module: nn.Module  # the (first) module holding it
    attr: str  # its attribute name there ("weight", "in_proj_weight", ...)
    projection: Transform  # applied to the hidden weight (identity when mode is "none")
    mode: str  # one of MODES
    H: float | None  # clip bound for the hidden weights; None: never clipped
    generator: torch.Generator | None  # the only source of random draws for random projections
    weights: str = "auto"  # which weights to use outside training, one of WEIGHTS
    pinned: Tensor | None = None  # a fixed weight that replaces everything (sweeps)
    holders: list = field(
        default_factory=list
    )  # every (module, attr) holding this parameter (tied weights)
    reads: int = 0  # attribute reads counted inside `reading()`

    @property
    def hidden(self) -> Tensor:
        return self.module._parameters[self.attr]

    @property
    def bound(self) -> float:
        """The ``H`` a ``scale=clip`` transform maps onto (1 for a never-clipped parameter)."""
        return self.H if self.H is not None else 1.0

    def project(self, w: Tensor) -> Tensor:
        out = self.projection(w, self.generator, clip=self.bound)
        if out.shape != w.shape:  # the straight-through gradient needs W's shape
            raise UserError(
                f"{self.projection.spec} turned {self.name} of shape {tuple(w.shape)} into "
                f"{tuple(out.shape)}: a projection must keep its weight's shape"
            )
        return out

    @property
    def test_bound(self) -> float | None:
        """The ``H`` a test-time ``scale=clip`` distortion maps onto.

        The one training used (:attr:`bound`, 1 for a projection never clipped); None (the
        tensor's own max|W|) where no projection ever acted.
        """
        return self.H if self.plain else self.bound

    @property
    def plain(self) -> bool:
        """No projection acts: clip-only mode, or the identity.

        (The identity's projected weights are the hidden ones.)
        """
        return self.mode == "none" or self.projection.name == "identity"

    def eval_uses_hidden(self) -> bool:
        """Outside training: use the hidden weight as it is (see :data:`WEIGHTS`)?"""
        if self.plain or self.weights == "hidden":
            return True
        return self.weights == "auto" and self.projection.random

    def current(self, training: bool) -> Tensor:
        """The tensor a read of the attribute returns now (see the module docstring)."""
        w = self.hidden
        if self.pinned is not None:
            return self.pinned
        if self.plain or (not training and self.eval_uses_hidden()):
            return w
        if self.mode == "fwd" and training and torch.is_grad_enabled():
            # the layer's own forward (_fwd_forward) never reads the attribute: other code does,
            # and would send the input's gradient through the projected weight (fwd+bwd) while the
            # run says fwd
            raise UserError(
                f"mode fwd: {self.name} is read directly by code other than its layer's forward "
                f"(as nn.MultiheadAttention reads out_proj.weight), which would train it as "
                f"fwd+bwd; exclude it or use fwd+bwd"
            )
        if not torch.is_grad_enabled():
            return self.project(w)
        return _StraightThrough.apply(w, self)


class _StraightThrough(torch.autograd.Function):
    """``Wp = p(W)`` forward; the gradient passes to ``W`` unchanged (``dL/dW := dL/dWp``)."""

    @staticmethod
    def forward(ctx, w, site):
        return site.project(w)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


_COUNTING = False  # set by `reading()`; a constant for torch.compile otherwise


def _reader(attr: str) -> property:
    def get(self):
        site = self._rw[attr]
        if _COUNTING:
            site.reads += 1
        return site.current(self.training)

    get.__name__ = attr
    return property(
        get, doc=f"the {attr} this module uses now (robustweights: hidden weight in _parameters)"
    )


def _fwd_forward(self, x: Tensor) -> Tensor:
    """Forward of a linear/conv layer whose ``weight`` is projected; implements mode ``fwd``."""
    s = self._rw["weight"]
    if (
        s.mode != "fwd"
        or s.pinned is not None
        or not (self.training and torch.is_grad_enabled())
        or s.plain
    ):
        return self._rw_class.forward(self, x)
    w = self._parameters["weight"]
    f = (
        (lambda w: F.linear(x, w, self.bias))
        if isinstance(self, nn.Linear)
        else (lambda w: self._conv_forward(x, w, self.bias))
    )
    y = f(w)  # carries the gradients (to x through W, to W)
    with torch.no_grad():
        yp = f(s.project(w))  # the value the layer must output
    return y + (yp - y.detach())


_CLASSES: dict[tuple, type] = {}


def _projected_class(cls: type, attrs: tuple[str, ...]) -> type:
    key = (cls, attrs)
    if key not in _CLASSES:
        body = {a: _reader(a) for a in attrs}
        body["_rw_class"] = cls
        if issubclass(cls, _LAYER_TYPES) and "weight" in attrs:
            body["forward"] = _fwd_forward
        _CLASSES[key] = type(f"Projected{cls.__name__}", (cls,), body)
    return _CLASSES[key]


def glorot_bound(w: Tensor) -> float:
    """BinaryConnect's ``H = sqrt(1.5 / (fan_in + fan_out))`` (dimension 1 in, dimension 0 out)."""
    receptive = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    return math.sqrt(1.5 / (w.shape[1] * receptive + w.shape[0] * receptive))


# ---------------------------------------------------------------------------
# Attaching and detaching
# ---------------------------------------------------------------------------


def _check_clip(clip):
    if isinstance(clip, str) and clip not in ("glorot", "none"):
        try:
            clip = float(clip)
        except ValueError:
            raise UserError(
                f"clip must be a positive number, 'glorot' or 'none', not {clip!r}"
            ) from None
    if clip == "none":
        clip = None
    if (
        isinstance(clip, bool)
        or isinstance(clip, float | int)
        and not (clip > 0 and math.isfinite(clip))
    ):
        raise UserError(f"clip must be a positive number, 'glorot' or 'none', not {clip!r}")
    return clip


def attach(
    model: nn.Module,
    projection: "str | Transform" = "identity",
    *,
    mode: str = "fwd+bwd",
    clip: "float | str | None" = 1.0,
    include=("*",),
    exclude=(),
    types=(),
    exclude_types=(),
    float_first: bool = False,
    float_last: bool = False,
    skip=(),
    generator: torch.Generator | None = None,
) -> list[str]:
    """Make the chosen weight parameters of ``model`` projected, in place; returns their names.

    ``projection`` is a transform spec; unless it names its own ``scale`` it maps
    onto the clip bound ``H`` (``scale=clip``), as training should. ``clip`` is a
    number ``H``, ``"glorot"`` (per tensor) or ``None``/``"none"`` (never clip).
    The selection arguments are those of :func:`select` (``skip`` is an older
    name for ``exclude``). What was left out, and why, is kept for
    :func:`coverage`. Attaching again replaces the earlier attachment.
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    _refuse_torchscript(model)
    clip = _check_clip(clip)
    t = as_projection(projection).with_defaults(scale="clip")
    if mode == "none":
        t = transform("identity")
    detach(model)
    chosen, left_out = select(
        model,
        include=include,
        exclude=tuple(exclude) + tuple(skip),
        types=types,
        exclude_types=exclude_types,
        float_first=float_first,
        float_last=float_last,
    )
    if not chosen:
        raise UserError(
            f"{type(model).__name__} has no weight parameter to project "
            f"(floating point, 2 or more dimensions) left by the selection"
        )
    holders = holders_of(model)
    if mode == "fwd":
        _check_fwd_layers(chosen, holders)
    per_module: dict[int, tuple[nn.Module, dict]] = {}
    for name, p in chosen:
        site = _new_site(name, p, holders[id(p)], t, mode, clip, generator)
        for _, m, a in holders[id(p)]:
            per_module.setdefault(id(m), (m, {}))[1][a] = site
    _install(per_module)
    model.__dict__["_rw_left_out"] = left_out
    return [n for n, _ in chosen]


def _refuse_torchscript(model: nn.Module) -> None:
    """TorchScript modules run compiled code whose weight reads Python cannot intercept."""
    script = [
        n or type(model).__name__
        for n, m in model.named_modules()
        if isinstance(m, torch.jit.ScriptModule)
    ]
    if script:
        raise UserError(
            f"{script[0]} is TorchScript (torch.jit.script or trace), whose weights Python cannot "
            f"intercept: give the eager model"
        )


def _check_fwd_layers(chosen: list, holders: dict) -> None:
    """Mode ``fwd`` needs each chosen parameter to be the ``weight`` of a linear/conv layer."""
    bad = [
        n
        for n, p in chosen
        if any(not (isinstance(m, _LAYER_TYPES) and a == "weight") for _, m, a in holders[id(p)])
    ]
    if bad:
        raise UserError(
            f"mode fwd needs a layer's own output function, so it applies to nn.Linear/nn.Conv "
            f"weights only; exclude {shorten(bad, 4)} or use fwd+bwd"
        )


def _new_site(name, p, holds, t, mode, clip, generator) -> Site:
    """The Site of parameter ``name`` held at ``holds`` (its ``(full name, module, attr)``s)."""
    H = glorot_bound(p) if clip == "glorot" else clip
    # H rounded to float32 (as BinaryConnect's np.float32 H) so the clamp bound is exactly H (on
    # the cpu: even when the model is built on the meta device).
    H = None if H is None else float(torch.tensor(H, dtype=torch.float32, device="cpu"))
    first = holds[0]
    return Site(
        name, first[1], first[2], t, mode, H, generator, holders=[(m, a) for _, m, a in holds]
    )


def _install(per_module: dict[int, tuple[nn.Module, dict]]) -> None:
    """Give each holding module its table of Sites and a class whose attribute reads use them."""
    for m, table in per_module.values():
        cls = type(m)
        m.__dict__["_rw"] = table
        m.__class__ = _projected_class(cls, tuple(sorted(table)))


def detach(model: nn.Module) -> None:
    """Undo :func:`attach`: every module gets its own class back.

    The attribute reads are plain again.
    """
    for m in model.modules():
        if "_rw" in m.__dict__:
            m.__class__ = getattr(type(m), "_rw_class", type(m))
            del m.__dict__["_rw"]
    model.__dict__.pop("_rw_left_out", None)


def hidden(module: nn.Module, attr: str = "weight") -> nn.Parameter:
    """The hidden float weight of a projected parameter (what the optimizer updates).

    Reading ``module.weight`` of a projected module gives the weight the
    network uses now (projected, distorted or hidden); this is the parameter itself.
    """
    return module._parameters[attr]


def _each_site(model: nn.Module) -> list[Site]:
    """Every projected parameter of ``model`` once, in module order.

    (A tied one has several holders.)
    """
    seen, out = set(), []
    for m in model.modules():
        for s in m.__dict__.get("_rw", {}).values():
            if id(s) not in seen:
                seen.add(id(s))
                out.append(s)
    return out


def sites(model: nn.Module) -> list[Site]:
    """Every projected parameter of ``model``, in ``named_parameters`` order."""
    out = _each_site(model)
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    return sorted(out, key=lambda s: order.get(s.name, len(order)))


@contextmanager
def reading(model: nn.Module):
    """Within the block count each projected parameter's attribute reads (``site.reads``)."""
    global _COUNTING
    ss = sites(model)
    for s in ss:
        s.reads = 0
    _COUNTING = True
    try:
        yield ss
    finally:
        _COUNTING = False


@torch.no_grad()
def clip_(model: nn.Module) -> None:
    """Clamp every projected parameter's hidden weight to ``[-H, H]`` in place.

    Called after an optimizer step. Two multi-tensor kernels (a batch-50 GPU step is
    launch-bound), the numbers of one ``clamp_`` per tensor; in module order, unsorted
    (:func:`sites` sorts, which costs more than the clamps on a GPU).
    """
    # frozen: never written
    clipped = [s for s in _each_site(model) if s.H is not None and s.hidden.requires_grad]
    hidden, bound = [s.hidden for s in clipped], [s.H for s in clipped]
    if hidden:
        torch._foreach_clamp_min_(hidden, [-h for h in bound])
        torch._foreach_clamp_max_(hidden, bound)
