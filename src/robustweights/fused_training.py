"""K trainings of one architecture run as one fused network, each writing its own run folder.

    results = train_fused([sign_config, stoch_sign_config, float_config])  # one TrainResult each
    results = train_fused(seed_configs(config, 4))   # 4 seeds of one config: <out>/seed-<s>/

Each configuration is started as :func:`robustweights.training.train` starts it (its folder, its
checkpoint when resumed, its network with its own projection and seed, its optimizer), then the K
networks are fused (:func:`robustweights.fusion.fuse`) and trained together: one step computes
the K networks at once on the K batches (each network its own data order, augmentation and random
draws, from generators seeded from its own ``(seed, epoch)``), the loss is the sum of the K
losses, and one optimizer updates the fused tensors. After each epoch every network's weights and
optimizer state are handed back to its own run, which tests, validates, checkpoints and finishes
exactly as a plain run: every folder holds what ``train`` writes (``config.json``,
``metrics.jsonl``, ``checkpoint.pt``, ``best.pt``), and ``train`` or ``train_fused`` can resume it.
The numbers equal K separate trainings within float rounding (not bit for bit: a grouped
convolution sums in another order); each metrics row adds ``fused_networks`` (K), and its
``images_per_second`` is that network's (the K networks together trained K times as many).

What must agree between the configurations (:data:`SHARED`): the architecture, the input shape and
the schedule of steps (the optimizer and its settings, learning rates, epochs, batch size, device,
autocast). Projections, modes, clip bounds, seeds, initialisation, selection, augmentation and
evaluation settings may differ. Not under torchrun, nor with ``compile``; rows resumed at different
epochs are trained one by one (a line says so).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import torch

from . import fusion
from .checkpoints import load_config_data
from .config import CLASSIFICATION_MEASURES, TrainConfig
from .distributed import process_group
from .draws import derive_seed
from .epochs import Run, end_epoch, run_epoch
from .errors import Diverged, UserError
from .evaluation import as_logits, loss_fn
from .locks import one_writer
from .progress import bar as progress_bar
from .run_start import optimizer_for, start_run
from .steps import EXCLUSIVE, GraphedStep, lr_at, set_lr
from .training import TrainResult, end_run, train

__all__ = ["train_fused", "seed_configs", "make_fused_step", "check_fusable", "SHARED"]

# what the fused configurations must share: the network's shape and the schedule of its steps
SHARED = (
    "model",
    "width",
    "dataset",
    "window",
    "image_size",
    "loss",
    "optimizer",
    "lr",
    "lr_end",
    "momentum",
    "weight_decay",
    "schedule",
    "epochs",
    "batch_size",
    "device",
    "amp",
    "channels_last",
    "compile",
    "cuda_graph",
)


def seed_configs(config: TrainConfig, k: int) -> list[TrainConfig]:
    """``k`` copies of ``config`` with seeds ``seed, seed+1, ...``, each run folder
    ``<out>/seed-<s>`` (no folders without ``out``)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"fused seeds must be an integer >= 1, not {k!r}")
    return [
        dataclasses.replace(
            config,
            seed=config.seed + i,
            out=None if config.out is None else str(Path(config.out) / f"seed-{config.seed + i}"),
        )
        for i in range(k)
    ]


def check_fusable(configs: list[TrainConfig]) -> None:
    """One line for configurations that cannot train as one fused network (see the module
    docstring)."""
    if not configs:
        raise UserError("configs= is empty: give one or more training configurations")
    first = configs[0]
    for i, c in enumerate(configs[1:], 1):
        bad = [f for f in SHARED if getattr(c, f) != getattr(first, f)]
        if bad:
            raise UserError(
                f"fused training: configuration {i} has {bad[0]}={getattr(c, bad[0])!r}, "
                f"configuration 0 {getattr(first, bad[0])!r}; fused networks share "
                f"{', '.join(SHARED)}"
            )
    outs = [c.out for c in configs if c.out is not None]
    if len({str(Path(o).resolve()) for o in outs}) != len(outs):
        raise UserError("fused training: two configurations name the same out= folder")
    if len(configs) > 1 and first.compile:
        raise UserError("fused training does not take compile=True; drop it")
    measures = [c.measure for c in configs if c.measure not in ("auto", *CLASSIFICATION_MEASURES)]
    if len(configs) > 1 and (measures or first.dataset == "text"):
        raise UserError("fused training trains classifiers only (measure error, top5_error, loss)")


