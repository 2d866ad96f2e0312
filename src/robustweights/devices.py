"""Device models of analog in-memory hardware as distortions: ``pcm``, user devices, ``stuck``.

A :class:`Device` says how one memory device behaves, in units of ``g_max`` (``x = g / g_max``):
its programming noise, its drift over time and its read noise. :func:`register_device` makes a
device a distortion of the transform registry with the parameters every device shares
(:data:`DEVICE_PARAMS`): ``t`` (seconds since programming), ``compensation`` (``global`` or
``none``), ``tile``, the scales ``prog``, ``drift`` and ``read``, and ``g_max``. Each weight
tensor is mapped to differential pairs (:mod:`robustweights.conductances`), both devices of a
pair are programmed, drift and are read (:func:`read_chip`), and the weights are read back.

A chip is programmed from the generator it is given: the programming noise and each device's
drift draw come from it, then one number that, with ``t``, seeds the read noise of this read.
``t`` and ``compensation`` are axes of the reading (``Param.axis``), left out of a sweep cell's
seed: the cells of one trial are one chip, read at every time, with compensation and without;
read noise is drawn anew at each time. The built-in ``pcm`` is the PCM model of Joshi et al.
2020 as aihwkit implements it (:data:`PCM`; constants and equations in ``docs/devices.md``).
``stuck`` sets devices stuck at ``g_max`` or 0; bit errors of binary weights are ``bitflip``
(:mod:`robustweights.transforms`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .conductances import G_MAX, TILE, matrix, scale_tiles_, tile_max, tile_sums, to_pair
from .draws import derive_seed, uniform, untraced
from .errors import UserError
from .registry import Param, register_transform

__all__ = [
    "Device",
    "PCM",
    "DEVICE_PARAMS",
    "register_device",
    "read_chip",
    "compensate",
    "pcm_prog",
    "pcm_nu",
    "pcm_drift",
    "pcm_read",
    "T0",
    "T_READ",
]

T0 = 20.0  # s: the time after programming at which drift starts counting (t = t_inf + t_0)
T_READ = 250e-9  # s: the duration of one read (1/f noise integrates from it)
PROG_COEFFS = (0.26348, 1.9650, -1.1731)  # uS at g_max = 25 uS: sigma_prog(x) = c0 + c1 x + c2 x^2
X_MIN = 1e-7  # the smallest relative conductance the drift exponent is computed at
X_CAP = (0.0088 / 0.2) ** (1 / 0.65)  # below this relative conductance, read noise is at its cap


@dataclass(frozen=True)
class Device:
    """One memory device, in units of ``g_max`` (``x = g / g_max``, ``t`` in seconds).

    ``prog(x)``: the standard deviation of the programming noise at target ``x``, over ``g_max``.
    ``drift(x, n, t)``: the factor ``g(t) / g_prog`` at ``t`` seconds after programming, for a
    device programmed to target ``x`` whose own standard normal draw ``n`` was made when it was
    programmed (so the same device drifts the same way at every read). ``read(x_prog, t)``: the
    standard deviation of the read noise relative to ``|g(t)|``, for a device programmed to
    ``x_prog``. Each acts elementwise on tensors (``t`` is a float) and returns a new tensor
    of their broadcast shape, never changing its arguments. The devices of a pair that target 0
    (one per weight) are given ``x`` as the 0-dim tensor 0, to broadcast against ``n``.
    """

    prog: Callable[[Tensor], Tensor]
    drift: Callable[[Tensor, Tensor, float], Tensor]
    read: Callable[[Tensor, float], Tensor]


def pcm_prog(x: Tensor) -> Tensor:
    """PCM programming noise over ``g_max``: ``(0.26348 + 1.9650 x - 1.1731 x^2) / 25``."""
    c0, c1, c2 = PROG_COEFFS
    return (x * c2).add_(c1).mul_(x).add_(c0).div_(G_MAX)  # Horner: c0 + x (c1 + x c2)


def pcm_nu(x: Tensor, n: Tensor) -> Tensor:
    """PCM drift exponent ``nu = |mu_nu(x) + sigma_nu(x) n|`` (``x`` clipped below at 1e-7)."""
    lx = x.clamp(min=X_MIN).log_()
    sigma = (lx * -0.0125).sub_(0.0059).clamp_(0.008, 0.045)
    mu = lx.mul_(-0.0155).add_(0.0244).clamp_(0.049, 0.1)  # in place: lx is done
    nu = mu.addcmul_(sigma, n) if mu.shape == n.shape else torch.addcmul(mu, sigma, n)
    return nu.abs_()


def pcm_drift(x: Tensor, n: Tensor, t: float) -> Tensor:
    """PCM drift: ``((t + t_0) / t_0)^(-nu)``, ``t_0 = 20 s``."""
    return pcm_nu(x, n).mul_(-math.log((t + T0) / T0)).exp_()


def pcm_read(x_prog: Tensor, t: float) -> Tensor:
    """PCM 1/f read noise: ``min(0.0088 / max(x^0.65, 1e-3), 0.2) * sqrt(ln((t + t_0 + t_r) /
    (2 t_r)))``.

    Computed as ``min(0.0088 exp(-0.65 ln max(x, x_cap)), 0.2)``, where ``x_cap`` is the ``x``
    of the cap at 0.2: the same number, as the cap is reached before the floor at 1e-3 is
    (``0.0088 / 1e-3 > 0.2``), without the slow logarithm of 0 and at half the cost of a power.
    """
    q = x_prog.clamp(min=X_CAP).log_().mul_(-0.65).exp_().mul_(0.0088).clamp_(max=0.2)
    return q.mul_(math.sqrt(math.log((t + T0 + T_READ) / (2 * T_READ))))


PCM = Device(prog=pcm_prog, drift=pcm_drift, read=pcm_read)


def _scale(name: str, what: str) -> Param:
    return Param(
        name,
        "float",
        1.0,
        ok=lambda v: v >= 0,
        allowed=f"{name} >= 0",
        label=f"{name} ({what} noise scale)" if name != "drift" else "drift (drift exponent scale)",
    )


DEVICE_PARAMS = (
    Param(
        "t",
        "float",
        1.0,
        ok=lambda v: v >= 0,
        allowed="t >= 0 (seconds since programming)",
        label="t (seconds since programming)",
        axis="time",
    ),
    Param(
        "compensation",
        "choice",
        "global",
        allowed="global or none",
        choices=("global", "none"),
        axis="read",
    ),
    Param("tile", "int", TILE, ok=lambda v: v >= 0, allowed="tile >= 0 (0: the whole tensor)"),
    _scale("prog", "programming"),
    _scale("drift", "drift"),
    _scale("read", "read"),
    Param("g_max", "float", G_MAX, ok=lambda v: v > 0, allowed="g_max > 0 (uS)", quiet=True),
)


@untraced
def _read_generator(g: torch.Generator | None, t: float, device) -> torch.Generator:
    """A generator for the read noise at ``t``: seeded by one draw from ``g`` and ``t``."""
    on = g.device if g is not None else device
    key = int(torch.randint(0, 2**62, (), generator=g, device=on))
    return torch.Generator(device=on).manual_seed(derive_seed("read", key, float(t)))


@untraced
def _normal_(buf: Tensor, g: torch.Generator | None) -> Tensor:
    """``buf`` filled with standard normal draws from ``g``: the numbers ``draws.normal(buf, g)``
    gives (drawn on ``g``'s device), written into ``buf``; returns ``buf``."""
    if g is None or g.device == buf.device:
        return buf.normal_(generator=g)
    return buf.copy_(torch.randn(buf.shape, generator=g, device=g.device, dtype=buf.dtype))


def _owned(v, like: Tensor, *args: Tensor) -> Tensor:
    """A device law's result ``v`` as a tensor shaped and typed like ``like`` that this module
    may change in place: ``v`` itself when it is one and shares no memory with ``args``."""
    if (
        isinstance(v, Tensor)
        and v.shape == like.shape
        and v.dtype == like.dtype
        and v.is_contiguous()
        and all(v.untyped_storage().data_ptr() != a.untyped_storage().data_ptr() for a in args)
    ):
        return v
    return torch.empty_like(like).copy_(v)


def _alpha(before: Tensor, now: Tensor) -> Tensor:
    """Global drift compensation per tile: ``before / now`` (1 where a tile reads as zeros)."""
    return torch.where(now > 0, before / torch.where(now > 0, now, 1), 1)


def compensate(read: Tensor, programmed: Tensor, tile: int = TILE) -> Tensor:
    """Global drift compensation: ``read`` times ``mean|programmed| / mean|read|`` per tile.

    ``programmed``: the same weights read just after programming (no drift, no read noise);
    both shaped like the weight tensor. A tile that reads as all zeros is left as it is.
    """
    m = matrix(read)
    before, now = tile_sums(matrix(programmed).abs(), tile), tile_sums(m.abs(), tile)
    return scale_tiles_(m.clone(), _alpha(before, now), tile).reshape(read.shape)


def _drifted(device: Device, x: Tensor, prog: Tensor, n: Tensor, t: float, drift: float):
    """Devices programmed to ``prog`` (target ``x``, drift draws ``n``) at ``t``, over
    ``g_max``: ``prog * factor^drift``, in a new tensor."""
    factor = _owned(device.drift(x, n, t), prog, n, prog).clamp_(min=0)
    return (factor if drift == 1 else factor.pow_(drift)).mul_(prog)


def _read(device: Device, programmed: Tensor, now: Tensor, n: Tensor, t: float, read: float):
    """``now`` (devices programmed to ``programmed``, drifted) read once with the noise ``n``:
    ``max(0, now + |now| read sigma_read n)``, in place of ``now`` (which is never negative)."""
    sigma = _owned(device.read(programmed, t), now, programmed, now, n)
    return now.mul_(sigma.mul_(n).mul_(read).add_(1).clamp_(min=0))


def read_chip(
    w: Tensor,
    g: torch.Generator | None,
    device: Device,
    *,
    t: float,
    compensation: str = "global",
    tile: int = TILE,
    prog: float = 1.0,
    drift: float = 1.0,
    read: float = 1.0,
    g_max: float = G_MAX,
) -> Tensor:
    """The weights ``w`` read at ``t`` seconds after they were programmed onto ``device``.

    Each weight is a pair: the device on its own side (``g+`` for a weight >= 0, ``g-`` for a
    negative one) targets ``x = |W| / max|W|`` over its tile, the other device targets 0 (the
    mapping of :func:`robustweights.conductances.to_pair`, in units of ``g_max``). Draws from
    ``g``, in this order and whatever the scales (so that the same generator state is the same
    chip): the programming noise of the devices on the weights' side, then of the others; each
    device's drift draw, in the same order; one seed of the read noise (combined with ``t``),
    whose generator draws the read noise of the two in that order. The drift factor is raised
    to the power ``drift``; ``prog`` and ``read`` multiply their noise's standard deviation.
    ``g_max`` sets units only: ``W'`` does not depend on it.
    """
    if w.numel() == 0:
        return w.clone()
    m = matrix(w.detach())
    x = m.abs()
    biggest = tile_max(x, tile)
    scale_tiles_(x, torch.where(biggest > 0, 1 / biggest, 0), tile)
    n = torch.empty_like(x)
    sigma0 = float(_owned(device.prog(x.new_zeros(1)), x.new_zeros(1)))
    on = _owned(device.prog(x), x, x).mul_(_normal_(n, g)).mul_(prog).add_(x).clamp_(min=0)
    off = _normal_(torch.empty_like(x), g).mul_(sigma0 * prog).clamp_(min=0)
    on_t = _drifted(device, x, on, _normal_(n, g), t, drift)
    off_t = _drifted(device, x.new_zeros(()), off, _normal_(n, g), t, drift)
    rg = _read_generator(g, t, w.device)
    before = tile_sums(torch.sub(on, off, out=n).abs_(), tile) if compensation == "global" else 0
    now = _read(device, on, on_t, _normal_(n, rg), t, read)
    now.sub_(_read(device, off, off_t, _normal_(n, rg), t, read))  # g+ - g- on the weights' side
    per_tile = biggest
    if compensation == "global":
        per_tile = biggest * _alpha(before, tile_sums(torch.abs(now, out=off_t), tile))
    scale_tiles_(now, per_tile, tile)
    return now.mul_(torch.copysign(x.new_ones(()), m, out=off_t)).reshape(w.shape)


def _noiseless(p: dict) -> bool:
    return p["prog"] == 0 and p["drift"] == 0 and p["read"] == 0


def register_device(name: str, device: Device, doc: str = "") -> None:
    """Register ``device`` as the distortion ``name`` with :data:`DEVICE_PARAMS`.

    Then ``name:t=1,3600,86400`` works wherever a spec does (sweeps, ``rw.transform``, the
    command line); a sweep over ``t`` reads one chip per trial at every time.
    """

    def fn(w, g, H, **params):
        return read_chip(w, g, device, **params)

    fn.__doc__ = doc or f"Weights programmed onto {name} devices and read ``t`` s later."
    register_transform(name, *DEVICE_PARAMS, random=True, constant=_noiseless)(fn)


register_device(
    "pcm",
    PCM,
    "Weights on phase-change memory (Joshi et al. 2020, aihwkit's PCMLikeNoiseModel), read ``t``"
    " s after programming, with global drift compensation or none (docs/devices.md).",
)


@register_transform(
    "stuck",
    Param("p_on", "float", ok=lambda p: 0 <= p <= 1, allowed="0 <= p_on <= 1", label="p_on"),
    Param("p_off", "float", 0.0, ok=lambda p: 0 <= p <= 1, allowed="0 <= p_off <= 1"),
    Param("tile", "int", TILE, ok=lambda v: v >= 0, allowed="tile >= 0 (0: the whole tensor)"),
    Param("g_max", "float", G_MAX, ok=lambda v: v > 0, allowed="g_max > 0 (uS)", quiet=True),
    random=True,
    constant=lambda p: p["p_on"] == p["p_off"] == 0 or 1 in (p["p_on"], p["p_off"]),
)
def stuck(w, g, H, p_on, p_off, tile, g_max):
    """Devices stuck at ``g_max`` (probability ``p_on``) or at 0 (``p_off``), once per chip.

    Each device of a weight's differential pair draws on its own; the others hold their
    conductance exactly.
    """
    if p_on + p_off > 1:
        raise UserError(f"stuck: p_on + p_off must be at most 1, not {p_on + p_off!r}")
    if w.numel() == 0:
        return w.clone()
    pair = to_pair(w, g_max, tile)
    held = []
    for x in (pair.plus, pair.minus):
        u = uniform(x, g)
        x = torch.where(u < p_on + p_off, torch.zeros_like(x), x)
        held.append(torch.where(u < p_on, torch.full_like(x, g_max), x))
    return pair.weights(*held)
