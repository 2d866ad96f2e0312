"""Weight transforms: one registry for training projections and test-time distortions.

Every transform is a pure tensor function ``f(w, generator, H, **params)`` plus
one registry entry that names it, declares its parameters with their allowed
ranges, and says whether it draws random numbers. A transform is built from a
spec string and called on a weight tensor::

    t = transform("power:beta=0.5")
    wp = t(w)                       # w is never modified
    t = transform("stoch-mult:gamma=0.5,flip=true")
    wp = t(w, generator=g)          # random draws come from g only

A random transform draws through :func:`uniform`/:func:`normal` (module
:mod:`robustweights.draws`), which under ``torch.compile`` run outside the
compiled graph: the compiled code draws the same numbers, in the forward and
the backward pass alike.

Definitions follow ``docs/method.md`` section 2. ``H`` is the
magnitude a transform maps onto, chosen by its ``scale`` parameter:

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

``sign(0) = +1`` everywhere, so binarised tensors never hold zeros.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .draws import normal, uniform
from .errors import UserError

__all__ = [
    "Transform",
    "Param",
    "transform",
    "list_transforms",
    "parse_spec",
    "register_transform",
    "entry",
    "uniform",
    "normal",
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
    kind: str  # "float", "int", "bool" or "scale"
    default: Any = _REQUIRED
    ok: Callable[[Any], bool] = lambda v: True
    allowed: str = ""  # the range in words, for error messages
    follows: bool = True  # takes the scale a sweep or training sets by default
    quiet: bool = False  # left out of the canonical spec at its default
    label: str = ""  # axis label when swept, e.g. "bits (2^bits levels)"
    stronger: str = "up"  # "up": a larger value distorts more; "down": a smaller one


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
    bits: Callable[[dict], float | None] = (
        _none  # capacity in bits per weight (docs/method.md section 4)
    )
    discrete: Callable[[dict], bool] = _never  # outputs take few values (their entropy is measured)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_REGISTRY: dict[str, Entry] = {}


def register_transform(
    name: str, *params: Param, random: bool = False, constant=_never, bits=_none, discrete=_never
):
    """Decorator: put a pure function ``fn(w, g, H, **params)`` in the registry under ``name``.

    ``fn`` returns a new tensor (never changes ``w``), draws random numbers
    only from ``g`` (through :func:`uniform`/:func:`normal`) when ``random``,
    and gets ``H`` when it declares a ``scale`` parameter. The metadata
    functions take the bound parameters: ``constant`` (a random transform that
    cannot vary, computed once per strength by sweeps), ``bits`` (capacity in
    bits per weight, or None), ``discrete`` (outputs take few values). Then the
    name works everywhere a spec does: training, sweeps, reports, the command
    line (``robustweights list transforms``). Example, a stuck-at-zero fault::

        import robustweights as rw
        from robustweights.transforms import Param, uniform

        @rw.register_transform("stuck-zero", Param("p", "float", ok=lambda p: 0 <= p <= 1,
                                                   allowed="0 <= p <= 1", label="p (fraction stuck at 0)"),
                               random=True, constant=lambda q: q["p"] in (0, 1))
        def stuck_zero(w, g, H, p):
            \"\"\"Each weight reads 0 with probability p (a memory cell stuck at zero).\"\"\"
            return w * (uniform(w, g) >= p)

        rows = rw.sweep(model, data, ["stuck-zero:p=0:0.5:0.1"], trials=3)
    """
    if not name or ":" in name or "," in name or "=" in name:
        raise UserError(f"a transform name needs letters, not {name!r}")

    def deco(fn):
        _REGISTRY[name] = Entry(
            name, fn, params, random, (fn.__doc__ or "").strip(), constant, bits, discrete
        )
        return fn

    return deco


register = register_transform  # the name the built-in transforms below use


def entry(name: str) -> Entry:
    """The registry entry of transform ``name`` (its function, parameters, whether it draws, its doc)."""
    if name not in _REGISTRY:
        raise UserError(
            f"unknown transform {name!r}; choose one of: {', '.join(list_transforms())}"
        )
    return _REGISTRY[name]


def list_transforms(pattern: str = "*") -> list[str]:
    """Registered transform names matching a shell-style ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


