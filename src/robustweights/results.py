"""Sweep results: the row schema, and reading, writing, grouping and summarising rows.

A sweep writes one row per (distortion, strength, trial) cell (:data:`COLUMNS`);
``score`` is the value of the row's ``metric`` (the test error unless a user's
evaluation names another). Everything that reads rows (sweeps, reports,
experiments, the demo, the command line) reads them through here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

from .errors import UserError
from .runs import write_text
from .transforms import entry

__all__ = [
    "COLUMNS",
    "complete_row",
    "better_when_higher",
    "PERCENT_METRICS",
    "is_percent",
    "score_format",
    "mean_score",
    "by_spec",
    "curve_of",
    "lowest_bits",
    "write_rows",
    "spec_lines",
    "claims_markdown",
]

COLUMNS = [
    "distortion",
    "param",
    "value",
    "trial",
    "seed",
    "error",
    "loss",
    "effective_bits",
    "n_examples",
    "entropy_bits",
    "spec",
    "on",
    "metric",
    "score",
    "nominal_bits",
    "scale",
    "snr_bits",
]


_LOWER = {
    "error",
    "err",
    "errors",
    "loss",
    "nll",
    "cost",
    "drop",
    "ppl",
    "perplexity",
    "mse",
    "mae",
    "rmse",
    "cer",
    "wer",
    "distance",
    "risk",
}
_HIGHER = {
    "acc",
    "accuracy",
    "top1",
    "top5",
    "f1",
    "auc",
    "auroc",
    "bleu",
    "r2",
    "score",
    "precision",
    "recall",
    "map",
    "iou",
    "dice",
    "correct",
}


def better_when_higher(metric: str) -> bool:
    """The default direction of a metric by the words of its name: errors and losses down
    (``top1_error``, ``accuracy_drop``), accuracies and scores up (``top1``, ``val_acc``); down when
    no word says (give ``higher_is_better`` to be sure)."""
    words = {w for w in re.split(r"[^a-z0-9]+", metric.lower()) if w}
    words |= {w.rstrip("0123456789") for w in words}  # error2, top1 -> top
    if words & _LOWER:
        return False
    return bool(words & _HIGHER)


PERCENT_METRICS = ("error", "top5_error")  # shown as percentages where no measure record says


def is_percent(metric: str, measure: dict | None = None) -> bool:
    """Whether a metric is shown as a percentage: as its measure's record (``Measure.to_dict``)
    says, else for the classification errors (:data:`PERCENT_METRICS`)."""
    if isinstance(measure, dict) and isinstance(measure.get("percent"), bool):
        return measure["percent"]
    return metric in PERCENT_METRICS


def score_format(percent: bool):
    """``value -> text``: ``9.54%`` for a percentage, else four significant digits."""
    return (lambda v: f"{v:.2%}") if percent else (lambda v: f"{v:.4g}")


def complete_row(r: dict) -> dict:
    """A result row with the ``metric``/``score`` columns older results lack (their metric was the
    error)."""
    if "score" not in r:
        r = {**r, "metric": "error", "score": r.get("error")}
    return r


def by_spec(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by their distortion spec (one strength of one distortion), in first-seen
    order."""
    groups: dict[str, list[dict]] = {}
    for r in map(complete_row, rows):
        groups.setdefault(r["spec"], []).append(r)
    return groups


def mean_score(rows: list[dict], keep=lambda r: True, key: str = "score") -> float | None:
    """The mean ``key`` (the score; or ``error``) of the rows ``keep`` selects; None when none is
    selected."""
    values = [r[key] for r in map(complete_row, rows) if keep(r) and r.get(key) is not None]
    return sum(values) / len(values) if values else None


def curve_of(r: dict) -> str:
    """The curve a row lies on: its spec without the swept strength (``add-gauss:scale=max`` for
    ``add-gauss:sigma=0.8,scale=max``)."""
    name, _, params = r["spec"].partition(":")
    rest = [kv for kv in params.split(",") if kv and kv.partition("=")[0] != r.get("param")]
    return name + (":" + ",".join(rest) if rest else "")


