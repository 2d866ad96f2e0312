"""The start of a training run: its folder, checkpoint, data, network and optimizer (``start_run``).

:func:`start_run` takes a run from its configuration to the :class:`~robustweights.epochs.Run` its
epochs share: ``_prepare`` (the folder, the checkpoint and the data, agreed by every rank),
``_build`` (the network, its projection and coverage), the optimizer (:func:`optimizer_for`) with a
resumed run's state put back, and ``config.json``. :func:`robustweights.training.train` and the
fused trainings of :mod:`robustweights.fused_training` start their runs here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from . import data as data_mod
from . import models
from .checkpoints import build_model, check_config_data, check_trained_data, load_config_data
from .distributed import agree
from .epochs import Run
from .errors import UserError
from .evaluation import as_logits, bn_layers, first_forward, training_coverage
from .measures import Measure, for_config, output_tensor
from .resume import check_out, restore
from .runs import write_text
from .steps import EXCLUSIVE, GraphedStep, is_classification, make_step

__all__ = ["start_run", "optimizer_for"]


def start_run(
    config, resume, progress, callback, model_factory, data, rank, world, device
) -> tuple[Run, float]:
    """A run up to its first epoch: the folder and checkpoint, the data, the network, the optimizer
    (a resumed run's state put back), ``config.json``; the :class:`Run` and its start time."""
    state, data = _prepare(config, resume, data, rank, world)
    model, net, gen, cov = _build(config, data, device, model_factory, progress, world)
    train_split, test_split, val_split = _on_device(data, device)
    if config.cuda_graph and world > 1:  # (validate() refused it without a GPU)
        raise UserError("cuda_graph=True needs one process on a GPU (not the CPU, not torchrun)")
    opt = optimizer_for(config, model, device)
    history, start = [], 0
    if state is not None:
        history, start = restore(state, model, opt, config, device)
        # (before config.json is rewritten: a refused resume leaves the folder as it was)
        check_trained_data(state.get("data"), data, config.out)
    out = Path(config.out) if config.out and rank == 0 else None
    if out is not None:
        write_text(
            out / "config.json",
            json.dumps({**dataclasses.asdict(config), "coverage": cov}, indent=2) + "\n",
        )
    t0 = time.perf_counter()
    local_batch = config.batch_size // world
    needs_two = bool(bn_layers(model))
    if needs_two and local_batch < 2:  # (every batch would be skipped)
        raise UserError(
            f"batch norm needs batches of 2 or more examples{' per process' * (world > 1)}, and "
            f"batch_size={config.batch_size} gives {local_batch}: raise it"
        )
    run = Run(
        config=config,
        progress=progress,
        callback=callback,
        rank=rank,
        world=world,
        device=device,
        data=data,
        data_info=_data_info(data),
        state=state,
        model=model,
        net=net,
        gen=gen,
        opt=opt,
        train_split=train_split,
        test_split=test_split,
        val_split=val_split,
        out=out,
        history=history,
        start=start,
        local_batch=local_batch,
        steps=math.ceil((len(train_split) // world) / local_batch),
        needs_two=needs_two,
        check_every=50 if device.type == "cuda" else 1,  # a finiteness check syncs the GPU
        measure=for_config(config),
    )
    run.step_fn = _make_step(run)
    return run, t0


def _data_info(data) -> dict:
    """What the checkpoints record of the data (:func:`check_trained_data` reads it)."""
    return {
        "name": data.name,
        "description": data.description,
        "classes": list(data.classes),
        "train_size": len(data.train),
    }


def _prepare(config, resume, data, rank, world):
    """The checkpoint to resume (or None) and the data, the same on every rank."""
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
        state = check_out(config, resume) if rank == 0 else None
        models.check_model(config.model, config.width)  # a misspelt name fails before the data
        if data is not None:
            check_config_data(config, data)
        data = data or load_config_data(config)
    except UserError as e:
        error = e
    return agree(error, state, rank, world), data


def _build(config, data, device, model_factory, progress, world):
    """The network on ``device`` with its projections' generator and coverage, and what the steps
    call (compiled, or wrapped for torchrun)."""
    gen = torch.Generator(device=device)
    # seeds the global random state, counts reads process-wide: one at a time (run_together)
    with EXCLUSIVE:
        model = build_model(
            config, data.num_classes, data.in_shape, generator=gen, model_factory=model_factory
        )
        model.to(device)
        cov = training_coverage(
            model, data.train, device, verb=f"projecting ({config.projection}, {config.mode})"
        )
        _check_trainable(model, data, device, for_config(config))
    if progress:
        print(cov["summary"])
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        # Gradients are averaged over ranks, so every rank takes the same step from the same
        # weights and clips them the same way: the hidden weights stay bitwise identical.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    if config.compile:
        # same weights and checkpoints: only the steps go through the compiled graph
        net = torch.compile(net)
    return model, net, gen, cov


@torch.no_grad()
def _check_trainable(model: nn.Module, data, device, measure: Measure) -> None:
    """One line before training for a model that cannot train on this data: nothing trainable, or
    fewer outputs than the data has classes (before: a traceback at the first parameter step, or
    at the batch holding a label past the outputs)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("the model has nothing to train: every parameter has requires_grad=False")
    x, y = next(iter(data.train.batches(2, device=device)))
    was = model.training
    try:
        out = first_forward(model.eval(), x)
        if not is_classification(measure) and measure.check is not None:
            measure.check(out, y)
        out = as_logits(out, y) if is_classification(measure) else output_tensor(out)
    finally:
        model.train(was)
    if out.shape[-1] < data.num_classes:
        each, what = ("example", "classes") if is_classification(measure) else ("token", "tokens")
        raise UserError(
            f"the model gives {out.shape[-1]} outputs per {each}, but the data has "
            f"{data.num_classes} {what}"
        )


def _on_device(data, device):
    """The train, test and validation splits; on the GPU when the data is resident (no
    host-to-device copy per batch)."""
    train_split, test_split, val_split = data.train, data.test, data.val
    if device.type == "cuda" and isinstance(train_split, data_mod.TensorSplit):
        train_split = data_mod.TensorSplit(train_split.x.to(device), train_split.y.to(device))
        test_split = data_mod.TensorSplit(test_split.x.to(device), test_split.y.to(device))
        if val_split is not None:
            val_split = data_mod.TensorSplit(val_split.x.to(device), val_split.y.to(device))
    return train_split, test_split, val_split


def optimizer_for(config, model, device) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``model``'s parameters (a tensor learning rate and
    ``capturable`` for a CUDA graph)."""
    params, lr = (
        model.parameters(),
        torch.tensor(config.lr, device=device) if config.cuda_graph else config.lr,
    )
    # one kernel for the whole Adam update (part 8)
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer == "adam":
        # capturable: lr and step count read on the GPU, as a CUDA graph needs
        return torch.optim.Adam(
            params, lr=lr, weight_decay=config.weight_decay, capturable=config.cuda_graph, **fused
        )
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _make_step(run: Run):
    step_fn = make_step(
        run.model,
        run.net,
        run.opt,
        run.config.loss,
        amp=run.config.amp,
        channels_last=run.config.channels_last,
        device=run.device,
        graphed=run.config.cuda_graph,
        measure=run.measure,
    )
    if run.config.cuda_graph:
        step_fn = GraphedStep(step_fn, run.model, run.opt, [run.gen])
    return step_fn