_SCALE = Param(
    "scale", "scale", "max", ok=lambda v: v != "std", allowed="max, clip, mean or a positive number"
)
# The reference of additive noise: its own default (std), never the magnitude default of a sweep or
# of training, and written in a spec only when it is not std (so specs from before it read the same).
_NOISE_REF = Param(
    "scale",
    "scale",
    "std",
    allowed="std, max, clip, mean or a positive number",
    follows=False,
    quiet=True,
)


def magnitude(w: Tensor, scale: Any, clip: float) -> Tensor | float:
    """The ``H`` a transform maps onto (see the module docstring)."""
    if scale == "max":
        h = w.detach().abs().amax()
    elif scale == "std":
        return w.detach().std(
            correction=0
        )  # noise relative to a spread of 0 is none: no substitute
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


def _pm(mask: Tensor, H, dtype, where: bool | None = None) -> Tensor:
    """``+H`` where ``mask``, else ``-H``, exactly (``2H - H = H``; ``0 - H = -H``).

    On a CPU arithmetic on the mask (several times faster there than
    ``torch.where`` with scalars), elsewhere ``torch.where`` (one kernel
    instead of three: a batch-50 GPU step is short); the same numbers.
    ``where`` forces one way (the tests compare them).
    """
    h = (
        H if isinstance(H, Tensor) else float(H)
    )  # torch.where's result: h's dtype, or the default for a number
    if (mask.device.type != "cpu" if where is None else where) and dtype == (
        h.dtype if isinstance(h, Tensor) else torch.get_default_dtype()
    ):
        return torch.where(mask, h, -h)
    return mask.to(dtype).mul_(2 * H).sub_(H)


def _sign(w: Tensor) -> Tensor:
    """``sign`` with ``sign(0) = +1`` (and ``sign(-0.0) = +1``), in ``w``'s dtype."""
    return _pm(w >= 0, 1, w.dtype)


# ---------------------------------------------------------------------------
# The transforms (docs/method.md section 2 table; prune and bitflip model hardware faults)
# ---------------------------------------------------------------------------


@register("identity")
def identity(w, g, H):
    """``W``: the float baseline."""
    return w.clone()


@register("sign", _SCALE, bits=lambda p: 1.0, discrete=lambda p: True)
def sign(w, g, H):
    """``H * sign(W)``, ``sign(0) = +1``: deterministic binarisation."""
    return _pm(w >= 0, H, w.dtype)


@register("stoch-sign", _SCALE, random=True, bits=lambda p: 1.0, discrete=lambda p: True)
def stoch_sign(w, g, H):
    """``+H`` with probability ``q = clip((W/H + 1)/2, 0, 1)``, else ``-H``.

    BinaryConnect's stochastic binarisation. Unbiased: ``E[out] = H(2q - 1) =
    clip(W, -H, H)``.
    """
    # u < q  <=>  (2u - 1) H < W for u in [0, 1): the clip of q is implied; in place, as it runs every step.
    # (u - 0.5) 2H rounds as (2u - 1) H does, bit for bit (scaling by 2 commutes with rounding), in one op less.
    return _pm(uniform(w, g).sub_(0.5).mul_(2 * H) < w, H, w.dtype)


@register(
    "ternary",
    Param(
        "delta",
        "float",
        ok=lambda d: 0 <= d <= 1,
        allowed="0 <= delta <= 1",
        label="delta (zero threshold / H)",
    ),
    _SCALE,
    bits=lambda p: math.log2(3),
    discrete=lambda p: True,
)
def ternary(w, g, H, delta):
    """``H * sign(W)`` where ``|W| > delta*H``, else 0."""
    return torch.where(w.abs() > delta * H, _sign(w) * H, torch.zeros_like(w))


