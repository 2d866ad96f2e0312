"""One epoch of a training run: its steps, its metrics row, its checkpoints (the loop of ``train``).

:class:`Run` holds what the phases of one run share (the network, the
optimizer, the splits, the history); :func:`run_epoch` trains one epoch with
the data order, augmentation and random projections drawn from generators
seeded from ``(seed, epoch)``, tests (and validates) the network, keeps the
best validation network and writes the run folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import data as data_mod
from .config import TrainConfig
from .distributed import from_rank0
from .draws import derive_seed
from .errors import Diverged
from .evaluation import needs_calibration, reestimated_bn, weights_label
from .finish import measured, val_key, write_metrics
from .measures import Measure
from .progress import bar as progress_bar
from .progress import duration, is_terminal
from .runs import BEST, CHECKPOINT, save_checkpoint
from .steps import is_classification, lr_at, set_lr

__all__ = ["Run", "run_epoch", "end_epoch", "saved"]


@dataclass
class Run:
    """What the phases of one training run share."""

    config: TrainConfig
    progress: bool  # (rank 0 only)
    callback: Callable[[int, dict], None] | None
    rank: int
    world: int
    device: torch.device
    data: data_mod.Data
    data_info: dict  # what the checkpoints record of the data (check_trained_data reads it)
    state: dict | None  # the checkpoint a resumed run continues
    model: nn.Module
    net: nn.Module  # what the steps call: the model itself, or its DistributedDataParallel wrapper
    gen: torch.Generator  # the random projections' generator
    opt: torch.optim.Optimizer
    train_split: data_mod.Split  # (on the GPU when the data is resident there)
    test_split: data_mod.Split
    val_split: data_mod.Split | None
    out: Path | None  # the run folder, on rank 0 only
    history: list[dict]
    start: int  # the epochs done before this call
    local_batch: int  # this process's share of the batch
    steps: int  # per epoch
    needs_two: bool  # batch norm trains only on batches of two or more
    check_every: int  # steps between finiteness checks
    measure: Measure  # what the run is judged by (measures.for_config); its objective trains
    step_fn: Callable | None = None
    best_state: dict | None = None  # the best validation epoch's network, not yet saved
    best_unsaved: int | None = None  # its epoch


def saved(run: Run) -> dict:
    """What every checkpoint of this run records beside its network."""
    return dict(
        config=run.config,
        history=run.history,
        num_classes=run.data.num_classes,
        in_shape=run.data.in_shape,
        data=run.data_info,
    )


def run_epoch(run: Run, epoch: int) -> None:
    """One epoch: train, test (and validate), keep the best validation network, save, call back."""
    end_epoch(run, epoch, *_train_epoch(run, epoch))


def end_epoch(
    run: Run, epoch: int, loss_sum, wrong, seen: int, seconds: float, extra: dict | None = None
) -> None:
    """An epoch once trained (its summed training loss, wrong predictions, examples and seconds):
    test (and validate), keep the best validation network, save, call back. ``extra``: more
    figures for the metrics row (a fused training's)."""
    row = {**_epoch_row(run, epoch, loss_sum, wrong, seen, seconds), **(extra or {})}
    # each rank evaluated with its own batch-norm statistics: rank 0's figures for all, so that
    # every rank selects the best epoch rank 0 keeps
    row = from_rank0(row, run.world)
    run.history.append(row)
    if run.progress:
        _say(_epoch_line(run, row, epoch) + _time_left(run, epoch))
    key = val_key(run.measure)
    if run.val_split is not None and _at_least_as_good(run.measure, row[key], run.history, key):
        # the latest of ties
        run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        run.best_unsaved = epoch + 1
    if run.out is not None:
        _save_epoch(run, epoch)
    if run.world > 1:
        torch.distributed.barrier()  # no rank runs ahead of rank 0's checkpoint
    if run.callback is not None:
        run.callback(epoch + 1, row)


def _say(line: str) -> None:
    """A line above a terminal's bar (tqdm.write), or a plain line in a log."""
    if is_terminal():
        from tqdm.auto import tqdm

        tqdm.write(line)
    else:
        print(line, flush=True)


def _time_left(run: Run, epoch: int) -> str:
    """``, about 3 min 05 s left``: the epochs to go at this run's mean training time so far."""
    left = run.config.epochs - (epoch + 1)
    done = [h["seconds"] for h in run.history[-(epoch + 1 - run.start) :] if "seconds" in h]
    if left <= 0 or not done:
        return ""
    return f", about {duration(left * sum(done) / len(done))} left"


def _at_least_as_good(measure: Measure, value: float, history: list[dict], key: str) -> bool:
    """Whether ``value`` is as good as the best ``key`` of ``history``, in the measure's
    direction."""
    best = (max if measure.higher_is_better else min)(h[key] for h in history)
    return value >= best if measure.higher_is_better else value <= best


def _epoch_line(run: Run, row: dict, epoch: int) -> str:
    """The line an epoch ends with, in the measure's units (a classifier's: its errors)."""
    m, config = run.measure, run.config
    if is_classification(m) and m.name == "error":
        return (
            f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} "
            f"error {row['train_error']:.2%}, test error {row['test_error']:.2%} "
            f"({row['test_weights']} weights), {row['images_per_second']:.0f} img/s"
        )
    train = f" error {row['train_error']:.2%}" if is_classification(m) else ""
    unit = "img" if is_classification(m) else "examples"
    return (
        f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}{train}, test "
        f"{m.name.replace('_', ' ')} {m.format(row['test_' + m.name])} "
        f"({row['test_weights']} weights), {row['images_per_second']:.0f} {unit}/s"
    )


