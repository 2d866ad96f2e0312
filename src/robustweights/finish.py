"""The end of a training run: the network it keeps (batch-norm calibration, best validation epoch).

After the last epoch, a network evaluated with other weights than it trains
with gets batch-norm statistics re-estimated for its evaluation weights
(:func:`calibrate_at_end`, docs/method.md section 3); with ``val_size`` the
network of the epoch of the best validation value (in the run's measure, its
direction) is kept as ``best.pt`` and tested (:func:`select_best`). Both write
the test figures of the kept network in the last metrics row. A run is judged
by its measure (:func:`robustweights.measures.for_config`): a classifier's rows
hold ``test_error`` and ``val_error``, a language model's ``test_perplexity``
and ``val_perplexity``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .distributed import from_rank0
from .draws import derive_seed
from .evaluation import bn_layers, calibrate_bn, needs_calibration
from .measures import Measure, measure_split
from .runs import BEST, read_checkpoint, save_checkpoint, write_text

__all__ = ["calibrate_at_end", "select_best", "write_metrics", "measured", "val_key"]


def write_metrics(out: Path, history: list[dict]) -> None:
    """A run folder's ``metrics.jsonl``: one line per epoch."""
    write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def measured(model, split, config, measure: Measure) -> dict:
    """``measure`` of ``model`` on ``split`` as a run evaluates it (its batch size, autocast and
    memory format); a classifier's holds ``error`` and ``loss`` (exactly
    :func:`robustweights.evaluation.evaluate_split`'s)."""
    return measure_split(
        model,
        split,
        measure,
        batch_size=config.eval_batch_size,
        amp=config.amp,
        channels_last=config.channels_last,
    )


def val_key(measure: Measure) -> str:
    """The key of a metrics row's validation value: ``val_error``, ``val_perplexity``..."""
    return "val_" + measure.name


def _tested(model, config, train_split, test_split, device, calibrate: bool, measure) -> dict:
    """The test figures of ``model``, its batch-norm statistics first re-estimated for its
    evaluation weights on ``config.bn_calibrate`` training batches (``calibrate``)."""
    if calibrate:
        calibrate_bn(
            model,
            train_split,
            config.bn_calibrate,
            config.batch_size,
            device,
            seed=derive_seed(config.seed, "calibrate"),
        )
    return measured(model, test_split, config, measure)


def calibrate_at_end(
    model, config, history, train_split, test_split, device, progress, measure: Measure
) -> dict:
    """The saved network works as saved: batch-norm statistics re-estimated with its evaluation
    weights (see :func:`~robustweights.evaluation.needs_calibration`); the last metrics row gets
    the test figures of that network (those before go under ``*_stored_bn``). Returns the
    statistics training had (a resumed run goes on from them)."""
    bns = set(map(id, bn_layers(model)))
    keys = {
        f"{n}.{b}" if n else b
        for n, m in model.named_modules()
        if id(m) in bns
        for b in ("running_mean", "running_var", "num_batches_tracked")
    }
    train_bn = {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}
    test = _tested(model, config, train_split, test_split, device, True, measure)
    row, name = history[-1], "test_" + measure.name
    before = row[name]
    # the measure's value, a classifier's error (top5_error's too) and the loss, in this order
    keys = (measure.name, "error", "loss")
    figures = {
        f"test_{k}": test[k] for k in dict.fromkeys(keys) if k in test and f"test_{k}" in row
    }
    row.update(
        **{f"{k}_stored_bn": row[k] for k in figures},
        **figures,
        bn_calibrated_batches=config.bn_calibrate,
    )
    if progress:
        print(
            f"batch-norm statistics re-estimated on {config.bn_calibrate} training batches with "
            f"the evaluation ({row['test_weights']}) weights: test {_words(measure)} "
            f"{measure.format(before)} -> {measure.format(row[name])}"
            " (the checkpoint keeps these statistics)"
        )
    return train_bn


def _words(measure: Measure) -> str:
    return measure.name.replace("_", " ")


def _best_kept(best_state, out, world) -> tuple[dict, list[dict]]:
    """The best validation epoch's network (``best_state``, or ``best.pt`` for a resumed run)
    and the history ``best.pt`` was saved with (empty when it was not read)."""
    kept = []
    if best_state is None:  # a resumed run: the best epoch's network is in best.pt
        saved = read_checkpoint(out / BEST) if out is not None and (out / BEST).is_file() else {}
        best_state, kept = saved.get("model"), saved.get("history") or [{}]
    # Under torchrun only rank 0 reads the run folder (a resumed rank 1 had no best.pt to read
    # and stopped)
    best_state, kept = from_rank0((best_state, kept), world)
    if best_state is None:
        raise RuntimeError("the network of the best validation epoch was not kept")
    return best_state, kept


def select_best(
    model,
    config,
    history,
    best_state,
    train_split,
    test_split,
    device,
    progress,
    out,
    data,
    data_info,
    world=1,
    *,
    measure: Measure,
):
    """The network of the best validation epoch (the best ``val_<name>`` in the measure's
    direction, the latest of ties), its batch-norm statistics re-estimated like the last one's
    if it needs it; its test value goes in the last metrics row (``best_test_<name>``)."""
    key, name = val_key(measure), measure.name
    pick = max if measure.higher_is_better else min
    best = max(
        (h for h in history if h[key] == pick(r[key] for r in history)), key=lambda h: h["epoch"]
    )
    row = history[-1]
    best_state, kept = _best_kept(best_state, out, world)
    model.load_state_dict(best_state)
    if len(kept) == len(history) and kept[-1].get("best_epoch") == best["epoch"]:
        # a finished run asked again (reproduce's second call): best.pt is the final selection;
        # rewrite nothing
        row.update(
            {k: kept[-1][k] for k in ("best_epoch", f"best_val_{name}", f"best_test_{name}")}
        )
        return model, best["epoch"]
    calibrate = config.bn_calibrate > 0 and needs_calibration(model)
    test = _tested(model, config, train_split, test_split, device, calibrate, measure)
    row.update(
        {
            "best_epoch": best["epoch"],
            f"best_val_{name}": best[key],
            f"best_test_{name}": measure.value(test),
        }
    )
    if progress:
        print(
            f"best validation epoch {best['epoch']} (validation {_words(measure)} "
            f"{measure.format(best[key])}): test {_words(measure)} "
            f"{measure.format(measure.value(test))}; kept as {BEST}"
        )
    if out is not None:
        save_checkpoint(
            out / BEST,
            model=model,
            optimizer=None,
            epoch=best["epoch"],
            config=config,
            history=history,
            num_classes=data.num_classes,
            in_shape=data.in_shape,
            data=data_info,
        )
        write_metrics(out, history)
    return model, best["epoch"]
