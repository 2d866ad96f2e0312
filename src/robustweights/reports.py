"""Reports: figures and tables from sweep result folders, for people to look at.

    robustweights report runs/sweep-sign runs/sweep-float --out reports/sign-vs-float
    rw.report(["runs/sweep-sign", "runs/sweep-float"], "reports/sign-vs-float", at={"add-gauss": 0.8})

A sweep result folder (written by :func:`robustweights.sweeps.run_sweep`) holds
``sweep.json`` (provenance: checkpoint, data, weights, commit, machine) and
``results.json`` (one row per distortion, strength and trial). A report turns
one or several such folders into, in ``out``:

- ``error_vs_strength.png``: test error against the strength of each test-time
  distortion, one line per checkpoint (mean over trials, min-max band);
- ``error_vs_bits.png``: test error against effective bits per weight
  (docs/method.md section 4), with the paper's 11% at 0.68 bits marked;
- ``matrix.png``: docs/method.md section 3's matrix (training projection by
  test-time distortion), when the inputs hold at least two ways of training;
- ``report.html`` (self-contained: images embedded as data URIs, inline CSS,
  nothing fetched, so it opens offline and can be mailed), ``report.md``
  (links the PNGs beside it) and ``report.json`` (what went in; it also marks
  the folder as a report, so that a rerun may overwrite it and never a folder
  that holds something else).

Every figure names the dataset with its caveat (``CIFAR-10 (JPEG copy)``), and
the report lists each input's provenance, as docs/method.md asks of every result.

The figures themselves are drawn by :mod:`robustweights.figures`.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .figures import Curve, Key, fig_bits, fig_matrix, fig_strength, make_panels, palette, param, to_png
from .results import claims_markdown, complete_row
from .runs import now, write_bytes, write_text

MARKER = "robustweights report"   # report.json "kind": a folder holding it is a report we may overwrite
FIGURES = ("error_vs_strength.png", "error_vs_bits.png", "matrix.png")
OUTPUTS = FIGURES + ("report.html", "report.md")   # what a rerun may replace or remove; report.json aside


HOW_TO_READ = (
    "Each point is the test error (or the metric the sweep measured) of a trained network whose "
    "weights were distorted at test time (each weight tensor the coverage line names, "
    "independently), averaged over the trials "
    "(independent random draws) at that strength; the shaded band spans the lowest to the highest "
    "trial, and the dashed line of the same colour is the network's undistorted error. That line is "
    "measured with the weights the network is normally tested with (projected, for a deterministic "
    "training projection such as sign), while distortions act on the hidden weights unless the "
    "provenance says projected: a curve need not start on its dashed line. "
    "Distortion grows with sigma (noise relative to its reference: the weight spread unless the "
    "axis names max|W| or the clip bound), frac and p, and falls as "
    "beta or bits grow: power:beta=0 and quant:bits=1 are binarization, power:beta=1 leaves the "
    "weights as they are. Effective bits per weight (docs/method.md section 4) bound what a distorted "
    "weight can carry: under Gaussian noise 0.5*log2(1 + E[W^2]/sigma_n^2), measured on each "
    "distorted tensor (0.5*log2(1 + 1/sigma^2) for noise relative to the spread of zero-mean "
    "weights), log2(levels) for a quantizer. "
    "Transforms that set magnitudes use each network's own scale unless the spec names one: the "
    "training clip bound for a network trained with a projection, max|W| for a float one (provenance: "
    "distortion scale). "
    "A robust network keeps a flat curve near its dashed line; the paper's claim is that networks "
    "trained with binarized weights stay flat far longer than float ones. The provenance tables "
    "below say which weights were distorted (hidden or projected) and whether batch-norm "
    "statistics were re-estimated after distorting."
)


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

def report(result_dirs: "list[str | Path]", out: "str | Path", *, at: "dict[str, float] | None" = None,
           title: str | None = None, claims: "list[dict] | None" = None) -> dict:
    """Write figures, ``report.html``, ``report.md`` and ``report.json`` for sweep result folders into ``out``.

    ``at`` maps a distortion name to the strength shown in the table of mean
    errors (e.g. ``{"add-gauss": 0.8, "power": 0.0}``); a distortion not named
    gets the grid value nearest to the median of its grid. ``title`` heads the
    report. ``claims`` (from :func:`robustweights.experiments.judge`) adds the
    claims table at the top. ``out`` is created if needed; an existing folder is overwritten
    only if it holds a report written here.

    Returns ``{"html": Path, "md": Path, "figures": [Path], "table": rows}``:
    one row per input, ``{"label": ..., column: mean error in % or None}``.
    Nothing is written unless every input reads and every argument is valid.
    """
    folders = [Path(d) for d in ([result_dirs] if isinstance(result_dirs, (str, Path)) else result_dirs)]
    if not folders:
        raise UserError("give at least one sweep result folder")
    seen = set()
    for f in folders:
        if f.resolve() in seen:
            raise UserError(f"{f} is given twice; give each sweep result folder once")
        seen.add(f.resolve())
    sources = [Source(f, *load_results(f)) for f in folders]
    _name_sources(sources)
    keys = list(dict.fromkeys(k for s in sources for k in s.curves))   # first appearance: the sweep's order
    names = _display_names(keys)
    panels = make_panels(keys, names)
    columns = _table_columns(keys, names, sources, at or {})
    out = Path(out)
    old_files = _check_out(out)

    # Everything is drawn before the first byte is written, so a failure leaves `out` as it was.
    colors = palette(len(sources))
    caption = dataset_caption(sources)
    ylabel = _error_label(sources)
    figures = {"error_vs_strength.png": fig_strength(sources, panels, colors, caption, ylabel),
               "error_vs_bits.png": fig_bits(sources, keys, names, colors, caption, ylabel)}
    if len({(s.prov.get("train_projection"), s.prov.get("train_mode")) for s in sources}) >= 2:
        figures["matrix.png"] = fig_matrix(sources, panels, colors, caption, ylabel)
    pngs = {name: to_png(fig) for name, fig in figures.items() if fig is not None}
    table = [{"label": s.label, **{label: _mean_at(s, key, value) for label, key, value in columns}}
             for s in sources]
    doc = Document(title or "Robustness to test-time weight distortions", caption, sources, keys, names,
                   pngs, [label for label, _, _ in columns], table, ylabel, claims or [])

    files = list(pngs) + ["report.html", "report.md"]
    manifest = {"kind": MARKER, "inputs": [str(s.folder.resolve()) for s in sources],
                "labels": [s.label for s in sources],
                "at": {label: value for label, _, value in columns if value is not None},
                "files": files, "written": now()}
    # The marker goes first: a report interrupted half way still owns its folder and can be rerun.
    claimed = list(dict.fromkeys(old_files + files))
    write_text(out / "report.json", json.dumps({**manifest, "files": claimed}, indent=2) + "\n")
    for name, data in pngs.items():
        write_bytes(out / name, data)
    write_text(out / "report.md", doc.markdown())
    write_text(out / "report.html", doc.html())
    for name in set(old_files) - set(files):   # e.g. matrix.png of an earlier report with more inputs
        (out / name).unlink(missing_ok=True)
    write_text(out / "report.json", json.dumps(manifest, indent=2) + "\n")
    return {"html": out / "report.html", "md": out / "report.md", "figures": [out / n for n in pngs],
            "table": table}


def load_results(result_dir: "str | Path") -> tuple[dict, list[dict]]:
    """``(sweep.json, rows of results.json)`` of a sweep result folder, checked.

    Raises :class:`UserError`, naming the folder and the file, for a folder
    that is not a sweep result: a file missing, unreadable, not JSON, or
    without the fields a report needs.
    """
    folder = Path(result_dir)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give a sweep result folder (from robustweights sweep)")
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
        raise UserError(f"{where}: data_description must be a string, not {prov['data_description']!r}")
    if not _is_number(prov["baseline_score"]) or metric == "error" and not 0 <= prov["baseline_score"] <= 1:
        raise UserError(f"{where}: the undistorted {metric} must be a number{' in [0, 1]' * (metric == 'error')}, "
                        f"not {prov['baseline_score']!r}")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{folder}/results.json holds no result rows (expected a non-empty JSON list)")
    for i, r in enumerate(rows):
        problem = _row_problem(r)
        if problem:
            raise UserError(f"{folder}/results.json row {i}: {problem}")
    return prov, [complete_row(r) for r in rows]


def _read_json(folder: Path, name: str):
    path = folder / name
    if not path.is_file():
        raise UserError(f"{folder} is not a sweep result folder: {name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is corrupt ({e.msg} at line {e.lineno}); rerun the sweep to rewrite it") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is corrupt (not UTF-8 text); rerun the sweep to rewrite it") from None
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
    if not (isinstance(r["distortion"], str) and r["distortion"]) or not isinstance(r["param"], str):
        return f"distortion {r['distortion']!r} and param {r['param']!r} must be names"
    for k in ("value", score):
        if not _is_number(r[k]):
            return f"{k} {r[k]!r} is not a finite number"
    if r.get("metric", "error") == "error" and not 0 <= r[score] <= 1:
        return f"error {r[score]!r} is outside [0, 1]"
    if r.get("effective_bits") is not None and not _is_number(r["effective_bits"]):
        return f"effective_bits {r['effective_bits']!r} is neither a finite number nor null"
    return None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_out(out: Path) -> list[str]:
    """Refuse an ``out`` that holds anything but an earlier report; return that report's files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return []
    try:
        previous = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):   # missing, unreadable or not JSON: not ours
        previous = None
    if not (isinstance(previous, dict) and previous.get("kind") == MARKER):
        raise UserError(f"{out} exists and is not a robustweights report folder; choose another --out")
    return [f for f in previous.get("files", []) if f in OUTPUTS]   # never remove anything else


