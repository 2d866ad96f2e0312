"""Projected training and its run folders: train, resume, load and evaluate a run (``robustweights train``).

Measuring a network as it stands (error on a split, batch-norm re-estimation)
is :mod:`robustweights.evaluation`; this module trains and keeps runs.

    from robustweights import TrainConfig, train, load, evaluate
    result = train(TrainConfig(model="cnn", dataset="fashion-mnist", projection="sign", epochs=3, out="runs/sign"))
    model, config = load("runs/sign")
    evaluate(model, config)                     # {"error": ..., "loss": ..., "weights": "projected", ...}
    evaluate(model, config, weights="hidden")   # the float hidden weights as they are

A run folder holds ``checkpoint.pt`` (hidden weights, optimizer state, epochs
done, full configuration), ``config.json`` and ``metrics.jsonl`` (one line per
epoch). Every file is written atomically (temporary file, then rename), so an
interrupted or failed run never leaves a half-written file, and checkpoints are
read with ``torch.load(weights_only=True)``, which cannot run code.

Determinism: the model is initialised from ``seed``; the data order, the
augmentation and the random projections of epoch ``e`` draw from generators
seeded from ``(seed, e)``, so a run resumed from the checkpoint of epoch ``e``
ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import data as data_mod
from . import models, projected
from .config import TrainConfig
from .distributed import agree, from_rank0, process_group, resolve_device
from .evaluation import (
    as_logits,
    bn_layers,
    calibrate_bn,
    evaluate_split,
    first_forward,
    needs_calibration,
    reestimated_bn,
    training_coverage,
    weights_label,
)
from .errors import Diverged, UserError, one_line
from .runs import BEST, CHECKPOINT, check_writable, read_checkpoint, save_checkpoint, write_text
from .selection import shorten
from .steps import EXCLUSIVE, GraphedStep, lr_at, make_step, set_lr

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "load",
    "evaluate",
    "build_model",
    "load_config_data",
    "derive_seed",
]


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    history: list[dict]  # one metrics row per epoch (what metrics.jsonl holds)
    test_error: float  # after the last epoch (of the best validation epoch with val_size), with the
    # evaluation weights of docs/method.md section 3
    checkpoint: (
        str | None
    )  # path of the checkpoint kept (best.pt with val_size, else checkpoint.pt), or None
    seconds: float
    best_epoch: int | None = None  # with val_size: the epoch of the lowest validation error


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def derive_seed(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def load_config_data(config: TrainConfig, data_dir: str | None = None) -> data_mod.Data:
    return data_mod.load_data(
        config.dataset,
        data_dir or config.data_dir,
        preprocess=config.preprocess,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        image_size=config.image_size,
        seed=config.seed,
        num_workers=config.num_workers,
        val_size=config.val_size,
    )


def build_model(
    config: TrainConfig, num_classes: int, in_shape, generator=None, model_factory=None
) -> nn.Module:
    """The configured network with its projection attached (model initialised from ``config.seed``)."""
    torch.manual_seed(config.seed)
    model = models.create_model(
        model_factory or config.model,
        num_classes=num_classes,
        in_shape=tuple(in_shape),
        width=config.width,
    )
    projected.attach(
        model,
        config.projection,
        mode=config.mode,
        clip=config.clip_bound,
        float_first=config.float_first,
        float_last=config.float_last,
        include=config.include or ("*",),
        exclude=config.exclude,
        types=config.types,
        exclude_types=config.exclude_types,
        generator=generator,
    )
    with (
        torch.no_grad()
    ):  # (the global random state, seeded above); a never-clipped weight: its Glorot H
        for s in projected.sites(model) if config.init == "uniform" else []:
            H = s.H if s.H is not None else projected.glorot_bound(s.hidden)
            s.hidden.uniform_(-H, H)
    return model


# ---------------------------------------------------------------------------
# Loading and evaluating a trained network
# ---------------------------------------------------------------------------


def config_of(state: dict, path) -> TrainConfig:
    """A checkpoint's :class:`TrainConfig`, checked as a user's would be (a stranger's file can hold anything);
    the machine it trained on (device, compile, CUDA graph) is not this one's business."""
    config = TrainConfig.from_dict(state["config"])
    try:
        dataclasses.replace(config, device="cpu", compile=False, cuda_graph=False).validate()
    except UserError as e:
        raise UserError(f"{path} holds a damaged training configuration: {e}") from None
    return config


def load(path: "str | os.PathLike", *, model_factory: str | None = None, device: str = "cpu"):
    """The trained network of a checkpoint with its hidden weights, in eval mode, and its :class:`TrainConfig`.

    A checkpoint whose model is a ``package.module:function`` factory imports
    that code only when ``model_factory`` names it again: a checkpoint from a
    stranger must not choose what code runs.
    """
    state = read_checkpoint(path)
    config = config_of(state, path)
    models.check_factory_allowed(
        config.model,
        model_factory,
        path,
        f"pass model_factory={config.model!r} (--model-factory) to allow importing it",
    )
    where = f"{path} (model {config.model!r} width {config.width})"
    try:  # shapes first, on the meta device: a stranger's num_classes or in_shape could ask for terabytes
        with torch.device("meta"):
            models.check_fits(
                build_model(config, state["num_classes"], state["in_shape"]).state_dict(),
                state["model"],
                where,
            )
    except (
        NotImplementedError,
        RuntimeError,
    ):  # a model that cannot be built without memory: checked below
        pass
    model = build_model(config, state["num_classes"], state["in_shape"])
    models.load_weights(model, state["model"], where)
    model.__dict__["_rw_trained_on"] = (str(path), state.get("data"))  # for check_loaded_data
    return model.to(resolve_device(device)).eval(), config


def check_loaded_data(model: nn.Module, data: data_mod.Data) -> None:
    """:func:`check_trained_data` for a network :func:`load` returned (any other model: nothing to check)."""
    where, saved = model.__dict__.get("_rw_trained_on", (None, None))
    check_trained_data(saved, data, where)


def check_trained_data(saved, data: data_mod.Data, where) -> None:
    """One line when ``data`` is not what a run trained on, as far as its checkpoint recorded (classes in order,
    training images): an image folder with a class renamed or images added loads fine, but its labels or its
    standardization statistics would silently differ (a 0% network tested at 100% or 67% error)."""
    if not isinstance(saved, dict):
        return
    if isinstance(saved.get("classes"), list) and saved["classes"] != list(data.classes):
        raise UserError(
            f"{where} was trained on the classes {shorten(saved['classes'])}; this data has "
            f"{shorten(data.classes)}: its labels would mean other things"
        )
    if isinstance(saved.get("train_size"), int) and saved["train_size"] != len(data.train):
        raise UserError(
            f"{where} was trained on {saved['train_size']} training images; this data has "
            f"{len(data.train)}: other data (and other preprocessing statistics)"
        )


def evaluate(
    model: nn.Module,
    config: TrainConfig,
    split: str = "test",
    data_dir: str | None = None,
    *,
    weights: str = "auto",
    batch_size: int | None = None,
    data: data_mod.Data | None = None,
) -> dict:
    """Test (or train) error and loss of ``model`` on the dataset and preprocessing of ``config``.

    ``weights``: ``auto`` follows docs/method.md section 3 (a deterministic training
    projection is applied, a random one is not), ``hidden`` uses the hidden
    weights exactly as they are, ``projected`` applies the training projection.
    """
    if split not in ("test", "train"):
        raise UserError(f"split must be 'test' or 'train', not {split!r}")
    data = data or load_config_data(config, data_dir)
    check_loaded_data(model, data)
    with projected.use_weights(model, weights):
        out = evaluate_split(
            model,
            getattr(data, split),
            loss=config.loss,
            batch_size=batch_size or config.eval_batch_size,
            amp=config.amp,
            channels_last=config.channels_last,
        )
        out["weights"] = weights_label(model)
    out["dataset"] = data.description
    out["preprocessing"] = data.preprocessing
    return out


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

# Fields that may differ when a run is resumed: they do not change what is computed.
_RESUMABLE = {
    "epochs",
    "out",
    "device",
    "num_workers",
    "data_dir",
    "eval_batch_size",
    "bn_calibrate",
    "checkpoint_every",
}


def _own_start(p: Path) -> bool:
    """A file a run writes before its first checkpoint (its config.json), or a temporary file of an atomic write."""
    if p.name == "config.json" and p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(d, dict) and {"model", "projection", "coverage"} <= d.keys()
    return p.name.startswith(
        (".config.json.", ".metrics.jsonl.", ".checkpoint.pt.", ".best.pt.")
    )  # atomic writes


@torch.no_grad()
def _check_trainable(model: nn.Module, data, device) -> None:
    """One line before training for a model that cannot train on this data: nothing trainable, or fewer outputs
    than the data has classes (before: a traceback at the first parameter step, or at the batch holding a label
    past the outputs)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("the model has nothing to train: every parameter has requires_grad=False")
    x, y = next(iter(data.train.batches(2, device=device)))
    was = model.training
    try:
        out = as_logits(first_forward(model.eval(), x), y)
    finally:
        model.train(was)
    if out.shape[1] < data.num_classes:
        raise UserError(
            f"the model gives {out.shape[1]} outputs per example, but the data has {data.num_classes} "
            f"classes"
        )


def _check_out(config: TrainConfig, resume: bool) -> dict | None:
    """Refuse to overwrite a run; on resume return its checkpoint."""
    if config.out is None:
        if resume:
            raise UserError("--resume needs --out, the run folder to continue")
        return None
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    check_writable(out)
    ckpt = out / CHECKPOINT
    if not resume:
        if ckpt.exists() or (out / "metrics.jsonl").exists():
            raise UserError(
                f"{out} already holds a run; pass --resume to continue it or choose another --out"
            )
        others = sorted(p.name for p in out.iterdir() if not _own_start(p)) if out.is_dir() else []
        if (
            others
        ):  # a user's files, a sweep or a report: a run's files would overwrite or mix with them
            raise UserError(
                f"--out {out} holds other files ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}); choose a new or empty folder"
            )
        return None
    if not ckpt.exists():
        if out.is_dir() and all(_own_start(p) or p.name == "metrics.jsonl" for p in out.iterdir()):
            return None  # stopped before its first checkpoint (or an empty folder): starting over loses nothing
        raise UserError(f"nothing to resume: {ckpt} does not exist")
    state = read_checkpoint(ckpt)
    saved = config_of(state, ckpt)
    if config.epochs < state["epoch"]:
        raise UserError(
            f"{out} has {state['epoch']} epochs done; --epochs must be at least that to resume it"
        )
    for f in dataclasses.fields(TrainConfig):
        if f.name not in _RESUMABLE and getattr(saved, f.name) != getattr(config, f.name):
            raise UserError(
                f"cannot resume {out}: {f.name} was {getattr(saved, f.name)!r}, "
                f"now {getattr(config, f.name)!r}"
            )
    return state


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


def _calibrate_at_end(model, config, history, train_split, test_split, device, progress) -> dict:
    """The saved network works as saved: batch-norm statistics re-estimated with its evaluation weights
    (see :func:`needs_calibration`); the last metrics row gets the test error of that network. Returns the
    statistics training had (a resumed run goes on from them)."""
    bns = set(map(id, bn_layers(model)))
    keys = {
        f"{n}.{b}" if n else b
        for n, m in model.named_modules()
        if id(m) in bns
        for b in ("running_mean", "running_var", "num_batches_tracked")
    }
    train_bn = {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}
    calibrate_bn(
        model,
        train_split,
        config.bn_calibrate,
        config.batch_size,
        device,
        seed=derive_seed(config.seed, "calibrate"),
    )
    test = evaluate_split(
        model,
        test_split,
        loss=config.loss,
        batch_size=config.eval_batch_size,
        amp=config.amp,
        channels_last=config.channels_last,
    )
    row = history[-1]
    row.update(
        test_error_stored_bn=row["test_error"],
        test_loss_stored_bn=row["test_loss"],
        test_error=test["error"],
        test_loss=test["loss"],
        bn_calibrated_batches=config.bn_calibrate,
    )
    if progress:
        print(
            f"batch-norm statistics re-estimated on {config.bn_calibrate} training batches with the evaluation "
            f"({row['test_weights']}) weights: test error {row['test_error_stored_bn']:.2%} -> {test['error']:.2%}"
            " (the checkpoint keeps these statistics)"
        )
    return train_bn


def _train(
    config, resume, progress, callback, model_factory, data, rank, world, device
) -> TrainResult:
    from tqdm.auto import tqdm

    if config.batch_size % world:
        raise UserError(
            f"batch size {config.batch_size} must be divisible by the {world} processes "
            f"(it is the global batch: each process takes batch_size / processes)"
        )
    # Rank 0 alone reads the run folder (the other machines need not see it) and hands the
    # checkpoint to every rank; a mistake on any rank (a folder, a missing dataset) stops all of
    # them with its line, instead of leaving the others waiting in the first all-reduce.
    state, error = None, None
    try:
        state = _check_out(config, resume) if rank == 0 else None
        models.check_model(
            config.model, config.width
        )  # a misspelt name fails before the data loads
        if data is not None and (data.name, data.preprocessing) != (
            config.dataset,
            data_mod.describe_preprocess(config.preprocess),
        ):
            raise UserError(
                f"the data given ({data.name}; inputs {data.preprocessing}) is not what the configuration "
                f"names ({config.dataset}; preprocess {config.preprocess}): load it with "
                f"load_config_data(config)"
            )
        data = data or load_config_data(config)
    except UserError as e:
        error = e
    state = agree(error, state, rank, world)
    gen = torch.Generator(device=device)
    with (
        EXCLUSIVE
    ):  # seeds the global random state, counts reads process-wide: one at a time (run_together)
        model = build_model(
            config, data.num_classes, data.in_shape, generator=gen, model_factory=model_factory
        )
        model.to(device)
        cov = training_coverage(
            model, data.train, device, verb=f"projecting ({config.projection}, {config.mode})"
        )
        _check_trainable(model, data, device)
    if progress:
        print(cov["summary"])
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model  # what the steps call: the model itself, or its DistributedDataParallel wrapper
    if world > 1:
        # Gradients are averaged over ranks, so every rank takes the same step from the same
        # weights and clips them the same way: the hidden weights stay bitwise identical.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    if config.compile:
        net = torch.compile(
            net
        )  # same weights and checkpoints: only the steps go through the compiled graph
    train_split, test_split, val_split = data.train, data.test, data.val
    best_state, best_unsaved = None, None
    if device.type == "cuda" and isinstance(train_split, data_mod.TensorSplit):
        # Data resident on the GPU: no host-to-device copy per batch.
        train_split = data_mod.TensorSplit(train_split.x.to(device), train_split.y.to(device))
        test_split = data_mod.TensorSplit(test_split.x.to(device), test_split.y.to(device))
        if val_split is not None:
            val_split = data_mod.TensorSplit(val_split.x.to(device), val_split.y.to(device))
    if config.cuda_graph and world > 1:  # (validate() refused it without a GPU)
        raise UserError("--cuda-graph needs one process on a GPU (not the CPU, not torchrun)")
    params, lr = (
        model.parameters(),
        torch.tensor(config.lr, device=device) if config.cuda_graph else config.lr,
    )
    fused = (
        {"fused": True} if device.type == "cuda" else {}
    )  # one kernel for the whole Adam update (part 8)
    if (
        config.optimizer == "adam"
    ):  # capturable: lr and step count read on the GPU, as a CUDA graph needs
        opt = torch.optim.Adam(
            params, lr=lr, weight_decay=config.weight_decay, capturable=config.cuda_graph, **fused
        )
    else:
        opt = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )

    history: list[dict] = []
    start = 0
    if state is not None:  # (a damaged file: one line, the folder as it was)
        models.load_weights(model, state["model"], f"{config.out}'s checkpoint")
        try:
            opt.load_state_dict(state["optimizer"])
        except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
            raise UserError(
                f"{config.out}'s checkpoint holds a damaged optimizer state ({one_line(e)[:200]}); "
                f"start the run over in another folder"
            ) from None
        for group in (
            opt.param_groups if config.cuda_graph else []
        ):  # a checkpoint keeps lr as a number
            group.update(lr=torch.tensor(float(group["lr"]), device=device), capturable=True)
        history, start = list(state["history"]), state["epoch"]
        if (
            state.get("train_bn") and start < config.epochs
        ):  # continue from training's statistics, not the
            models.load_weights(
                model,
                {**model.state_dict(), **state["train_bn"]},  # calibrated ones
                f"{config.out}'s checkpoint (its training batch-norm statistics)",
            )
    if (
        state is not None
    ):  # (before config.json is rewritten: a refused resume leaves the folder as it was)
        check_trained_data(state.get("data"), data, config.out)
    out = Path(config.out) if config.out and rank == 0 else None
    if out is not None:
        write_text(
            out / "config.json",
            json.dumps({**dataclasses.asdict(config), "coverage": cov}, indent=2) + "\n",
        )
    data_info = {
        "name": data.name,
        "description": data.description,
        "classes": list(data.classes),
        "train_size": len(data.train),
    }

    t0 = time.perf_counter()
    local_batch = config.batch_size // world
    steps = math.ceil((len(train_split) // world) / local_batch)
    check_every = 50 if device.type == "cuda" else 1  # a finiteness check syncs the GPU
    needs_two = bool(bn_layers(model))  # batch norm trains only on batches of two or more
    if needs_two and local_batch < 2:  # (every batch would be skipped)
        raise UserError(
            f"batch norm needs batches of 2 or more examples{' per process' * (world > 1)}, and "
            f"--batch-size {config.batch_size} gives {local_batch}: raise it"
        )
    step_fn = make_step(
        model,
        net,
        opt,
        config.loss,
        amp=config.amp,
        channels_last=config.channels_last,
        device=device,
        graphed=config.cuda_graph,
    )
    if config.cuda_graph:
        step_fn = GraphedStep(step_fn, model, opt, [gen])
    for epoch in range(start, config.epochs):
        data_gen = torch.Generator().manual_seed(derive_seed(config.seed, epoch, "data"))
        gen.manual_seed(
            derive_seed(config.seed, epoch, "projection", *((rank,) if world > 1 else ()))
        )
        model.train()
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        wrong = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        bar = tqdm(
            total=len(train_split),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="img",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        batches = train_split.batches(
            local_batch,
            shuffle=True,
            generator=data_gen,
            augment=config.augment,
            device=device,
            shard=(rank, world),
        )
        for step, (x, y) in enumerate(batches):
            if len(y) < 2 and needs_two:  # the epoch's last batch, of one example, is left
                continue
            set_lr(opt, lr_at(config, epoch, step, steps))
            loss, wrong_now = step_fn(x, y, check=step == 0 and epoch == start)
            loss_sum += loss.double() * len(y)
            wrong += wrong_now
            seen += len(y)
            bar.update(len(y) * world)  # the bar counts all ranks' images (their shares are equal)
            if step % check_every == 0 or step == steps - 1:
                if not math.isfinite(loss_sum.item()):
                    bar.close()
                    kept_note = (
                        " The last good checkpoint is kept."
                        if out and (out / CHECKPOINT).exists()
                        else ""
                    )
                    raise Diverged(
                        f"training loss became non-finite in epoch {epoch + 1} (step {step}); "
                        f"try a lower --lr.{kept_note}"
                    )
                if progress and step % 10 == 0:
                    rate = seen * world / (time.perf_counter() - t_epoch)
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.3f}",
                        acc=f"{1 - wrong.item() / seen:.3f}",
                        img_s=f"{rate:.0f}",
                    )
        bar.close()
        if world > 1:  # the epoch's training figures over all ranks
            totals = torch.stack(
                [
                    loss_sum,
                    wrong.double(),
                    torch.tensor(float(seen), device=device, dtype=torch.float64),
                ]
            )
            torch.distributed.all_reduce(totals)
            loss_sum, wrong, seen = totals[0], totals[1], int(totals[2].item())
        train_seconds = time.perf_counter() - t_epoch
        test = evaluate_split(
            model,
            test_split,
            loss=config.loss,
            batch_size=config.eval_batch_size,
            amp=config.amp,
            channels_last=config.channels_last,
        )
        row = {
            "epoch": epoch + 1,
            "lr": lr_at(config, epoch, 0, steps),
            "train_loss": loss_sum.item() / seen,
            "train_error": wrong.item() / seen,
            "test_loss": test["loss"],
            "test_error": test["error"],
            "test_weights": weights_label(model),
            "seconds": train_seconds,
            "images_per_second": seen / train_seconds,
        }
        if val_split is not None:
            # A network evaluated with other weights than it trains with is selected as it will be kept: with
            # batch-norm statistics re-estimated for its evaluation weights (put back before training goes on).
            again = config.bn_calibrate if needs_calibration(model) else 0
            with reestimated_bn(
                model,
                train_split,
                again,
                config.batch_size,
                device,
                derive_seed(config.seed, "calibrate"),
            ):
                row["val_error"] = evaluate_split(
                    model,
                    val_split,
                    loss=config.loss,
                    batch_size=config.eval_batch_size,
                    amp=config.amp,
                    channels_last=config.channels_last,
                )["error"]
        row = from_rank0(
            row, world
        )  # each rank evaluated with its own batch-norm statistics: rank 0's figures
        history.append(row)  # for all, so that every rank selects the best epoch rank 0 keeps
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} "
                f"error {row['train_error']:.2%}, test error {row['test_error']:.2%} "
                f"({row['test_weights']} weights), {row['images_per_second']:.0f} img/s"
            )
        if val_split is not None and row["val_error"] <= min(h["val_error"] for h in history):
            best_state = {
                k: v.detach().clone() for k, v in model.state_dict().items()
            }  # the latest of ties
            best_unsaved = epoch + 1
        due = (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs
        if out is not None:
            if due:
                save_checkpoint(
                    out / CHECKPOINT,
                    model=model,
                    optimizer=opt,
                    epoch=epoch + 1,
                    config=config,
                    history=history,
                    num_classes=data.num_classes,
                    in_shape=data.in_shape,
                    data=data_info,
                )
            if due and best_unsaved:
                save_checkpoint(
                    out / BEST,
                    model=model,
                    optimizer=None,
                    epoch=best_unsaved,
                    config=config,
                    history=history,
                    num_classes=data.num_classes,
                    in_shape=data.in_shape,
                    data=data_info,
                    model_state=best_state,
                )
                best_unsaved = None
            write_text(
                out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history)
            )  # every epoch
        if world > 1:
            torch.distributed.barrier()  # no rank runs ahead of rank 0's checkpoint
        if callback is not None:
            callback(epoch + 1, row)
    calibrated = state is not None and start == config.epochs and bool(state.get("train_bn"))
    if not calibrated and config.bn_calibrate > 0 and needs_calibration(model) and history:
        # (also a run stopped after its last checkpoint but before this calibration: before, --resume skipped it)
        train_bn = _calibrate_at_end(
            model, config, history, train_split, test_split, device, progress
        )
        if out is not None:
            save_checkpoint(
                out / CHECKPOINT,
                model=model,
                optimizer=opt,
                epoch=config.epochs,
                config=config,
                history=history,
                num_classes=data.num_classes,
                in_shape=data.in_shape,
                data=data_info,
                train_bn=train_bn,
            )
            write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    best_epoch = None
    if val_split is not None and history:
        model, best_epoch = _select_best(
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
            world,
        )
    history[-1:] = [
        from_rank0(h, world) for h in history[-1:]
    ]  # (the figures after selection: rank 0's)
    with EXCLUSIVE:  # a CUDA graph is freed while no other row (rows_at_once) captures one
        step_fn = None
    seconds = time.perf_counter() - t0
    test_error = (
        (history[-1]["test_error"] if best_epoch is None else history[-1]["best_test_error"])
        if history
        else float("nan")
    )
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
    )


def _select_best(
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
):
    """The network of the best validation epoch (the latest of ties), its batch-norm statistics
    re-estimated like the last one's if it needs it; its test error goes in the last metrics row."""
    best = max(
        (h for h in history if h["val_error"] == min(r["val_error"] for r in history)),
        key=lambda h: h["epoch"],
    )
    row, kept = history[-1], []  # kept: the history best.pt was saved with
    if best_state is None:  # a resumed run: the best epoch's network is in best.pt
        saved = read_checkpoint(out / BEST) if out is not None and (out / BEST).is_file() else {}
        best_state, kept = saved.get("model"), saved.get("history") or [{}]
    # Under torchrun only rank 0 reads the run folder (a resumed rank 1 had no best.pt to read and stopped)
    best_state, kept = from_rank0((best_state, kept), world)
    if best_state is None:
        raise RuntimeError("the network of the best validation epoch was not kept")
    model.load_state_dict(best_state)
    if len(kept) == len(history) and kept[-1].get("best_epoch") == best["epoch"]:
        # a finished run asked again (reproduce's second call): best.pt is the final selection; rewrite nothing
        row.update({k: kept[-1][k] for k in ("best_epoch", "best_val_error", "best_test_error")})
        return model, best["epoch"]
    if config.bn_calibrate > 0 and needs_calibration(model):
        calibrate_bn(
            model,
            train_split,
            config.bn_calibrate,
            config.batch_size,
            device,
            seed=derive_seed(config.seed, "calibrate"),
        )
    test = evaluate_split(
        model,
        test_split,
        loss=config.loss,
        batch_size=config.eval_batch_size,
        amp=config.amp,
        channels_last=config.channels_last,
    )
    row.update(
        best_epoch=best["epoch"], best_val_error=best["val_error"], best_test_error=test["error"]
    )
    if progress:
        print(
            f"best validation epoch {best['epoch']} (validation error {best['val_error']:.2%}): "
            f"test error {test['error']:.2%}; kept as {BEST}"
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
        write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    return model, best["epoch"]
