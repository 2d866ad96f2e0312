"""Projected weights for any ``nn.Module``, BinaryConnect style, chosen parameter by parameter.

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
independent draws); a distortion (:func:`distort`) is drawn once and pinned.

After each optimizer step :func:`clip_` clamps the hidden weights to
``[-H, H]`` (``H=1``, or BinaryConnect's Glorot ``H = sqrt(1.5/(fan_in+fan_out))``
per tensor).

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

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import UserError
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
    "select",
    "coverage",
    "clip_",
    "glorot_bound",
    "use_weights",
    "effective_weight",
    "distort",
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
        return self.projection(w, self.generator, clip=self.bound)

    @property
    def test_bound(self) -> float | None:
        """The ``H`` a test-time ``scale=clip`` distortion maps onto: the one training used (:attr:`bound`, 1
        for a projection never clipped); None (the tensor's own max|W|) where no projection ever acted."""
        return self.H if self.plain else self.bound

    @property
    def plain(self) -> bool:
        """No projection acts: clip-only mode, or the identity (whose projected weights are the hidden ones)."""
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
            # the layer's own forward (_fwd_forward) never reads the attribute: other code does, and would
            # send the input's gradient through the projected weight (fwd+bwd) while the run says fwd
            raise UserError(
                f"mode fwd: {self.name} is read directly by code other than its layer's forward "
                f"(as nn.MultiheadAttention reads out_proj.weight), which would train it as fwd+bwd; "
                f"exclude it or use fwd+bwd"
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
    clip = _check_clip(clip)
    t = transform(projection).with_defaults(scale="clip")
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
        bad = [
            n
            for n, p in chosen
            if any(
                not (isinstance(m, _LAYER_TYPES) and a == "weight") for _, m, a in holders[id(p)]
            )
        ]
        if bad:
            raise UserError(
                f"mode fwd needs a layer's own output function, so it applies to nn.Linear/nn.Conv "
                f"weights only; exclude {shorten(bad, 4)} or use fwd+bwd"
            )
    per_module: dict[int, tuple[nn.Module, dict]] = {}
    for name, p in chosen:
        H = glorot_bound(p) if clip == "glorot" else clip
        # H rounded to float32 (as BinaryConnect's np.float32 H) so the clamp bound is exactly H.
        first = holders[id(p)][0]
        H = (
            None if H is None else float(torch.tensor(H, dtype=torch.float32, device="cpu"))
        )  # (cpu: even when
        site = Site(
            name,
            first[1],
            first[2],
            t,
            mode,
            H,
            generator,  # the model is built on the meta device)
            holders=[(m, a) for _, m, a in holders[id(p)]],
        )
        for _, m, a in holders[id(p)]:
            per_module.setdefault(id(m), (m, {}))[1][a] = site
    for m, table in per_module.values():
        cls = type(m)
        m.__dict__["_rw"] = table
        m.__class__ = _projected_class(cls, tuple(sorted(table)))
    model.__dict__["_rw_left_out"] = left_out
    return [n for n, _ in chosen]


def detach(model: nn.Module) -> None:
    """Undo :func:`attach`: every module gets its own class back and the attribute reads are plain again."""
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
    """Every projected parameter of ``model`` once (a tied one has several holders), in module order."""
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


def coverage(model: nn.Module, exclude=(), *, verb: str = "projected", extra_left_out=()) -> dict:
    """What is covered: ``{"summary", "covered": [...], "left_out": [...]}`` (name, shape, count[, reason]).

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
    """The tensors ``torch.nn.utils.parametrize`` computes (``weight_norm``, ``spectral_norm``, ...) from
    stored parameters among ``names``: ``{"0.weight": ["0.parametrizations.weight.original0", ...]}``."""
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
    """Clamp every projected parameter's hidden weight to ``[-H, H]`` in place (after an optimizer step).

    Two multi-tensor kernels (a batch-50 GPU step is launch-bound), the numbers of one ``clamp_`` per
    tensor; in module order, unsorted (:func:`sites` sorts, which costs more than the clamps on a GPU)."""
    clipped = [
        s for s in _each_site(model) if s.H is not None and s.hidden.requires_grad
    ]  # frozen: never written
    hidden, bound = [s.hidden for s in clipped], [s.H for s in clipped]
    if hidden:
        torch._foreach_clamp_min_(hidden, [-h for h in bound])
        torch._foreach_clamp_max_(hidden, bound)


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
    """Within the block every projected parameter reads as ``t(W)`` (one draw per tensor, fixed for the block).

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
    if plain:  # a model never attached: its weights for the block (before: nothing was distorted, silently)
        attach(model, "identity", mode="none", clip=None)
    ss = [s for s in sites(model) if s.name not in exclude]
    before, buffers = [s.pinned for s in ss], saved_buffers(model)
    try:
        with torch.no_grad():
            for s in ss:
                base = s.hidden if on == "hidden" else effective_weight(s)
                # requiring grad as the weight does: PyTorch picks the same kernels (attention's fast path)
                s.pinned = t(base, generator, clip=s.test_bound).requires_grad_(
                    s.hidden.requires_grad
                )
        yield model
    finally:
        for s, p in zip(ss, before):
            s.pinned = p
        put_back(
            buffers
        )  # a forward that updates buffers (a QAT observer's range) leaves the next cell as before
        if plain:
            detach(model)


def saved_buffers(model: nn.Module) -> list:
    """Copies of every buffer of ``model``, for :func:`put_back`."""
    return [(b, b.detach().clone()) for b in model.buffers()]


@torch.no_grad()
def put_back(saved: list) -> None:
    """Every buffer as :func:`saved_buffers` found it, in place (resized back if a forward resized it)."""
    for b, old in saved:
        if b.shape != old.shape:
            b.resize_(old.shape)
        b.copy_(old)