@register(
    "quant",
    Param(
        "bits",
        "int",
        ok=lambda b: 1 <= b <= 16,
        allowed="1 <= bits <= 16",
        label="bits (2^bits levels)",
        stronger="down",
    ),
    _SCALE,
    bits=lambda p: float(p["bits"]),
    discrete=lambda p: True,
)
def quant(w, g, H, bits):
    """Uniform symmetric quantiser with ``L = 2^bits`` levels on ``[-H, H]``.

    Levels are ``+-(2j+1)/(L-1) * H`` for ``j = 0 .. L/2-1`` (evenly spaced, step
    ``2H/(L-1)``, both ends included); ``|W|/H`` is rounded to the nearest level
    and clipped to ``H``. Computed as ``sign(W) * level(|W|)`` so that
    ``bits=1`` equals ``sign`` exactly, zero included.
    """
    L = 2**bits
    m = (w.abs() / H).clamp(max=1)
    j = torch.floor(m * ((L - 1) / 2)).clamp(max=L // 2 - 1)
    return _sign(w) * H * ((2 * j + 1) / (L - 1))


@register(
    "power",
    Param(
        "beta",
        "float",
        ok=lambda b: b >= 0,
        allowed="beta >= 0",
        label="beta (power exponent)",
        stronger="down",
    ),
    _SCALE,
    bits=lambda p: 1.0 if p["beta"] == 0 else None,
    discrete=lambda p: p["beta"] == 0,
)
def power(w, g, H, beta):
    """``H * sign(W) * |W/H|^beta``.

    ``beta=0`` is ``sign`` and ``beta=1`` is ``identity``; both ends are computed
    by those functions so the identities hold bit for bit.
    """
    if beta == 0:
        return sign(w, g, H)
    if beta == 1:
        return identity(w, g, H)
    return _sign(w) * H * (w.abs() / H).pow(beta)


@register(
    "stoch-mult",
    Param(
        "gamma",
        "float",
        ok=lambda x: 0 < x <= 1,
        allowed="0 < gamma <= 1",
        label="gamma (u ~ U[gamma, 1/gamma])",
        stronger="down",
    ),
    Param("flip", "bool", False, allowed="true or false"),
    _SCALE,
    random=True,
    constant=lambda p: p["gamma"] == 1 and not p["flip"],
)
def stoch_mult(w, g, H, gamma, flip):
    """``W * u`` with ``u ~ U[gamma, 1/gamma]`` elementwise, a new draw every call.

    The stochastic projection rule (a reconstruction, docs/method.md). With
    ``flip=true`` the magnitude is ``|W| * u`` and the sign is drawn as in
    ``stoch-sign`` (``+`` with probability ``clip((W/H + 1)/2, 0, 1)``).
    ``gamma=1`` is the identity (without flip).
    """
    u = uniform(w, g).mul_(1 / gamma - gamma).add_(gamma)
    if not flip:
        return u.mul_(w)
    up = (
        uniform(w, g).sub_(0.5).mul_(2 * H) < w
    )  # + with probability clip((W/H + 1)/2, 0, 1), as stoch-sign
    return _pm(up, 1, w.dtype).mul_(w.abs()).mul_(u)


def capacity(signal: float, noise: float) -> float:
    """``0.5 log2(1 + signal / noise^2)`` bits (a Gaussian channel), computed in logarithms: finite for any
    ``noise > 0``, however small (``1 / noise^2`` itself overflows below about 1e-154)."""
    if signal <= 0:
        return 0.0
    if noise**2 > 0 and signal / noise**2 < 1e300:  # the plain formula, to the last digit as always
        return 0.5 * math.log2(1 + signal / noise**2)
    return 0.5 * (
        math.log2(signal) - 2 * math.log2(noise)
    )  # log2(1 + x) = log2(x) to double precision here


def _gauss_bits(p: dict) -> float | None:
    """``0.5 log2(1 + 1/s^2)``: the nominal capacity of noise ``s`` times the signal's own spread."""
    return capacity(1.0, p["sigma"]) if p["sigma"] > 0 else None


@register(
    "add-gauss",
    Param(
        "sigma",
        "float",
        ok=lambda s: s >= 0,
        allowed="sigma >= 0",
        label="sigma (noise std / weight std)",
    ),
    _NOISE_REF,
    random=True,
    constant=lambda p: p["sigma"] == 0,
    bits=_gauss_bits,
)
def add_gauss(w, g, H, sigma):
    """``W + sigma * R * n``, ``n ~ N(0, 1)``: additive noise relative to a reference ``R``.

    ``scale`` chooses ``R``: ``std`` (the default: the tensor's population
    standard deviation, noise relative to its spread), ``max`` (``max|W|``:
    relative to the tensor's range), ``clip`` (the training clip bound ``H``),
    ``mean`` (``mean|W|``) or a number.
    """
    return w + (sigma * H) * normal(w, g)


@register(
    "mult-gauss",
    Param(
        "sigma",
        "float",
        ok=lambda s: s >= 0,
        allowed="sigma >= 0",
        label="sigma (relative noise std)",
    ),
    random=True,
    constant=lambda p: p["sigma"] == 0,
    bits=_gauss_bits,
)
def mult_gauss(w, g, H, sigma):
    """``W * (1 + sigma * n)``, ``n ~ N(0, 1)``: multiplicative noise."""
    return w * (1 + sigma * normal(w, g))


@register("clip", _SCALE)
def clip(w, g, H):
    """``clip(W, -H, H)``; with ``scale=clip`` this is the training clip alone."""
    return w.clamp(-H, H)


@register(
    "prune",
    Param(
        "frac",
        "float",
        ok=lambda f: 0 <= f <= 1,
        allowed="0 <= frac <= 1",
        label="frac (fraction pruned)",
    ),
)
def prune(w, g, H, frac):
    """Zero the ``floor(frac * n)`` smallest-magnitude weights of the tensor (ties by position)."""
    k = int(math.floor(frac * w.numel()))
    if k == 0:
        return w.clone()
    idx = (
        w.detach().abs().flatten().argsort(stable=True)[:k]
    )  # positions in row-major order, whatever the strides
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    mask[idx] = True
    return w.masked_fill(
        mask.view(w.shape), 0
    )  # (a channels-last or transposed weight has no flat view)


@register(
    "bitflip",
    Param(
        "p", "float", ok=lambda p: 0 <= p <= 1, allowed="0 <= p <= 1", label="p (flip probability)"
    ),
    random=True,
    constant=lambda p: p["p"] in (0, 1),
)
def bitflip(w, g, H, p):
    """Flip the sign of each weight independently with probability ``p`` (a hardware fault)."""
    return torch.where(uniform(w, g) < p, -w, w)


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
    where = f"{entry.name}: {p.name}={raw!r}"
    try:
        if p.kind == "bool":
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            v = low in ("true", "1", "yes")
        elif p.kind == "int":
            v = int(raw)
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
        """Whether two draws can differ (``add-gauss:sigma=0`` draws but cannot: a sweep tests it once)."""
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
        """A copy where parameters the user did not give take ``defaults`` (e.g. ``scale="clip"``)."""
        declared = {p.name for p in self.entry.params if p.follows}
        params = dict(self.params)
        for k, v in defaults.items():
            if k in declared and k not in self.given:
                params[k] = v
        return Transform(self.name, params, self.given)

    def __call__(
        self, w: Tensor, generator: torch.Generator | None = None, *, clip: float | None = 1.0
    ) -> Tensor:
        """Transformed copy of ``w``; ``clip`` is the ``H`` used by ``scale=clip`` (None: a tensor never
        clipped, whose ``max|W|`` stands for it)."""
        if clip is not None and not (clip > 0 and math.isfinite(clip)):
            raise UserError(
                f"{self.spec}: the clip bound H must be a positive number, not {clip!r}"
            )
        p = dict(self.params)
        low = w.dtype in (
            torch.float16,
            torch.bfloat16,
        )  # computed in float32: a 16-bit quantizer's levels
        x = w.float() if low else w  # overflow float16, and half rounding shifts levels
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
    """Build a :class:`Transform` from a spec such as ``"quant:bits=4"`` or ``"stoch-mult:gamma=0.5,flip=true"``.

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
