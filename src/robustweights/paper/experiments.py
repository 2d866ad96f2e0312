"""``robustweights reproduce``: the paper's five claims (docs/method.md section 1) run to verdicts.

    robustweights reproduce matrix --scale tiny --out runs/repro-tiny
    rw.reproduce("all", scale="cpu", out="runs/repro-cpu", overrides={"epochs": 8})

An *experiment* names the networks it trains (rows), the test-time
distortions it sweeps them with (columns) and the claims it judges
(:data:`EXPERIMENTS`, kept once; :func:`describe` renders it, as
``robustweights reproduce --help`` shows). A *scale* is a typed
:class:`Preset` (:data:`PRESETS`: ``tiny``, ``cpu``, ``gpu``, ``paper``);
``--set KEY=VALUE`` changes any field. These, with the rows and how a row
or column becomes a configuration, are :mod:`.presets`' (importable from here
too); this module runs them.

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

import importlib.util
import json
import platform
import shlex
import time
from pathlib import Path

import torch

from . import claims
from .claims import REFERENCE
from .rows import train_rows
from .presets import (
    EXPERIMENTS,
    MATRIX_ROWS,
    PRESETS,
    RESUMABLE,
    ROWS,
    SCALES,
    Preset,
    column_spec,
    describe,
    resolve_preset,
    row_config,
    with_defaults,
)
from ..data import make_image_folders
from ..models import check_model
from ..errors import UserError
from ..results import claims_markdown
from ..runs import check_writable, git_commit, machine, now, write_text
from ..sweeps import SweepConfig, run_sweep
from ..checkpoints import load_config_data
from ..locks import one_writer
from ..config import TrainConfig

# The presets' names, kept importable from here (the command line, the tests and the docs use them).
__all__ = [
    "EXPERIMENTS",
    "MARKER",
    "MATRIX_ROWS",
    "PRESETS",
    "RESUMABLE",
    "ROWS",
    "SCALES",
    "Preset",
    "column_spec",
    "describe",
    "gpu_tip",
    "have_matplotlib",
    "judge",
    "make_image_folders",
    "reproduce",
    "resolve_preset",
    "row_config",
    "summary",
]

MARKER = "reproduce.json"


def judge(
    experiment: str,
    preset: dict,
    sweeps: dict,
    trained: dict,
    setting: str,
    imagenet_data: str | None = None,
) -> list[dict]:
    """The claims table of ``experiment`` (:func:`robustweights.claims.judge` with its claims and
    columns)."""
    e = EXPERIMENTS[experiment]
    return claims.judge(
        e["claims"], list(e["columns"]), preset, sweeps, trained, setting, imagenet_data
    )


# ---------------------------------------------------------------------------
# Before the run: the folder, the first lines
# ---------------------------------------------------------------------------


def _check_out(out: Path, experiment: str, scale: str, preset: dict) -> dict | None:
    """The folder's previous reproduce record, None for a new or empty folder; a folder that is not
    a reproduce folder, or holds another experiment, scale or setting, is refused."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={str(out)!r} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    try:
        prev = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{out} exists and is not a reproduce folder; choose another out="
        ) from None
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        raise UserError(f"{out}/{MARKER} is unreadable; choose another out=") from None
    if not (
        isinstance(prev, dict)
        and isinstance(prev.get("preset", {}), dict)
        and isinstance(prev.get("sessions", []), list)
    ):
        raise UserError(
            f"{out}/{MARKER} is not a reproduce record (a JSON object with a preset object); "
            f"choose another out="
        )
    if (prev.get("experiment"), prev.get("scale")) != (experiment, scale):
        raise UserError(
            f"{out} holds `reproduce {prev.get('experiment')} --scale {prev.get('scale')}`; "
            f"choose another out="
        )
    # a key added since the folder was made counts as its default
    old = {k: v for k, v in with_defaults(prev.get("preset", {})).items() if k not in RESUMABLE}
    new = {k: v for k, v in preset.items() if k not in RESUMABLE}
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise UserError(
            f"{out} holds this experiment with other settings ({', '.join(diff)} differ); "
            f"choose another out="
        )
    return prev