# ---------------------------------------------------------------------------
# Curves: rows grouped by distortion and strength, mean and spread over trials
# ---------------------------------------------------------------------------

@dataclass
class Source:
    """One input: a sweep result folder, its provenance and its curves."""

    folder: Path
    prov: dict
    rows: list[dict]
    label: str = field(init=False)                  # legend name, unique among the inputs
    curves: dict[Key, Curve] = field(init=False)

    def __post_init__(self):
        self.label = self.prov["label"]
        self.metric = self.prov.get("metric", "error")
        self.unit = 100.0 if self.metric == "error" else 1.0    # the error is shown in %, other metrics as they are
        self.baseline = self.unit * self.prov["baseline_score"]
        self.curves = curves(self.rows, self.prov.get("scale_default"), self.unit)


def row_key(row: dict, default_scale: str | None = None) -> Key:
    """The distortion of a row: its name, swept parameter, and the other parameters of its spec.

    ``scale=<the sweep's default scale>`` is left out: each network is distorted
    at its own natural scale (``robustweights.sweeps.default_scale``), so a float
    and a sign-trained network's ``power`` curves belong in one panel.
    """
    _, _, rest = str(row.get("spec") or row["distortion"]).partition(":")
    default = f"scale={default_scale}" if default_scale else None
    fixed = ",".join(t for t in rest.split(",") if t and t.partition("=")[0] != row["param"] and t != default)
    return Key(row["distortion"], row["param"], fixed)


