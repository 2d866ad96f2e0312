"""The transform registry: parameters, entries, spec strings and the bound Transform object.

A transform is a pure tensor function ``f(w, generator, H, **params)`` plus one
registry entry (:class:`Entry`) that names it, declares its parameters
(:class:`Param`) with their allowed ranges, and says whether it draws random
numbers. :func:`transform` builds a :class:`Transform` from a spec string
(``"name:key=value,key=value"``, :func:`parse_spec`). The built-in transforms
live in :mod:`robustweights.transforms`, which the package imports, so they are
registered whichever module a user imports first.

``H`` is the magnitude a transform maps onto (:func:`magnitude`), chosen by its
``scale`` parameter:

* ``max``  -- the tensor's own ``max|W|`` (default), so that ``power:beta=0``
  equals ``sign`` and a float network that was never clipped is not penalised
  for its weight scale;
* ``std`` -- the tensor's population standard deviation: only the reference of
  additive noise (``add-gauss``, whose default it is);
* ``clip`` -- the training clip bound ``H`` passed by the caller (training uses
  this);
* ``mean`` -- ``mean|W|``, the scale that minimises the squared error of a
  binary tensor;
* a positive number.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .errors import UserError

__all__ = [
    "Transform",
    "Param",
    "Entry",
    "transform",
    "list_transforms",
    "parse_spec",
    "register_transform",
    "entry",
    "magnitude",
    "as_projection",
    "SCALES",
]

SCALES = ("max", "clip", "mean", "std")
_REQUIRED = object()


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter of a transform: its type, default and allowed range."""

    name: str
    kind: str  # "float", "int", "bool", "scale" or "choice" (one of ``choices``)
    default: Any = _REQUIRED
    ok: Callable[[Any], bool] = lambda v: True
    allowed: str = ""  # the range in words, for error messages
    follows: bool = True  # takes the scale a sweep or training sets by default
    quiet: bool = False  # left out of the canonical spec at its default
    label: str = ""  # axis label when swept, e.g. "bits (2^bits levels)"
    stronger: str = "up"  # "up": a larger value distorts more; "down": a smaller one
    choices: tuple[str, ...] = ()  # the words a "choice" parameter takes
    # "time" (the time since programming) or "read" (how a chip is read): a parameter of the
    # reading, not of the draws; a sweep's cell seed leaves it out (grid.cell_seed), so cells
    # that differ only in it share their draws: one chip read at several times
    axis: str = ""


def _none(params: dict):
    return None


def _never(params: dict) -> bool:
    return False


@dataclass(frozen=True)
class Entry:
    """A registered transform and what the rest of the package needs to know about it."""

    name: str
    fn: Callable[..., Tensor]
    params: tuple[Param, ...]
    random: bool
    doc: str
    constant: Callable[[dict], bool] = _never  # parameters with which a random one draws no chance
    bits: Callable[[dict], float | None] = _none  # bits per weight (docs/method.md section 4)
    discrete: Callable[[dict], bool] = _never  # outputs take few values (their entropy is measured)
    projection: bool = (
        True  # may be a training projection (straight-through), not only a distortion
    )

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_REGISTRY: dict[str, Entry] = {}


def register_transform(
    name: str,
    *params: Param,
    random: bool = False,
    constant=_never,
    bits=_none,
    discrete=_never,
    projection: bool = True,
):
    """Decorator: put a pure function ``fn(w, g, H, **params)`` in the registry under ``name``.

    ``fn`` returns a new tensor (never changes ``w``), draws random numbers
    only from ``g`` (through :mod:`robustweights.draws`' ``uniform``/``normal``,
    re-exported by :mod:`robustweights.transforms`) when ``random``,
    and gets ``H`` when it declares a ``scale`` parameter. The metadata
    functions take the bound parameters: ``constant`` (a random transform that
    cannot vary, computed once per strength by sweeps), ``bits`` (capacity in
    bits per weight, or None), ``discrete`` (outputs take few values). Then the
    name works everywhere a spec does: training, sweeps, reports, the command
    line (``robustweights list transforms``). ``projection=False`` keeps it a
    test-time distortion only (:func:`as_projection` refuses it in training): for a
    function that cannot be trained through with the straight-through gradient.
    Example, a stuck-at-zero fault::

        import robustweights as rw
        from robustweights.transforms import Param, uniform

        stuck = Param("p", "float", ok=lambda p: 0 <= p <= 1, allowed="0 <= p <= 1",
                      label="p (fraction stuck at 0)")

        @rw.register_transform("stuck-zero", stuck, random=True,
                               constant=lambda q: q["p"] in (0, 1))
        def stuck_zero(w, g, H, p):
            \"\"\"Each weight reads 0 with probability p (a memory cell stuck at zero).\"\"\"
            return w * (uniform(w, g) >= p)

        rows = rw.sweep(model, data, ["stuck-zero:p=0:0.5:0.1"], trials=3)
    """
    if not name or ":" in name or "," in name or "=" in name:
        raise UserError(f"a transform name needs letters, not {name!r}")

    def deco(fn):
        doc = (fn.__doc__ or "").strip()
        _REGISTRY[name] = Entry(name, fn, params, random, doc, constant, bits, discrete, projection)
        return fn

    return deco


