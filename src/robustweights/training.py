"""Projected training: train a network with projected weights, resume a run (``train``).

Measuring a network as it stands (error on a split, batch-norm re-estimation)
is :mod:`robustweights.evaluation`; loading what a run kept is
:mod:`robustweights.checkpoints` (its names are re-exported here); what a run
folder may hold and what a resumed run may change is :mod:`robustweights.resume`;
the network a run keeps at its end is :mod:`robustweights.finish`.

    from robustweights import TrainConfig, train, load, evaluate
    result = train(TrainConfig(model="cnn", dataset="fashion-mnist", projection="sign", epochs=3,
                               out="runs/sign"))
    model, config = load("runs/sign")
    evaluate(model, config)                     # {"error": ..., "loss": ..., "weights": ...}
    evaluate(model, config, weights="hidden")   # the float hidden weights as they are
    train(TrainConfig(model="causal-lm", dataset="text", data_dir="notes.txt", projection="sign"))

A run is judged by its measure (:func:`robustweights.measures.for_config`: perplexity for
``text``, else error): its steps minimise the measure's objective, its epochs report the
measure's test and validation values, the best validation epoch is the best in its direction.

A run folder holds ``checkpoint.pt`` (hidden weights, optimizer state, epochs
done, full configuration), ``config.json`` and ``metrics.jsonl`` (one line per
epoch). Every file is written atomically (temporary file, then rename), so an
interrupted or failed run never leaves a half-written file, and checkpoints are
read with ``torch.load(weights_only=True)``, which cannot run code.

Determinism: the model is initialised from ``seed``; the data order, the
augmentation and the random projections of epoch ``e`` draw from generators
seeded from ``(seed, e)``, so a run resumed from the checkpoint of epoch ``e``
ends with the same weights as one that was never interrupted.

A run goes through named phases: :func:`robustweights.run_start.start_run` (the
folder, the checkpoint and the data, agreed by every rank; the network; the
optimizer), the epochs (:func:`robustweights.epochs.run_epoch`) and
:func:`end_run` (batch-norm calibration, best-validation selection, the result).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

from torch import nn

from . import data as data_mod
from . import projected
from .checkpoints import (
    build_model,
    check_loaded_data,
    check_trained_data,
    config_of,
    load,
    load_config_data,
)
from .config import CLASSIFICATION_MEASURES, TrainConfig
from .distributed import from_rank0, process_group
from .draws import derive_seed
from .epochs import Run, run_epoch, saved
from .errors import Diverged, UserError
from .evaluation import calibrate_bn, evaluate_split, needs_calibration, reestimated_bn
from .evaluation import weights_label
from .finish import calibrate_at_end, select_best, write_metrics
from .locks import one_writer
from .measures import Measure, for_config, get_measure, measure_split
from .run_start import start_run
from .runs import BEST, CHECKPOINT, read_checkpoint, save_checkpoint, write_text
from .steps import EXCLUSIVE, lr_at

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "load",
    "evaluate",
    "measure_for",
    "end_run",
    "build_model",
    "load_config_data",
    "derive_seed",
    # re-exported from their modules, for code that imports them from here
    "config_of",
    "check_loaded_data",
    "check_trained_data",
    "calibrate_bn",
    "evaluate_split",
    "reestimated_bn",
    "read_checkpoint",
    "write_text",
    "lr_at",
    "Diverged",
]


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    history: list[dict]  # one metrics row per epoch (what metrics.jsonl holds)
    # after the last epoch (of the best validation epoch with a validation split), with the
    # evaluation weights of docs/method.md section 3; nan for a run not judged by error
    test_error: float
    # path of the checkpoint kept (best.pt with a validation split, else checkpoint.pt), or None
    checkpoint: str | None
    seconds: float
    best_epoch: int | None = None  # with a validation split: the epoch of the best value
    measure: str = "error"  # what the run is judged by (measures.for_config)
    test_value: float = float("nan")  # its value, as test_error is (test_error for "error")


def evaluate(
    model: nn.Module,
    config: TrainConfig,
    split: str = "test",
    data_dir: str | None = None,
    *,
    weights: str = "auto",
    batch_size: int | None = None,
    data: "data_mod.Data | str | None" = None,
    measure: "Measure | str | None" = None,
) -> dict:
    """The measure of ``model`` on the test (or train) split of the dataset and preprocessing of
    ``config``: a classifier's error and loss, a language model's perplexity (see
    :func:`robustweights.measures.measure_split` for the keys).

    ``weights``: ``auto`` follows docs/method.md section 3 (a deterministic training
    projection is applied, a random one is not), ``hidden`` uses the hidden
    weights exactly as they are, ``projected`` applies the training projection.
    ``measure``: the run's own (:func:`robustweights.measures.for_config`) unless given (a
    name or ``package.module:function``, as ``--measure`` takes it). ``data``: the data
    already loaded, or a user's ``package.module:function`` giving the batches
    (:func:`robustweights.data.user_data`; ``--data``).
    """
    if split not in ("test", "train"):
        raise UserError(f"split must be 'test' or 'train', not {split!r}")
    m = measure_for(config, measure)
    if isinstance(data, str):
        data = data_mod.user_data(data)  # (not what the run trained on: nothing to compare)
    else:
        data = data or load_config_data(config, data_dir)
        check_loaded_data(model, data)
    if getattr(data, split) is None:
        raise UserError(f"the data has no {split} split to measure on")
    with projected.use_weights(model, weights):
        out = measure_split(
            model,
            getattr(data, split),
            m,
            batch_size=batch_size or config.eval_batch_size,
            amp=config.amp,
            channels_last=config.channels_last,
        )
        out["weights"] = weights_label(model)
    out["measure"] = m.name
    out["dataset"] = data.description
    out["preprocessing"] = data.preprocessing
    return out


def measure_for(config: TrainConfig, measure: "Measure | str | None" = None) -> Measure:
    """What a run is measured by: ``measure`` as the user named it (a classification one with the
    run's loss), else the run's own (:func:`robustweights.measures.for_config`)."""
    if measure is None:
        return for_config(config)
    if isinstance(measure, str) and measure in CLASSIFICATION_MEASURES:
        return get_measure(measure, loss=config.loss)
    return get_measure(measure)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    model_factory: str | None = None,
    data: data_mod.Data | None = None,
) -> TrainResult:
    """Train ``config.model`` with projected weights; see the module docstring.

    ``data`` may pass the dataset already loaded for this configuration (it is
    loaded from the configuration otherwise).
    ``callback(epoch, metrics)`` runs after each epoch's checkpoint is written
    (raise from it to stop early). A non-finite loss raises :class:`Diverged`
    and leaves the last good checkpoint as it was.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains with DistributedDataParallel:
    ``batch_size`` stays the global batch, each rank takes its share of every
    epoch's order, random projections draw from per-rank generators seeded from
    the run seed and the rank, and only rank 0 shows progress and writes files.
    """
    config.validate()
    if model_factory is not None and config.model != model_factory:
        # the checkpoint names the network that was built, so that load() rebuilds that one
        config = dataclasses.replace(config, model=model_factory)
    with process_group(config.device) as (rank, world, device):
        writes = rank == 0 and config.out is not None  # torchrun: rank 0 writes, and holds the lock
        with one_writer(config.out, "robustweights train") if writes else nullcontext():
            return _train(
                config,
                resume,
                progress and rank == 0,
                callback,
                model_factory,
                data,
                rank,
                world,
                device,
            )


# ---------------------------------------------------------------------------
# The phases of a run
# ---------------------------------------------------------------------------


def _train(
    config, resume, progress, callback, model_factory, data, rank, world, device
) -> TrainResult:
    """One run, phase by phase (see the module docstring)."""
    run, t0 = start_run(
        config, resume, progress, callback, model_factory, data, rank, world, device
    )
    for epoch in range(run.start, config.epochs):
        run_epoch(run, epoch)
    return end_run(run, t0)


def _calibrate(run: Run) -> None:
    """Batch-norm statistics for the evaluation weights, once, at the end (saved with the run)."""
    config, state, history, out = run.config, run.state, run.history, run.out
    model = run.model
    calibrated = state is not None and run.start == config.epochs and bool(state.get("train_bn"))
    if not calibrated and config.bn_calibrate > 0 and needs_calibration(model) and history:
        # (also a run stopped after its last checkpoint but before this calibration: before,
        # --resume skipped it)
        train_bn = calibrate_at_end(
            model,
            config,
            history,
            run.train_split,
            run.test_split,
            run.device,
            run.progress,
            run.measure,
        )
        if out is not None:
            save_checkpoint(
                out / CHECKPOINT,
                model=model,
                optimizer=run.opt,
                epoch=config.epochs,
                train_bn=train_bn,
                **saved(run),
            )
            write_metrics(out, history)


def end_run(run: Run, t0: float) -> TrainResult:
    """The end of a run: batch-norm calibration, best-validation selection, the result (``t0``:
    when its epochs began)."""
    config, history, out = run.config, run.history, run.out
    _calibrate(run)
    model = run.model
    best_epoch = None
    if run.val_split is not None and history:
        model, best_epoch = select_best(
            model,
            config,
            history,
            run.best_state,
            run.train_split,
            run.test_split,
            run.device,
            run.progress,
            out,
            run.data,
            run.data_info,
            run.world,
            measure=run.measure,
        )
    # (the figures after selection: rank 0's)
    history[-1:] = [from_rank0(h, run.world) for h in history[-1:]]
    with EXCLUSIVE:  # a CUDA graph is freed while no other row (rows_at_once) captures one
        run.step_fn = None
    seconds = time.perf_counter() - t0
    name = run.measure.name
    last = history[-1] if history else {}
    test_value = last.get(f"test_{name}" if best_epoch is None else f"best_test_{name}", math.nan)
    error = last.get("test_error", math.nan) if best_epoch is None else math.nan
    test_error = test_value if name == "error" else error
    kept_path = (
        (out / (BEST if best_epoch is not None else CHECKPOINT)) if out is not None else None
    )
    return TrainResult(
        model.eval(),
        config,
        history,
        test_error,
        str(kept_path) if kept_path else None,
        seconds,
        best_epoch,
        name,
        test_value,
    )
