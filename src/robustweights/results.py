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
from pathlib import Path

from .runs import write_text

__all__ = ["COLUMNS", "complete_row", "better_when_higher", "mean_score", "by_spec", "lowest_bits",
           "write_rows", "spec_lines", "claims_markdown"]

COLUMNS = ["distortion", "param", "value", "trial", "seed", "error", "loss", "effective_bits", "n_examples",
           "entropy_bits", "spec", "on", "metric", "score", "nominal_bits", "scale"]


def better_when_higher(metric: str) -> bool:
    """The default direction of a metric by its name: accuracies and scores up, errors and losses down."""
    return any(w in metric.lower() for w in ("acc", "top1", "top5", "f1", "auc", "bleu", "r2", "score"))


def complete_row(r: dict) -> dict:
    """A result row with the ``metric``/``score`` columns older results lack (their metric was the error)."""
    if "score" not in r:
        r = {**r, "metric": "error", "score": r.get("error")}
    return r


def by_spec(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by their distortion spec (one strength of one distortion), in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for r in map(complete_row, rows):
        groups.setdefault(r["spec"], []).append(r)
    return groups


def mean_score(rows: list[dict], keep=lambda r: True, key: str = "score") -> float | None:
    """The mean ``key`` (the score; or ``error``) of the rows ``keep`` selects; None when none is selected."""
    values = [r[key] for r in map(complete_row, rows) if keep(r) and r.get(key) is not None]
    return sum(values) / len(values) if values else None


def lowest_bits(rows: list[dict], target: float, higher_is_better: bool = False) -> dict | None:
    """The distortion strength with the lowest effective bits whose mean score meets ``target``
    (at or below it; at or above it for a metric where higher is better)."""
    best = None
    for spec, rs in by_spec(r for r in rows if r.get("effective_bits") is not None).items():
        mean = sum(r["score"] for r in rs) / len(rs)
        b = rs[0]["effective_bits"]
        ok = mean >= target if higher_is_better else mean <= target
        if ok and (best is None or b < best["effective_bits"]):
            best = {"spec": spec, "effective_bits": b, "mean_error": mean, "mean_score": mean,
                    "metric": rs[0]["metric"], "trials": len(rs)}
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


def spec_lines(rows: list[dict], width: int = 40) -> list[str]:
    """One line of text per distortion spec: the mean score over its trials, with min and max where several."""
    out = []
    for spec, rs in by_spec(rows).items():
        metric, values = rs[0]["metric"], [r["score"] for r in rs]
        show = (lambda v: f"{v:.2%}") if metric == "error" else (lambda v: f"{v:.4g}")
        spread = f" (min {show(min(values))}, max {show(max(values))}, {len(values)} trials)" if len(values) > 1 else ""
        out.append(f"  {spec:<{width}} {metric} {show(sum(values) / len(values))}{spread}")
    return out


def claims_markdown(claims: list[dict], statements: bool = False) -> str:
    """The claims table in Markdown (``statements``: each claim's statement beside its number)."""
    lines = ["| claim | paper | measured | setting | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        claim = f"{c['claim']}. {c['statement']}" if statements else str(c["claim"])
        cells = [claim, c["paper"], c["measured"], c["setting"], f"**{c['verdict']}**"]
        lines.append("| " + " | ".join(x.replace("|", "\\|").replace("\n", " ") for x in cells) + " |")
    return "\n".join(lines) + "\n"