def entry(name: str) -> Entry:
    """The registry entry of transform ``name``.

    Its function, parameters, whether it draws, its doc.
    """
    if name not in _REGISTRY:
        raise UserError(
            f"unknown transform {name!r}; choose one of: {', '.join(list_transforms())}"
        )
    return _REGISTRY[name]


def as_projection(spec: "str | Transform") -> "Transform":
    """The :class:`Transform` of ``spec`` as a training projection.

    Every registered transform may be one (deterministic ones, and random ones such as
    ``stoch-sign``, ``add-gauss`` or a device model like ``pcm``, drawn anew at each read in
    training), except one registered with ``projection=False``; a list or range of values
    (a sweep's grid) is refused by :func:`transform`.
    """
    t = transform(spec)
    if not t.entry.projection:
        projections = [n for n in list_transforms() if _REGISTRY[n].projection]
        raise UserError(
            f"{t.name} is a test-time distortion only, not a training projection; "
            f"projections: {', '.join(projections)}"
        )
    return t


def list_transforms(pattern: str = "*") -> list[str]:
    """Registered transform names matching a shell-style ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def magnitude(w: Tensor, scale: Any, clip: float) -> Tensor | float:
    """The ``H`` a transform maps onto (see the module docstring)."""
    if scale == "max":
        h = w.detach().abs().amax()
    elif scale == "std":
        # noise relative to a spread of 0 is none: no substitute
        return w.detach().std(correction=0)
    elif scale == "mean":
        h = w.detach().abs().mean()
    elif scale == "clip":
        if clip is not None:
            return float(clip)
        h = w.detach().abs().amax()  # a tensor never clipped: its range stands for the bound
    else:
        return float(scale)
    # An all-zero tensor has no scale; 1 keeps divisions finite (the result is 0 or +-1).
    return torch.where(h > 0, h, torch.ones_like(h))


# ---------------------------------------------------------------------------
# Specs: "name:key=value,key=value"
# ---------------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, dict[str, list[str]]]:
    """Split ``"name:k=v,k=v2,v3"`` into the name and raw value lists per key.

    A token without ``=`` continues the previous key's list (grid syntax used by
    sweeps); :func:`transform` accepts one value per key.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty transform spec; choose one of: {', '.join(list_transforms())}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in _REGISTRY:
        raise UserError(
            f"unknown transform {name!r}; choose one of: {', '.join(list_transforms())}"
        )
    values: dict[str, list[str]] = {}
    key = None
    for token in filter(None, (t.strip() for t in rest.split(","))):
        if "=" in token:
            key, _, v = token.partition("=")
            key = key.strip()
            if key in values:
                raise UserError(f"{spec!r}: parameter {key!r} given twice")
            values[key] = [v.strip()]
        elif key is None:
            raise UserError(f"{spec!r}: expected key=value after ':', got {token!r}")
        else:
            values[key].append(token)
    return name, values


