"""``robustweights reproduce``: the paper's five claims (docs/method.md section 1) as runs that end in verdicts.

    robustweights reproduce matrix --scale tiny --out runs/repro-tiny
    rw.reproduce("all", scale="cpu", out="runs/repro-cpu", overrides={"epochs": 8})

An *experiment* names the networks it trains (rows), the test-time
distortions it sweeps them with (columns) and the claims it judges
(:data:`EXPERIMENTS`, kept once; :func:`describe` renders it, as
``robustweights reproduce --help`` shows). A *scale* is a typed
:class:`Preset` (:data:`PRESETS`: ``tiny``, ``cpu``, ``gpu``, ``paper``);
``--set KEY=VALUE`` changes any field.

The out folder holds ``train/<row>/`` (training runs; checkpoints),
``sweeps/<row>/`` (sweep results), ``report/`` (figures, HTML, Markdown with
the claims table), ``claims.json``, ``claims.md`` and ``reproduce.json``
(the command, preset, commit, machine and wall time of every invocation).
Everything resumes: rerunning the same command on the same folder continues
a killed run (finished rows are not retrained, finished cells not
recomputed); a different experiment, scale or override on the same folder is
refused.

Test-time convention (the presets' ``on`` and ``bn_calibrate``; measured
reasons in docs/results): each trained network first has its batch-norm
statistics re-estimated once with its own evaluation weights (a stochastic
rule such as ``stoch-mult`` gathers them with random draws whose mean is not
1, and its hidden weights then give near-chance error without this), then
the distortions act on the weights the network runs with (``on=projected``:
binary weights for ``sign`` rows, hidden weights for stochastic and float
rows), with no re-estimation per cell: a deployed network whose weights are
disturbed, as on an analog chip.

A verdict comes only from numbers this run measured; claims that need a
scale this run did not have (the paper's CIFAR-10 figures need full width,
ImageNet needs data these machines lack) say ``not run at this scale``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import platform
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import claims
from .claims import COLUMNS, PARAM, REFERENCE
from .. import grid
from ..data import make_image_folders
from ..models import check_model
from ..distributed import run_together
from ..errors import UserError
from ..results import claims_markdown
from ..runs import check_writable, git_commit, machine, now, write_text
from ..sweeps import SweepConfig, run_sweep
from ..checkpoints import load_config_data
from ..config import TrainConfig
from ..training import train

MARKER = "reproduce.json"

# Rows: a training projection each (docs/method.md section 3's matrix rows). "clip" is clip only (mode none).
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
    """Every setting of a reproduce run. A scale is one (:data:`PRESETS`); ``--set KEY=VALUE`` changes any
    field, its text read by the field's type. Training settings are :class:`TrainConfig`'s; the grids are
    comma-separated strengths of each column; ``rows`` None trains every row of the experiment."""

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
    rows_at_once: int = 1  # rows trained together, in threads (a GPU that one row leaves idle)
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
    # CIFAR-10 (JPEG copy), 0.25-width bc-vgg, GCN+ZCA, no augmentation: about 3 h for `all` on 2 cores.
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
    # Full-width bc-vgg, BinaryConnect's recipe (squared hinge, Glorot H, batch 50, GCN+ZCA, no augmentation),
    # with a shorter budget than its hundreds of epochs; GPU fast path.
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
# BinaryConnect's recipe whole (docs/method.md section 5): 500 epochs of batch 50 (25M images), Adam 3e-3 decaying
# exponentially to 2e-6, the per-layer Glorot clip bound H with hidden weights initialised uniformly in [-H, H]
# (equivalent, up to scale, to H = 1, init in [-1, 1] and Glorot-scaled learning rates), squared hinge, GCN + ZCA,
# no augmentation, 45,000 / 5,000 train / validation split, and the network of the best validation epoch kept and
# tested; the rows the claims need most.
PRESETS["paper"] = dataclasses.replace(
    PRESETS["gpu"],
    epochs=500,
    val_size=5000,
    checkpoint_every=25,
    rows="stoch-sign,sign,stoch-mult,identity",
)
# Keys whose change alters no number: a rerun may change them.
_RESUMABLE = (
    "device",
    "data_dir",
    "checkpoint_every",
    "rows_at_once",
)  # (not eval_batch_size: it is the
# sweeps' batch size, which sets the batches batch-norm statistics are calibrated on)


# ---------------------------------------------------------------------------
# Presets and overrides
# ---------------------------------------------------------------------------


def _parse_value(key: str, text: str, kind: str):
    """``--set KEY=VALUE``'s text as the field's type (``int``, ``float | None``, ``bool``, ``str``...)."""
    low = text.strip().lower()
    if low in ("none", "null") and "None" in kind:
        return None
    base = kind.replace(" | None", "")
    if base == "bool":
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UserError(f"--set {key}: expected true or false, not {text!r}")
    if base == "int":
        try:
            return int(text)
        except ValueError:
            raise UserError(f"--set {key}: expected an integer, not {text!r}") from None
    if base == "float":
        try:
            v = float(text)
        except ValueError:
            raise UserError(f"--set {key}: expected a number, not {text!r}") from None
        if not math.isfinite(v):
            raise UserError(f"--set {key}: expected a finite number, not {text!r}")
        return v
    return text


def resolve_preset(scale: str, overrides: "dict | list[str] | None" = None) -> dict:
    """The preset ``scale`` with ``overrides`` (a dict, or ``key=value`` strings) applied and checked."""
    if scale not in PRESETS:
        raise UserError(f"unknown scale {scale!r}; choose one of: {', '.join(PRESETS)}")
    preset = dataclasses.asdict(PRESETS[scale])
    kinds = {f.name: str(f.type) for f in dataclasses.fields(Preset)}
    items = overrides.items() if isinstance(overrides, dict) else []
    if isinstance(overrides, (list, tuple)):
        parsed = []
        for s in overrides:
            if "=" not in s:
                raise UserError(f"--set expects key=value, not {s!r}")
            k, v = s.split("=", 1)
            parsed.append((k.strip(), v))
        items = parsed
    for k, v in items:
        if k not in preset:
            raise UserError(f"--set {k}: no such key; keys: {', '.join(sorted(preset))}")
        preset[k] = _parse_value(k, v, kinds[k]) if isinstance(v, str) else v
    if (
        min(preset["trials"], preset["rows_at_once"]) < 1
        or min(preset["bn_calibrate"], preset["bn_reestimate"]) < 0
    ):
        raise UserError(
            "trials and rows_at_once must be at least 1, bn_calibrate and bn_reestimate 0 or more"
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
    # every grid as the sweeps will read it (a strength out of the transform's range, a grid holding a strength
    # twice), here, before any row is trained or reproduce.json is written
    grid.cells([column_spec(preset, c) for c in COLUMNS], 1)
    return preset


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
        base["lr_end"] = (
            None  # the presets' lr_end is the exp schedule's end; another schedule has none
        )
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


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def judge(
    experiment: str,
    preset: dict,
    sweeps: dict,
    trained: dict,
    setting: str,
    imagenet_data: str | None = None,
) -> list[dict]:
    """The claims table of ``experiment`` (:func:`robustweights.claims.judge` with its claims and columns)."""
    e = EXPERIMENTS[experiment]
    return claims.judge(
        e["claims"], list(e["columns"]), preset, sweeps, trained, setting, imagenet_data
    )


def _check_out(out: Path, experiment: str, scale: str, preset: dict) -> dict | None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    try:
        prev = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{out} exists and is not a reproduce folder; choose another --out"
        ) from None
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        raise UserError(f"{out}/{MARKER} is unreadable; choose another --out") from None
    if not (
        isinstance(prev, dict)
        and isinstance(prev.get("preset", {}), dict)
        and isinstance(prev.get("sessions", []), list)
    ):
        raise UserError(
            f"{out}/{MARKER} is not a reproduce record (a JSON object with a preset object); "
            f"choose another --out"
        )
    if (prev.get("experiment"), prev.get("scale")) != (experiment, scale):
        raise UserError(
            f"{out} holds `reproduce {prev.get('experiment')} --scale {prev.get('scale')}`; "
            f"choose another --out"
        )
    old = {k: v for k, v in prev.get("preset", {}).items() if k not in _RESUMABLE}
    new = {k: v for k, v in preset.items() if k not in _RESUMABLE}
    # a key added since the folder was made counts as its default (a folder without cuda_graph had none)
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(Preset)
        if f.default is not dataclasses.MISSING
    }
    diff = sorted(k for k in set(old) | set(new) if old.get(k, defaults.get(k)) != new.get(k))
    if diff:
        raise UserError(
            f"{out} holds this experiment with other settings ({', '.join(diff)} differ); "
            f"choose another --out"
        )
    return prev


def gpu_tip(preset: dict, n_rows: int, cuda: bool) -> str | None:
    """A line for a run on a GPU that leaves the fast path unused (measured on an H200, issue 12), else None."""
    if not cuda or preset["optimizer"] != "adam" or preset["batch_size"] > 200:
        return None
    if not (preset["cuda_graph"] or preset["compile"]):
        return (
            "tip: at small batches an eager step on a GPU is bound by kernel launches: --set cuda_graph=true"
            + (f" --set rows_at_once={min(n_rows, 4)}" if n_rows > 1 else "")
            + " trained the paper preset's rows 7 times faster on an H200 (docs/reproduce.md)"
        )
    if preset["cuda_graph"] and preset["rows_at_once"] == 1 and n_rows > 1:
        return (
            f"tip: --set rows_at_once={min(n_rows, 4)} trains the rows at once, one CUDA stream each (4 graphed "
            "rows: 1.45 times the images/s of one on an H200)"
        )
    return None


def reproduce(
    experiment: str,
    scale: str = "tiny",
    out: "str | Path" = "runs/reproduce",
    overrides: "dict | list[str] | None" = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train every row the experiment needs, sweep them, report, and judge the claims; see the module docstring.

    Returns ``{"claims": [...], "report": Path, "sweeps": {row: sweep}, "seconds": float}``.
    """
    if experiment not in EXPERIMENTS:
        raise UserError(
            f"unknown experiment {experiment!r}; choose one of: {', '.join(EXPERIMENTS)}"
        )
    preset = resolve_preset(scale, overrides)
    out = Path(out)
    check_writable(out)
    prev = _check_out(out, experiment, scale, preset)
    spec = EXPERIMENTS[experiment]
    cols = spec["columns"]
    rows = (
        spec["rows"]
        if preset["rows"] is None
        else tuple(r.strip() for r in preset["rows"].split(","))
    )
    say = print if progress else (lambda *a, **k: None)

    if scale == "gpu" and preset["device"] in ("auto", "cpu") and not torch.cuda.is_available():
        print(
            "warning: the gpu scale on a machine without a CUDA GPU: full-width bc-vgg for "
            f"{preset['epochs']} epochs takes days on CPU cores",
            flush=True,
        )
    tip = gpu_tip(preset, len(rows), torch.cuda.is_available() and preset["device"] != "cpu")
    if tip:
        print(tip, flush=True)
    imagenet_data = None
    if experiment == "imagenet":
        if preset["data_dir"] is None:
            print(
                "imagenet: no ImageNet on this machine (none is downloaded); testing the path on small generated "
                "class-per-folder images. Claim 4 cannot be judged here: give --set data_dir=PATH with "
                "train/<class>/ and val/<class>/ (and a GPU) for the real run.",
                flush=True,
            )
            if not (out / "data").exists():
                make_image_folders(out / "data")
            preset = {**preset, "data_dir": str(out / "data")}
        else:
            imagenet_data = f"image folder {preset['data_dir']}"

    configs = {
        row: row_config(preset, row, out, experiment) for row in rows
    }  # bad settings fail here
    for c in {
        (c.model, c.width) for c in configs.values()
    }:  # (a misspelt model too, before reproduce.json)
        check_model(*c)
    started = now()
    sessions = list((prev or {}).get("sessions", []))
    record = {
        "experiment": experiment,
        "scale": scale,
        "preset": preset,
        "overrides": overrides if isinstance(overrides, (dict, type(None))) else list(overrides),
        "rows": list(rows),
        "columns": [column_spec(preset, c) for c in cols],
        "sessions": sessions,
    }
    session = {
        "command": command or _api_command(experiment, scale, out, overrides),
        "start": started,
        "git_commit": git_commit(),
        "machine": machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "end": None,
        "seconds": None,
    }
    sessions.append(session)
    write_text(out / MARKER, json.dumps(record, indent=2) + "\n")

    t0 = time.perf_counter()
    data = load_config_data(
        configs[rows[0]]
    )  # every row trains and tests on the same data: load once
    at_once = min(preset["rows_at_once"], len(rows))

    def train_row(i, row, stop=None):
        cfg = configs[row]
        say(
            f"[train {i + 1}/{len(rows)}] {row}: {cfg.projection} ({cfg.mode}), clip {cfg.clip}, {cfg.epochs} epochs"
            + (" (already trained)" if _finished(cfg) else "")
            + (f", {at_once} rows at once" if stop else ""),
            flush=True,
        )
        resume = Path(
            cfg.out
        ).exists()  # (a row killed before its first checkpoint starts over: train says so)

        def each_epoch(
            epoch, h
        ):  # rows trained together: one line an epoch each instead of progress bars
            say(
                f"  {row} epoch {epoch}/{cfg.epochs}: test error {h['test_error']:.2%}, {h['images_per_second']:.0f} "
                f"img/s",
                flush=True,
            )
            stop()

        try:
            r = train(
                cfg,
                resume=resume,
                progress=progress and not stop,
                data=data,
                callback=stop and each_epoch,
            )
        except UserError as e:
            if resume and "cannot resume" in str(e):
                raise UserError(f"{cfg.out} was trained with other settings: {e}") from None
            raise
        return {
            "test_error": r.test_error,
            "epochs": len(r.history),
            "train_seconds": sum(h["seconds"] for h in r.history),
            "test_weights": r.history[-1]["test_weights"] if r.history else None,
            "test_error_stored_bn": r.history[-1].get("test_error_stored_bn")
            if r.history
            else None,
        }

    if at_once > 1:  # threads, one CUDA stream each (robustweights.distributed.run_together)
        jobs = [lambda stop, i=i, row=row: train_row(i, row, stop) for i, row in enumerate(rows)]
        trained = dict(zip(rows, run_together(jobs, at_once, configs[rows[0]].device)))
    else:
        trained = {row: train_row(i, row) for i, row in enumerate(rows)}

    sweeps = {}
    distortions = [column_spec(preset, c) for c in cols]
    for i, row in enumerate(rows):
        say(
            f"[sweep {i + 1}/{len(rows)}] {row}: {', '.join(distortions)} ({preset['trials']} trials)",
            flush=True,
        )
        sc = SweepConfig(
            checkpoint=configs[row].out,
            distortions=distortions,
            trials=preset["trials"],
            seed=preset["seed"],
            on=preset["on"],
            bn_reestimate=preset["bn_reestimate"],
            bn_calibrate=preset["bn_calibrate"],
            test_subset=configs[row].test_subset,
            batch_size=preset["eval_batch_size"],
            device=preset["device"],
            data_dir=preset["data_dir"],
            out=str(out / "sweeps" / row),
        )
        sweeps[row] = run_sweep(sc, progress=progress, data=data)

    setting = (
        f"{data.description}; {configs[rows[0]].model} width {configs[rows[0]].width:g}; "
        f"{preset['epochs']} epochs, batch {preset['batch_size']}, {preset['loss']}, "
        f"{preset['preprocess']}, no augmentation; {session['machine']}"
    )
    claims = judge(experiment, preset, sweeps, trained, setting, imagenet_data)
    # The claims first: they stand without the report.
    write_text(out / "claims.json", json.dumps(claims, indent=2) + "\n")
    write_text(out / "claims.md", claims_markdown(claims))
    say("[report] figures, HTML and Markdown ...", flush=True)
    at = {
        c: REFERENCE[c] for c in cols if REFERENCE[c] is not None and c != "add-gauss-max"
    }  # "add-gauss" names both
    if not have_matplotlib():
        # matplotlib is a dependency of the package, but a source tree run with a bare interpreter (a GPU host's
        # image) may lack it: hours of training must not end in a crash over the pictures. Only that case is
        # forgiven; any other failure to import or draw the report is a bug and is raised.
        print(
            "report skipped (matplotlib is not installed); make it where it is: robustweights report "
            + " ".join(str(out / "sweeps" / row) for row in rows)
            + f" --out {out / 'report'}",
            flush=True,
        )
        html = None
    else:
        from ..reports import report

        html = report(
            [out / "sweeps" / row for row in rows],
            out / "report",
            at=at,
            title=f"robustweights reproduce {experiment} --scale {scale}",
            claims=claims,
        )["html"]
    seconds = time.perf_counter() - t0
    session.update(end=now(), seconds=seconds)
    record.update(trained=trained, total_seconds=sum(s["seconds"] or 0 for s in sessions))
    write_text(out / MARKER, json.dumps(record, indent=2) + "\n")

    return {
        "claims": claims,
        "report": html,
        "sweeps": sweeps,
        "trained": trained,
        "seconds": seconds,
        "total_seconds": record["total_seconds"],
        "setting": setting,
        "out": out,
    }


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported here (the report's figures need it)."""
    return importlib.util.find_spec("matplotlib") is not None


def summary(result: dict) -> str:
    """The claims table of a :func:`reproduce` result as lines of text (what the command prints)."""
    lines = [f"claims ({result['setting']}):"]
    lines += [f"  {c['claim']}. {c['verdict']:<22} {c['measured']}" for c in result["claims"]]
    lines += [
        "",
        f"report: {result['report'] or 'not written (no matplotlib)'}",
        f"claims: {result['out'] / 'claims.json'}",
        f"total time {result['total_seconds']:.0f} s",
    ]
    return "\n".join(lines)


def _finished(cfg: TrainConfig) -> bool:
    m = Path(cfg.out) / "metrics.jsonl"
    try:
        return len(m.read_text(encoding="utf-8").splitlines()) >= cfg.epochs
    except (
        OSError,
        UnicodeDecodeError,
    ):  # missing or unreadable: not known to be finished (train decides)
        return False


def _api_command(experiment, scale, out, overrides) -> str:
    sets = (
        overrides.items()
        if isinstance(overrides, dict)
        else [s.split("=", 1) for s in overrides or []]
    )
    return " ".join(
        ["robustweights", "reproduce", experiment, "--scale", scale, "--out", shlex.quote(str(out))]
        + [f"--set {shlex.quote(f'{k}={v}')}" for k, v in sets]
    )
