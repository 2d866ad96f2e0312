"""Robustness sweeps: test error of a trained network under test-time weight distortions.

    import robustweights as rw
    model, config = rw.load("runs/sign")
    data = rw.training.load_config_data(config)
    rows = rw.sweep(model, data, ["add-gauss:sigma=0,0.5,1", "power:beta=0:1:0.25"], trials=5, seed=0)

Distortions are grids (:mod:`robustweights.grid`: ``add-gauss:sigma=0,0.25,0.5``,
``power:beta=0:1:0.1``, ``quant:bits=1..8``) of cells, each with its own seed,
so any cell can be rerun alone and gives the same number, and a killed sweep
restarted on the same folder computes only the missing cells (:func:`run_sweep`).

Distorting never writes the hidden weights and never copies the model: the
distorted tensors are pinned beside the weights for the cell
(:func:`robustweights.projected.distort`) and dropped afterwards, and when
batch-norm statistics are re-estimated for a cell, the saved statistics are
put back exactly, also after an error or Ctrl-C in the middle of a cell.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import bits as bits_mod
from . import data as data_mod
from . import projected
from .distributed import agree, process_group, resolve_device
from .errors import UserError
from .evaluation import (
    UNREACHED,
    UNREAD,
    bn_layers,
    calibrate_bn,
    evaluate_split,
    reestimated_bn,
    restore_modes,
    sweep_coverage,
    train_modes,
    weights_label,
)
from .grid import cell_seed, cells
from .results import COLUMNS, better_when_higher, complete_row, lowest_bits, write_rows
from .runs import check_writable, git_commit, kept, now, safe_load, sha256, write_text
from .config import SweepConfig
from .training import check_loaded_data, derive_seed, load, load_config_data


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


def to_frame(rows: list[dict]):
    """The rows of :func:`sweep` as a pandas ``DataFrame`` (pandas is not a dependency of the package)."""
    try:
        import pandas as pd
    except ImportError:
        raise UserError(
            "to_frame needs pandas (pip install pandas); the rows themselves are plain dicts"
        ) from None
    return pd.DataFrame([complete_row(r) for r in rows], columns=COLUMNS)


def sweep(
    model: nn.Module,
    data,
    distortions: list[str],
    *,
    trials: int = 5,
    seed: int = 0,
    on: str = "hidden",
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
) -> list[dict]:
    """Test error (or your metric) of ``model`` under every cell of ``distortions``: a list of rows, one per
    cell (:data:`COLUMNS`; :func:`to_frame` makes a pandas frame of them).

    ``data`` is a :class:`robustweights.data.Data` (its ``split`` is tested, its
    training split serves batch-norm re-estimation), a ``Split``, or any
    ``DataLoader`` of ``(inputs, targets)`` batches of a classifier.
    ``evaluate(model) -> dict`` replaces the classification test with your own
    (``data`` may then be None): each row's ``score`` is ``result[metric]``
    (``metric`` default ``"error"``), and its ``error``/``loss`` columns are the
    dict's ``error``/``loss`` if it has them. So a language model can be swept
    for perplexity, a regressor for its MSE.
    ``on`` distorts the ``hidden`` or the ``projected`` weights. Which
    parameters are distorted: those a training projection was attached to, or
    for a user's plain model every weight tensor (floating point, 2 or more
    dimensions), narrowed by ``include``/``exclude``/``types``/``exclude_types``
    (:func:`robustweights.projected.select`); ``keep`` leaves some undistorted
    (``first``, ``last``, names or patterns). A parameter the forward pass never
    reads is left out and said so. A plain model is given back as it came
    (its classes, and its training mode);
    ``bn_batches > 0`` re-estimates batch-norm statistics on that many training
    batches after distorting.
    """
    return _sweep(
        model,
        data,
        distortions,
        trials=trials,
        seed=seed,
        on=on,
        evaluate=evaluate,
        metric=metric,
        keep=keep,
        include=include,
        exclude=exclude,
        types=types,
        exclude_types=exclude_types,
        bn_batches=bn_batches,
        batch_size=batch_size,
        split=split,
        loss=loss,
        progress=progress,
    )


def _sweep(
    model,
    data,
    distortions,
    *,
    trials,
    seed,
    on,
    evaluate=None,
    metric=None,
    keep=(),
    include=("*",),
    exclude=(),
    types=(),
    exclude_types=(),
    bn_batches=0,
    batch_size=1000,
    split="test",
    loss="ce",
    progress=False,
    done: dict | None = None,
    on_row: Callable[[dict], None] | None = None,
    only: set | None = None,
    covered: tuple[dict, dict] | None = None,
) -> list[dict]:
    """:func:`sweep` with the plumbing of :func:`run_sweep`: ``done`` maps cell keys ``(spec, trial)`` to
    rows already computed (reused, not recomputed); ``on_row`` is called with each new row; ``only``, if
    given, is the set of cell keys to compute (a distributed sweep gives each rank its share); ``covered``
    is :func:`sweep_coverage`'s answer when the caller has it already."""
    from tqdm.auto import tqdm

    if on not in ("hidden", "projected"):
        raise UserError(f"on must be 'hidden' or 'projected', not {on!r}")
    test = data_mod.as_split(data, split) if data is not None else None
    train = data.train if isinstance(data, data_mod.Data) else None
    if test is None and evaluate is None:
        raise UserError("give data to test on, or an evaluate(model) -> dict function")
    metric = metric or "error"
    if bn_batches and train is None:
        raise UserError(
            "batch-norm re-estimation needs the training split: pass a Data, not a Split"
        )
    todo = cells(distortions, trials, default_scale(model))
    modes, ours = train_modes(model), not projected.sites(model)
    if ours:  # a user's plain model: test it as it is, and give it back as it came
        projected.attach(
            model,
            "identity",
            mode="none",
            clip=None,
            include=include,
            exclude=exclude,
            types=types,
            exclude_types=exclude_types,
        )
        include, exclude, types, exclude_types = ("*",), (), (), ()
    try:
        device = next(model.parameters()).device
        model.eval()
        measure = evaluate or (
            lambda m: evaluate_split(m, test, loss=loss, batch_size=batch_size, device=device)
        )
        untouched, cov = covered or sweep_coverage(
            model,
            test,
            keep,
            batch_size,
            device,
            include=include,
            exclude=exclude,
            types=types,
            exclude_types=exclude_types,
            forward=None if evaluate is None else lambda: _score(measure(model), metric),
        )
        if progress:
            print(cov["summary"])
        _check_covered(cov)
        missed = [n for n, why in untouched.items() if why in (UNREAD, UNREACHED)]
        if missed and not progress:
            warnings.warn(
                f"the sweep leaves weights out that its distortions could not reach: {cov['summary']}",
                stacklevel=3,
            )
        done = dict(done or {})
        # The tensors the distortions act on, and their clip bounds: the same for every cell (effective bits)
        hit = [x for x in projected.sites(model) if x.name not in untouched]
        bases = [x.hidden if on == "hidden" else projected.effective_weight(x) for x in hit]
        bounds = [x.test_bound for x in hit]
        bad = [x.name for x, b in zip(hit, bases) if not bool(torch.isfinite(b).all())]
        if (
            bad
        ):  # every scale (max|W|, std) and so every cell and bits figure would be silently wrong
            raise UserError(
                f"the weights hold NaN or inf values ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}): nothing to measure a distortion against"
            )
        rows = []
        bar = tqdm(todo, desc="sweep", unit="cell", disable=not progress, dynamic_ncols=True)
        for c in bar:
            if c.key() in done:
                rows.append(done[c.key()])
                continue
            if only is not None and c.key() not in only:
                continue
            s = cell_seed(seed, c)
            g = torch.Generator(device=device).manual_seed(s)
            measured = bits_mod.measured_bits(c.t, bases, bounds)
            with projected.distort(model, c.t, g, on=on, exclude=untouched):
                entropy = None
                if bits_mod.is_discrete(c.t):
                    entropy = bits_mod.weighted_entropy([x.pinned for x in hit])
                with reestimated_bn(model, train, bn_batches, batch_size, device, seed=s):
                    r = measure(model)
            row = {
                "distortion": c.t.name,
                "param": c.param,
                "value": c.value,
                "trial": c.trial,
                "seed": s,
                "error": r.get("error"),
                "loss": r.get("loss"),
                "effective_bits": measured,
                "n_examples": r.get("n"),
                "entropy_bits": entropy,
                "spec": c.t.spec,
                "on": on,
                "metric": metric,
                "score": _score(r, metric),
                "nominal_bits": bits_mod.capacity_bits(c.t),
                "scale": c.t.params.get("scale"),
            }
            rows.append(row)
            bar.set_postfix(cell=c.t.spec, **{metric: f"{row['score']:.4g}"})
            if on_row is not None:
                on_row(row)
        bar.close()
    finally:
        if ours:
            projected.detach(model)
        restore_modes(modes)
    return rows