def train_fused(
    configs: list[TrainConfig],
    *,
    resume: "bool | list[bool]" = False,
    progress: bool = True,
    callback: Callable[[int, int, dict], None] | None = None,
    data=None,
) -> list[TrainResult]:
    """Train ``configs`` as one fused network; one :class:`~robustweights.training.TrainResult`
    each, in order (see the module docstring). ``resume``: one flag for all, or one per
    configuration. ``callback(i, epoch, metrics)`` runs after configuration ``i``'s epoch is
    saved. ``data``: the dataset already loaded, for every configuration. One configuration is a
    plain :func:`~robustweights.training.train`."""
    configs = [c.validate() for c in configs]
    check_fusable(configs)
    resumes = list(resume) if isinstance(resume, (list, tuple)) else [resume] * len(configs)
    if len(resumes) != len(configs):
        raise UserError(f"resume= has {len(resumes)} flags for {len(configs)} configurations")
    if len(configs) == 1:
        each = callback and (lambda epoch, row: callback(0, epoch, row))
        return [train(configs[0], resume=resumes[0], progress=progress, callback=each, data=data)]
    with process_group(configs[0].device) as (rank, world, device):
        if world > 1:
            raise UserError("fused training runs in one process: not under torchrun")
        with ExitStack() as stack:
            for c in configs:
                if c.out is not None:
                    stack.enter_context(one_writer(c.out, "robustweights train"))
            return _train_fused(configs, resumes, progress, callback, data, device)


def _data_key(c: TrainConfig) -> tuple:
    """What the data a configuration loads depends on (the seed only through subsets and image
    folders' statistics)."""
    seeded = c.train_subset is not None or c.test_subset is not None or c.dataset == "imagefolder"
    return (
        c.dataset,
        c.data_dir,
        c.preprocess,
        c.train_subset,
        c.test_subset,
        c.image_size,
        c.val_size,
        c.window,
        c.seed if seeded else None,
    )


def _train_fused(configs, resumes, progress, callback, data, device) -> list[TrainResult]:
    """Start every run, train them fused (or one by one when resumed at different epochs), end
    them."""
    loaded = {}
    runs = []
    for i, c in enumerate(configs):
        if data is None and _data_key(c) not in loaded:
            loaded[_data_key(c)] = load_config_data(c)
        each = callback and (lambda epoch, row, i=i: callback(i, epoch, row))
        given = data if data is not None else loaded[_data_key(c)]
        run, _ = start_run(c, resumes[i], progress, each, None, given, 0, 1, device)
        runs.append(run)
    t0 = time.perf_counter()
    starts = sorted({r.start for r in runs})
    if len(starts) > 1:
        if progress:
            print(
                f"fused training: the runs were resumed at different epochs ({starts}); "
                f"training them one by one",
                flush=True,
            )
        for r in runs:
            for epoch in range(r.start, r.config.epochs):
                run_epoch(r, epoch)
        return [end_run(r, t0) for r in runs]
    _check_same_steps(runs)
    if runs[0].start < configs[0].epochs:
        _train_epochs(runs, device)
    return [end_run(r, t0) for r in runs]


def _check_same_steps(runs: list[Run]) -> None:
    """The K runs take as many steps of as many examples (the same training-split size) and give
    outputs of one shape."""
    sizes = [len(r.train_split) for r in runs]
    shapes = [(r.data.num_classes, tuple(r.data.in_shape)) for r in runs]
    if len(set(sizes)) > 1 or len(set(shapes)) > 1:
        raise UserError(
            f"fused training: the runs' data differ in size or shape (training examples {sizes}, "
            f"classes and input shapes {shapes}); fused networks step through data of one size"
        )


def _train_epochs(runs: list[Run], device) -> None:
    """The fused network of the runs' models, trained epoch by epoch; each epoch handed back to
    every run, which tests and saves it (:func:`robustweights.epochs.end_epoch`)."""
    first = runs[0]
    config, K = first.config, len(runs)
    fused = fusion.fuse([r.model for r in runs])
    if config.channels_last:
        fused.to(memory_format=torch.channels_last)
    opt = optimizer_for(config, fused, device)
    merged = fusion.merged_optimizer_state(
        fused, [r.opt.state_dict() for r in runs], opt.state_dict()
    )
    if merged is not None:
        opt.load_state_dict(merged)
    step = make_fused_step(
        fused,
        opt,
        config.loss,
        amp=config.amp,
        channels_last=config.channels_last,
        device=device,
        graphed=config.cuda_graph,
    )
    if config.cuda_graph:
        step = GraphedStep(step, fused, opt, [r.gen for r in runs])
    try:
        for epoch in range(first.start, config.epochs):
            figures = _fused_epoch(runs, fused, step, opt, epoch)
            state = opt.state_dict()
            for k, r in enumerate(runs):
                r.model.load_state_dict(fusion.network_state(fused, k))
                r.opt.load_state_dict(fusion.split_optimizer_state(fused, state, k))
                end_epoch(r, epoch, *figures[k], extra={"fused_networks": K})
    finally:
        with EXCLUSIVE:  # a CUDA graph is freed while no other training captures one
            step = None