def curves(rows: list[dict], default_scale: str | None = None, unit: float = 100.0) -> dict[Key, Curve]:
    """Mean, lowest and highest score (times ``unit``: the error in %) over trials, per distortion and strength."""
    groups: dict[Key, dict[float, list[dict]]] = {}
    for r in rows:
        groups.setdefault(row_key(r, default_scale), {}).setdefault(float(r["value"]), []).append(r)
    out = {}
    for key, by_x in groups.items():
        xs = sorted(by_x)
        errors = [[unit * complete_row(r)["score"] for r in by_x[x]] for x in xs]
        bits = [[r["effective_bits"] for r in by_x[x] if r.get("effective_bits") is not None] for x in xs]
        out[key] = Curve(xs, [statistics.fmean(e) for e in errors], [min(e) for e in errors],
                         [max(e) for e in errors], [len(e) for e in errors],
                         [statistics.fmean(b) if b else None for b in bits])
    return out


def _name_sources(sources: list[Source]) -> None:
    """Make legend labels unique: a repeated label gets its folder's name (then its position) added."""
    for make in (lambda s, i: f"{s.prov['label']} [{s.folder.name}]",
                 lambda s, i: f"{s.prov['label']} [{s.folder.name} #{i + 1}]"):
        counts: dict[str, int] = {}
        for s in sources:
            counts[s.label] = counts.get(s.label, 0) + 1
        for i, s in enumerate(sources):
            if counts[s.label] > 1:
                s.label = make(s, i)


def _display_names(keys: list[Key]) -> dict[Key, str]:
    """A distortion's name, with its parameters added only where two distortions share the name."""
    names = {}
    for k in keys:
        if sum(other.name == k.name for other in keys) == 1:
            names[k] = k.name
        else:
            names[k] = f"{k.name} ({', '.join(filter(None, [f'vs {k.param}' if k.param else '', k.fixed]))})"
    return names


def _strongest(key: Key, curve: Curve) -> int:
    """Index of the most distorting strength of a curve."""
    p = param(key)
    return 0 if p is not None and p.stronger == "down" else len(curve.x) - 1


