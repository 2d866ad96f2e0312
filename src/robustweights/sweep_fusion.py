"""The cells of a sweep measured: each trial's distortion drawn from its seed, trials fused.

A cell's distortion is drawn from its own seed and pinned (:func:`drawn`),
the network measured, and the row written (:func:`row`). The trials of one
strength (``add-gauss:sigma=0.5`` trials 0..T-1) can be measured as one fused
network (:class:`Fuser`, ``fuse_trials``): each trial's distorted tensors are
drawn exactly as one trial at a time draws them (the same seed, the same
generator, the same code), then stacked along a new first dimension, and
``torch.func.vmap`` runs the network once per batch over that dimension (a
linear layer becomes one batched matrix product, a convolution a grouped
convolution; an op without a batching rule runs trial by trial inside the
pass). Each trial's output is scored by the measure's own ``batch`` and
``finish``, as :func:`robustweights.measures.measure_split` scores it: the
logits agree to float rounding (under 1e-6 on a CPU in the tests), so the
error counts are the same but where two logits tie to that rounding.

Fusion is for small networks on a GPU, where one trial at a time leaves the
GPU idle between small kernels; ``auto`` fuses on CUDA only (the default is 1, one at a
time, until a GPU run measures ``auto`` faster with the same counts).
Where it cannot apply the trials run one at a time, and the sweep says so
once: batch-norm statistics re-estimated per trial, a user's ``evaluate=`` or
whole-pass measure (they take the model, not its outputs), a network vmap
cannot run (``.item()`` in its forward, a buffer written in place, random
draws), too little memory, or a fused output that differs from the unfused one
(checked on the first batch of each sweep).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves, tree_map

from . import bits as bits_mod
from . import projected
from .errors import UserError, one_line
from .evaluation import restore_modes, train_modes
from .grid import Cell, cell_seed
from .measures import Measure

__all__ = [
    "AUTO_MOST",
    "fuse_setting",
    "fused_count",
    "Drawn",
    "drawn",
    "row",
    "score",
    "trial_outputs",
    "measure_trials",
    "Fuser",
]

AUTO_MOST = 8  # the most trials ``auto`` fuses into one network (T copies of the activations)
_TOLERANCE = 1e-3  # fused against unfused logits, relative to the largest |logit| (TF32 on GPUs)


def fuse_setting(value, name: str = "fuse_trials") -> "int | str":
    """``auto`` or a positive integer (the command line gives ``"4"``); anything else one line."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(
            f"{name}={value!r}: give auto (fuse on CUDA only) or the number of trials to run as "
            "one network (1: one at a time)"
        )
    return value


def fused_count(setting, device, trials: int) -> int:
    """How many trials of a cell run as one network: ``auto`` fuses up to :data:`AUTO_MOST` on
    CUDA and none elsewhere; a number is at most the cell's trials."""
    setting = fuse_setting(setting)
    if setting == "auto":
        return min(trials, AUTO_MOST) if torch.device(device).type == "cuda" else 1
    return min(setting, trials)


# ---------------------------------------------------------------------------
# One cell: its draw and its row
# ---------------------------------------------------------------------------


@dataclass
class Drawn:
    """What a cell's draw gives beside its measure: the seed, the bits figures, and (while the
    fused network needs them) the pinned tensors, in the order of ``plan.hit``."""

    seed: int
    measured: float | None
    snr: float | None
    entropy: float | None
    pinned: list[Tensor] | None


@contextmanager
def drawn(plan, c: Cell):
    """Within the block the cell's distortion is pinned (drawn from its own seed); yields its
    :class:`Drawn`. ``plan`` is a sweep's plan (model, seed, device, the distorted sites)."""
    s = cell_seed(plan.seed, c)
    g = torch.Generator(device=plan.device).manual_seed(s)
    measured = bits_mod.measured_bits(c.t, plan.bases, plan.bounds)
    with projected.distort(plan.model, c.t, g, on=plan.distort_on, exclude=plan.untouched):
        pinned = [x.pinned for x in plan.hit]
        snr = bits_mod.snr_bits(plan.bases, pinned)
        entropy = bits_mod.weighted_entropy(pinned) if bits_mod.is_discrete(c.t) else None
        yield Drawn(s, measured, snr, entropy, pinned)


def row(plan, c: Cell, d: Drawn, r: dict) -> dict:
    """The result row of cell ``c``, drawn as ``d`` and measured as ``r``."""
    return {
        "distortion": c.t.name,
        "param": c.param,
        "value": c.value,
        "trial": c.trial,
        "seed": d.seed,
        "error": r.get("error"),
        "loss": r.get("loss"),
        "effective_bits": d.measured,
        "n_examples": r.get("n"),
        "entropy_bits": d.entropy,
        "spec": c.t.spec,
        "on": plan.on,
        "metric": plan.metric,
        "score": score(r, plan.metric),
        "nominal_bits": bits_mod.capacity_bits(c.t),
        "scale": c.t.params.get("scale"),
        "snr_bits": d.snr,
    }


def score(result, metric: str) -> float:
    """``result[metric]`` as a float; one line when the evaluation gave no such key."""
    if not isinstance(result, dict) or metric not in result:
        have = ", ".join(map(str, result)) if isinstance(result, dict) else type(result).__name__
        raise UserError(
            f"the evaluation gave no {metric!r} (it gave: {have}); pass metric= one of its keys"
        )
    return float(result[metric])


# ---------------------------------------------------------------------------
# Several trials as one network
# ---------------------------------------------------------------------------