def _check_covered(cov: dict) -> None:
    """One line when a sweep has no weight to distort: every cell would show the clean network, 'perfectly
    robust', and untrue."""
    if not cov["covered"]:
        raise UserError(f"nothing to distort: {cov['summary']}")


def _score(result, metric: str) -> float:
    if not isinstance(result, dict) or metric not in result:
        have = ", ".join(map(str, result)) if isinstance(result, dict) else type(result).__name__
        raise UserError(
            f"the evaluation gave no {metric!r} (it gave: {have}); pass metric= one of its keys"
        )
    return float(result[metric])


# ---------------------------------------------------------------------------
# Sweeps with files: provenance, resume, summary (what `robustweights sweep` runs)
# ---------------------------------------------------------------------------


def _load_state_dict(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no state_dict file at {p}")
    sd = safe_load(p, "state_dict")
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()
    ):
        raise UserError(f"{p} does not hold a state_dict (a dict of tensors)")
    return sd


def prepare(config: SweepConfig, data: data_mod.Data | None = None):
    """The model, data, loss, description and label a sweep config names.

    ``data`` may pass the dataset already loaded (as the checkpoint's training
    configuration would load it: with the sweep's ``test_subset``, else the run's own).
    """
    from . import models
    from .models import create_model
    from .training import TrainConfig

    device = resolve_device(config.device)
    if config.checkpoint:
        ignored = [
            flag
            for flag, given in (
                ("--state-dict", config.state_dict),
                ("--dataset", config.dataset),
                ("--preprocess", config.preprocess != "standardize"),
            )
            if given
        ]
        if ignored:  # a checkpoint names its own weights, data and preprocessing
            raise UserError(
                f"{', '.join(ignored)} {'go' if len(ignored) > 1 else 'goes'} with --model-factory and no "
                f"checkpoint; a checkpoint is tested "
                f"on the data and preprocessing it trained with (--data-dir: where that data is)"
            )
        model, tc = load(config.checkpoint, model_factory=config.model_factory, device=str(device))
        if (
            config.test_subset is not None
        ):  # else the run's own test examples, as `evaluate` tests it
            tc = dataclasses.replace(tc, test_subset=config.test_subset)
        data = data or load_config_data(tc, config.data_dir)
        check_loaded_data(model, data)
        kind = "float" if tc.projection == "identity" and tc.mode != "none" else tc.mode
        label = "clip only (none)" if tc.mode == "none" else f"{tc.projection} ({kind})"
        info = {
            "checkpoint": str(config.checkpoint),
            "checkpoint_sha256": sha256(_ckpt_path(config.checkpoint)),
            "model": tc.model,
            "width": tc.width,
            "train_projection": tc.projection,
            "train_mode": tc.mode,
            "dataset": tc.dataset,
        }
        return model, data, tc.loss, label, info
    if not (config.model_factory and config.state_dict and config.dataset):
        raise UserError("give a checkpoint, or --model-factory with --state-dict and --dataset")
    tc = TrainConfig(
        dataset=config.dataset,
        data_dir=config.data_dir,
        preprocess=config.preprocess,
        test_subset=config.test_subset,
    )
    data = load_config_data(tc)
    model = create_model(config.model_factory, num_classes=data.num_classes, in_shape=data.in_shape)
    models.load_weights(
        model,
        _load_state_dict(config.state_dict),
        f"{config.state_dict} (for the model from {config.model_factory})",
    )
    projected.attach(
        model,
        "identity",
        mode="none",
        clip=None,
        include=config.include or ("*",),
        exclude=config.exclude,
        types=config.types,
        exclude_types=config.exclude_types,
    )
    info = {
        "checkpoint": str(config.state_dict),
        "checkpoint_sha256": sha256(Path(config.state_dict)),
        "model": config.model_factory,
        "width": None,
        "train_projection": "unknown",
        "train_mode": "unknown",
        "dataset": config.dataset,
    }
    return model.to(device).eval(), data, "ce", f"{config.model_factory} (own model)", info


