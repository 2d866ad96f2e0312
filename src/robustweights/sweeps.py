"""Robustness sweeps in memory: test error of a network under test-time weight distortions.

    import robustweights as rw
    model, config = rw.load("runs/sign")
    data = rw.checkpoints.load_config_data(config)
    rows = rw.sweep(model, data, ["add-gauss:sigma=0,0.5,1", "power:beta=0:1:0.25"], trials=5)

Distortions are grids (:mod:`robustweights.grid`: ``add-gauss:sigma=0,0.25,0.5``,
``power:beta=0:1:0.1``, ``quant:bits=1..8``) of cells, each with its own seed,
so any cell can be rerun alone and gives the same number, and a killed sweep
restarted on the same folder computes only the missing cells (:func:`run_sweep`;
its files, resume and provenance live in :mod:`robustweights.sweep_runs`, the
model and data a sweep config names in :mod:`robustweights.sweep_models`).
``on`` says which weights are distorted: ``auto`` (the default) those the
network runs with (a sign network's binary weights, a stoch-sign or float
network's hidden ones), ``hidden`` or ``projected``; every sweep says which.

Distorting never writes the hidden weights and never copies the model: the
distorted tensors are pinned beside the weights for the cell
(:func:`robustweights.projected.distort`) and dropped afterwards, and when
batch-norm statistics are re-estimated for a cell, the saved statistics are
put back exactly, also after an error or Ctrl-C in the middle of a cell.
"""

from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn

from . import data as data_mod
from . import projected
from . import sweep_fusion, sweep_runs
from .config import SweepConfig
from .distributed import process_group
from .errors import UserError
from .evaluation import (
    UNREACHED,
    UNREAD,
    calibrate_bn,
    check_covered,
    reestimated_bn,
    restore_modes,
    sweep_coverage,
    train_modes,
    weights_label,
)
from .grid import cells
from .locks import one_writer
from .measures import Measure, measure_split
from .progress import Lines
from .progress import bar as progress_bar
from .results import COLUMNS, complete_row
from .sweep_models import load_state_dict_file, measure_named, prepare
from .sweep_fusion import score
from .sweep_runs import data_fingerprint, save_sweep
from .draws import derive_seed

__all__ = [
    "SweepConfig",
    "SweepRows",
    "sweep",
    "run_sweep",
    "to_frame",
    "default_scale",
    "prepare",
    "save_sweep",
    "data_fingerprint",
    "sweep_coverage",
]

_load_state_dict = load_state_dict_file  # its older name


def default_scale(model: nn.Module) -> str:
    """The ``scale`` distortions take unless their spec names one.

    ``clip`` (the training clip bound ``H``) for a network trained with a
    projection, ``max`` (docs/method.md's default) otherwise. Measured reason: every
    model here ends its layers with batch norm, whose stored statistics belong
    to the weight magnitudes seen in training. A sign-trained network's hidden
    weights rarely reach ``H``, so ``sign`` at ``scale=max`` gives weights
    ``+-max|W|`` it never ran with, while ``scale=clip`` gives back exactly the
    binary network it was trained as. The sign-trained demo CNN (``robustweights
    demo``) gives 90.0% test error under ``sign:scale=max`` and its own 11.0%
    under ``sign:scale=clip``.
    """
    trained = any(not s.plain for s in projected.sites(model))
    return "clip" if trained else "max"


# ---------------------------------------------------------------------------
# The sweep itself
# ---------------------------------------------------------------------------


class SweepRows(list):
    """The rows of :func:`sweep` (a list of dicts), with what the sweep measured beside them:
    ``coverage`` (which weights it distorted and left out, and why), ``on`` and
    ``distorted_weights`` (``hidden``, ``projected`` or ``hidden/projected``).
    :func:`save_sweep` records them."""

    def __init__(self, rows=(), *, coverage=None, on=None, distorted_weights=None, measure=None):
        super().__init__(rows)
        self.coverage, self.on, self.distorted_weights = coverage, on, distorted_weights
        self.measure = measure  # the measure's record (Measure.to_dict); None for evaluate=


