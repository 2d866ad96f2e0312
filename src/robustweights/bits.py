"""Effective bits per weight (method.md section 4, [ours]).

Two figures per distorted network, each the weight-count-weighted mean over
the distorted tensors (layers left undistorted are not counted):

* ``effective_bits``: a capacity bound read from the distortion itself.
  ``add-gauss:sigma=s`` adds noise of standard deviation ``s * std(W)``, a
  Gaussian channel with signal-to-noise ratio ``1/s^2``:
  ``0.5 * log2(1 + 1/s^2)`` bits (s = 0.80 gives the paper's 0.68 bits).
  ``mult-gauss:sigma=s`` has the same per-weight ratio ``W^2 / (s W)^2`` and
  the same figure. A quantiser with ``L`` levels carries at most ``log2(L)``:
  ``quant:bits=k`` gives ``k``, ``ternary`` ``log2(3)``, and ``sign``,
  ``stoch-sign`` and ``power:beta=0`` 1 bit. Other distortions (and ``s = 0``,
  which carries unbounded information) have no figure: ``None``.
* ``entropy_bits``: for distortions with discrete outputs, the measured
  entropy of the distorted values of each tensor, ``-sum p log2 p`` over its
  distinct values; at most ``effective_bits``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .transforms import Transform, transform

DISCRETE = {"sign", "stoch-sign", "ternary", "quant"}


def is_discrete(t: Transform) -> bool:
    return t.name in DISCRETE or (t.name == "power" and t.params["beta"] == 0)


def capacity_bits(t: "str | Transform") -> float | None:
    """The bound on bits per weight that distortion ``t`` leaves (see the module docstring)."""
    t = transform(t)
    if t.name in ("add-gauss", "mult-gauss"):
        s = t.params["sigma"]
        return 0.5 * math.log2(1 + 1 / s ** 2) if s > 0 else None
    if t.name == "quant":
        return float(t.params["bits"])
    if t.name == "ternary":
        return math.log2(3)
    if t.name in ("sign", "stoch-sign") or (t.name == "power" and t.params["beta"] == 0):
        return 1.0
    return None


def entropy_bits(w: Tensor) -> float:
    """Empirical entropy, in bits, of the values in ``w``."""
    _, counts = torch.unique(w.detach().flatten(), return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log2()).sum())


def weighted_entropy(tensors: list[Tensor]) -> float:
    """Weight-count-weighted mean entropy of several tensors."""
    n = sum(x.numel() for x in tensors)
    return sum(entropy_bits(x) * x.numel() for x in tensors) / n if n else float("nan")