def short_description(description: str) -> str:
    """The dataset with its caveat, without the path: "CIFAR-10 (JPEG copy) from /x; test subset ..."
    gives "CIFAR-10 (JPEG copy); test subset ..." (a subset is a caveat too)."""
    head, sep, tail = description.partition(" from ")
    return "; ".join([head.strip()] + tail.split("; ")[1:]) if sep else description.strip()


def dataset_caption(sources: list[Source]) -> str:
    """The dataset every figure names; each one with its inputs' labels where the inputs disagree."""
    by_desc: dict[str, list[str]] = {}
    for s in sources:
        by_desc.setdefault(short_description(s.prov["data_description"]) or "dataset not recorded", []).append(s.label)
    if len(by_desc) == 1:
        return next(iter(by_desc))
    return "; ".join(f"{d}: {', '.join(labels)}" for d, labels in by_desc.items())


def _error_label(sources: list[Source]) -> str:
    metrics = {s.metric for s in sources}
    if len(metrics) > 1:
        raise UserError(f"these results measure different metrics ({', '.join(sorted(metrics))}); "
                        "report each metric on its own")
    metric = metrics.pop()
    what = "error (%)" if metric == "error" else metric
    splits = {s.prov.get("split") or "test" for s in sources}
    return f"{splits.pop()} {what}" if len(splits) == 1 else what


def score_text(s: Source, v: float, digits: int = 1) -> str:
    """A score as shown: the error in %, any other metric as it is."""
    return f"{v:.{digits}f}%" if s.metric == "error" else f"{v:.4g}"


# ---------------------------------------------------------------------------
# Tables and text
# ---------------------------------------------------------------------------

def _fmt(v: float) -> str:
    return f"{v:g}"


def _table_columns(keys, names, sources, at: dict) -> list[tuple[str, Key, float | None]]:
    """``(column label, distortion, strength)`` of the table of mean errors: one column per distortion."""
    for name, value in at.items():
        matches = [k for k in keys if name in (names[k], k.name)]
        if not matches:
            have = ", ".join(dict.fromkeys(names[k] for k in keys if k.param))
            raise UserError(f"--at {name}: no such distortion in these results; have: {have}")
        if not any(k.param for k in matches):
            raise UserError(f"--at {name}: {name} has no strength to choose")
        if not _is_number(value):
            raise UserError(f"--at {name}={value!r}: the strength must be a finite number")
    columns = []
    for k in keys:
        if not k.param:
            columns.append((names[k], k, None))
            continue
        grid = sorted({x for s in sources if k in s.curves for x in s.curves[k].x})
        want = at.get(names[k], at.get(k.name))
        if want is None:
            want = statistics.median(grid)
        value = min(grid, key=lambda x: (abs(x - want), x))   # on the grid: a mean needs measured points
        columns.append((f"{names[k]} {k.param}={_fmt(value)}", k, value))
    return columns


def _mean_at(s: Source, key: Key, value: float | None) -> float | None:
    c = s.curves.get(key)
    if c is None:
        return None
    if value is None:
        return c.mean[0]
    return c.mean[c.x.index(value)] if value in c.x else None


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def headline(s: Source, keys: list[Key], names: dict[Key, str]) -> str:
    """One line: undistorted error, error at each distortion's strongest setting, the lowest effective bits."""
    p = s.prov
    weights = f" ({p['baseline_weights']} weights)" if p.get("baseline_weights") else ""
    parts = []
    for k in keys:
        c = s.curves.get(k)
        if c is None:
            continue
        i = _strongest(k, c)
        where = f"{names[k]} {k.param}={_fmt(c.x[i])}" if k.param else names[k]
        spread = f" (min {c.lo[i]:.1f}, max {c.hi[i]:.1f} over {c.trials[i]} trials)" if c.hi[i] > c.lo[i] else ""
        parts.append(f"{where}: {score_text(s, c.mean[i])}{spread}")
    text = (f"undistorted {s.metric} {score_text(s, s.baseline)}{weights}; at the strongest setting: "
            f"{'; '.join(parts)}.")
    best = p.get("lowest_bits")
    if isinstance(best, dict) and _is_number(best.get("effective_bits")) and _is_number(p.get("target_error")):
        way = "at or above" if p.get("higher_is_better") else "at or below"
        text += (f" Lowest effective bits with mean {s.metric} {way} {score_text(s, s.unit * p['target_error'])}: "
                 f"{best['effective_bits']:.2f} bits per weight ({best.get('spec', '?')}).")
    if p.get("on") == "hidden" and "projected" in str(p.get("baseline_weights", "")) and p.get("batch_norm", True) \
            and not p.get("bn_reestimate"):
        text += (" Note: this network runs with projected weights, and its batch-norm statistics were gathered "
                 "with them; its hidden weights are much smaller (a sign-trained network's rarely reach H), so "
                 "curves of its distorted hidden weights start far above its undistorted error (about 90% for a "
                 "sign-trained CNN) because the statistics belong to other weights, not because the weights are "
                 "bad: distort the projected weights (--on projected) or re-estimate the statistics "
                 "(--bn-reestimate N).")
    return text