def to_frame(rows: list[dict]):
    """The rows of :func:`sweep` as a pandas ``DataFrame`` (pandas is not a dependency of the
    package); its ``attrs`` keep the coverage the rows carry, for :func:`save_sweep`."""
    try:
        import pandas as pd
    except ImportError:
        raise UserError(
            "to_frame needs pandas (pip install pandas); the rows themselves are plain dicts"
        ) from None
    frame = pd.DataFrame([complete_row(r) for r in rows], columns=COLUMNS)
    for key in ("coverage", "on", "distorted_weights", "measure"):
        if getattr(rows, key, None) is not None:
            frame.attrs[key] = getattr(rows, key)
    return frame


def sweep(
    model: nn.Module,
    data,
    distortions: list[str],
    measure: "Measure | str | None" = None,
    *,
    trials: int = 5,
    seed: int = 0,
    on: str = "auto",
    evaluate: Callable[[nn.Module], dict] | None = None,
    metric: str | None = None,
    keep: tuple[str, ...] = (),
    include=("*",),
    exclude=(),
    types=(),
    exclude_types=(),
    bn_batches: int = 0,
    batch_size: int = 1000,
    split: str = "test",
    loss: str = "ce",
    progress: bool = False,
    fuse_trials: "int | str" = 1,
) -> SweepRows:
    """``measure`` of ``model`` under every cell of ``distortions``: a list of rows, one per cell
    (:data:`COLUMNS`; :func:`to_frame` makes a pandas frame of them), which carries the sweep's
    coverage and measure (:class:`SweepRows`, recorded by :func:`save_sweep`).

    ``data`` is a :class:`robustweights.data.Data` (its ``split`` is tested, its
    training split serves batch-norm re-estimation), a ``Split``, or any
    ``DataLoader`` of ``(inputs, targets)`` batches.
    ``measure`` (:func:`robustweights.measures.get_measure`: ``error``, the
    default, with the classification ``loss``; ``top5_error``, ``loss``,
    ``perplexity``, ``mse``, ``package.module:function`` or a ``Measure``)
    scores each cell: a row's ``score`` is its value, ``metric`` its name, and
    its ``error``/``loss`` columns are the result's ``error``/``loss`` where it
    has them. ``evaluate(model) -> dict`` is a measure of your own instead
    (``data`` may then be None): ``score`` is ``result[metric]`` (``metric``
    default ``"error"``; without ``evaluate``, ``metric`` names a built-in measure).
    ``on`` (:data:`robustweights.projected.WEIGHTS`) distorts the weights the
    network runs with (``auto``, the default: a sign network's binary weights,
    a stoch-sign or float network's hidden ones, as evaluation uses them),
    the ``hidden`` weights, or the ``projected`` ones (the weights evaluation
    uses, as ``auto``). Which parameters are distorted: those a training
    projection was attached to, or for a user's plain model every weight tensor
    (floating point, 2 or more dimensions), narrowed by
    ``include``/``exclude``/``types``/``exclude_types``
    (:func:`robustweights.projected.select`); ``keep`` leaves some undistorted
    (``first``, ``last``, names or patterns). A parameter whose value never
    reaches the output is left out and said so. A plain model is given back
    as it came (its classes, and its training mode);
    ``bn_batches > 0`` re-estimates batch-norm statistics on that many training
    batches after distorting. ``fuse_trials`` (:mod:`robustweights.sweep_fusion`) measures
    that many trials of a strength as one fused network (1, the default: one at a time;
    ``auto``: up to 8 on CUDA, none on a CPU): each trial drawn as alone, the same counts.
    """
    return _sweep(
        model,
        data,
        distortions,
        measure=measure,
        trials=trials,
        seed=seed,
        on=on,
        evaluate=evaluate,
        metric=metric,
        keep=keep,
        selection=dict(include=include, exclude=exclude, types=types, exclude_types=exclude_types),
        bn_batches=bn_batches,
        batch_size=batch_size,
        split=split,
        loss=loss,
        progress=progress,
        fuse_trials=fuse_trials,
    )


