"""The model, data and measure a sweep config names: a checkpoint, or a user's model and weights.

:func:`prepare` loads them as :func:`robustweights.sweeps.run_sweep` sweeps
them: a checkpoint on the data and preprocessing it trained with (its own test
subset unless the sweep names one), a user's model (``--model-factory``) with
its ``--state-dict`` on ``--dataset`` or on the user's ``--data``
(:func:`robustweights.data.user_data`), every weight selected for distortion
unless ``include``/``exclude``/``types`` narrow them; judged by ``--measure``,
else by the checkpoint's own measure (:func:`robustweights.measures.for_config`),
else (a user's model) by ``perplexity`` on ``--dataset text`` and ``error`` otherwise.
A ``package.module:function`` a run folder names (its model, data or measure) is
imported only when the user names it again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from . import data as data_mod
from . import projected
from .config import SweepConfig
from .distributed import resolve_device
from .errors import UserError
from .factories import is_named
from .measures import Measure, for_config, get_measure
from .runs import kept, safe_load, sha256
from .checkpoints import check_loaded_data, load, load_config_data

__all__ = ["prepare", "load_state_dict_file", "selection", "measure_named", "CLASSIFICATION"]

CLASSIFICATION = ("error", "top5_error", "loss")  # the measures a classification loss goes with


def measure_named(spec: "str | Measure", loss: str = "ce") -> Measure:
    """:func:`robustweights.measures.get_measure` of ``spec``, with the classification ``loss``
    where ``spec`` is a classification measure (any other has its own)."""
    return get_measure(spec, loss=loss if spec in CLASSIFICATION else "ce")


def load_state_dict_file(path: str) -> dict:
    """The state_dict in the file ``path`` (also under a ``model`` or ``state_dict`` key)."""
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
    """``(model, data, loss, label, info, measure)``: what a sweep config names.

    ``data`` may pass the dataset already loaded (as the checkpoint's training
    configuration would load it: with the sweep's ``test_subset``, else the run's own).
    """
    device = resolve_device(config.device)
    _check_data_flags(config)
    if config.checkpoint:
        return _prepare_checkpoint(config, device, data)
    if not (config.model_factory and config.state_dict and (config.dataset or config.data)):
        raise UserError(
            "give a checkpoint, or model_factory= with state_dict= and dataset= (or data=)"
        )
    return _prepare_own_model(config, device)


def _check_data_flags(config: SweepConfig) -> None:
    """One line for flags that do not go with ``--data`` (the user's batches, as they are)."""
    if not config.data:
        return
    clash = [
        flag
        for flag, given in (
            ("dataset=", config.dataset),
            ("preprocess=", config.preprocess != "standardize"),
            ("test_subset=", config.test_subset is not None),
            ("data_dir=", config.data_dir),
        )
        if given
    ]
    if clash:
        raise UserError(
            f"{', '.join(clash)} {'go' if len(clash) > 1 else 'goes'} with a dataset by name; "
            f"data={config.data!r} gives its batches as they are"
        )


def _measure(config: SweepConfig, run_config=None, loss: str = "ce") -> Measure:
    """The measure a sweep judges by: ``--measure``, else a run's own (``run_config``), else
    ``perplexity`` for the ``text`` dataset and ``error`` for anything else."""
    if config.measure:
        return measure_named(config.measure, loss)
    if run_config is not None:
        return for_config(run_config)
    return get_measure("perplexity" if config.dataset == "text" else "error")


def _run_data(config: SweepConfig, tc, data):
    """The data a checkpoint is swept on: ``data`` passed in, the user's ``--data``, else the
    run's own (a run trained on a user's ``--data`` function needs it named again)."""
    if data is not None:
        return data
    if config.data:
        return data_mod.user_data(config.data)
    own = getattr(tc, "data", None)
    if is_named(own):
        raise UserError(
            f"{config.checkpoint} was trained on data {own!r}, a user's function: give data="
            f"{own!r} to allow importing and running it"
        )
    return load_config_data(tc, config.data_dir)


def _prepare_checkpoint(config: SweepConfig, device, data):
    ignored = [
        flag
        for flag, given in (
            ("state_dict=", config.state_dict),
            ("dataset=", config.dataset),
            ("preprocess=", config.preprocess != "standardize"),
        )
        if given
    ]
    if ignored:  # a checkpoint names its own weights, data and preprocessing
        raise UserError(
            f"{', '.join(ignored)} {'go' if len(ignored) > 1 else 'goes'} with model_factory= "
            "and no checkpoint; a checkpoint is tested on the data and preprocessing it trained "
            "with (data_dir=: where that data is)"
        )
    model, tc = load(config.checkpoint, model_factory=config.model_factory, device=str(device))
    if config.test_subset is not None:  # else the run's own test examples, as `evaluate` tests
        tc = dataclasses.replace(tc, test_subset=config.test_subset)
    data = _run_data(config, tc, data)
    if not config.data:  # (the user's own batches are theirs to vouch for)
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
        "dataset": config.data or tc.dataset,
    }
    return model, data, tc.loss, label, info, _measure(config, tc, tc.loss)


def _prepare_own_model(config: SweepConfig, device):
    from . import models
    from .models import create_model
    from .config import TrainConfig

    if config.data:
        data = data_mod.user_data(config.data)
    else:
        tc = TrainConfig(
            dataset=config.dataset,
            data_dir=config.data_dir,
            preprocess=config.preprocess,
            test_subset=config.test_subset,
        )
        data = load_config_data(tc)
    model = create_model(  # (what the data does not say, the factory's defaults give)
        config.model_factory,
        num_classes=data.num_classes or None,
        in_shape=tuple(data.in_shape) if len(data.in_shape) == 3 else None,
    )
    models.load_weights(
        model,
        load_state_dict_file(config.state_dict),
        f"{config.state_dict} (for the model from {config.model_factory})",
    )
    projected.attach(model, "identity", mode="none", clip=None, **selection(config))
    info = {
        "checkpoint": str(config.state_dict),
        "checkpoint_sha256": sha256(Path(config.state_dict)),
        "model": config.model_factory,
        "width": None,
        "train_projection": "unknown",
        "train_mode": "unknown",
        "dataset": config.data or config.dataset,
    }
    label = f"{config.model_factory} (own model)"
    return model.to(device).eval(), data, "ce", label, info, _measure(config)


def selection(config: SweepConfig) -> dict:
    """The weights a sweep config selects, as :func:`robustweights.projected.select` takes them."""
    return {
        "include": config.include or ("*",),
        "exclude": config.exclude,
        "types": config.types,
        "exclude_types": config.exclude_types,
    }


def _ckpt_path(p: str) -> Path:
    p = Path(p)
    return kept(p) if p.is_dir() else p