def provenance(s: Source) -> list[tuple[str, str]]:
    """(field, value) rows that say where an input's numbers came from."""
    p = s.prov

    def get(k):
        v = p.get(k)
        return "–" if v is None or v == "" else str(v)

    bn = p.get("bn_reestimate") or 0
    keep = (p.get("config") or {}).get("keep") if isinstance(p.get("config"), dict) else None
    return [
        ("label", s.label),
        ("result folder", str(s.folder)),
        ("checkpoint", get("checkpoint")),
        ("checkpoint sha256", get("checkpoint_sha256")[:12]),
        ("trained with", f"{get('train_projection')} ({get('train_mode')})"),
        ("model, width", f"{get('model')}, {get('width')}"),
        ("dataset", get("data_description")),
        ("split", get("split")),
        (f"undistorted {s.metric}", score_text(s, s.baseline, 2)
         + (f" ({p['baseline_weights']} weights)" if p.get("baseline_weights") else "")),
        ("weights distorted", get("on") + (f"; kept undistorted: {', '.join(map(str, keep))}" if keep else "")),
        ("coverage", (p.get("coverage") or {}).get("summary") or "not recorded (a sweep before coverage was recorded)"),
        ("distortion scale unless named", get("scale_default")),
        ("batch-norm re-estimation", f"on, {bn} training batches per cell" if bn
         else f"once before the sweep, {p['bn_calibrate']} training batches" if p.get("bn_calibrate")
         else "off (statistics as trained)"),
        ("trials, seed", f"{get('trials')}, {get('seed')}"),
        ("git commit", get("git_commit")),
        ("torch, device", f"{get('torch')}, {get('device')}"),
        ("time", _span(p.get("start"), p.get("end"))),
    ]