def _sweep(
    model,
    data,
    distortions,
    *,
    trials,
    seed,
    on,
    measure=None,
    evaluate=None,
    metric=None,
    keep=(),
    selection=None,
    bn_batches=0,
    batch_size=1000,
    split="test",
    loss="ce",
    progress=False,
    done: dict | None = None,
    on_row: Callable[[dict], None] | None = None,
    only: set | None = None,
    covered: tuple[dict, dict] | None = None,
    fuse_trials=1,
) -> SweepRows:
    """:func:`sweep` with the plumbing of :func:`run_sweep`: ``done`` maps cell keys ``(spec,
    trial)`` to rows already computed (reused, not recomputed); ``on_row`` is called with each new
    row; ``only``, if given, is the set of cell keys to compute (a distributed sweep gives each rank
    its share); ``covered`` is :func:`sweep_coverage`'s answer when the caller has it already."""
    test, train = _checked(data, split, evaluate, on, bn_batches)
    fuse_trials = sweep_fusion.fuse_setting(fuse_trials)
    m = _measure_of(measure, evaluate, metric, loss)
    todo = cells(distortions, trials, default_scale(model))
    selection = dict(selection or {})
    modes, ours = train_modes(model), not projected.sites(model)
    if ours:  # a user's plain model: test it as it is, and give it back as it came
        projected.attach(model, "identity", mode="none", clip=None, **selection)
        selection = {}
    try:
        device = next(model.parameters()).device
        model.eval()
        metric = m.name if m is not None else metric or "error"
        plan = _Plan(model, on, seed, device, train, bn_batches, batch_size, metric)
        plan.measure = evaluate or (
            lambda net: measure_split(net, test, m, batch_size=batch_size, device=device)
        )
        untouched, cov = covered or _coverage(plan, test, keep, selection, evaluate)
        _announce(untouched, cov, progress)
        plan.aim(untouched)
        plan.fuser = sweep_fusion.Fuser(
            plan, fuse_trials, trials, test, m, evaluate, bn_batches, progress
        )
        rows = SweepRows(
            coverage=cov,
            on=on,
            distorted_weights=cov.get("distorted_weights"),
            measure=m.to_dict() if m is not None else None,
        )
        _run_cells(plan, todo, rows, dict(done or {}), only, on_row, progress)
    finally:
        if ours:
            projected.detach(model)
        restore_modes(modes)
    return rows


def _measure_of(measure, evaluate, metric, loss: str) -> Measure | None:
    """The measure a sweep scores with: ``measure``, else ``metric`` or ``error`` (with the
    classification ``loss``); None for a user's ``evaluate`` (scored by ``metric``)."""
    if evaluate is not None:
        if measure is not None:
            raise UserError("give measure= or evaluate= (a measure of your own), not both")
        return None
    spec = measure if measure is not None else metric or "error"
    m = measure_named(spec, loss)
    if metric is not None and metric != m.name:
        raise UserError(
            f"metric={metric!r} names the key of evaluate='s result; measure {m.name!r} "
            "is scored by its own value (leave metric out)"
        )
    return m


def _checked(data, split, evaluate, on, bn_batches):
    """The split to test and the training split (for batch-norm re-estimation); a mistake in the
    sweep's arguments is one line."""
    if on not in projected.WEIGHTS:
        raise UserError(f"on must be one of {', '.join(projected.WEIGHTS)}, not {on!r}")
    test = data_mod.as_split(data, split) if data is not None else None
    train = data.train if isinstance(data, data_mod.Data) else None
    if test is None and evaluate is None:
        raise UserError("give data to test on, or an evaluate(model) -> dict function")
    if bn_batches and train is None:
        raise UserError(
            "batch-norm re-estimation needs the training split: pass a Data, not a Split"
        )
    return test, train