def _convert(entry: Entry, p: Param, raw: str) -> Any:
    where = f"{entry.name}:{p.name}={raw!r}"
    try:
        if p.kind == "bool":
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            v = low in ("true", "1", "yes")
        elif p.kind == "int":
            v = int(raw)
        elif p.kind == "choice":
            if raw not in p.choices:
                raise ValueError
            v = raw
        elif p.kind == "scale" and raw in SCALES:
            v = raw
        else:
            v = float(raw)
            if p.kind == "scale" and not v > 0:
                raise ValueError
    except ValueError:
        raise UserError(f"{where} is not valid; allowed: {p.allowed}") from None
    if isinstance(v, float) and not math.isfinite(v) or not p.ok(v):
        raise UserError(f"{where} is out of range; allowed: {p.allowed}")
    return v


def _format(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


class Transform:
    """A registered transform with its parameters bound; call it as ``t(w, generator=None)``.

    ``t.spec`` is the canonical spec string (every parameter written out);
    ``t.random`` says whether it draws random numbers; ``t.given`` holds the
    parameters the user wrote (the others took defaults).
    """

    def __init__(self, name: str, params: dict[str, Any] | None = None, given=None):
        self.entry = _REGISTRY[name]
        self.name = name
        self.params = dict(params or {})
        self.given = frozenset(self.params if given is None else given)

    @property
    def random(self) -> bool:
        """Whether two draws can differ.

        ``add-gauss:sigma=0`` draws but cannot: a sweep tests it once.
        """
        return self.entry.random and not self.entry.constant(self.params)

    @property
    def spec(self) -> str:
        quiet = {
            p.name for p in self.entry.params if p.quiet and self.params.get(p.name) == p.default
        }
        shown = {k: v for k, v in self.params.items() if k not in quiet}
        if not shown:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_format(v)}" for k, v in shown.items())

    def with_defaults(self, **defaults) -> "Transform":
        """A copy where parameters the user did not give take ``defaults``.

        For example ``scale="clip"``.
        """
        declared = {p.name for p in self.entry.params if p.follows}
        params = dict(self.params)
        for k, v in defaults.items():
            if k in declared and k not in self.given:
                params[k] = v
        return Transform(self.name, params, self.given)

    def __call__(
        self, w: Tensor, generator: torch.Generator | None = None, *, clip: float | None = 1.0
    ) -> Tensor:
        """Transformed copy of ``w``; ``clip`` is the ``H`` used by ``scale=clip``.

        None: a tensor never clipped, whose ``max|W|`` stands for it.
        """
        if clip is not None and not (clip > 0 and math.isfinite(clip)):
            raise UserError(
                f"{self.spec}: the clip bound H must be a positive number, not {clip!r}"
            )
        p = dict(self.params)
        # computed in float32: a 16-bit quantizer's levels overflow float16, and half rounding
        # shifts levels
        low = w.dtype in (torch.float16, torch.bfloat16)
        x = w.float() if low else w
        H = magnitude(x, p.pop("scale"), clip) if "scale" in p else None
        out = self.entry.fn(x, generator, H, **p)
        return out.to(w.dtype) if low else out

    def __repr__(self) -> str:
        return f"transform({self.spec!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Transform) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)


def transform(spec: "str | Transform") -> Transform:
    """Build a :class:`Transform` from a spec.

    Specs such as ``"quant:bits=4"`` or ``"stoch-mult:gamma=0.5,flip=true"``.

    Raises :class:`~robustweights.errors.UserError` (a ``ValueError``) naming the
    valid choices for an unknown name, an unknown, missing or repeated
    parameter, or a value out of range.
    """
    if isinstance(spec, Transform):
        return spec
    name, raw = parse_spec(spec)
    entry = _REGISTRY[name]
    declared = {p.name: p for p in entry.params}
    for key in raw:
        if key not in declared:
            allowed = ", ".join(declared) or "none"
            raise UserError(f"{name}: unknown parameter {key!r}; parameters: {allowed}")
    params = {}
    for p in entry.params:
        if p.name in raw:
            if len(raw[p.name]) > 1:
                raise UserError(
                    f"{spec!r}: {p.name} takes one value here (lists and ranges are for sweeps)"
                )
            params[p.name] = _convert(entry, p, raw[p.name][0])
        elif p.default is _REQUIRED:
            raise UserError(
                f"{name}: missing parameter {p.name!r} ({p.allowed}), e.g. {name}:{p.name}=..."
            )
        else:
            params[p.name] = p.default
    return Transform(name, params, given=raw.keys())
