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

from .conductances import G_MAX, TILE, matrix, per_element, tile_sums, to_pair
from .draws import derive_seed, normal, uniform
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


@dataclass(frozen=True)
class Device:
    """One memory device, in units of ``g_max`` (``x = g / g_max``, ``t`` in seconds).

    ``prog(x)``: the standard deviation of the programming noise at target ``x``, over ``g_max``.
    ``drift(x, n, t)``: the factor ``g(t) / g_prog`` at ``t`` seconds after programming, for a
    device programmed to target ``x`` whose own standard normal draw ``n`` was made when it was
    programmed (so the same device drifts the same way at every read). ``read(x_prog, t)``: the
    standard deviation of the read noise relative to ``|g(t)|``, for a device programmed to
    ``x_prog``. Each takes tensors shaped like ``x`` (``t`` is a float) and returns a new
    tensor of that shape, never changing its arguments.
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
    mu = (lx * -0.0155).add_(0.0244).clamp_(0.049, 0.1)
    sigma = lx.mul_(-0.0125).sub_(0.0059).clamp_(0.008, 0.045)  # in place: lx is done
    return mu.add_(sigma.mul_(n)).abs_()


def pcm_drift(x: Tensor, n: Tensor, t: float) -> Tensor:
    """PCM drift: ``((t + t_0) / t_0)^(-nu)``, ``t_0 = 20 s``."""
    return pcm_nu(x, n).mul_(-math.log((t + T0) / T0)).exp_()


def pcm_read(x_prog: Tensor, t: float) -> Tensor:
    """PCM 1/f read noise: ``min(0.0088 / max(x^0.65, 1e-3), 0.2) * sqrt(ln((t + t_0 + t_r) /
    (2 t_r)))``."""
    q = x_prog.pow(0.65).clamp_(min=1e-3).reciprocal_().mul_(0.0088).clamp_(max=0.2)
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


@torch.compiler.disable
def _read_generator(g: torch.Generator | None, t: float, device) -> torch.Generator:
    """A generator for the read noise at ``t``: seeded by one draw from ``g`` and ``t``."""
    on = g.device if g is not None else device
    key = int(torch.randint(0, 2**62, (), generator=g, device=on))
    return torch.Generator(device=on).manual_seed(derive_seed("read", key, float(t)))


def _program(device: Device, x: Tensor, g: torch.Generator | None, prog: float) -> Tensor:
    """Programmed conductances over ``g_max``: ``max(0, x + prog * sigma_prog(x) * N(0, 1))``."""
    return normal(x, g).mul_(device.prog(x)).mul_(prog).add_(x).clamp_(min=0)


def compensate(read: Tensor, programmed: Tensor, tile: int = TILE) -> Tensor:
    """Global drift compensation: ``read`` times ``mean|programmed| / mean|read|`` per tile.

    ``programmed``: the same weights read just after programming (no drift, no read noise);
    both shaped like the weight tensor. A tile that reads as all zeros is left as it is.
    """
    m = matrix(read)
    before, now = tile_sums(matrix(programmed).abs(), tile), tile_sums(m.abs(), tile)
    alpha = torch.where(now > 0, before / torch.where(now > 0, now, 1), 1)
    return (m * per_element(alpha, tile, m.shape)).reshape(read.shape)


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

    Draws from ``g``, in this order and whatever the scales (so that the same generator state
    is the same chip): the programming noise of ``g+`` and ``g-``, each device's drift draw,
    one seed of the read noise (combined with ``t``). The drift factor is raised to the power
    ``drift``; ``prog`` and ``read`` multiply their noise's standard deviation.
    """
    if w.numel() == 0:
        return w.clone()
    pair = to_pair(w, g_max, tile)
    targets = (pair.plus / g_max, pair.minus / g_max)
    programmed = [_program(device, x, g, prog) for x in targets]
    draws = [normal(x, g) for x in targets]
    rg = _read_generator(g, t, w.device)
    now = []
    for x, xp, n in zip(targets, programmed, draws):
        factor = device.drift(x, n, t).clamp(min=0)
        xd = (factor if drift == 1 else factor.pow_(drift)).mul_(xp)
        noise = normal(xd, rg).mul_(device.read(xp, t)).mul_(read)
        now.append(noise.mul_(xd.abs()).add_(xd).clamp_(min=0).mul_(g_max))
    out = pair.weights(*now)
    if compensation == "global":
        just = pair.weights(programmed[0] * g_max, programmed[1] * g_max)
        out = compensate(out, just, tile)
    return out


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