class _Plan:
    """What every cell of one sweep shares: the model, the distorted tensors and their bounds, how a
    cell is measured."""

    def __init__(self, model, on, seed, device, train, bn_batches, batch_size, metric):
        self.model, self.on, self.seed, self.device = model, on, seed, device
        self.train, self.bn_batches, self.batch_size = train, bn_batches, batch_size
        self.metric = metric
        self.distort_on = "hidden" if on == "hidden" else "projected"  # auto: as evaluation uses
        self.measure: Callable[[nn.Module], dict] | None = None
        self.fuser: sweep_fusion.Fuser | None = None  # how the cells are measured (trials fused)

    def aim(self, untouched: dict) -> None:
        """The tensors the distortions act on, and their clip bounds: the same for every cell
        (effective bits); weights holding NaN or inf are refused (every scale, and so every cell and
        bits figure, would be silently wrong)."""
        self.untouched = untouched
        self.hit = [x for x in projected.sites(self.model) if x.name not in untouched]
        self.bases = [
            x.hidden if self.distort_on == "hidden" else projected.effective_weight(x)
            for x in self.hit
        ]
        self.bounds = [x.test_bound for x in self.hit]
        bad = [x.name for x, b in zip(self.hit, self.bases) if not bool(torch.isfinite(b).all())]
        if bad:
            raise UserError(
                f"the weights hold NaN or inf values ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}): nothing to measure a distortion against"
            )


def _coverage(plan: _Plan, test, keep, selection, evaluate) -> tuple[dict, dict]:
    """:func:`sweep_coverage` of the sweep: its reach probe on a few examples of ``test``, or of
    the first inputs the user's ``evaluate`` gives the model."""
    forward = None if evaluate is None else lambda: score(plan.measure(plan.model), plan.metric)
    return sweep_coverage(
        plan.model,
        test,
        keep,
        plan.batch_size,
        plan.device,
        forward=forward,
        on=plan.on,
        **selection,
    )


def _announce(untouched: dict, cov: dict, progress: bool) -> None:
    """The coverage line (printed with ``progress``, else a warning where weights are left out that
    the distortions could not reach); one line and no sweep when nothing is distorted."""
    if progress:
        print(cov["summary"])
    check_covered(cov)
    missed = [n for n, why in untouched.items() if why in (UNREAD, UNREACHED)]
    if missed and not progress:
        warnings.warn(
            f"the sweep leaves weights out that its distortions could not reach: {cov['summary']}",
            stacklevel=4,
        )


def _run_cells(plan: _Plan, todo, rows: list, done: dict, only, on_row, progress) -> None:
    """Each cell of ``todo`` measured (or taken from ``done``) into ``rows``, in order. Progress:
    a bar on a terminal, else a line as each grid ends (a log holds no redraws)."""
    bar = progress_bar(todo, desc="sweep", unit="cell", enabled=progress)
    lines = progress and isinstance(bar, Lines)
    ahead: dict = {}  # rows measured with an earlier trial of their strength (fused)

    def wanted(k) -> bool:
        return k not in done and (only is None or k in only)

    for i, c in enumerate(bar):
        if c.key() in done:
            rows.append(done[c.key()])
        elif wanted(c.key()):
            if c.key() not in ahead:
                group = plan.fuser.group(todo, i, wanted)
                ahead.update(zip([g.key() for g in group], plan.fuser.rows(group, _cell_row)))
            row = ahead.pop(c.key())
            rows.append(row)
            bar.set_postfix(cell=c.t.spec, **{plan.metric: f"{row['score']:.4g}"})
            if on_row is not None:
                on_row(row)
        if lines and (i + 1 == len(todo) or _grid(todo[i + 1]) != _grid(c)):
            bar.line(f"sweep: {c.t.name} over {c.param} done")
    bar.close()


