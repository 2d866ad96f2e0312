"""Measures: what a network is judged by (error, loss, perplexity, MSE): the seam to a task.

A :class:`Measure` says everything the tool needs to know about a task's
score: its ``name`` (the key of its value in a result dict), its direction
(``higher_is_better``), whether it is shown as a percentage, how to compute it
from a model's outputs on batches of ``(inputs, targets)``, and the training
objective that goes with it. Built in (:data:`MEASURES`)::

    error        classification error, argmax of the logits (the default)
    top5_error   the label outside the five largest logits
    loss         mean cross-entropy of the logits (also the error)
    perplexity   causal LM: exp of the mean next-token cross-entropy over all tokens
    mse          regression: mean squared error over every output element

Use::

    m = get_measure("perplexity")                   # or "error", or "pkg.mod:fn"
    measure_split(model, data.test, m)              # {"perplexity": ..., "loss": ..., "n": ...}
    evaluate = m.evaluator(data.test, device=dev)   # model -> dict: sweeps.sweep(evaluate=...)
    m.value(result)                                 # the number plotted and judged
    m.default_target(baseline)                      # the effective-bits summary's target

For the callers (sweeps, training's evaluation, reports, the CLI):

- :func:`measure_split` is :func:`robustweights.evaluation.evaluate_split`
  for any measure (same arguments; ``error`` gives exactly its numbers, the
  same keys ``error``, ``loss``, ``n``); a measure's result dict always holds
  its value under ``m.name``, and a built-in's ``n`` (the examples seen);
- ``m.objective(output, targets)`` is the differentiable mean loss a training
  step minimises for the task (cross-entropy or squared hinge for the
  classification measures, next-token cross-entropy for perplexity, MSE);
- sweep rows take ``metric=m.name``, ``higher_is_better=m.higher_is_better``;
  ``results.lowest_bits(rows, m.default_target(baseline), m.higher_is_better)``;
- ``m.to_dict()`` is what a run records (``spec`` is what the user typed).

A measure is a batch function and a finish: ``batch(output, targets)`` gives
sums (0-d tensors or ints, kept on the device, added over batches, so one
host sync per pass), ``finish(sums)`` turns the summed floats (with ``n``) into
the result dict. A user's measure is named ``package.module:function`` (as
``--measure`` takes it); the module is imported only for a name the user gave
on the command line or in the call, never for one read from a run folder
(:func:`robustweights.models.check_factory_allowed` is that check). The
function is a :class:`Measure`, a factory returning one, or a factory
returning ``evaluate(model, batches) -> float | dict``, whose direction must
be declared (``higher_is_better=`` here, or an attribute of that name on it).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as data_mod
from .errors import UserError
from .factories import import_named
from .evaluation import as_logits, first_forward, logits_in, loss_fn, restore_modes, train_modes

__all__ = [
    "Measure",
    "MEASURES",
    "LOSSES",
    "register_measure",
    "list_measures",
    "get_measure",
    "for_config",
    "classification_measure",
    "measure_split",
    "output_tensor",
]

LOSSES = ("ce", "sq-hinge")  # the classification losses of robustweights.evaluation.loss_fn


@dataclass(frozen=True)
class Measure:
    """What a network is judged by; see the module docstring.

    Either ``batch`` and ``finish`` (computed batch by batch, summed) or
    ``evaluate(model, batches) -> float | dict`` (a whole pass, a user's own).
    """

    name: str  # the key of the value in the result dict, the column it is plotted as
    higher_is_better: bool = False  # direction: errors and losses down, accuracies up
    percent: bool = False  # shown as a percentage (a fraction in [0, 1])
    batch: Callable[[Any, Tensor], dict] | None = None  # (output, targets) -> sums
    finish: Callable[[dict], dict] | None = None  # summed floats (and "n") -> results
    check: Callable[[Any, Tensor], Any] | None = None  # first batch only: UserError on misfit
    objective: Callable[[Any, Tensor], Tensor] | None = None  # training loss (mean, differentiable)
    evaluate: Callable[[nn.Module, Iterable], Any] | None = None  # a whole pass instead of batch
    description: str = ""  # in words, for --help and reports
    spec: str = ""  # what the user named (a built-in's name, or package.module:function)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise UserError(f"a measure needs a non-empty name, not {self.name!r}")
        per_batch = self.batch is not None and self.finish is not None
        if per_batch == (self.evaluate is not None):
            raise UserError(
                f"measure {self.name!r}: give either batch and finish, or evaluate (not both)"
            )

    def value(self, result: dict) -> float:
        """The number plotted and judged: ``result[name]``."""
        if not isinstance(result, dict) or self.name not in result:
            have = (
                ", ".join(map(str, result)) if isinstance(result, dict) else type(result).__name__
            )
            raise UserError(f"the evaluation gave no {self.name!r} (it gave: {have})")
        return float(result[self.name])

    def format(self, v: float) -> str:
        """``v`` as a person reads it: ``12.34%`` for a percentage, else 4 significant digits."""
        return f"{100 * v:.2f}%" if self.percent else f"{v:.4g}"

    def default_target(self, baseline: float) -> float:
        """The value the effective-bits summary asks a distorted network to stay within: one
        point of a percentage from the undistorted ``baseline``, else 1% of it, on the worse
        side."""
        step = 0.01 if self.percent else 0.01 * abs(baseline)
        return baseline - step if self.higher_is_better else baseline + step

    def evaluator(self, split, **kwargs) -> Callable[[nn.Module], dict]:
        """``model -> dict``: :func:`measure_split` on ``split`` (``sweep(evaluate=)`` takes it)."""
        return lambda model: measure_split(model, split, self, **kwargs)

    def to_dict(self) -> dict:
        """What a run records of its measure."""
        return {
            "measure": self.spec or self.name,
            "name": self.name,
            "higher_is_better": self.higher_is_better,
            "percent": self.percent,
        }


# ---------------------------------------------------------------------------
# model outputs


def output_tensor(out) -> Tensor:
    """The tensor in a model's output: itself, the ``logits`` of a Hugging Face output or dict, or
    the first item of a tuple or list (as :func:`robustweights.evaluation.as_logits`, any shape)."""
    found = logits_in(out)
    if found is not None:
        return found
    raise UserError(
        f"the model returned a {type(out).__name__}; it must return a tensor, or a tuple or "
        "list whose first item, or a dict or output whose 'logits', is one"
    )


# ---------------------------------------------------------------------------
# classification: error, top-5 error, loss


def _check_labels(out, y: Tensor) -> None:
    as_logits(out, y, check_labels=True)


def classification_measure(name: str = "error", loss: str = "ce") -> Measure:
    """``error``, ``top5_error`` or ``loss`` of a classifier whose logits are ``(B, classes)``,
    with training loss ``loss`` (:data:`LOSSES`); the result holds ``error`` and ``loss`` always
    (exactly :func:`robustweights.evaluation.evaluate_split`'s), ``top5_error`` when asked."""
    if name not in ("error", "top5_error", "loss"):
        raise UserError(f"{name!r} is not a classification measure (error, top5_error, loss)")
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    top5 = name == "top5_error"

    def batch(out, y):
        logits = as_logits(out, y)  # (B, classes)
        sums = {
            "loss": loss_fn(loss, logits.float(), y).double() * len(y),
            "wrong": (logits.argmax(1) != y).sum(),
        }
        if top5:
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
            sums["wrong5"] = (best != y[:, None]).all(1).sum()
        return sums

    def finish(s):
        out = {"error": s["wrong"] / s["n"], "loss": s["loss"] / s["n"]}
        return {"top5_error": s["wrong5"] / s["n"], **out} if top5 else out

    words = {
        "error": "classification error (argmax of the logits)",
        "top5_error": "top-5 classification error",
        "loss": f"mean {'squared hinge' if loss == 'sq-hinge' else 'cross-entropy'} loss",
    }
    return Measure(
        name,
        percent=name != "loss",
        batch=batch,
        finish=finish,
        check=_check_labels,
        objective=lambda out, y: loss_fn(loss, as_logits(out, y), y),
        description=words[name],
        spec=name,
    )


# ---------------------------------------------------------------------------
# causal language models: perplexity


def _token_logits(out, y: Tensor) -> Tensor:
    """The ``(B, T, V)`` logits of a language model's output for next-token targets ``y`` (B, T)."""
    logits = output_tensor(out)
    if logits.dim() != 3 or y.dim() != 2 or logits.shape[:2] != y.shape:
        raise UserError(
            f"perplexity needs logits (B, T, vocabulary) for targets (B, T); got logits of shape "
            f"{tuple(logits.shape)} for targets of shape {tuple(y.shape)}"
        )
    return logits


def _check_tokens(out, y: Tensor) -> None:
    logits = _token_logits(out, y)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[2]):
        raise UserError(
            f"the model gives {logits.shape[2]} logits per token, but the data has token "
            f"{int(y.min()) if int(y.min()) < 0 else int(y.max())}"
        )


def _token_nll(out, y: Tensor) -> dict:
    # per-token NLL in float32, summed in float64: the same for any batching (token-weighted)
    logits = _token_logits(out, y).float()
    nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")  # (B*T,)
    return {"nll": nll.double().sum(), "tokens": y.numel()}


def _perplexity_finish(s: dict) -> dict:
    loss = s["nll"] / s["tokens"]  # nats per token
    return {
        "perplexity": math.exp(loss),
        "loss": loss,
        "bits_per_token": loss / math.log(2),
        "tokens": s["tokens"],
    }


PERPLEXITY = Measure(
    "perplexity",
    batch=_token_nll,
    finish=_perplexity_finish,
    check=_check_tokens,
    objective=lambda out, y: F.cross_entropy(_token_logits(out, y).flatten(0, 1), y.flatten()),
    description="causal LM perplexity: exp of the mean next-token cross-entropy over all tokens",
    spec="perplexity",
)


# ---------------------------------------------------------------------------
# regression: mean squared error


def _prediction(out, y: Tensor) -> Tensor:
    """The model's prediction shaped as the targets (a ``(B, 1)`` output for ``(B,)`` targets)."""
    pred = output_tensor(out)
    if pred.shape != y.shape and pred.numel() == y.numel() and len(pred) == len(y):
        pred = pred.reshape(y.shape)
    if pred.shape != y.shape:
        raise UserError(
            f"mse needs outputs shaped as the targets; got {tuple(pred.shape)} for targets "
            f"{tuple(y.shape)}"
        )
    return pred


def _squared_error(out, y: Tensor) -> dict:
    err = _prediction(out, y).float() - y.float()
    return {"se": err.square().double().sum(), "elements": y.numel()}


def _mse_finish(s: dict) -> dict:
    mse = s["se"] / s["elements"]
    return {"mse": mse, "loss": mse}


MSE = Measure(
    "mse",
    batch=_squared_error,
    finish=_mse_finish,
    check=_prediction,
    objective=lambda out, y: F.mse_loss(_prediction(out, y).float(), y.float()),
    description="mean squared error over every output element",
    spec="mse",
)


# ---------------------------------------------------------------------------
# the registry and user measures


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (*map(classification_measure, ("error", "top5_error", "loss")), PERPLEXITY, MSE)
}