def _weaker_first(r: dict):
    """Sort key that puts a curve's weaker strengths first (the registry says which way a parameter
    is stronger); None for a parameter the registry does not know."""
    if r.get("param") is None or not isinstance(r.get("value"), (int, float)):
        return lambda r: 0
    try:
        p = entry(r["distortion"]).param(r["param"])
    except UserError:
        return None
    if p is None:
        return None
    return (lambda r: r["value"]) if p.stronger == "up" else (lambda r: -r["value"])


def lowest_bits(
    rows: list[dict], target: float, higher_is_better: bool = False, bits: str = "effective_bits"
) -> dict | None:
    """The distortion strength with the lowest effective bits at which the mean score *stays* within
    ``target`` (at or below it; at or above it for a metric where higher is better): it meets the
    target there and at every weaker strength of the same curve (docs/method.md section 4). A
    strength without a finite bits figure (most of a power curve) is no candidate, but still ends
    the curve where it misses the target. Curves of a transform this session does not know are
    ordered by their bits. ``bits`` names the figure (``snr_bits``: the measured signal-to-noise
    bits of the weights as read, which every continuous distortion has); the result holds it
    under ``effective_bits``."""
    points: dict[str, list[tuple[float | None, float, str, list[dict]]]] = {}
    for spec, rs in by_spec(
        r for r in rows if r.get("spec")
    ).items():  # (a row without one is on no curve)
        mean = sum(r["score"] for r in rs) / len(rs)
        got = [r.get(bits) for r in rs]
        got = (
            (sum(got) / len(got))
            if all(isinstance(b, (int, float)) and math.isfinite(b) for b in got)
            else None
        )
        points.setdefault(curve_of(rs[0]), []).append((got, mean, spec, rs))
    best = None
    for curve in points.values():
        order = _weaker_first(curve[0][3][0])
        if order is None:  # unknown direction: the most bits first, as the bits say
            curve = sorted((p for p in curve if p[0] is not None), key=lambda p: -p[0])
        else:
            curve = sorted(curve, key=lambda p: order(p[3][0]))
        for got, mean, spec, rs in curve:
            if not (mean >= target if higher_is_better else mean <= target):
                # the score left the target here: stronger strengths on this curve do not count
                break
            if got is not None and (best is None or got < best["effective_bits"]):
                best = {
                    "spec": spec,
                    "effective_bits": got,
                    "mean_error": mean,
                    "mean_score": mean,
                    "metric": rs[0]["metric"],
                    "trials": len(rs),
                }
    return best


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    return buf.getvalue()


def write_rows(out: Path, rows: list[dict]) -> None:
    write_text(out / "results.json", json.dumps(rows, indent=1) + "\n")
    write_text(out / "results.csv", to_csv(rows))


def spec_lines(rows: list[dict], width: int = 40, percent: bool | None = None) -> list[str]:
    """One line of text per distortion spec: the mean score over its trials, with min and max where
    several; ``percent`` (default: :func:`is_percent` of the rows' metric) shows percentages."""
    out = []
    for spec, rs in by_spec(rows).items():
        metric, values = rs[0]["metric"], [r["score"] for r in rs]
        show = score_format(is_percent(metric) if percent is None else percent)
        spread = (
            f" (min {show(min(values))}, max {show(max(values))}, {len(values)} trials)"
            if len(values) > 1
            else ""
        )
        out.append(f"  {spec:<{width}} {metric} {show(sum(values) / len(values))}{spread}")
    return out


def claims_markdown(claims: list[dict], statements: bool = False) -> str:
    """The claims table in Markdown (``statements``: each claim's statement beside its number)."""
    lines = ["| claim | paper | measured | setting | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        claim = f"{c['claim']}. {c['statement']}" if statements else str(c["claim"])
        cells = [claim, c["paper"], c["measured"], c["setting"], f"**{c['verdict']}**"]
        lines.append(
            "| " + " | ".join(x.replace("|", "\\|").replace("\n", " ") for x in cells) + " |"
        )
    return "\n".join(lines) + "\n"