def _train_epoch(run: Run, epoch: int):
    """Train one epoch: its training loss summed over examples, its wrong predictions and its
    examples (over all ranks), and its seconds."""
    config, world, device = run.config, run.world, run.device
    data_gen = torch.Generator().manual_seed(derive_seed(config.seed, epoch, "data"))
    rank = (run.rank,) if world > 1 else ()
    run.gen.manual_seed(derive_seed(config.seed, epoch, "projection", *rank))
    run.model.train()
    t_epoch = time.perf_counter()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    wrong = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    bar = progress_bar(  # a terminal's bar; nothing in a log, whose line is the epoch's
        total=len(run.train_split),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="img" if is_classification(run.measure) else "ex",
        enabled=run.progress,
        leave=False,
    )
    batches = run.train_split.batches(
        run.local_batch,
        shuffle=True,
        generator=data_gen,
        augment=config.augment,
        device=device,
        shard=(run.rank, world),
    )
    for step, (x, y) in enumerate(batches):
        if len(y) < 2 and run.needs_two:  # the epoch's last batch, of one example, is left
            continue
        set_lr(run.opt, lr_at(config, epoch, step, run.steps))
        loss, wrong_now = run.step_fn(x, y, check=step == 0 and epoch == run.start)
        loss_sum += loss.double() * len(y)
        wrong += wrong_now
        seen += len(y)
        bar.update(len(y) * world)  # the bar counts all ranks' images (their shares are equal)
        if step % run.check_every == 0 or step == run.steps - 1:
            _check_finite(run, bar, loss_sum, epoch, step)
            if run.progress and step % 10 == 0:
                rate = seen * world / (time.perf_counter() - t_epoch)
                _postfix(run, bar, loss_sum.item() / seen, wrong, seen, rate)
    bar.close()
    if world > 1:  # the epoch's training figures over all ranks
        seen = torch.tensor(float(seen), device=device, dtype=torch.float64)
        totals = torch.stack([loss_sum, wrong.double(), seen])
        torch.distributed.all_reduce(totals)
        loss_sum, wrong, seen = totals[0], totals[1], int(totals[2].item())
    return loss_sum, wrong, seen, time.perf_counter() - t_epoch


def _postfix(run: Run, bar, loss: float, wrong, seen: int, rate: float) -> None:
    """The progress bar's running figures: loss (and a classifier's accuracy), rate."""
    if is_classification(run.measure):
        bar.set_postfix(
            loss=f"{loss:.3f}", acc=f"{1 - wrong.item() / seen:.3f}", img_s=f"{rate:.0f}"
        )
    else:
        bar.set_postfix(loss=f"{loss:.3f}", ex_s=f"{rate:.0f}")


def _check_finite(run: Run, bar, loss_sum, epoch: int, step: int) -> None:
    """:class:`Diverged` for a non-finite training loss (the last good checkpoint is kept)."""
    if not math.isfinite(loss_sum.item()):
        bar.close()
        kept = run.out is not None and (run.out / CHECKPOINT).exists()
        raise Diverged(
            f"training loss became non-finite in epoch {epoch + 1} (step {step}); try a lower "
            f"learning rate (lr=).{' The last good checkpoint is kept.' if kept else ''}"
        )


def _epoch_row(run: Run, epoch: int, loss_sum, wrong, seen: int, train_seconds: float) -> dict:
    """The epoch's metrics row: training figures, test figures of the measure and, with a
    validation split, its validation value (a classifier's: ``train_error``, ``test_error``,
    ``val_error``; another measure's: ``test_<name>``, ``val_<name>``)."""
    config, model, m = run.config, run.model, run.measure
    test = measured(model, run.test_split, config, m)
    row = {
        "epoch": epoch + 1,
        "lr": lr_at(config, epoch, 0, run.steps),
        "train_loss": loss_sum.item() / seen,
        **({"train_error": wrong.item() / seen} if is_classification(m) else {}),
        **_test_figures(m, test),
        "test_weights": weights_label(model),
        "seconds": train_seconds,
        "images_per_second": seen / train_seconds,
    }
    if run.val_split is not None:
        # A network evaluated with other weights than it trains with is selected as it will be
        # kept: with batch-norm statistics re-estimated for its evaluation weights (put back
        # before training goes on).
        again = config.bn_calibrate if needs_calibration(model) else 0
        seed = derive_seed(config.seed, "calibrate")
        with reestimated_bn(model, run.train_split, again, config.batch_size, run.device, seed):
            row[val_key(m)] = m.value(measured(model, run.val_split, config, m))
    return row


def _test_figures(m: Measure, test: dict) -> dict:
    """A row's test figures: ``test_loss``, a classifier's ``test_error`` and the measure's
    ``test_<name>`` (the same key for ``error``), in this order."""
    figures = {"test_loss": test["loss"]} if "loss" in test else {}
    if is_classification(m):
        figures["test_error"] = test["error"]
    figures["test_" + m.name] = m.value(test)
    return figures


def _save_epoch(run: Run, epoch: int) -> None:
    """The run folder after an epoch: the checkpoint when due (every ``checkpoint_every`` epochs
    and the last), the best validation network not yet saved, and the metrics every epoch."""
    due = (epoch + 1) % run.config.checkpoint_every == 0 or epoch + 1 == run.config.epochs
    if due:
        save_checkpoint(
            run.out / CHECKPOINT, model=run.model, optimizer=run.opt, epoch=epoch + 1, **saved(run)
        )
    if due and run.best_unsaved:
        save_checkpoint(
            run.out / BEST,
            model=run.model,
            optimizer=None,
            epoch=run.best_unsaved,
            model_state=run.best_state,
            **saved(run),
        )
        run.best_unsaved = None
    write_metrics(run.out, run.history)