def register_measure(measure: Measure) -> Measure:
    """Make ``measure`` available to :func:`get_measure` by its name."""
    if not isinstance(measure, Measure):
        raise UserError(f"register a Measure, not {type(measure).__name__}")
    if ":" in measure.name:
        raise UserError(f"measure name {measure.name!r}: ':' is kept for package.module:function")
    old = MEASURES.get(measure.name)
    if old is not None and old is not measure:
        raise UserError(f"measure name {measure.name!r} is already registered; choose another")
    MEASURES[measure.name] = measure
    return measure


def list_measures() -> list[str]:
    return sorted(MEASURES)


def get_measure(
    spec: "str | Measure",
    *,
    loss: str = "ce",
    higher_is_better: bool | None = None,
    name: str | None = None,
) -> Measure:
    """The measure named ``spec``: a built-in (:data:`MEASURES`), ``package.module:function``
    (see the module docstring), or a :class:`Measure` itself. ``loss`` is the training loss of a
    classification measure; ``higher_is_better`` and ``name`` declare a user's plain evaluation
    function (``name``: the key of its value in the dict it returns)."""
    if isinstance(spec, Measure):
        return spec
    if not isinstance(spec, str) or not spec:
        raise UserError(f"measure {spec!r}: {_choices()}")
    if ":" in spec:
        return _user_measure(spec, higher_is_better, name)
    if spec not in MEASURES:
        raise UserError(f"unknown measure {spec!r}; {_choices()}")
    if loss != "ce":
        if spec not in ("error", "top5_error", "loss"):
            raise UserError(
                f"loss {loss!r} applies to the classification measures (error, top5_error, "
                f"loss); {spec} has its own"
            )
        return classification_measure(spec, loss)
    return MEASURES[spec]


