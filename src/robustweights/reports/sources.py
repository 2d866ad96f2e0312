"""Reading sweep result folders, checked, into curves: mean, lowest and highest score per strength.

A sweep result folder (written by :func:`robustweights.sweeps.run_sweep`)
holds ``sweep.json`` (provenance) and ``results.json`` (one row per
distortion, strength and trial); :func:`load_results` reads and checks both,
:class:`Source` is one such input with its :func:`curves`.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, short_repr
from ..results import complete_row, is_percent
from ..transforms import entry
from .figures import Curve, Key


def load_results(result_dir: "str | Path") -> tuple[dict, list[dict]]:
    """``(sweep.json, rows of results.json)`` of a sweep result folder, checked.

    Raises :class:`UserError`, naming the folder and the file, for a folder
    that is not a sweep result: a file missing, unreadable, not JSON,
    without the fields a report needs, or with a field of the wrong type.
    """
    folder = Path(result_dir)
    if not folder.is_dir():
        raise UserError(
            f"{folder} is not a folder; give a sweep result folder (from robustweights sweep)"
        )
    prov = _read_json(folder, "sweep.json")
    rows = _read_json(folder, "results.json")
    where = f"{folder}/sweep.json"
    if not isinstance(prov, dict):
        raise UserError(f"{where} is not a sweep's provenance (expected a JSON object)")
    for k in ("label", "data_description"):
        if k not in prov:
            raise UserError(f"{where} lacks {k!r}; is {folder} a sweep result folder?")
    metric = prov.get("metric", "error")
    if not (isinstance(metric, str) and metric):
        raise UserError(f"{where}: metric must be a name, not {metric!r}")
    if prov.get("baseline_score") is None:
        if "baseline_error" not in prov:
            raise UserError(f"{where} lacks 'baseline_error'; is {folder} a sweep result folder?")
        prov = {**prov, "baseline_score": prov["baseline_error"]}
    if not (isinstance(prov["label"], str) and prov["label"].strip()):
        raise UserError(f"{where}: label must be a non-empty string, not {prov['label']!r}")
    if not isinstance(prov["data_description"], str):
        raise UserError(
            f"{where}: data_description must be a string, not {prov['data_description']!r}"
        )
    percent = is_percent(metric, prov.get("measure"))
    if not is_number(prov["baseline_score"]) or percent and not 0 <= prov["baseline_score"] <= 1:
        raise UserError(
            f"{where}: the undistorted {metric} must be a "
            f"number{' in [0, 1]' * percent}, not {prov['baseline_score']!r}"
        )
    problem = _field_problem(prov)
    if problem:
        raise UserError(f"{where}: {problem}; rerun the sweep to rewrite it")
    if not isinstance(rows, list) or not rows:
        raise UserError(
            f"{folder}/results.json holds no result rows (expected a non-empty JSON list)"
        )
    for i, r in enumerate(rows):
        problem = _row_problem(r)
        if problem:
            raise UserError(f"{folder}/results.json row {i}: {problem}")
    return prov, [complete_row(r) for r in rows]


# Optional fields of sweep.json that a report reads beyond printing them, with the types it can use:
# a wrong type is refused (one line naming the folder and the field), not taken as absent: it means
# a file written by something else or edited by hand, whose other numbers a report should not vouch
# for either.
TEXT_FIELDS = (
    "split",
    "train_projection",
    "train_mode",
    "scale_default",
    "on",
    "baseline_weights",
    "dataset",
)


def _field_problem(prov: dict) -> str | None:
    """What is wrong with the types of the optional fields of a sweep.json, or None."""
    for k in TEXT_FIELDS:
        if prov.get(k) is not None and not isinstance(prov[k], str):
            return f"{k} must be a string or null, not {short_repr(prov[k])}"
    coverage = prov.get("coverage")
    if coverage is not None:
        if not isinstance(coverage, dict):
            return (
                f"coverage must be an object (with a 'summary') or null, not {short_repr(coverage)}"
            )
        if coverage.get("summary") is not None and not isinstance(coverage["summary"], str):
            return (
                f"coverage.summary must be a string or null, not {short_repr(coverage['summary'])}"
            )
    config = prov.get("config")
    if (
        isinstance(config, dict)
        and config.get("keep") is not None
        and not isinstance(config["keep"], list)
    ):
        return f"config.keep must be a list of names or null, not {short_repr(config['keep'])}"
    return None


def _read_json(folder: Path, name: str):
    path = folder / name
    if not path.is_file():
        raise UserError(f"{folder} is not a sweep result folder: {name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path} is corrupt ({e.msg} at line {e.lineno}); rerun the sweep to rewrite it"
        ) from None
    except UnicodeDecodeError:
        raise UserError(
            f"{path} is corrupt (not UTF-8 text); rerun the sweep to rewrite it"
        ) from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror})") from None


def _row_problem(r) -> str | None:
    """What is wrong with one row of results.json, or None."""
    if not isinstance(r, dict):
        return "not a JSON object"
    score = "score" if "score" in r else "error"
    missing = [k for k in ("distortion", "param", "value", score) if k not in r]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not (isinstance(r["distortion"], str) and r["distortion"]) or not isinstance(
        r["param"], str
    ):
        return f"distortion {r['distortion']!r} and param {r['param']!r} must be names"
    for k in ("value", score):
        if not is_number(r[k]):
            return f"{k} {r[k]!r} is not a finite number"
    if r.get("metric", "error") == "error" and not 0 <= r[score] <= 1:
        return f"error {r[score]!r} is outside [0, 1]"
    if r.get("effective_bits") is not None and not is_number(r["effective_bits"]):
        return f"effective_bits {r['effective_bits']!r} is neither a finite number nor null"
    return None


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Source:
    """One input: a sweep result folder, its provenance and its curves."""

    folder: Path
    prov: dict
    rows: list[dict]
    label: str = field(init=False)  # legend name, unique among the inputs
    curves: dict[Key, Curve] = field(init=False)

    def __post_init__(self):
        self.label = " ".join(
            str(self.prov["label"]).split()
        )  # one line: no breaks or tabs in a legend
        self.metric = self.prov.get("metric", "error")
        # a percentage (the error) is shown in %, any other measure as it is
        self.percent = is_percent(self.metric, self.prov.get("measure"))
        self.unit = 100.0 if self.percent else 1.0
        self.baseline = self.unit * self.prov["baseline_score"]
        self.curves = curves(self.rows, self.prov.get("scale_default"), self.unit)


def row_key(row: dict, default_scale: str | None = None) -> Key:
    """The distortion of a row: its name, swept parameter, and the other parameters of its spec.

    ``scale=<the sweep's default scale>`` is left out for transforms whose
    scale follows that default: each network is distorted at its own natural
    scale (``robustweights.sweeps.default_scale``), so a float and a
    sign-trained network's ``power`` curves belong in one panel. Additive
    noise does not follow it (its reference is ``std`` unless its spec names
    another), so ``add-gauss:...,scale=max`` keeps its own curve for every
    network, also for a float one whose sweep default is ``max``.
    """
    _, _, rest = str(row.get("spec") or row["distortion"]).partition(":")
    default = f"scale={default_scale}" if default_scale else None
    try:
        scale = entry(row["distortion"]).param("scale")
    except (
        UserError,
        KeyError,
    ):  # a transform this session has not registered, or one without a scale
        scale = None
    if scale is not None and not scale.follows:
        default = f"scale={scale.default}"  # its own default: the spec leaves it out (quiet)
    fixed = ",".join(
        t for t in rest.split(",") if t and t.partition("=")[0] != row["param"] and t != default
    )
    return Key(row["distortion"], row["param"], fixed)


def curves(
    rows: list[dict], default_scale: str | None = None, unit: float = 100.0
) -> dict[Key, Curve]:
    """Mean, lowest and highest score (times ``unit``: the error in %) over trials, per distortion
    and strength."""
    groups: dict[Key, dict[float, list[dict]]] = {}
    for r in rows:
        groups.setdefault(row_key(r, default_scale), {}).setdefault(float(r["value"]), []).append(r)
    out = {}
    for key, by_x in groups.items():
        xs = sorted(by_x)
        errors = [[unit * complete_row(r)["score"] for r in by_x[x]] for x in xs]
        bits = [
            [r["effective_bits"] for r in by_x[x] if r.get("effective_bits") is not None]
            for x in xs
        ]
        out[key] = Curve(
            xs,
            [statistics.fmean(e) for e in errors],
            [min(e) for e in errors],
            [max(e) for e in errors],
            [len(e) for e in errors],
            [statistics.fmean(b) if b else None for b in bits],
        )
    return out


def short_description(description: str) -> str:
    """The dataset with its caveat, without the path: "CIFAR-10 (JPEG copy) from /x; test subset
    ..." gives "CIFAR-10 (JPEG copy); test subset ..." (a subset is a caveat too)."""
    head, sep, tail = description.partition(" from ")
    return "; ".join([head.strip()] + tail.split("; ")[1:]) if sep else description.strip()


def dataset_caption(sources: list[Source]) -> str:
    """The dataset every figure names; each one with its inputs' labels where the inputs
    disagree."""
    by_desc: dict[str, list[str]] = {}
    for s in sources:
        by_desc.setdefault(
            short_description(s.prov["data_description"]) or "dataset not recorded", []
        ).append(s.label)
    if len(by_desc) == 1:
        return next(iter(by_desc))
    return "; ".join(f"{d}: {', '.join(labels)}" for d, labels in by_desc.items())


def score_text(s: Source, v: float, digits: int = 1) -> str:
    """A score as shown: a percentage (the error) in %, any other measure as it is."""
    return f"{v:.{digits}f}%" if s.percent else f"{v:.4g}"
