"""Measuring a network as it stands: error on a split, batch-norm statistics, coverage.

Error and loss on a split, batch-norm statistics for the weights a network runs
with, and which of its weights a forward pass reaches:

- :func:`evaluate_split`: error and mean loss, no change of weights;
- :func:`calibrate_bn` / :func:`reestimated_bn`: batch-norm statistics
  re-estimated on training batches for the weights a network is evaluated
  with (for good, or within a block);
- :func:`sweep_coverage`: which projected weights a forward pass reads, so a
  sweep distorts those and says which it left alone (and which weights it distorts).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from . import projected
from .errors import UserError, one_line
from .first_inputs import first_inputs
from .selection import aliases, matches_any, shorten

__all__ = [
    "loss_fn",
    "as_logits",
    "first_forward",
    "evaluate_split",
    "weights_label",
    "bn_layers",
    "calibrate_bn",
    "reestimated_bn",
    "needs_calibration",
    "sweep_coverage",
    "distorted_weights",
    "check_covered",
    "logits_in",
    "PROBE_EXAMPLES",
    "training_coverage",
    "unreached",
    "UNREAD",
    "UNREACHED",
    "resolve_keep",
    "train_modes",
    "restore_modes",
]

PROBE_EXAMPLES = 8  # the most examples a forward pass of the reach probe sees


def loss_fn(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "sq-hinge":
        # BinaryConnect: targets +-1 per class, mean of max(0, 1 - t*y)^2.
        # (scatter, not one_hot: one_hot reads the labels on the host, which a CUDA graph cannot)
        t = torch.full_like(logits, -1).scatter_(1, y[:, None], 1)
        return F.relu(1 - t * logits).square().mean()
    return F.cross_entropy(logits, y)


def as_logits(out, y: torch.Tensor, check_labels: bool = False) -> torch.Tensor:
    """The ``(batch, classes)`` logits in a model's output ``out`` for labels ``y``: the tensor
    itself, the ``logits`` of a Hugging Face output or dict, or the first item of a tuple or list
    (torchvision's auxiliary outputs); anything else is one line. ``check_labels`` also checks every
    label has an output (it reads the labels: once per pass, not every batch, on a GPU)."""
    got, out = type(out).__name__, logits_in(out)
    if out is None:
        raise UserError(
            f"the model returned a {got}; it must return the logits (a tensor of batch x classes), "
            "or a tuple or list whose first item, or a dict or output whose 'logits', is them"
        )
    if out.dim() != 2 or out.shape[0] != len(y):
        raise UserError(
            f"the model's logits have shape {tuple(out.shape)} for a batch of {len(y)}; "
            f"expected ({len(y)}, classes)"
        )
    if check_labels and len(y) and int(y.max()) >= out.shape[1]:
        raise UserError(
            f"the model gives {out.shape[1]} outputs per example, "
            f"but the data has label {int(y.max())}"
        )
    return out


def logits_in(out) -> torch.Tensor | None:
    """The tensor of a model's output that :func:`as_logits` reads (None when there is none): the
    output itself, its ``logits`` field or key, or the first item of a tuple or list."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def train_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module's training flag, for :func:`restore_modes` (a model may mix them: a frozen
    batch norm)."""
    return [(m, m.training) for m in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


def first_forward(model: nn.Module, x: torch.Tensor):
    """``model(x)`` for a pass's first batch: a model that cannot take the data's batches (channels,
    sizes, dtype) is a mismatch of the user's model and data, said in one line (``--debug`` shows
    the traceback)."""
    try:
        return model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise UserError(
            f"the model cannot run on this data: a batch of shape {tuple(x.shape)} ({x.dtype}) "
            "gives "
            f"{type(e).__name__}: {one_line(e)[:300]}"
        ) from e


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: data_mod.Split,
    *,
    loss: str = "ce",
    batch_size: int = 1000,
    device=None,
    amp: bool = False,
    channels_last: bool = False,
) -> dict:
    """Error and mean loss of ``model`` on ``split`` as the model stands (no change of weights)."""
    device = device or next(model.parameters()).device
    modes = train_modes(model)
    model.eval()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    try:
        for x, y in split.batches(batch_size, device=device):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits = as_logits(
                    first_forward(model, x) if n == 0 else model(x), y, check_labels=n == 0
                )
            total_loss += loss_fn(loss, logits.float(), y).double() * len(y)
            wrong += (logits.argmax(1) != y).sum()
            n += len(y)
    finally:
        restore_modes(modes)
    if n == 0:
        raise UserError("the evaluation split is empty")
    return {"error": wrong.item() / n, "loss": total_loss.item() / n, "n": n}


def weights_label(model: nn.Module) -> str:
    """Which weights an evaluation used, in words (reports always say so)."""
    uses = {("hidden" if s.eval_uses_hidden() else "projected") for s in projected.sites(model)}
    return "/".join(sorted(uses)) or "hidden"


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def calibrate_bn(
    model: nn.Module, split: data_mod.Split, batches: int, batch_size: int, device, seed: int = 0
) -> None:
    """Replace batch-norm statistics by their average over ``batches`` training batches, for good.

    A cumulative average (momentum ``None``) over fixed batches drawn from
    ``seed``, with only the batch-norm layers in training mode: every other
    layer runs as it is evaluated (a stochastically trained layer with its
    hidden weights, a pinned distortion with its pinned tensor) and draws no
    random numbers. Momenta are put back afterwards; the statistics are not
    (see :func:`reestimated_bn` for a version that puts them back).
    """
    bns = bn_layers(model)
    momenta = [m.momentum for m in bns]
    modes = train_modes(model)
    try:
        model.eval()  # also when called on a model in training mode (the end of training)
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            # only batch norm: every other layer (a kept layer, dropout) runs as it is evaluated
            m.train()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for i, (x, _) in enumerate(
                split.batches(batch_size, shuffle=True, generator=g, device=device)
            ):
                if i >= batches:
                    break
                if len(x) > 1:  # (batch norm cannot take one example)
                    model(x)
    finally:
        restore_modes(modes)
        for m, mom in zip(bns, momenta):
            m.momentum = mom


@contextmanager
def reestimated_bn(
    model: nn.Module,
    split: data_mod.Split | None,
    batches: int,
    batch_size: int,
    device,
    seed: int = 0,
):
    """Within the block, batch-norm statistics are re-estimated on ``batches`` training batches.

    As :func:`calibrate_bn`; the saved statistics and momenta are put back
    exactly on exit, also after an error.
    """
    if batches <= 0:
        yield
        return
    bns = bn_layers(model)
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns
    ]
    try:
        calibrate_bn(model, split, batches, batch_size, device, seed)
        yield
    finally:
        for m, (mean, var, n) in zip(bns, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)


def needs_calibration(model: nn.Module) -> bool:
    """Whether the network is evaluated with weights other than those it trained with.

    A random projection (``stoch-sign``, ``stoch-mult``, noise injection) trains
    on random draws and is evaluated with its hidden weights (docs/method.md section
    3), so its batch-norm statistics, gathered in training, belong to other
    weights: a ``stoch-mult:gamma=0.5`` network's draws have mean 1.25 and its
    saved statistics gave 72.6% CIFAR-10 error against 14.5% after
    re-estimation (part 7's report).
    """
    return bool(bn_layers(model)) and any(
        not s.plain and s.eval_uses_hidden() for s in projected.sites(model)
    )


# ---------------------------------------------------------------------------
# Which weights a forward pass reaches: what a sweep can distort
# ---------------------------------------------------------------------------


def sweep_coverage(
    model: nn.Module,
    split: data_mod.Split | None,
    keep=(),
    batch_size: int = 1000,
    device=None,
    forward: Callable[[], object] | None = None,
    on: str | None = None,
    **selection,
) -> tuple[dict, dict]:
    """``(untouched, coverage)``: the projected parameters a sweep leaves alone (``{name: reason}``:
    kept, not selected, or never read) and :func:`robustweights.projected.coverage` of the rest.
    ``forward()`` runs the model once (a user's evaluation) instead of a batch of ``split``. With
    ``on`` (a sweep's, :data:`robustweights.projected.WEIGHTS`) the coverage also says which weights
    are distorted (``distorted_weights``, and at the end of its summary)."""
    untouched = resolve_keep(model, keep, **selection)
    untouched.update(
        unreached(
            model, split, batch_size, device or next(model.parameters()).device, untouched, forward
        )
    )
    cov = _coverage_without(model, untouched, "distorting")
    if on is not None:
        weights = distorted_weights(model, on, untouched)
        cov = {**cov, "summary": f"{cov['summary']}; on {on}: the {weights} weights"}
        cov["distorted_weights"] = weights
    return untouched, cov


def distorted_weights(model: nn.Module, on: str, untouched=()) -> str:
    """Which weights a sweep with ``on`` distorts, in words: ``hidden``, ``projected`` or
    ``hidden/projected``. ``auto`` and ``projected`` distort the weights evaluation uses (the rule
    of :data:`robustweights.projected.WEIGHTS`: a deterministic projection applied, a random one
    not)."""
    if on == "hidden":
        return "hidden"
    ss = [s for s in projected.sites(model) if s.name not in untouched]
    uses = {("hidden" if s.eval_uses_hidden() else "projected") for s in ss}
    return "/".join(sorted(uses)) or "hidden"


def check_covered(cov: dict) -> None:
    """One line when a sweep has no weight to distort: every cell would show the clean network,
    'perfectly robust', and untrue."""
    if not cov["covered"]:
        raise UserError(f"nothing to distort: {cov['summary']}")


def _coverage_without(model: nn.Module, untouched: dict[str, str], verb: str) -> dict:
    """:func:`robustweights.projected.coverage` with the parameters ``untouched``
    (``{name: reason}``) left out."""
    return projected.coverage(
        model,
        set(untouched),
        verb=verb,
        extra_left_out=[{"name": n, "reason": r} for n, r in untouched.items()],
    )


def training_coverage(model: nn.Module, split, device, verb: str) -> dict:
    """:func:`robustweights.projected.coverage` for training, with the projected parameters that a
    training-mode batch never reads through their attribute left out and named: their projection
    would never act. The probe changes nothing: buffers (batch-norm statistics), the projections'
    generators and the global random state are as before."""
    gens = {id(s.generator): s.generator for s in projected.sites(model) if s.generator is not None}
    states = {k: g.get_state() for k, g in gens.items()}
    buffers = projected.saved_buffers(model)
    modes = train_modes(model)
    try:
        with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
            missed = unreached(model.train(), split, PROBE_EXAMPLES, device)
            if any(s.mode == "fwd" and not s.plain for s in projected.sites(model)):
                x, _ = next(iter(split.batches(PROBE_EXAMPLES, device=device)))
                with torch.enable_grad():  # a weight of mode fwd read by code other than its
                    model(x[:PROBE_EXAMPLES])  # layer's forward raises here
    finally:
        restore_modes(modes)
        projected.put_back(buffers)
        for k, g in gens.items():
            g.set_state(states[k])
    return _coverage_without(model, missed, verb)


# The reasons :func:`unreached` gives: a weight the distortions cannot reach (a sweep warns of
# them).
UNREAD = "never read by the forward pass (unused, or read through a cached reference)"
UNREACHED = (
    "its value never reaches the output (read, but computed with a cached copy or view, or only "
    "into an output other than the logits the error is computed from)"
)


@torch.no_grad()
def unreached(
    model: nn.Module, split, batch_size: int, device, skip=(), forward=None
) -> dict[str, str]:
    """Projected parameters whose value never reaches the output of one evaluation batch, and why.

    Distorting such a parameter would change nothing (it is unused by the
    forward pass, or code reads it through a reference or view taken before
    it was attached, or caches one on a first call), so a sweep leaves it out and
    says so instead of reporting it as robust. Two checks: the attribute is read
    at all; and the scored output (:func:`logits_in`) changes when the parameter
    reads as NaN, on the first :data:`PROBE_EXAMPLES` examples of a batch of
    ``split``, or with ``forward`` (a user's evaluation) of the first inputs
    that evaluation gave the model. One forward per parameter, of a few examples.
    """
    buffers = projected.saved_buffers(model)  # a forward may update them (a QAT observer would
    try:  # keep the NaN of the probe for good)
        with projected.reading(model) as ss:
            if forward is None:
                x, y = next(iter(split.batches(min(batch_size, PROBE_EXAMPLES), device=device)))
                args, kwargs = (x[:PROBE_EXAMPLES],), {}
                y = y[:PROBE_EXAMPLES]
                clean = _scored(first_forward(model, args[0]), y)
            else:
                args, kwargs = first_inputs(model, forward, PROBE_EXAMPLES)
                y = None
                clean = None if args is None else _scored(model(*args, **kwargs), y)
        out = {s.name: UNREAD for s in ss if s.reads == 0 and s.name not in skip}
        for s in ss if args is not None else []:
            if s.name in out or s.name in skip:
                continue
            before = s.pinned
            s.pinned = torch.full_like(s.hidden, float("nan"))
            try:
                poisoned = _scored(model(*args, **kwargs), y)
            finally:
                s.pinned = before
            if _same_output(poisoned, clean):
                out[s.name] = UNREACHED
        return out
    finally:
        projected.put_back(buffers)


def _scored(out, y):
    """What of a model's output is scored: its logits (:func:`as_logits`, or :func:`logits_in` when
    the labels are not known: a weight that only moves an auxiliary output, or another field,
    changes no error), else the whole output."""
    if y is None:
        picked = logits_in(out)
        return out if picked is None else picked
    try:
        return as_logits(out, y)
    except UserError:
        return out


def _same_output(a, b) -> bool:
    """Whether two forward outputs (tensors, or tuples / dicts / model outputs holding them) are
    equal."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_output(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_output(u, v) for u, v in zip(a, b))
    return not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor)


def resolve_keep(
    model: nn.Module, keep=(), *, include=("*",), exclude=(), types=(), exclude_types=()
) -> dict:
    """Projected parameters a sweep leaves undistorted, with the reason: ``{name: reason}``.

    ``keep`` holds ``first``, ``last``, parameter or module names, or shell
    patterns; the other arguments narrow the distorted set as in
    :func:`robustweights.projected.select`.
    """
    names = [s.name for s in projected.sites(model)]
    also = aliases(model)  # a tied weight answers to each of its names
    out = {}
    for k in keep:
        hits = (
            [names[0]]
            if k == "first"
            else [names[-1]]
            if k == "last"
            else [n for n in names if matches_any(k, also.get(n, [n]))]
        )
        if not hits:
            raise UserError(
                f"keep= {k!r}: no such weight; use first, last or a name or pattern among: "
                f"{shorten(names)}"
            )
        out.update({n: f"kept undistorted (keep {k})" for n in hits})
    if tuple(include or ("*",)) != ("*",) or exclude or types or exclude_types:
        chosen, left = projected.select(
            model, include=include, exclude=exclude, types=types, exclude_types=exclude_types
        )
        chosen = {n for n, _ in chosen}
        out.update(
            {d["name"]: d["reason"] for d in left if d["name"] in names and d["name"] not in out}
        )
        out.update({n: "not selected" for n in names if n not in chosen and n not in out})
    return out
