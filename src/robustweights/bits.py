"""Effective bits per weight (docs/method.md section 4, [ours]).

Three figures per distorted network, each the weight-count-weighted mean over
the distorted tensors (layers left undistorted are not counted):

* ``effective_bits``: the capacity of the distortion, **measured** for
  additive noise: ``add-gauss`` adds noise of standard deviation
  ``sigma_n = s * R`` (``R`` its reference: ``std(W)``, ``max|W|``, the clip
  bound...) to a tensor whose mean square is ``E[W^2]``, a Gaussian channel
  carrying ``0.5 * log2(1 + E[W^2] / sigma_n^2)`` bits per weight
  (:func:`measured_bits`). For other distortions it is ``nominal_bits``.
* ``nominal_bits``: the bound read from the distortion's parameters alone.
  ``add-gauss:sigma=s`` gives ``0.5 * log2(1 + 1/s^2)`` bits (s = 0.80: the
  paper's 0.68 bits), which is the measured figure for ``scale=std`` on
  zero-mean weights and an overstatement for ``scale=max`` on weights that do
  not fill their range.
  ``mult-gauss:sigma=s`` has the same per-weight ratio ``W^2 / (s W)^2`` and
  the same figure. A quantiser with ``L`` levels carries at most ``log2(L)``:
  ``quant:bits=k`` gives ``k``, ``ternary`` ``log2(3)``, and ``sign``,
  ``stoch-sign`` and ``power:beta=0`` 1 bit. Other distortions (and ``s = 0``,
  which carries unbounded information) have no figure: ``None``.
* ``entropy_bits``: for distortions with discrete outputs, the measured
  entropy of the distorted values of each tensor, ``-sum p log2 p`` over its
  distinct values; at most ``effective_bits``.

And one figure for any distortion, from the weights as read
(:func:`snr_bits`): the capacity ``0.5 * log2(1 + E[W^2] / E[(W' - W)^2])`` of
each tensor's measured signal-to-noise ratio (``W'`` after drift compensation
when a device model has it on), so that a device model, ``mult-gauss`` or a
user's own distortion has a measured figure without a switch on names. For
``add-gauss`` it is the realised counterpart of ``effective_bits`` (the drawn
noise's mean square in place of ``(s R)^2``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .transforms import Transform, capacity, magnitude, transform


def is_discrete(t: "str | Transform") -> bool:
    """Whether a distortion's outputs take few values (their entropy is measured).

    Registry metadata.
    """
    t = transform(t)
    return bool(t.entry.discrete(t.params))


def capacity_bits(t: "str | Transform") -> float | None:
    """The bound on bits per weight that distortion ``t`` leaves, from its registry entry.

    None: no figure.
    """
    t = transform(t)
    return t.entry.bits(t.params)


def measured_bits(
    t: "str | Transform", tensors: list[Tensor], clips: list[float | None]
) -> float | None:
    """``effective_bits`` of distortion ``t`` on ``tensors``.

    ``tensors`` are the weights it is applied to, with their clip bounds ``clips``: measured from
    each tensor's signal-to-noise ratio for ``add-gauss``, weight-count-weighted;
    :func:`capacity_bits` for any other distortion.
    """
    t = transform(t)
    if t.name != "add-gauss":
        return capacity_bits(t)
    sigma = t.params["sigma"]
    if sigma <= 0 or not tensors:
        return None
    total, n = 0.0, 0
    for w, clip in zip(tensors, clips):
        w = w.detach()
        # the reference the distortion itself used
        noise = sigma * float(magnitude(w, t.params["scale"], clip))
        # in float64 with numpy's pairwise sum: the same figure whatever the number of threads
        # (torch's parallel reductions split by thread count, so ranks of a distributed sweep would
        # disagree in the last digits)
        signal = float(np.square(w.float().cpu().numpy(), dtype=np.float64).mean())
        if noise <= 0:
            return None  # a tensor of zeros gets no noise: no finite figure
        total += capacity(signal, noise) * w.numel()
        n += w.numel()
    return total / n


def _mean_square(x: Tensor) -> float:
    # in float64 with numpy's pairwise sum: the same figure whatever the number of threads
    return float(np.square(x.detach().double().cpu().numpy()).mean())


def snr_bits(clean: list[Tensor], distorted: list[Tensor]) -> float | None:
    """Measured bits of any distortion: ``capacity(E[W^2], sqrt(E[(W' - W)^2]))`` per tensor.

    ``clean`` are the weights a distortion was applied to, ``distorted`` the weights it gave
    (in the same order and shapes); the figure is the weight-count-weighted mean over the
    tensors. None: no tensor, or a tensor read back exactly (unbounded information, as
    :func:`measured_bits` says for ``sigma=0``).
    """
    if len(clean) != len(distorted):
        raise ValueError(f"snr_bits: {len(clean)} clean tensors but {len(distorted)} distorted")
    total, n = 0.0, 0
    for w, d in zip(clean, distorted):
        if w.shape != d.shape:
            raise ValueError(f"snr_bits: shapes {tuple(w.shape)} and {tuple(d.shape)} differ")
        if w.numel() == 0:
            continue
        error = _mean_square(d.detach().double() - w.detach().double())
        if not error > 0:
            return None
        total += capacity(_mean_square(w), error**0.5) * w.numel()
        n += w.numel()
    return total / n if n else None


def entropy_bits(w: Tensor) -> float:
    """Empirical entropy, in bits, of the values in ``w``."""
    _, counts = torch.unique(w.detach().flatten(), return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log2()).sum())


def weighted_entropy(tensors: list[Tensor]) -> float:
    """Weight-count-weighted mean entropy of several tensors."""
    n = sum(x.numel() for x in tensors)
    return sum(entropy_bits(x) * x.numel() for x in tensors) / n if n else float("nan")
