"""What a reproduce run is made of: its rows, experiments, scales and typed presets, with ``--set``.

:data:`ROWS` names the training projections, :data:`EXPERIMENTS` what each experiment trains, sweeps
and judges, :data:`PRESETS` the scales (a :class:`Preset` each). :func:`resolve_preset` applies and
checks ``--set KEY=VALUE`` overrides; :func:`row_config` and :func:`column_spec` turn a resolved
preset into a row's training configuration and a column's sweep grid. Nothing here trains or writes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .claims import COLUMNS, PARAM, REFERENCE
from .. import grid
from ..errors import UserError
from ..config import TrainConfig

# Rows: a training projection each (docs/method.md section 3's matrix rows). "clip" is clip only
# (mode none).
ROWS = {
    "identity": "float weights (no projection, no clipping)",
    "clip": "clip only: no projection, hidden weights clipped to [-H, H] (mode none)",
    "sign": "sign, fwd+bwd (BinaryConnect deterministic)",
    "sign-fwd": "sign, fwd only (error propagated with the hidden weights)",
    "stoch-sign": "stoch-sign, fwd+bwd (BinaryConnect stochastic)",
    "power": "power:beta=<power_beta>, fwd+bwd",
    "stoch-mult": "stoch-mult:gamma=<stoch_mult_gamma>, fwd+bwd (the stochastic projection rule)",
    "add-gauss": "add-gauss:sigma=<train_sigma> (noise injection), fwd+bwd",
}
MATRIX_ROWS = (
    "identity",
    "clip",
    "sign",
    "sign-fwd",
    "stoch-sign",
    "power",
    "stoch-mult",
    "add-gauss",
)
EXPERIMENTS = {
    "matrix": {
        "rows": MATRIX_ROWS,
        "columns": COLUMNS,
        "claims": (1, 3),
        "about": "8 training projections x 6 test-time distortions",
    },
    "effective-bits": {
        "rows": ("identity", "sign", "stoch-mult"),
        "columns": ("add-gauss", "add-gauss-max", "quant"),
        "claims": (2,),
        "about": "lowest bits per weight at a target error",
    },
    "stoch-proj": {
        "rows": ("stoch-mult", "sign", "stoch-sign"),
        "columns": ("add-gauss",),
        "claims": (5,),
        "about": "stoch-mult against sign and stoch-sign with the same budget",
    },
    "imagenet": {
        "rows": ("identity", "sign"),
        "columns": ("add-gauss", "add-gauss-max"),
        "claims": (4,),
        "about": "resnet18 on class-per-folder images (--set data_dir=PATH; else generated folders "
        "test the path only)",
    },
    "all": {
        "rows": MATRIX_ROWS,
        "columns": COLUMNS,
        "claims": (1, 2, 3, 5),
        "about": "matrix + effective-bits + stoch-proj on shared rows",
    },
}
SCALES = {
    "tiny": "Fashion-MNIST slice, small MLP: seconds on 2 CPU cores (the tests run it)",
    "cpu": "CIFAR-10, 0.25-width bc-vgg, 10 epochs: about 3 h for `all` on 2 CPU cores",
    "gpu": "full-width bc-vgg, BinaryConnect's recipe, 100 epochs: for a GPU",
    "paper": "BinaryConnect's recipe whole: 500 epochs, 45k/5k split, best validation epoch kept; "
    "rows stoch-sign, sign, stoch-mult, identity (a GPU)",
}


def describe() -> str:
    """The experiments and scales as text (the command line's help shows it)."""
    lines = ["experiments:"]
    for name, e in EXPERIMENTS.items():
        claims = ", ".join(map(str, e["claims"]))
        lines.append(f"  {name:<15} {e['about']} (claim{'s' * (len(e['claims']) > 1)} {claims})")
        lines.append(f"  {'':<15} rows: {', '.join(e['rows'])}")
    lines.append("scales:")
    lines += [f"  {name:<6} {about}" for name, about in SCALES.items()]
    return "\n".join(lines)


_TRAIN_KEYS = (
    "model",
    "width",
    "dataset",
    "data_dir",
    "preprocess",
    "train_subset",
    "test_subset",
    "val_size",
    "image_size",
    "loss",
    "optimizer",
    "lr",
    "lr_end",
    "schedule",
    "epochs",
    "batch_size",
    "eval_batch_size",
    "seed",
    "device",
    "amp",
    "channels_last",
    "compile",
    "cuda_graph",
    "checkpoint_every",
    "init",
)


@dataclass(frozen=True)
class Preset:
    """Every setting of a reproduce run. A scale is one (:data:`PRESETS`); ``--set KEY=VALUE``
    changes any field, its text read by the field's type. Training settings are
    :class:`TrainConfig`'s; the grids are comma-separated strengths of each column; ``rows`` None
    trains every row of the experiment."""

    model: str
    width: float
    dataset: str
    loss: str
    lr: float
    epochs: int
    batch_size: int
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int | None = None
    image_size: int | None = None
    checkpoint_every: int = 1
    optimizer: str = "adam"
    lr_end: float | None = None
    schedule: str = "exp"
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False  # train --cuda-graph (robustweights.steps)
    # rows trained together, in threads (a GPU that one row leaves idle)
    rows_at_once: int = 1
    # rows trained K at a time as one fused network (robustweights.fusion), a folder each
    fused: int = 1
    clip: str = "glorot"  # a number, glorot or none
    init: str = "default"  # uniform: BinaryConnect's, each clipped weight uniform in [-H, H]
    preprocess: str = "standardize"
    power_beta: float = 0.5  # the power row's training beta
    stoch_mult_gamma: float = 0.5  # the stoch-mult row's training gamma
    train_sigma: float = 0.5  # the add-gauss row's training sigma
    rows: str | None = None
    trials: int = 2
    on: str = "projected"
    bn_calibrate: int = 20
    bn_reestimate: int = 0
    target_error: float | None = None
    add_gauss: str = "0.2,0.4,0.6,0.8,1,1.25,1.5"
    add_gauss_max: str = "0.1,0.2,0.4,0.6,0.8"
    mult_gauss: str = "0.25,0.5,1"
    power: str = "0,0.25,0.5,0.75,1"
    quant: str = "1,2,3,4,6,8"
    imagenet_model: str = "resnet18"
    imagenet_image_size: int = 64
    imagenet_train_subset: int | None = None
    imagenet_test_subset: int | None = None


PRESETS = {
    # Whole matrix in under a minute on 2 CPU cores: the test suite runs it.
    "tiny": Preset(
        model="mlp",
        width=0.5,
        dataset="fashion-mnist",
        train_subset=6000,
        test_subset=2000,
        loss="ce",
        lr=3e-3,
        epochs=4,
        batch_size=100,
        add_gauss="0.4,0.8,1.2",
        add_gauss_max="0.8",
        mult_gauss="0.5,1",
        power="0,0.5,1",
        quant="1,2,4",
        bn_calibrate=10,
        imagenet_image_size=32,
    ),
    # CIFAR-10 (JPEG copy), 0.25-width bc-vgg, GCN+ZCA, no augmentation: about 3 h for `all` on 2
    # cores.
    "cpu": Preset(
        model="bc-vgg",
        width=0.25,
        dataset="cifar10",
        preprocess="gcn-zca",
        loss="ce",
        lr=3e-3,
        lr_end=3e-5,
        epochs=10,
        batch_size=50,
        add_gauss="0.4,0.6,0.8,1,1.5",
        add_gauss_max="0.2,0.4,0.8",
        mult_gauss="0.25,0.5,1",
        power="0,0.5,1",
        quant="1,2,4",
    ),
    # Full-width bc-vgg, BinaryConnect's recipe (squared hinge, Glorot H, batch 50, GCN+ZCA, no
    # augmentation), with a shorter budget than its hundreds of epochs; GPU fast path.
    "gpu": Preset(
        model="bc-vgg",
        width=1.0,
        dataset="cifar10",
        preprocess="gcn-zca",
        loss="sq-hinge",
        lr=3e-3,
        lr_end=2e-6,
        epochs=100,
        batch_size=50,
        amp=True,
        channels_last=True,
        trials=3,
        target_error=0.11,
        init="uniform",
    ),
}
# BinaryConnect's recipe whole (docs/method.md section 5): 500 epochs of batch 50 (25M images), Adam
# 3e-3 decaying exponentially to 2e-6, the per-layer Glorot clip bound H with hidden weights
# initialised uniformly in [-H, H] (equivalent, up to scale, to H = 1, init in [-1, 1] and
# Glorot-scaled learning rates), squared hinge, GCN + ZCA, no augmentation, 45,000 / 5,000 train /
# validation split, and the network of the best validation epoch kept and tested; the rows the
# claims need most.
PRESETS["paper"] = dataclasses.replace(
    PRESETS["gpu"],
    epochs=500,
    val_size=5000,
    checkpoint_every=25,
    rows="stoch-sign,sign,stoch-mult,identity",
)
# Keys whose change alters no number: a rerun may change them. (Not eval_batch_size: it is the
# sweeps' batch size, which sets the batches batch-norm statistics are calibrated on.)
RESUMABLE = ("device", "data_dir", "checkpoint_every", "rows_at_once")


def with_defaults(preset: dict) -> dict:
    """A recorded preset with each key it lacks at its default (a folder made before the key
    existed ran with it: one without cuda_graph had none)."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(Preset)
        if f.default is not dataclasses.MISSING
    }
    return {**defaults, **preset}


# ---------------------------------------------------------------------------
# Presets and overrides
# ---------------------------------------------------------------------------


def _parse_value(key: str, text: str, kind: str):
    """``--set KEY=VALUE``'s text as the field's type (``int``, ``float | None``, ``bool``,
    ``str``...)."""
    low = text.strip().lower()
    if low in ("none", "null") and "None" in kind:
        return None
    base = kind.replace(" | None", "")
    if base == "bool":
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UserError(f"overrides= {key}: expected true or false, not {text!r}")
    if base == "int":
        try:
            return int(text)
        except ValueError:
            raise UserError(f"overrides= {key}: expected an integer, not {text!r}") from None
    if base == "float":
        try:
            v = float(text)
        except ValueError:
            raise UserError(f"overrides= {key}: expected a number, not {text!r}") from None
        if not math.isfinite(v):
            raise UserError(f"overrides= {key}: expected a finite number, not {text!r}")
        return v
    return text


def resolve_preset(scale: str, overrides: "dict | list[str] | None" = None) -> dict:
    """The preset ``scale`` with ``overrides`` (a dict, or ``key=value`` strings) applied and
    checked."""
    if scale not in PRESETS:
        raise UserError(f"unknown scale {scale!r}; choose one of: {', '.join(PRESETS)}")
    preset = dataclasses.asdict(PRESETS[scale])
    kinds = {f.name: str(f.type) for f in dataclasses.fields(Preset)}
    for k, v in _override_items(overrides):
        if k not in preset:
            raise UserError(f"overrides= {k}: no such key; keys: {', '.join(sorted(preset))}")
        preset[k] = _parse_value(k, v, kinds[k]) if isinstance(v, str) else v
    _check_preset(preset)
    return preset


def _override_items(overrides: "dict | list[str] | None") -> list:
    """``(key, value)`` pairs of a dict of overrides or of ``key=value`` strings (a string's value
    still text)."""
    if isinstance(overrides, dict):
        return list(overrides.items())
    if not isinstance(overrides, (list, tuple)):
        return []
    parsed = []
    for s in overrides:
        if "=" not in s:
            raise UserError(f"overrides= expects key=value, not {s!r}")
        k, v = s.split("=", 1)
        parsed.append((k.strip(), v))
    return parsed


def _check_preset(preset: dict) -> None:
    """Refuse a resolved preset whose settings cannot run (one line each)."""
    if (
        min(preset["trials"], preset["rows_at_once"]) < 1
        or min(preset["bn_calibrate"], preset["bn_reestimate"]) < 0
    ):
        raise UserError(
            "trials and rows_at_once must be at least 1, bn_calibrate and bn_reestimate 0 or more"
        )
    if preset["fused"] < 1 or (preset["fused"] > 1 and preset["compile"]):
        raise UserError(
            f"fused must be at least 1, and fused rows do not take compile=true; fused is "
            f"{preset['fused']!r}"
        )
    if preset["on"] not in ("hidden", "projected"):
        raise UserError(f"on must be hidden or projected, not {preset['on']!r}")
    if preset["rows"] is not None:
        names = [r.strip() for r in str(preset["rows"]).split(",")]
        bad = [r for r in names if r not in ROWS]
        if bad or not names or len(set(names)) != len(names):
            raise UserError(
                f"rows must be distinct names from: {', '.join(ROWS)}; not {preset['rows']!r}"
            )
    t = preset["target_error"]
    if t is not None and not 0 < t < 1:
        raise UserError(f"target_error must be in (0, 1), not {t!r}")
    for col in COLUMNS:
        if col != "sign":
            if REFERENCE[col] not in _grid_values(preset, col):
                raise UserError(
                    f"the {col} grid must hold {REFERENCE[col]} (the strength the verdicts read); "
                    f"it is {preset[col.replace('-', '_')]!r}"
                )
    # every grid as the sweeps will read it (a strength out of the transform's range, a grid holding
    # a strength twice), here, before any row is trained or reproduce.json is written
    grid.cells([column_spec(preset, c) for c in COLUMNS], 1)


def _grid_values(preset: dict, col: str) -> list[float]:
    text = str(preset[col.replace("-", "_")])
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{col} grid must be comma-separated numbers, not {text!r}") from None
    if col == "quant" and not all(math.isfinite(v) and v == int(v) for v in values):
        raise UserError(f"quant grid must be whole numbers of bits, not {text!r}")
    return values


def column_spec(preset: dict, col: str) -> str:
    """The sweep grid of a column, e.g. ``add-gauss:sigma=0,0.4,0.8``."""
    param = PARAM.get(col)
    if param is None:
        return "sign"
    values = ",".join(
        f"{int(v)}" if col == "quant" else f"{v:g}" for v in _grid_values(preset, col)
    )
    if col == "add-gauss-max":
        return f"add-gauss:{param}={values},scale=max"
    return f"{col}:{param}={values}"


def row_config(preset: dict, row: str, out: Path | None, experiment: str) -> TrainConfig:
    """The training configuration of one row."""
    base = {k: preset[k] for k in _TRAIN_KEYS}
    if base["schedule"] != "exp":
        # the presets' lr_end is the exp schedule's end; another schedule has none
        base["lr_end"] = None
    if experiment == "imagenet":
        base.update(
            model=preset["imagenet_model"],
            dataset="imagefolder",
            image_size=preset["imagenet_image_size"],
            preprocess="standardize",
            train_subset=preset["imagenet_train_subset"],
            test_subset=preset["imagenet_test_subset"],
        )
    projection, mode, clip = {
        "identity": ("identity", "fwd+bwd", "none"),
        "clip": ("identity", "none", preset["clip"]),
        "sign": ("sign", "fwd+bwd", preset["clip"]),
        "sign-fwd": ("sign", "fwd", preset["clip"]),
        "stoch-sign": ("stoch-sign", "fwd+bwd", preset["clip"]),
        "power": (f"power:beta={preset['power_beta']:g}", "fwd+bwd", preset["clip"]),
        "stoch-mult": (
            f"stoch-mult:gamma={preset['stoch_mult_gamma']:g}",
            "fwd+bwd",
            preset["clip"],
        ),
        "add-gauss": (f"add-gauss:sigma={preset['train_sigma']:g}", "fwd+bwd", preset["clip"]),
    }[row]
    return TrainConfig(
        **base,
        projection=projection,
        mode=mode,
        clip=str(clip),
        out=None if out is None else str(out / "train" / row),
    ).validate()
