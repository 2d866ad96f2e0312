"""The built-in weight transforms: training projections and test-time distortions.

Every transform here is a pure tensor function ``f(w, generator, H, **params)``
registered in :mod:`robustweights.registry`, whose public names this module
re-exports (``register_transform``, ``transform``, ``parse_spec``, ...). A
transform is built from a spec string and called on a weight tensor::

    t = transform("power:beta=0.5")
    wp = t(w)                       # w is never modified
    t = transform("stoch-mult:gamma=0.5,flip=true")
    wp = t(w, generator=g)          # random draws come from g only

A random transform draws through :func:`uniform`/:func:`normal` (module
:mod:`robustweights.draws`), which under ``torch.compile`` run outside the
compiled graph: the compiled code draws the same numbers, in the forward and
the backward pass alike.

Definitions follow ``docs/method.md`` section 2. ``H`` is the magnitude a
transform maps onto, chosen by its ``scale`` parameter (``max``, ``std``,
``clip``, ``mean`` or a number; :func:`robustweights.registry.magnitude`).

``sign(0) = +1`` everywhere, so binarised tensors never hold zeros. The device
models (``pcm``, ``stuck``) live in :mod:`robustweights.devices`, imported here so
that they are registered with the others.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import devices as _devices  # noqa: F401  (registers pcm and stuck)
from .draws import normal, uniform
from .registry import (
    SCALES,
    Entry,
    Param,
    Transform,
    entry,
    list_transforms,
    magnitude,
    parse_spec,
    register_transform,
    transform,
)

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
    "capacity",
    "uniform",
    "normal",
    "SCALES",
]

register = register_transform  # the name the built-in transforms below use


_SCALE = Param(
    "scale", "scale", "max", ok=lambda v: v != "std", allowed="max, clip, mean or a positive number"
)
# The reference of additive noise: its own default (std), never the magnitude default of a sweep
# or of training, and written in a spec only when it is not std (so specs from before it read the
# same).
_NOISE_REF = Param(
    "scale",
    "scale",
    "std",
    allowed="std, max, clip, mean or a positive number",
    follows=False,
    quiet=True,
)


def _pm(mask: Tensor, H, dtype, where: bool | None = None) -> Tensor:
    """``+H`` where ``mask``, else ``-H``, exactly (``2H - H = H``; ``0 - H = -H``).

    On a CPU arithmetic on the mask (several times faster there than
    ``torch.where`` with scalars), elsewhere ``torch.where`` (one kernel
    instead of three: a batch-50 GPU step is short); the same numbers.
    ``where`` forces one way (the tests compare them).
    """
    # torch.where's result: h's dtype, or the default for a number
    h = H if isinstance(H, Tensor) else float(H)
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
    # u < q  <=>  (2u - 1) H < W for u in [0, 1): the clip of q is implied; in place, as it runs
    # every step. (u - 0.5) 2H rounds as (2u - 1) H does, bit for bit (scaling by 2 commutes with
    # rounding), in one op less.
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
    # + with probability clip((W/H + 1)/2, 0, 1), as stoch-sign
    up = uniform(w, g).sub_(0.5).mul_(2 * H) < w
    return _pm(up, 1, w.dtype).mul_(w.abs()).mul_(u)


def capacity(signal: float, noise: float) -> float:
    """``0.5 log2(1 + signal / noise^2)`` bits (a Gaussian channel), computed in logarithms.

    Finite for any ``noise > 0``, however small (``1 / noise^2`` itself overflows below about
    1e-154).
    """
    if signal <= 0:
        return 0.0
    if noise**2 > 0 and signal / noise**2 < 1e300:  # the plain formula, to the last digit
        return 0.5 * math.log2(1 + signal / noise**2)
    # log2(1 + x) = log2(x) to double precision here
    return 0.5 * (math.log2(signal) - 2 * math.log2(noise))


def _gauss_bits(p: dict) -> float | None:
    """``0.5 log2(1 + 1/s^2)``: the nominal capacity of noise ``s`` times the signal's own
    spread."""
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
    """Zero the ``floor(frac * n)`` smallest-magnitude weights of the tensor.

    Ties go by position.
    """
    k = int(math.floor(frac * w.numel()))
    if k == 0:
        return w.clone()
    # positions in row-major order, whatever the strides
    idx = w.detach().abs().flatten().argsort(stable=True)[:k]
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    mask[idx] = True
    # (a channels-last or transposed weight has no flat view)
    return w.masked_fill(mask.view(w.shape), 0)


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