def for_config(config) -> Measure:
    """The measure a training run is judged by: its config's ``measure`` (``auto`` or absent, as
    in runs older than measures: ``perplexity`` for the ``text`` dataset, else ``error`` with
    the run's classification loss). A name read from a run folder is a built-in only: a
    ``package.module:function`` there is refused, never imported."""
    name = getattr(config, "measure", None) or "auto"
    loss = getattr(config, "loss", "ce")
    if name == "auto":
        name = "perplexity" if getattr(config, "dataset", None) == "text" else "error"
    if ":" in name:
        raise UserError(
            f"the run names measure {name!r}, a user's function: give it again with measure= "
            f"(robustweights never imports code a run folder names)"
        )
    return get_measure(name, loss=loss if name in ("error", "top5_error", "loss") else "ce")


def _choices() -> str:
    return f"use one of {', '.join(list_measures())}, or package.module:function"


def _import(spec: str):
    return import_named(spec, f"measure {spec!r}", must_call=False)


def _takes_no_arguments(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
    )


def _user_measure(spec: str, higher_is_better: bool | None, name: str | None) -> Measure:
    found = _import(spec)
    if callable(found) and not isinstance(found, Measure) and _takes_no_arguments(found):
        found = found()  # a factory
    if isinstance(found, Measure):
        return replace(found, spec=spec)
    if not callable(found):
        raise UserError(
            f"measure {spec!r} is a {type(found).__name__}; name a Measure, or a function that "
            "returns one or returns evaluate(model, batches) -> float | dict"
        )
    up = getattr(found, "higher_is_better", None) if higher_is_better is None else higher_is_better
    if not isinstance(up, bool):
        raise UserError(
            f"measure {spec!r}: say whether higher is better (higher_is_better=True or False, "
            "or set that attribute on the function)"
        )
    key = name or getattr(found, "measure_name", None) or spec.partition(":")[2]
    return Measure(
        key, higher_is_better=up, evaluate=found, description=f"{spec} (the user's own)", spec=spec
    )


