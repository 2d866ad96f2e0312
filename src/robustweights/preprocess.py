"""Preprocessing of in-memory images: the spec grammar, standardization, normalization, GCN + ZCA.

Each spec (one of :data:`PREPROCESS`) is fitted on the training split only and applied
in place to the training and held-out pixels alike; :func:`describe_preprocess` gives
the words a :class:`~robustweights.data.Data` carries about it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import UserError

PREPROCESS = ("standardize", "gcn-zca", "none", "normalize:mean=M,std=S")
STANDARDIZED = "standardized (per-channel mean and std of the training pixels)"
ZCA_FILTER_BIAS = 0.1  # BinaryConnect's pylearn2 ZCA setting
GCN_SCALE = 55.0  # pylearn2 global_contrast_normalize(scale=55)
CHUNK = 4096  # rows per float64 block in GCN/ZCA: bounds memory to ~100 MB


def parse_preprocess(spec: str) -> tuple[str, list[float] | None, list[float] | None]:
    """``(kind, mean, std)`` of a preprocessing spec (one of :data:`PREPROCESS`).

    ``standardize`` (per-channel mean and std of the training pixels),
    ``gcn-zca`` (BinaryConnect's), ``none`` (pixels in [0, 1] as they are) or
    ``normalize:mean=M,std=S`` with your own figures, ``(x - M) / S`` on pixels
    in [0, 1]; per channel as ``mean=0.49/0.48/0.45,std=0.25/0.24/0.26``.
    """
    if spec in ("standardize", "gcn-zca", "none"):
        return spec, None, None
    name, _, rest = str(spec).partition(":")
    usage = (
        f"preprocessing {spec!r} is not one of: standardize, gcn-zca, none, "
        "normalize:mean=M,std=S (per channel M1/M2/M3)"
    )
    if name != "normalize":
        raise UserError(usage)
    vals = _normalize_values(rest, usage)
    if not all(math.isfinite(x) for v in vals.values() for x in v) or not all(
        x >= 1e-6 for x in vals["std"]
    ):
        raise UserError(
            usage + "; every mean must be finite and every std positive (at least 1e-6)"
        )
    return name, vals["mean"], vals["std"]


def _normalize_values(rest: str, usage: str) -> dict[str, list[float]]:
    """The ``mean`` and ``std`` lists of ``normalize:``'s ``rest``; ``usage`` heads any error."""
    vals = {}
    for part in rest.split(","):
        k, _, v = part.partition("=")
        if k.strip() in vals:
            raise UserError(usage + f"; {k.strip()} given twice")
        try:
            vals[k.strip()] = [float(x) for x in v.split("/")]
        except ValueError:
            raise UserError(usage) from None
    if set(vals) != {"mean", "std"}:
        unknown = sorted(set(vals) - {"mean", "std"})
        raise UserError(
            usage
            + (
                f"; unknown key {', '.join(map(repr, unknown))}"
                if unknown
                else "; it needs both mean and std"
            )
        )
    return vals


def describe_preprocess(spec: str) -> str:
    """The words a :class:`Data` prepared with preprocessing ``spec`` carries (its
    ``preprocessing``)."""
    kind, mean, std = parse_preprocess(spec)
    return {
        "standardize": STANDARDIZED,
        "gcn-zca": "GCN + ZCA whitening (fitted on the training split)",
        "none": "none (pixels in [0, 1])",
    }.get(kind) or (
        f"normalized with mean {'/'.join(map(str, mean))}, std {'/'.join(map(str, std))} "
        "(pixels in [0, 1])"
    )


def apply_preprocess(spec: str, train: Tensor, test: Tensor) -> str:
    """Apply preprocessing ``spec`` in place (fitted on ``train`` where it fits anything);
    returns its description."""
    kind, mean, std = parse_preprocess(spec)
    if kind == "standardize":
        standardize(train, test)
    elif kind == "gcn-zca":
        gcn_zca(train, test)
    elif kind == "normalize":
        c = train.shape[1]
        if len(mean) not in (1, c) or len(std) not in (1, c):
            raise UserError(
                f"preprocessing {spec!r}: give one value or {c} (one per channel) for mean and std"
            )
        m = torch.tensor(mean).view(1, -1, 1, 1)
        sd = torch.tensor(std).view(1, -1, 1, 1)
        for x in (train, test):
            x.sub_(m).div_(sd)
    return describe_preprocess(spec)


def standardize(train: Tensor, test: Tensor) -> None:
    """In place: ``x <- (x - mean_c) / std_c``, per-channel mean and (population) std of
    the training pixels in [0, 1]. A constant channel keeps std 1 (no division by 0)."""
    std, mean = torch.std_mean(train, dim=(0, 2, 3), keepdim=True, correction=0)  # (1, C, 1, 1)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for x in (train, test):
        x.sub_(mean).div_(std)


def gcn(x: Tensor) -> Tensor:
    """pylearn2 ``global_contrast_normalize(scale=55)`` on rows of ``x`` (N, D), in place:
    ``x <- 55 (x - mean(x)) / ||x - mean(x)||``; a divisor under 1e-8 is replaced by 1 so
    that constant images stay 0."""
    x -= x.mean(1, keepdim=True)
    divisor = x.norm(dim=1, keepdim=True) / GCN_SCALE
    return x.div_(torch.where(divisor < 1e-8, torch.ones_like(divisor), divisor))


def gcn_zca(train: Tensor, test: Tensor) -> None:
    """In place: global contrast normalization, then ZCA whitening fitted on train.

    BinaryConnect's CIFAR-10 preprocessing (pylearn2 ``ZCA(filter_bias=0.1)``): with
    ``m`` the mean of the GCN'd training rows and ``C = Xc^T Xc / N`` their covariance,
    ``C = V diag(e) V^T``, ``W = V diag(1 / sqrt(e + 0.1)) V^T`` and ``x <- (x - m) W``.
    The bias keeps near-zero-variance directions from being blown up into noise.
    Statistics are accumulated in float64 over row blocks (``C = X^T X / N - m m^T``,
    one pass, ~100 MB at a time instead of 1.2 GB for CIFAR-10) and decomposed in
    float64; results are float32. CIFAR-10 (50000 x 3072) takes ~20 s on 2 CPU cores.
    """
    rows = [x.view(len(x), -1) for x in (train, test)]  # (N, D) views
    d = rows[0].shape[1]
    total, gram = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for block in rows[0].split(CHUNK):
        g = gcn(block.double())
        total += g.sum(0)
        gram.addmm_(g.T, g)
        block.copy_(g)
    for block in rows[1].split(CHUNK):
        block.copy_(gcn(block.double()))
    n = len(rows[0])
    mean = total / n  # (D,)
    eigval, eigvec = torch.linalg.eigh(gram / n - torch.outer(mean, mean))
    # clamp: rounding can leave the (rank-deficient) covariance tiny negative eigenvalues
    w = (eigvec * (eigval.clamp_min(0) + ZCA_FILTER_BIAS).rsqrt()) @ eigvec.T  # (D, D)
    # The product itself runs in float32, twice as fast; its result is stored in float32
    # anyway and differs from the float64 product by ~1e-6 relative.
    mean, w = mean.float(), w.float()
    for x in rows:
        for block in x.split(CHUNK):
            block.copy_((block - mean) @ w)
