"""The model and data a sweep config names: a checkpoint, or a user's model and its state_dict.

:func:`prepare` loads them as :func:`robustweights.sweeps.run_sweep` sweeps
them: a checkpoint on the data and preprocessing it trained with (its own test
subset unless the sweep names one), a user's model (``--model-factory``) with
its ``--state-dict`` on ``--dataset``, every weight selected for distortion
unless ``include``/``exclude``/``types`` narrow them.
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
from .runs import kept, safe_load, sha256
from .checkpoints import check_loaded_data, load, load_config_data

__all__ = ["prepare", "load_state_dict_file", "selection"]


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
    """The model, data, loss, description and label a sweep config names.

    ``data`` may pass the dataset already loaded (as the checkpoint's training
    configuration would load it: with the sweep's ``test_subset``, else the run's own).
    """
    device = resolve_device(config.device)
    if config.checkpoint:
        return _prepare_checkpoint(config, device, data)
    if not (config.model_factory and config.state_dict and config.dataset):
        raise UserError("give a checkpoint, or --model-factory with --state-dict and --dataset")
    return _prepare_own_model(config, device)


def _prepare_checkpoint(config: SweepConfig, device, data):
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
            f"{', '.join(ignored)} {'go' if len(ignored) > 1 else 'goes'} with --model-factory "
            "and no checkpoint; a checkpoint is tested on the data and preprocessing it trained "
            "with (--data-dir: where that data is)"
        )
    model, tc = load(config.checkpoint, model_factory=config.model_factory, device=str(device))
    if config.test_subset is not None:  # else the run's own test examples, as `evaluate` tests
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


def _prepare_own_model(config: SweepConfig, device):
    from . import models
    from .models import create_model
    from .config import TrainConfig

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
        "dataset": config.dataset,
    }
    return model.to(device).eval(), data, "ce", f"{config.model_factory} (own model)", info


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