# ---------------------------------------------------------------------------
# a pass over a split


@torch.no_grad()
def measure_split(
    model: nn.Module,
    batches,
    measure: "Measure | str" = "error",
    *,
    batch_size: int = 1000,
    device=None,
    amp: bool = False,
    channels_last: bool = False,
) -> dict:
    """``measure`` of ``model`` on ``batches`` (a :class:`robustweights.data.Data`'s test split,
    a ``Split`` or any iterable of ``(inputs, targets)``), as the model stands: eval mode, no
    change of weights, training flags put back. The result holds the measure's value under its
    name and (but for a user's whole-pass ``evaluate``) ``n``, the examples seen."""
    measure = get_measure(measure)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    split = data_mod.as_split(batches)
    modes = train_modes(model)
    model.eval()
    try:
        if measure.evaluate is not None:
            return _whole_pass(model, measure, split.batches(batch_size, device=device))
        sums, n = _summed(model, measure, split, batch_size, device, amp, channels_last)
    finally:
        restore_modes(modes)
    if n == 0:
        raise UserError("the evaluation split is empty")
    got = {k: v.item() if isinstance(v, Tensor) else v for k, v in sums.items()}
    return {**measure.finish({**got, "n": n}), "n": n}


def _summed(model, measure, split, batch_size, device, amp, channels_last) -> tuple[dict, int]:
    """The measure's sums over every batch (on the device), and the number of examples."""
    sums: dict = {}
    n = 0
    for x, y in split.batches(batch_size, device=device):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
            out = first_forward(model, x) if n == 0 else model(x)
        if n == 0 and measure.check is not None:
            measure.check(out, y)  # (reads the targets on the host: once a pass)
        for k, v in measure.batch(out, y).items():
            sums[k] = sums[k] + v if k in sums else v
        n += len(y)
    return sums, n


def _whole_pass(model, measure: Measure, batches) -> dict:
    result = measure.evaluate(model, batches)
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return {measure.name: float(result)}
    if isinstance(result, Tensor) and result.numel() == 1:
        return {measure.name: result.item()}
    measure.value(result)  # a dict holding the measure's value, or one line
    return dict(result)