def trial_outputs(model: nn.Module, hit: list, stacked: list[Tensor], x):
    """``model(x)`` for every trial at once: ``stacked[i]`` holds the trials' tensors of site
    ``hit[i]`` along its first dimension; each output tensor gains that dimension in front."""

    def one(ws, x):
        before = [s.pinned for s in hit]
        for s, w in zip(hit, ws):
            s.pinned = w
        try:
            return model(x)
        finally:
            for s, p in zip(hit, before):
                s.pinned = p

    with warnings.catch_warnings():  # an op without a batching rule runs trial by trial: said
        warnings.filterwarnings("ignore", message="There is a performance drop")  # in the docs
        return torch.func.vmap(one, in_dims=(0, None))(stacked, x)


class _Differs(RuntimeError):
    """The fused network's output is not the one-at-a-time network's."""


def _check_agrees(model, hit, stacked, x, out) -> None:
    """The first trial's fused output against the same trial run alone (one batch, once a sweep):
    a network whose forward vmap changes is measured one trial at a time, never silently
    otherwise."""
    before = [s.pinned for s in hit]
    for s, w in zip(hit, stacked):
        s.pinned = w[0]
    try:
        alone = tree_leaves(model(x))
    finally:
        for s, p in zip(hit, before):
            s.pinned = p
    fused = tree_leaves(tree_map(lambda a: a[0], out))
    for a, b in zip(fused, alone) if len(fused) == len(alone) else [(None, None)]:
        if not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape):
            raise _Differs("the fused network's output has another form than one trial's")
        gap = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        if not gap <= _TOLERANCE * b.double().abs().max().item() + 1e-6:
            raise _Differs(f"the fused network's output differs from one trial's by {gap:.3g}")


@torch.no_grad()
def measure_trials(
    model: nn.Module,
    hit: list,
    pinned: list[list[Tensor]],
    split,
    measure: Measure,
    *,
    batch_size: int = 1000,
    device=None,
    check: bool = True,
) -> list[dict]:
    """``measure`` of ``model`` for each trial's pinned tensors (``pinned[t][i]`` for site
    ``hit[i]``), one fused pass per batch: the results
    :func:`robustweights.measures.measure_split` gives each trial alone (eval mode, training
    flags and buffers put back). ``check`` compares the first batch with the first trial alone."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    stacked = [torch.stack([p[i] for p in pinned]) for i in range(len(hit))]
    sums: list[dict] = [{} for _ in pinned]
    n = 0
    modes, buffers = train_modes(model), projected.saved_buffers(model)
    model.eval()
    try:
        for x, y in split.batches(batch_size, device=device):
            out = trial_outputs(model, hit, stacked, x)
            if n == 0 and check:
                _check_agrees(model, hit, stacked, x, out)
            for t, s in enumerate(sums):
                o = tree_map(lambda a: a[t], out)
                if n == 0 and measure.check is not None:
                    measure.check(o, y)
                for k, v in measure.batch(o, y).items():
                    s[k] = s[k] + v if k in s else v
            n += len(y)
    finally:
        restore_modes(modes)
        projected.put_back(buffers)
    if n == 0:
        raise UserError("the evaluation split is empty")
    out = []
    for s in sums:
        got = {k: v.item() if isinstance(v, Tensor) else v for k, v in s.items()}
        out.append({**measure.finish({**got, "n": n}), "n": n})
    return out


class Fuser:
    """How one sweep measures its cells: the trials of a strength fused by ``size`` where that
    applies (see the module docstring), else one at a time, said once."""

    def __init__(self, plan, setting, trials: int, test, measure, evaluate, bn_batches, progress):
        self.plan, self.test, self.m, self.progress = plan, test, measure, progress
        self.size = fused_count(setting, plan.device, trials)
        self.checked = False
        why = None
        if evaluate is not None:
            why = "a user's evaluate= measures one model at a time"
        elif measure is None or measure.evaluate is not None:
            why = f"measure {getattr(measure, 'name', '')!r} evaluates the whole model itself"
        elif bn_batches:
            why = "batch-norm statistics are re-estimated for each trial (bn_batches)"
        if why is not None and self.size > 1:
            self._unfused(why)

    def _unfused(self, why: str) -> None:
        self.size = 1
        line = f"fuse_trials: the trials run one at a time: {why}"
        if self.progress:
            print(line)
        else:
            warnings.warn(line, stacklevel=5)

    def group(self, todo: list, i: int, wanted) -> list:
        """The cells to measure together from ``todo[i]`` on: the next trials of its strength
        that ``wanted(key)`` asks for, at most ``size``."""
        out = [todo[i]]
        for c in todo[i + 1 :]:
            if len(out) >= self.size or c.t.spec != todo[i].t.spec or not wanted(c.key()):
                break
            out.append(c)
        return out

    def rows(self, group: list, cell_row) -> list[dict]:
        """The rows of ``group`` (trials of one strength): fused, or ``cell_row(plan, c)`` each."""
        if self.size <= 1 or len(group) == 1:
            return [cell_row(self.plan, c) for c in group]
        p = self.plan
        draws = []
        for c in group:
            with drawn(p, c) as d:
                draws.append(d)
        pins = [d.pinned for d in draws]
        for d in draws:
            d.pinned = None
        try:
            kw = dict(batch_size=p.batch_size, device=p.device, check=not self.checked)
            results = measure_trials(p.model, p.hit, pins, self.test, self.m, **kw)
        except Exception as e:  # a network vmap cannot run, memory: the unfused pass decides
            failed = one_line(e)[:200] if isinstance(e, _Differs) else None
            failed = failed or f"the fused network failed ({type(e).__name__}: {one_line(e)[:200]})"
        else:
            self.checked = True
            return [row(p, c, d, r) for c, d, r in zip(group, draws, results)]
        del pins  # (out of the except block: its traceback no longer holds the stacked tensors)
        self._unfused(failed)
        return [cell_row(p, c) for c in group]