def _span(start, end) -> str:
    if not start:
        return "–"
    if not end:
        return f"{start} – not finished (the results may be partial)"
    try:
        seconds = (datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return f"{start} – {end}"
    h, rest = divmod(int(seconds), 3600)
    return f"{start} – {end} ({f'{h} h ' if h else ''}{rest // 60} min {rest % 60} s)"


# ---------------------------------------------------------------------------
# HTML and Markdown
# ---------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.prov td:first-child { color: #555; white-space: nowrap; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; }
.prov-grid { display: flex; flex-wrap: wrap; gap: 1.2em; } .prov-grid table { max-width: 560px; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""

FIGURE_CAPTIONS = {
    "error_vs_strength.png": "Test error (or the sweep's metric) against the strength of each test-time "
                             "distortion, one line per network: mean over trials, band from the lowest "
                             "to the highest trial; "
                             "dashed: the network's undistorted value.",
    "error_vs_bits.png": "Test error (or the sweep's metric) against effective bits per weight "
                         "(docs/method.md section 4) for the distortions that have such a figure; colour is "
                         "the network, marker the distortion. Dotted line and star (drawn for CIFAR-10 "
                         "results only): the paper's 11% test error at 0.68 effective bits per weight.",
    "matrix.png": "The matrix of docs/method.md section 3: one row per network (its training projection and "
                  "mode), one column per test-time distortion; same y scale everywhere.",
}


@dataclass
class Document:
    """Everything a report shows, rendered as HTML or Markdown."""

    title: str
    caption: str
    sources: list[Source]
    keys: list[Key]
    names: dict[Key, str]
    pngs: dict[str, bytes]
    columns: list[str]
    table: list[dict]
    error_label: str        # "test error (%)", or the split the sweeps measured
    claims: list[dict] = field(default_factory=list)   # `robustweights reproduce`'s verdicts, if any

    def html(self) -> str:
        e = html.escape
        out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(self.title)}</title>",
               f"<style>{CSS}</style></head><body>",
               f"<h1>{e(self.title)}</h1>",
               f"<p class=\"sub\">Data: {e(self.caption)}. Written {e(now())} by robustweights.</p>",
               *self._claims_html(),
               "<h2>Headlines</h2><ul>"]
        out += [f"<li><b>{e(s.label)}</b>: {e(headline(s, self.keys, self.names))}</li>" for s in self.sources]
        out.append("</ul><h2>Figures</h2>")
        for name, data in self.pngs.items():
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            out.append(f"<figure><img src=\"{uri}\" alt=\"{e(name)}\"><figcaption>{e(FIGURE_CAPTIONS[name])} "
                       f"Data: {e(self.caption)}.</figcaption></figure>")
        if self.no_bits_note():
            out.append(f"<p>{e(self.no_bits_note())}</p>")
        out.append(f"<h2>Mean {e(self.error_label)} at chosen strengths</h2>")
        out.append("<table><tr><th>network</th>" + "".join(f"<th>{e(c)}</th>" for c in self.columns) + "</tr>")
        for row in self.table:
            out.append(f"<tr><td>{e(row['label'])}</td>"
                       + "".join(f"<td class=\"num\">{_cell(row[c])}</td>" for c in self.columns) + "</tr>")
        out.append(f"</table><p>{e(self._table_note())}</p>")
        out.append(f"<h2>How to read</h2><p>{e(HOW_TO_READ)}</p><h2>Provenance</h2><div class=\"prov-grid\">")
        for s in self.sources:
            (_, label), *rows = provenance(s)
            out.append(f"<table class=\"prov\"><tr><th colspan=\"2\">{e(label)}</th></tr>"
                       + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows) + "</table>")
        out.append("</div></body></html>\n")
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"# {self.title}", "", f"Data: {self.caption}. Written {now()} by robustweights.", "",
               *self._claims_md(), "## Headlines", ""]
        out += [f"- **{_md(s.label)}**: {_md(headline(s, self.keys, self.names))}" for s in self.sources]
        out += ["", "## Figures", ""]
        for name in self.pngs:
            out += [f"![{name}]({name})", "", f"{FIGURE_CAPTIONS[name]} Data: {self.caption}.", ""]
        if self.no_bits_note():
            out += [self.no_bits_note(), ""]
        out += [f"## Mean {self.error_label} at chosen strengths", "",
                "| network | " + " | ".join(_md(c) for c in self.columns) + " |",
                "|---|" + "---:|" * len(self.columns)]
        out += ["| " + _md(row["label"]) + " | " + " | ".join(_cell(row[c]) for c in self.columns) + " |"
                for row in self.table]
        out += ["", self._table_note(), "", "## How to read", "", HOW_TO_READ, "", "## Provenance", ""]
        for s in self.sources:
            (_, label), *rows = provenance(s)
            out += [f"### {_md(label)}", "", "| | |", "|---|---|"]
            out += [f"| {_md(k)} | {_md(v)} |" for k, v in rows]
            out.append("")
        return "\n".join(out)

    _CLAIM_HEAD = ("claim", "paper", "measured", "setting", "verdict")

    def _claims_html(self) -> list[str]:
        if not self.claims:
            return []
        e = html.escape
        out = ["<h2>Claims (docs/method.md section 1)</h2><table><tr>"
               + "".join(f"<th>{h}</th>" for h in self._CLAIM_HEAD) + "</tr>"]
        for c in self.claims:
            out.append(f"<tr><td>{c['claim']}. {e(c['statement'])}</td><td>{e(c['paper'])}</td>"
                       f"<td>{e(c['measured'])}</td><td>{e(c['setting'])}</td><td><b>{e(c['verdict'])}</b></td></tr>")
        out.append("</table><p>A verdict comes only from numbers measured in this run; "
                   "<i>not run at this scale</i> where the claim needs a setting this run did not have.</p>")
        return out

    def _claims_md(self) -> list[str]:
        if not self.claims:
            return []
        out = ["## Claims (docs/method.md section 1)", "", claims_markdown(self.claims, statements=True)]
        out += ["A verdict comes only from numbers measured in this run; *not run at this scale* where the "
                "claim needs a setting this run did not have.", ""]
        return out

    def no_bits_note(self) -> str:
        if "error_vs_bits.png" in self.pngs:
            return ""
        return ("No distortion in these results has an effective-bits figure (docs/method.md section 4: Gaussian "
                "noise with sigma > 0, quantizers, sign), so there is no plot of error against bits.")

    def _table_note(self) -> str:
        return ("Mean over trials; – where a network was not tested at that strength. Strengths are the "
                "ones asked for (--at), else the grid value nearest to the middle of each distortion's grid.")


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