def _grid(c) -> tuple:
    """What the cells of one grid share: the transform, the swept parameter, the others' values."""
    fixed = {k: v for k, v in c.t.params.items() if k != c.param}
    return c.t.name, c.param, repr(sorted(fixed.items()))


def _cell_row(plan: _Plan, c) -> dict:
    """One cell: its distortion drawn from its own seed and pinned, the model measured, the row."""
    with sweep_fusion.drawn(plan, c) as d:
        with reestimated_bn(
            plan.model, plan.train, plan.bn_batches, plan.batch_size, plan.device, d.seed
        ):
            r = plan.measure(plan.model)
    return sweep_fusion.row(plan, c, d, r)


# ---------------------------------------------------------------------------
# A sweep with files: prepare, sweep, save (the files are sweep_runs')
# ---------------------------------------------------------------------------


def run_sweep(
    config: SweepConfig, progress: bool = True, data: data_mod.Data | None = None
) -> dict:
    """Sweep a checkpoint (or a user's model) into ``config.out``; resumes a killed sweep of the
    same config.

    Returns the provenance (``sweep.json``) with ``rows`` added. Under
    ``torchrun`` the missing cells are divided among the ranks (``gloo``
    suffices: only rows travel); each rank keeps its finished rows in
    ``results.rankN.jsonl`` (read back on resume, so ``--out`` must be a folder
    every rank sees) and rank 0 writes the merged table, the same as one
    process would. ``data`` may pass the dataset already loaded (see :func:`prepare`).
    """
    with process_group(config.device) as (rank, world, device):
        lock = one_writer(config.out, "robustweights sweep") if rank == 0 else nullcontext()
        with lock:  # one process writes a folder (torchrun's ranks: rank 0 holds it)
            return _run_sweep(config, progress and rank == 0, rank, world, device, data)


def _run_sweep(config: SweepConfig, progress: bool, rank: int, world: int, device, data=None):
    run = sweep_runs.open_run(config, rank, world, device, data)  # checked; nothing written yet
    todo = cells(config.distortions, config.trials, default_scale(run.model))
    base, weights = _baseline(run.model, run.data, run.measure, config)
    record = sweep_runs.start_record(
        run, base, len(todo), scale_default=default_scale(run.model), baseline_weights=weights
    )
    keeper = sweep_runs.RowKeeper(run, todo, progress)
    t0 = time.perf_counter()
    rows = _sweep(
        run.model,
        run.data,
        config.distortions,
        trials=config.trials,
        seed=config.seed,
        on=config.on,
        keep=tuple(config.keep),
        selection=sweep_runs.selection(config),
        bn_batches=config.bn_reestimate,
        batch_size=config.batch_size,
        split=config.split,
        measure=run.measure,
        done=run.done,
        on_row=keeper.add,
        progress=progress,
        only=keeper.mine,
        covered=run.covered,
        fuse_trials=config.fuse_trials,
    )
    return sweep_runs.finish(run, keeper, rows, record, time.perf_counter() - t0)


def _baseline(model, data, measure: Measure, config: SweepConfig) -> tuple[dict, str]:
    """The undistorted ``measure`` (and the weights it used), with the batch-norm statistics of the
    evaluation weights first when ``bn_calibrate`` asks: once, before every cell and the baseline
    (a stochastically trained network gathered them with its random draws, not its hidden
    weights)."""
    device = next(model.parameters()).device
    if config.bn_calibrate:
        seed = derive_seed(config.seed, "calibrate")
        calibrate_bn(model, data.train, config.bn_calibrate, config.batch_size, device, seed=seed)
    test = getattr(data, config.split)
    with projected.use_weights(model, "auto"):
        base = measure_split(model, test, measure, batch_size=config.batch_size, device=device)
        return base, weights_label(model)
