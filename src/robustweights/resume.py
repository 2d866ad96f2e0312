"""Run folders a training may write or resume: what a resumed run may change, its saved state.

A new run refuses a folder that holds a run or anyone else's files; a resumed
run (``--resume``) refuses a configuration that would compute something else
than the run it continues (every field but those of ``_RESUMABLE``), and goes
on from the hidden weights, optimizer state and history of its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from . import models
from .checkpoints import config_of
from .config import TrainConfig
from .errors import UserError, one_line
from .runs import CHECKPOINT, check_writable, read_checkpoint

__all__ = ["check_out", "restore"]

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
    """A file a run writes before its first checkpoint (its config.json), or a temporary file of
    an atomic write."""
    if p.name == "config.json" and p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(d, dict) and {"model", "projection", "coverage"} <= d.keys()
    return p.name.startswith(
        (".config.json.", ".metrics.jsonl.", ".checkpoint.pt.", ".best.pt.")
    )  # atomic writes


def check_out(config: TrainConfig, resume: bool) -> dict | None:
    """Refuse to overwrite a run; on resume return its checkpoint."""
    if config.out is None:
        if resume:
            raise UserError("resume=True needs out=, the run folder to continue")
        return None
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={str(out)!r} exists and is not a folder")
    check_writable(out)
    if not resume:
        _check_new(out)
        return None
    ckpt = out / CHECKPOINT
    if not ckpt.exists():
        if out.is_dir() and all(_own_start(p) or p.name == "metrics.jsonl" for p in out.iterdir()):
            # stopped before its first checkpoint (or an empty folder): starting over loses nothing
            return None
        raise UserError(f"nothing to resume: {ckpt} does not exist")
    state = read_checkpoint(ckpt)
    saved = config_of(state, ckpt)
    if config.epochs < state["epoch"]:
        raise UserError(
            f"{out} has {state['epoch']} epochs done; epochs= must be at least that to resume it"
        )
    for f in dataclasses.fields(TrainConfig):
        if f.name not in _RESUMABLE and getattr(saved, f.name) != getattr(config, f.name):
            raise UserError(
                f"cannot resume {out}: {f.name} was {getattr(saved, f.name)!r}, "
                f"now {getattr(config, f.name)!r}"
            )
    return state


def _check_new(out: Path) -> None:
    """A new run's folder: no run in it, and no files but those of a run that never
    checkpointed."""
    if (out / CHECKPOINT).exists() or (out / "metrics.jsonl").exists():
        raise UserError(
            f"{out} already holds a run; pass resume=True to continue it or choose another out="
        )
    others = sorted(p.name for p in out.iterdir() if not _own_start(p)) if out.is_dir() else []
    # a user's files, a sweep or a report: a run's files would overwrite or mix with them
    if others:
        raise UserError(
            f"out={str(out)!r} holds other files ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); choose a new or empty folder"
        )


def restore(
    state: dict, model: nn.Module, opt: torch.optim.Optimizer, config: TrainConfig, device
) -> tuple[list[dict], int]:
    """Put a checkpoint's weights and optimizer state back into a new run's ``model`` and
    ``opt``; returns its history and the epochs done. A damaged file: one line, the folder as it
    was."""
    models.load_weights(model, state["model"], f"{config.out}'s checkpoint")
    try:
        opt.load_state_dict(state["optimizer"])
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
        raise UserError(
            f"{config.out}'s checkpoint holds a damaged optimizer state ({one_line(e)[:200]}); "
            f"start the run over in another folder"
        ) from None
    for group in opt.param_groups if config.cuda_graph else []:  # a checkpoint keeps lr as a number
        group.update(lr=torch.tensor(float(group["lr"]), device=device), capturable=True)
    history, start = list(state["history"]), state["epoch"]
    if state.get("train_bn") and start < config.epochs:
        # continue from training's statistics, not the calibrated ones
        models.load_weights(
            model,
            {**model.state_dict(), **state["train_bn"]},
            f"{config.out}'s checkpoint (its training batch-norm statistics)",
        )
    return history, start