def gpu_tip(preset: dict, n_rows: int, cuda: bool) -> str | None:
    """A line for a run on a GPU that leaves the fast path unused (measured on an H200, issue 12),
    else None."""
    if not cuda or preset["optimizer"] != "adam" or preset["batch_size"] > 200:
        return None
    if not (preset["cuda_graph"] or preset["compile"]):
        return (
            "tip: at small batches an eager step on a GPU is bound by kernel launches: "
            "--set cuda_graph=true"
            + (f" --set rows_at_once={min(n_rows, 4)}" if n_rows > 1 else "")
            + " trained the paper preset's rows 7 times faster on an H200 (docs/reproduce.md)"
        )
    if preset["cuda_graph"] and preset["rows_at_once"] == 1 and n_rows > 1:
        return (
            f"tip: --set rows_at_once={min(n_rows, 4)} trains the rows at once, one CUDA stream "
            "each (4 graphed rows: 1.45 times the images/s of one on an H200)"
        )
    return None


def _claim_folder(out: Path, experiment, scale, preset, overrides, rows, prev, command) -> tuple:
    """Write ``reproduce.json`` with this invocation appended to the folder's sessions: the record
    and this session's entry (both updated when the run ends)."""
    sessions = list((prev or {}).get("sessions", []))
    record = {
        "experiment": experiment,
        "scale": scale,
        "preset": preset,
        "overrides": overrides if isinstance(overrides, (dict, type(None))) else list(overrides),
        "rows": list(rows),
        "columns": [column_spec(preset, c) for c in EXPERIMENTS[experiment]["columns"]],
        "sessions": sessions,
    }
    session = {
        "command": command or _api_command(experiment, scale, out, overrides),
        "start": now(),
        "git_commit": git_commit(),
        "machine": machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "end": None,
        "seconds": None,
    }
    sessions.append(session)
    write_text(out / MARKER, json.dumps(record, indent=2) + "\n")
    return record, session


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def reproduce(
    experiment: str,
    scale: str = "tiny",
    out: "str | Path" = "runs/reproduce",
    overrides: "dict | list[str] | None" = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train every row the experiment needs, sweep them, report, and judge the claims; see the
    module docstring.

    Returns ``{"claims": [...], "report": Path, "sweeps": {row: sweep}, "seconds": float}``.
    """
    preset, out, prev, rows = _plan(experiment, scale, out, overrides)
    with one_writer(out, "robustweights reproduce"):  # one process writes a folder at a time
        return _reproduce(experiment, scale, out, preset, prev, rows, overrides, progress, command)


def _reproduce(experiment, scale, out, preset, prev, rows, overrides, progress, command) -> dict:
    cols = EXPERIMENTS[experiment]["columns"]
    say = print if progress else (lambda *a, **k: None)
    _warn(scale, preset, rows)
    preset, imagenet_data = _imagenet_data(experiment, preset, out)
    configs = _row_configs(preset, rows, out, experiment)
    record, session = _claim_folder(out, experiment, scale, preset, overrides, rows, prev, command)

    t0 = time.perf_counter()
    # every row trains and tests on the same data: load once
    data = load_config_data(configs[rows[0]])
    trained = train_rows(configs, rows, preset, data, progress, say)
    sweeps = _sweep_rows(configs, rows, preset, cols, out, data, progress, say)
    first = configs[rows[0]]
    setting = (
        f"{data.description}; {first.model} width {first.width:g}; "
        f"{preset['epochs']} epochs, batch {preset['batch_size']}, {preset['loss']}, "
        f"{preset['preprocess']}, no augmentation; {session['machine']}"
    )
    claims = judge(experiment, preset, sweeps, trained, setting, imagenet_data)
    # The claims first: they stand without the report.
    write_text(out / "claims.json", json.dumps(claims, indent=2) + "\n")
    write_text(out / "claims.md", claims_markdown(claims))
    say("[report] figures, HTML and Markdown ...", flush=True)
    html = _report(out, rows, cols, f"robustweights reproduce {experiment} --scale {scale}", claims)
    seconds = time.perf_counter() - t0
    session.update(end=now(), seconds=seconds)
    sessions = record["sessions"]
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


def _plan(experiment: str, scale: str, out: "str | Path", overrides) -> tuple:
    """The checked preset, the out folder, its previous record (None for a new folder) and the
    rows to train; a folder holding other settings is refused."""
    if experiment not in EXPERIMENTS:
        raise UserError(
            f"unknown experiment {experiment!r}; choose one of: {', '.join(EXPERIMENTS)}"
        )
    preset = resolve_preset(scale, overrides)
    out = Path(out)
    check_writable(out)
    prev = _check_out(out, experiment, scale, preset)
    spec = EXPERIMENTS[experiment]
    rows = (
        spec["rows"]
        if preset["rows"] is None
        else tuple(r.strip() for r in preset["rows"].split(","))
    )
    return preset, out, prev, rows


def _warn(scale: str, preset: dict, rows) -> None:
    """Print the lines a run on this machine should read first (the gpu scale without a GPU, the
    GPU fast path left unused)."""
    if scale == "gpu" and preset["device"] in ("auto", "cpu") and not torch.cuda.is_available():
        print(
            "warning: the gpu scale on a machine without a CUDA GPU: full-width bc-vgg for "
            f"{preset['epochs']} epochs takes days on CPU cores",
            flush=True,
        )
    tip = gpu_tip(preset, len(rows), torch.cuda.is_available() and preset["device"] != "cpu")
    if tip:
        print(tip, flush=True)


def _imagenet_data(experiment: str, preset: dict, out: Path) -> tuple[dict, str | None]:
    """The preset with the imagenet experiment's data folder (generated small folders when none is
    given), and the data claim 4 is judged on (None: not ImageNet, no verdict)."""
    if experiment != "imagenet":
        return preset, None
    if preset["data_dir"] is not None:
        return preset, f"image folder {preset['data_dir']}"
    print(
        "imagenet: no ImageNet on this machine (none is downloaded); testing the path on small "
        "generated class-per-folder images. Claim 4 cannot be judged here: give --set "
        "data_dir=PATH with train/<class>/ and val/<class>/ (and a GPU) for the real run.",
        flush=True,
    )
    if not (out / "data").exists():
        make_image_folders(out / "data")
    return {**preset, "data_dir": str(out / "data")}, None


def _row_configs(preset: dict, rows, out: Path, experiment: str) -> dict[str, TrainConfig]:
    """Every row's training configuration; bad settings (a misspelt model too) fail here, before
    reproduce.json claims the folder."""
    configs = {row: row_config(preset, row, out, experiment) for row in rows}
    for c in {(c.model, c.width) for c in configs.values()}:
        check_model(*c)
    return configs


def _sweep_rows(configs, rows, preset: dict, cols, out: Path, data, progress: bool, say) -> dict:
    """Sweep every trained row with the experiment's columns: ``{row: sweep}`` (finished cells are
    read back)."""
    sweeps = {}
    distortions = [column_spec(preset, c) for c in cols]
    for i, row in enumerate(rows):
        say(
            f"[sweep {i + 1}/{len(rows)}] {row}: {', '.join(distortions)} "
            f"({preset['trials']} trials)",
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
    return sweeps


def _report(out: Path, rows, cols, title: str, claims: list[dict]) -> Path | None:
    """The report of the run's sweeps under ``out/report``: its HTML page, or None (and a line
    saying how to make it) where matplotlib is missing."""
    # "add-gauss" names both
    at = {c: REFERENCE[c] for c in cols if REFERENCE[c] is not None and c != "add-gauss-max"}
    if not have_matplotlib():
        # matplotlib is a dependency of the package, but a source tree run with a bare interpreter
        # (a GPU host's image) may lack it: hours of training must not end in a crash over the
        # pictures. Only that case is forgiven; any other failure to import or draw the report is a
        # bug and is raised.
        print(
            "report skipped (matplotlib is not installed); make it where it is: "
            "robustweights report "
            + " ".join(str(out / "sweeps" / row) for row in rows)
            + f" --out {out / 'report'}",
            flush=True,
        )
        return None
    from ..reports import report

    return report(
        [out / "sweeps" / row for row in rows], out / "report", at=at, title=title, claims=claims
    )["html"]


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