def make_fused_step(
    fused, opt, loss: str, *, amp: bool, channels_last: bool, device, graphed: bool = False
) -> Callable:
    """``step(x, y, check=False) -> (losses, wrong)`` of a fused classifier: ``x`` the K batches
    concatenated on dimension 1, ``y`` their labels ``(B, K)``; the K losses (each the mean of its
    batch, in float32) summed for the backward pass, one optimizer step, each network's clip.
    Returns the K losses and the K counts of wrong predictions (tensors, no host sync); ``graphed``
    as :func:`robustweights.steps.make_step` (a :class:`~robustweights.steps.GraphedStep` can wrap
    it)."""
    K = fusion.networks(fused)
    autocast = dict(
        device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"
    )
    if graphed:
        autocast["cache_enabled"] = False  # casts cached across a capture would outlive it

    def step(x, y, check: bool = False):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**autocast):
            logits = fusion.split_logits(fused(x), K)  # (B, K, classes)
        values = torch.stack(
            [
                loss_fn(loss, as_logits(logits[:, k], y[:, k], check_labels=check).float(), y[:, k])
                for k in range(K)
            ]
        )
        opt.zero_grad(set_to_none=True)
        values.sum().backward()
        opt.step()
        fusion.clip_(fused)
        return values.detach(), (logits.detach().argmax(2) != y).sum(0)

    return step


def _fused_epoch(runs: list[Run], fused, step_fn, opt, epoch: int) -> list[tuple]:
    """One fused epoch: each run's summed training loss, wrong predictions, examples and the
    epoch's seconds (what :func:`robustweights.epochs.end_epoch` takes)."""
    first, K = runs[0], len(runs)
    config, device = first.config, first.device
    for r in runs:
        r.gen.manual_seed(derive_seed(r.config.seed, epoch, "projection"))
    orders = [
        r.train_split.batches(
            r.local_batch,
            shuffle=True,
            generator=torch.Generator().manual_seed(derive_seed(r.config.seed, epoch, "data")),
            augment=r.config.augment,
            device=device,
            shard=(0, 1),
        )
        for r in runs
    ]
    fused.train()
    t_epoch = time.perf_counter()
    loss_sum = torch.zeros(K, device=device, dtype=torch.float64)
    wrong = torch.zeros(K, device=device, dtype=torch.int64)
    seen = 0
    bar = progress_bar(
        total=len(first.train_split),
        desc=f"epoch {epoch + 1}/{config.epochs} ({K} networks fused)",
        unit="img",
        enabled=first.progress,
        leave=False,
    )
    for step, batches in enumerate(zip(*orders)):
        n = len(batches[0][1])
        if n < 2 and first.needs_two:  # the epoch's last batch, of one example, is left
            continue
        set_lr(opt, lr_at(config, epoch, step, first.steps))
        x = torch.cat([b[0] for b in batches], 1)
        y = torch.stack([b[1] for b in batches], 1)
        loss, wrong_now = step_fn(x, y, check=step == 0 and epoch == first.start)
        loss_sum += loss.double() * n
        wrong += wrong_now
        seen += n
        bar.update(n)
        if step % first.check_every == 0 or step == first.steps - 1:
            _check_finite(runs, bar, loss_sum, epoch, step)
    bar.close()
    seconds = time.perf_counter() - t_epoch
    return [(loss_sum[k], wrong[k], seen, seconds) for k in range(K)]


def _check_finite(runs: list[Run], bar, loss_sum, epoch: int, step: int) -> None:
    """:class:`Diverged` naming the runs whose training loss is not finite (the last good
    checkpoints are kept)."""
    finite = torch.isfinite(loss_sum).tolist()
    if all(finite):
        return
    bar.close()
    bad = [r.config.out or f"network {k}" for k, (r, ok) in enumerate(zip(runs, finite)) if not ok]
    raise Diverged(
        f"training loss of {', '.join(bad)} became non-finite in epoch {epoch + 1} (step {step}) "
        f"of a fused training; try a lower learning rate (lr=), or train it alone"
    )
