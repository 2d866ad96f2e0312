"""Loading what a run kept: its checkpoint's configuration, network and data (``load``).

    model, config = load("runs/sign")   # a run folder (its kept network) or a checkpoint file
    data = load_config_data(config)     # the dataset and preprocessing it trained with
    check_loaded_data(model, data)      # one line if data is not what it trained on

A checkpoint is read with ``torch.load(weights_only=True)`` (see
:mod:`robustweights.runs`), and its configuration is checked as a user's would
be: a stranger's file can hold anything.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from . import data as data_mod
from . import models, projected
from .config import TEXT, TrainConfig
from .distributed import resolve_device
from .errors import UserError
from .language import load_text
from .runs import read_checkpoint
from .selection import shorten

__all__ = [
    "load_config_data",
    "check_config_data",
    "build_model",
    "config_of",
    "load",
    "check_loaded_data",
    "check_trained_data",
]


def load_config_data(config: TrainConfig, data_dir: str | None = None) -> data_mod.Data:
    """The dataset and preprocessing ``config`` trains on (``text``: :func:`load_text`, which
    ``data.load_data`` cannot reach)."""
    if config.dataset == TEXT:
        path = data_dir or config.data_dir
        if path is None:
            raise UserError("the text dataset needs data_dir=, a UTF-8 text file or folder")
        return load_text(path, window=config.text_window())
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


def check_config_data(config: TrainConfig, data: data_mod.Data) -> None:
    """One line when ``data``, given to train ``config``, is not the dataset (and preprocessing)
    it names."""
    # (the text dataset has no preprocessing to choose: its bytes are the tokens)
    same = config.dataset == TEXT or (
        data.preprocessing == data_mod.describe_preprocess(config.preprocess)
    )
    if data.name != config.dataset or not same:
        raise UserError(
            f"the data given ({data.name}; inputs {data.preprocessing}) is not what the "
            f"configuration names ({config.dataset}; preprocess {config.preprocess}): load it "
            f"with load_config_data(config)"
        )


def build_model(
    config: TrainConfig, num_classes: int, in_shape, generator=None, model_factory=None
) -> nn.Module:
    """The configured network with its projection attached (initialised from ``config.seed``)."""
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
    # (the global random state, seeded above); a never-clipped weight: its Glorot H
    with torch.no_grad():
        for s in projected.sites(model) if config.init == "uniform" else []:
            H = s.H if s.H is not None else projected.glorot_bound(s.hidden)
            s.hidden.uniform_(-H, H)
    return model


def config_of(state: dict, path) -> TrainConfig:
    """A checkpoint's :class:`TrainConfig`, checked as a user's would be (a stranger's file can
    hold anything); the machine it trained on (device, compile, CUDA graph) is not this one's
    business."""
    config = TrainConfig.from_dict(state["config"])
    try:
        dataclasses.replace(config, device="cpu", compile=False, cuda_graph=False).validate()
    except UserError as e:
        raise UserError(f"{path} holds a damaged training configuration: {e}") from None
    return config


def load(path: "str | os.PathLike", *, model_factory: str | None = None, device: str = "cpu"):
    """The trained network of a checkpoint with its hidden weights, in eval mode, and its
    :class:`TrainConfig`.

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
        f"pass model_factory={config.model!r} to allow importing it",
    )
    where = f"{path} (model {config.model!r} width {config.width})"
    # shapes first, on the meta device: a stranger's num_classes or in_shape could ask for
    # terabytes
    try:
        with torch.device("meta"):
            models.check_fits(
                build_model(config, state["num_classes"], state["in_shape"]).state_dict(),
                state["model"],
                where,
            )
    except (NotImplementedError, RuntimeError):
        pass  # a model that cannot be built without memory: checked below
    model = build_model(config, state["num_classes"], state["in_shape"])
    models.load_weights(model, state["model"], where)
    model.__dict__["_rw_trained_on"] = (str(path), state.get("data"))  # for check_loaded_data
    return model.to(resolve_device(device)).eval(), config


def check_loaded_data(model: nn.Module, data: data_mod.Data) -> None:
    """:func:`check_trained_data` for a network :func:`load` returned (any other model: nothing
    to check)."""
    where, saved = model.__dict__.get("_rw_trained_on", (None, None))
    check_trained_data(saved, data, where)


def check_trained_data(saved, data: data_mod.Data, where) -> None:
    """One line when ``data`` is not what a run trained on, as far as its checkpoint recorded
    (classes in order, training images): an image folder with a class renamed or images added
    loads fine, but its labels or its standardization statistics would silently differ (a 0%
    network tested at 100% or 67% error)."""
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