def _selection(config: SweepConfig) -> dict:
    return {
        "include": config.include or ("*",),
        "exclude": config.exclude,
        "types": config.types,
        "exclude_types": config.exclude_types,
    }


def _ckpt_path(p: str) -> Path:
    p = Path(p)
    return kept(p) if p.is_dir() else p


def save_sweep(
    out: "str | Path",
    rows: list[dict],
    *,
    label: str,
    baseline: float,
    description: str,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    split: str = "test",
    coverage: dict | None = None,
    target: float | None = None,
    **info,
) -> dict:
    """Write the rows of :func:`sweep` as a result folder that :func:`robustweights.report` reads.

    ``baseline`` is the undistorted score (of the rows' metric unless
    ``metric`` names it); ``description`` names the data (and
    its caveats); ``info`` adds fields to ``sweep.json`` (``model``, ``on``...).
    ``target`` (default: baseline plus/minus 1% of it, 1 point for the error)
    sets the lowest-effective-bits summary. Returns the provenance written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out {out} exists and is not a folder")
    check_writable(out)
    rows = [
        complete_row(r) for r in (rows.to_dict("records") if hasattr(rows, "to_dict") else rows)
    ]
    if not rows:
        raise UserError("no rows to save")
    metric = metric or rows[0]["metric"]
    up = better_when_higher(metric) if higher_is_better is None else bool(higher_is_better)
    if target is None:
        step = 0.01 if metric == "error" else 0.01 * abs(baseline)
        target = baseline - step if up else baseline + step
    stamp = now()
    prov = {
        "label": label,
        "data_description": description,
        "split": split,
        "metric": metric,
        "higher_is_better": up,
        "baseline_score": baseline,
        "baseline_error": baseline if metric == "error" else None,
        "coverage": coverage,
        "trials": max(r["trial"] for r in rows) + 1,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "start": stamp,
        "end": stamp,
        "target_error": target,
        "target": target,
        "lowest_bits": lowest_bits(rows, target, up),
        **info,
    }
    write_rows(out, rows)
    write_text(out / "sweep.json", json.dumps(prov, indent=2) + "\n")
    return prov


def data_fingerprint(data: data_mod.Data, split: str) -> str:
    """The split a sweep tests on, in a few words a resumed sweep must match: its size, classes and the mean
    and spread of its first inputs to 3 digits (so the same data on another machine's arithmetic still
    matches, while other images at the same place do not)."""
    x, _ = next(iter(getattr(data, split).batches(8)))
    x = x.detach().double().cpu()
    return (
        f"{len(getattr(data, split))} examples, {len(data.classes)} classes, first inputs mean "
        f"{float(x.mean()):.3g} std {float(x.std()):.3g}"
    )


def _comparable(cfg: dict) -> dict:
    """The settings a resumed sweep must share with the one it continues. The batch size is one of them when
    batch-norm statistics are re-estimated or calibrated: it sets their batches (a resume at another batch size
    mixed rows of two sweeps under one sweep.json)."""
    bn = bool(cfg.get("bn_reestimate") or cfg.get("bn_calibrate"))
    return {
        k: v for k, v in cfg.items() if k not in SweepConfig.RESUMABLE or (k == "batch_size" and bn)
    }


def run_sweep(
    config: SweepConfig, progress: bool = True, data: data_mod.Data | None = None
) -> dict:
    """Sweep a checkpoint (or a user's model) into ``config.out``; resumes a killed sweep of the same config.

    Returns the provenance (``sweep.json``) with ``rows`` added. Under
    ``torchrun`` the missing cells are divided among the ranks (``gloo``
    suffices: only rows travel); each rank keeps its finished rows in
    ``results.rankN.jsonl`` (read back on resume, so ``--out`` must be a folder
    every rank sees) and rank 0 writes the merged table, the same as one
    process would. ``data`` may pass the dataset already loaded (see :func:`prepare`).
    """

    with process_group(config.device) as (rank, world, device):
        return _run_sweep(config, progress and rank == 0, rank, world, device, data)


def _partial_rows(out: Path) -> list[dict]:
    """Rows that ranks of an interrupted distributed sweep finished (``results.rankN.jsonl``)."""
    rows = []
    for f in sorted(out.glob("results.rank*.jsonl")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by the kill: recompute that cell
    return rows


def _previous_sweep(out: Path) -> dict | None:
    """The ``sweep.json`` of a sweep already in ``out`` (None for a new or empty folder)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    check_writable(out)
    if not out.exists():
        return None
    if (out / "sweep.json").exists():
        try:
            previous = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{out}/sweep.json is unreadable; choose another --out") from None
        if not (isinstance(previous, dict) and isinstance(previous.get("config", {}), dict)):
            raise UserError(f"{out}/sweep.json is not a sweep's record; choose another --out")
        return previous
    if any(out.iterdir()):
        raise UserError(f"{out} exists and is not a sweep result folder; choose another --out")
    return None


def _done_cells(out: Path, previous: dict | None, info: dict, cfg: dict) -> dict:
    """Rows already computed for this sweep, by ``(spec, trial)``; refuses a folder of another sweep."""
    if previous is None:
        return {}
    if previous.get("checkpoint_sha256") != info["checkpoint_sha256"]:
        raise UserError(
            f"{out} holds a sweep of another checkpoint ({previous.get('checkpoint')}); "
            "choose another --out"
        )
    if previous.get("data_fingerprint") not in (
        None,
        info["data_fingerprint"],
    ):  # (another --data-dir)
        raise UserError(
            f"{out} holds cells measured on other data ({previous['data_fingerprint']}, here "
            f"{info['data_fingerprint']}); a resumed sweep must test on the same data: choose another --out"
        )
    if _comparable(previous.get("config", {})) != _comparable(cfg):
        diff = [k for k, v in _comparable(cfg).items() if previous.get("config", {}).get(k) != v]
        raise UserError(
            f"{out} holds a different sweep of this checkpoint ({', '.join(diff)} differ); "
            "choose another --out"
        )
    try:
        old_rows = (
            json.loads((out / "results.json").read_text(encoding="utf-8"))
            if (out / "results.json").exists()
            else []
        )
    except (UnicodeDecodeError, json.JSONDecodeError):
        old_rows = []  # written atomically, so only a hand-edited file gets here: recompute
    if not isinstance(old_rows, list):
        old_rows = []
    # the finished table wins over a rank's stray or cut row; a row without its cell's key is recomputed
    rows = [
        r
        for r in _partial_rows(out) + old_rows
        if isinstance(r, dict)
        and isinstance(r.get("spec"), str)
        and isinstance(r.get("trial"), int)
    ]
    return {(r["spec"], r["trial"]): complete_row(r) for r in rows}


def _run_sweep(
    config: SweepConfig, progress: bool, rank: int, world: int, device, data=None
) -> dict:
    if config.trials < 1:
        raise UserError(f"trials must be at least 1, not {config.trials}")
    if config.bn_reestimate < 0:
        raise UserError(f"bn-reestimate must be 0 or more, not {config.bn_reestimate}")
    if config.bn_calibrate < 0:
        raise UserError(f"bn-calibrate must be 0 or more, not {config.bn_calibrate}")
    if config.split not in ("test", "train"):
        raise UserError(f"split must be 'test' or 'train', not {config.split!r}")
    if config.target_error is not None and not 0 <= config.target_error <= 1:
        raise UserError(f"target error must be a fraction in [0, 1], not {config.target_error!r}")
    cells(config.distortions, config.trials)  # checks the grids before anything is read
    out = Path(config.out)
    # Rank 0 alone reads the out folder (other machines need not see it) and tells every rank what
    # is done; a mistake on any rank (the folder, a checkpoint or dataset missing on one machine)
    # stops all of them with its line instead of leaving the others waiting.
    previous, done, error = None, None, None
    try:
        previous = _previous_sweep(out) if rank == 0 else None
        model, data, loss, label, info = prepare(
            dataclasses.replace(config, device=str(device)), data
        )
        if config.on not in ("hidden", "projected"):
            raise UserError(f"on must be 'hidden' or 'projected', not {config.on!r}")
        # a bad --keep fails here, before sweep.json is written; the answer serves the provenance and the cells
        covered = sweep_coverage(
            model, getattr(data, config.split), config.keep, config.batch_size, **_selection(config)
        )
        _check_covered(covered[1])  # (here too, before sweep.json: a stub would claim --out)
        todo = cells(config.distortions, config.trials, default_scale(model))
        cfg = dataclasses.asdict(config)
        info = {**info, "data_fingerprint": data_fingerprint(data, config.split)}
        done = _done_cells(out, previous, info, cfg) if rank == 0 else None
    except UserError as e:
        error = e
    previous, done = agree(error, (previous, done), rank, world)  # also a barrier: rank 0 has read
    device = next(model.parameters()).device
    prov = {
        **info,
        "label": label,
        "data_description": data.description,
        "preprocessing": data.preprocessing,
        "split": config.split,
        "on": config.on,
        "bn_reestimate": config.bn_reestimate,
        "bn_calibrate": config.bn_calibrate,
        "trials": config.trials,
        "seed": config.seed,
        "scale_default": default_scale(model),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "start": (previous or {}).get("start") or now(),
        "end": None,
        "config": cfg,
        "cells": len(todo),
    }
    test = getattr(data, config.split)
    if config.bn_calibrate:
        # Once, before every cell and the baseline: statistics that belong to the evaluation weights
        # (a stochastically trained network gathered them with its random draws, not its hidden weights).
        calibrate_bn(
            model,
            data.train,
            config.bn_calibrate,
            config.batch_size,
            device,
            seed=derive_seed(config.seed, "calibrate"),
        )
    with projected.use_weights(model, "auto"):
        base = evaluate_split(model, test, loss=loss, batch_size=config.batch_size, device=device)
        prov["baseline_weights"] = weights_label(model)
    prov["baseline_error"] = base["error"]
    prov.update(metric="error", higher_is_better=False, baseline_score=base["error"])
    prov["batch_norm"] = bool(bn_layers(model))
    prov["coverage"] = covered[1]
    prov["processes"] = world
    if rank == 0:
        write_text(out / "sweep.json", json.dumps(prov, indent=2) + "\n")

    rows_so_far = [done[c.key()] for c in todo if c.key() in done]
    if progress and done:
        print(f"resuming {out}: {len(rows_so_far)} of {len(todo)} cells already done")
    if (
        rank == 0 and world > 1 and rows_so_far
    ):  # the rows found in rank files, kept before those are rewritten
        write_rows(out, rows_so_far)  # (a second interrupt lost them: the cells were redone)

    order = {c.key(): i for i, c in enumerate(todo)}
    mine = [c.key() for c in todo if c.key() not in done][rank::world]
    rows_mine: list[dict] = []
    part = out / f"results.rank{rank}.jsonl"

    def on_row(row):
        if world == 1:
            rows_so_far.append(row)
            write_rows(out, sorted(rows_so_far, key=lambda r: order[(r["spec"], r["trial"])]))
        else:
            rows_mine.append(row)
            write_text(part, "".join(json.dumps(r) + "\n" for r in rows_mine))

    t0 = time.perf_counter()
    rows = _sweep(
        model,
        data,
        config.distortions,
        trials=config.trials,
        seed=config.seed,
        on=config.on,
        keep=tuple(config.keep),
        **_selection(config),
        bn_batches=config.bn_reestimate,
        batch_size=config.batch_size,
        split=config.split,
        loss=loss,
        done=done,
        on_row=on_row,
        progress=progress,
        only=set(mine),
        covered=covered,
    )
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, rows_mine)
        prov["cells_by_rank"] = [len(rs) for rs in gathered]
        part.unlink(
            missing_ok=True
        )  # rank 0 has every row now (on another machine, nobody else would delete it)
        merged = dict(done)
        merged.update({(r["spec"], r["trial"]): r for rs in gathered for r in rs})
        rows = sorted(merged.values(), key=lambda r: order[(r["spec"], r["trial"])])
        if len(rows) != len(todo):
            raise RuntimeError(f"distributed sweep merged {len(rows)} rows for {len(todo)} cells")
    if rank == 0:
        write_rows(out, rows)
        for f in out.glob("results.rank*.jsonl"):  # also those of earlier, killed runs
            f.unlink(missing_ok=True)  # (a rank on a shared folder may delete its own first)
    target = config.target_error if config.target_error is not None else base["error"] + 0.01
    best = lowest_bits(rows, target)
    prov.update(end=now(), seconds=time.perf_counter() - t0, target_error=target, lowest_bits=best)
    if rank == 0:
        write_text(out / "sweep.json", json.dumps(prov, indent=2) + "\n")
    return {**prov, "rows": rows}
