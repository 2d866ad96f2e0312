"""What a report says in words and tables, rendered as HTML and Markdown.

Its words and tables: the headlines, the mean errors and the provenance.
"""

from __future__ import annotations

import base64
import datetime
import html
import statistics
from dataclasses import dataclass, field

from ..errors import UserError
from ..results import claims_markdown
from ..runs import now
from .figures import Curve, Key, param
from .sources import Source, is_number, score_text


HOW_TO_READ = (
    "Each point is the test error (or the metric the sweep measured) of a trained network whose "
    "weights were distorted at test time (each weight tensor the coverage line names, "
    "independently), averaged over the trials (independent random draws) at that strength; the "
    "shaded band spans the lowest to the highest trial, and the dashed line of the same colour is "
    "the network's undistorted error. That line is measured with the weights the network is "
    "normally tested with (projected, for a deterministic training projection such as sign), while "
    "distortions act on the hidden weights unless the provenance says projected: a curve need not "
    "start on its dashed line. Distortion grows with sigma (noise relative to its reference: the "
    "weight spread unless the axis names max|W| or the clip bound), frac and p, and falls as beta "
    "or bits grow: power:beta=0 and quant:bits=1 are binarization, power:beta=1 leaves the weights "
    "as they are. Effective bits per weight (docs/method.md section 4) bound what a distorted "
    "weight can carry: under Gaussian noise 0.5*log2(1 + E[W^2]/sigma_n^2), measured on each "
    "distorted tensor (0.5*log2(1 + 1/sigma^2) for noise relative to the spread of zero-mean "
    "weights), log2(levels) for a quantizer. Transforms that set magnitudes use each network's own "
    "scale unless the spec names one: the training clip bound for a network trained with a "
    "projection, max|W| for a float one (provenance: distortion scale). A robust network keeps a "
    "flat curve near its dashed line; the paper's claim is that networks trained with binarized "
    "weights stay flat far longer than float ones. The provenance tables below say which weights "
    "were distorted (hidden or projected) and whether batch-norm statistics were re-estimated "
    "after distorting."
)


def _fmt(v: float) -> str:
    return f"{v:g}"


def table_columns(keys, names, sources, at: dict) -> list[tuple[str, Key, float | None]]:
    """``(column label, distortion, strength)`` of the table of mean errors: one column per
    distortion."""
    for name, value in at.items():
        matches = [k for k in keys if name in (names[k], k.name)]
        if not matches:
            have = ", ".join(dict.fromkeys(names[k] for k in keys if k.param))
            raise UserError(f"at= {name}: no such distortion in these results; have: {have}")
        if not any(k.param for k in matches):
            raise UserError(f"at= {name}: {name} has no strength to choose")
        if not is_number(value):
            raise UserError(f"at= {name}: the strength must be a finite number, not {value!r}")
    columns = []
    for k in keys:
        if not k.param:
            columns.append((names[k], k, None))
            continue
        grid = sorted({x for s in sources if k in s.curves for x in s.curves[k].x})
        want = at.get(names[k], at.get(k.name))
        if want is None:
            want = statistics.median(grid)
        value = min(
            grid, key=lambda x: (abs(x - want), x)
        )  # on the grid: a mean needs measured points
        columns.append((f"{names[k]} {k.param}={_fmt(value)}", k, value))
    return columns


def mean_at(s: Source, key: Key, value: float | None) -> float | None:
    c = s.curves.get(key)
    if c is None:
        return None
    if value is None:
        return c.mean[0]
    return c.mean[c.x.index(value)] if value in c.x else None


def _cell(v: float | None, percent: bool = True) -> str:
    """A table cell: a percentage (the error) to a tenth, any other measure to four significant
    digits."""
    return "–" if v is None else f"{v:.1f}" if percent else f"{v:.4g}"


def _strongest(key: Key, curve: Curve) -> int:
    """Index of the most distorting strength of a curve."""
    p = param(key)
    return 0 if p is not None and p.stronger == "down" else len(curve.x) - 1


def headline(s: Source, keys: list[Key], names: dict[Key, str]) -> str:
    """One line: undistorted error, error at each distortion's strongest setting, the lowest
    effective bits."""
    p = s.prov
    weights = f" ({p['baseline_weights']} weights)" if p.get("baseline_weights") else ""
    parts = []
    for k in keys:
        c = s.curves.get(k)
        if c is None:
            continue
        i = _strongest(k, c)
        where = f"{names[k]} {k.param}={_fmt(c.x[i])}" if k.param else names[k]
        spread = (
            f" (min {score_text(s, c.lo[i])}, max {score_text(s, c.hi[i])} over {c.trials[i]} "
            f"trials)"
            if c.hi[i] > c.lo[i]
            else ""
        )
        parts.append(f"{where}: {score_text(s, c.mean[i])}{spread}")
    text = (
        f"undistorted {s.metric} {score_text(s, s.baseline)}{weights}; at the strongest setting: "
        f"{'; '.join(parts)}."
    )
    best = p.get("lowest_bits")
    if (
        isinstance(best, dict)
        and is_number(best.get("effective_bits"))
        and is_number(p.get("target_error"))
    ):
        way = "at or above" if p.get("higher_is_better") else "at or below"
        text += (
            f" Lowest effective bits with mean {s.metric} {way} "
            f"{score_text(s, s.unit * p['target_error'])}: {best['effective_bits']:.2f} bits per "
            f"weight ({best.get('spec', '?')})."
        )
    if (
        p.get("on") == "hidden"
        and "projected" in str(p.get("baseline_weights", ""))
        and p.get("batch_norm", True)
        and not p.get("bn_reestimate")
    ):
        text += (
            " Note: this network runs with projected weights, and its batch-norm statistics were "
            "gathered with them; its hidden weights are much smaller (a sign-trained network's "
            "rarely reach H), so curves of its distorted hidden weights start far above its "
            "undistorted error (about 90% for a sign-trained CNN) because the statistics belong to "
            "other weights, not because the weights are bad: distort the projected weights (--on "
            "projected) or re-estimate the statistics (--bn-reestimate N)."
        )
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
        (
            f"undistorted {s.metric}",
            score_text(s, s.baseline, 2)
            + (f" ({p['baseline_weights']} weights)" if p.get("baseline_weights") else ""),
        ),
        (
            "weights distorted",
            get("on") + (f"; kept undistorted: {', '.join(map(str, keep))}" if keep else ""),
        ),
        (
            "coverage",
            (p.get("coverage") or {}).get("summary")
            or "not recorded (a sweep before coverage was recorded)",
        ),
        ("distortion scale unless named", get("scale_default")),
        (
            "batch-norm re-estimation",
            f"on, {bn} training batches per cell"
            if bn
            else f"once before the sweep, {p['bn_calibrate']} training batches"
            if p.get("bn_calibrate")
            else "off (statistics as trained)",
        ),
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
        seconds = (
            datetime.datetime.fromisoformat(end) - datetime.datetime.fromisoformat(start)
        ).total_seconds()
    except (TypeError, ValueError):
        return f"{start} – {end}"
    h, rest = divmod(int(seconds), 3600)
    return f"{start} – {end} ({f'{h} h ' if h else ''}{rest // 60} min {rest % 60} s)"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
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


MATRIX_MAX_ROWS = 24  # networks in the matrix figure (one row of panels each)


FIGURE_CAPTIONS = {
    "error_vs_strength.png": "Test error (or the sweep's metric) against the strength of each "
    "test-time distortion, one line per network: mean over trials, band from the lowest "
    "to the highest trial; dashed: the network's undistorted value.",
    "error_vs_bits.png": "Test error (or the sweep's metric) against effective bits per weight "
    "(docs/method.md section 4) for the distortions that have such a figure; colour is "
    "the network, marker the distortion. Dotted line and star (drawn for CIFAR-10 "
    "results only): the paper's 11% test error at 0.68 effective bits per weight.",
    "error_vs_time.png": "Test error (or the sweep's metric) against time since programming on "
    "a log axis (a device model swept over t, docs/devices.md), one line per network: mean over "
    "chips (trials: each chip programmed once and read at every time), band from the lowest to "
    "the highest chip; one column per way of reading (compensation on and off side by side); "
    "dashed: the network's undistorted value.",
    "matrix.png": "The matrix of docs/method.md section 3: one row per network (its training "
    "projection and mode), one column per test-time distortion; same y scale everywhere.",
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
    error_label: str  # "test error (%)", or the split the sweeps measured
    claims: list[dict] = field(default_factory=list)  # `robustweights reproduce`'s verdicts, if any
    notes: dict[str, str] = field(default_factory=dict)  # words added to a figure's caption

    def figure_caption(self, name: str) -> str:
        """A figure's caption: its words, those the report adds (a device's parameters)."""
        return " ".join(filter(None, (FIGURE_CAPTIONS[name], self.notes.get(name, ""))))

    @property
    def metric(self) -> str:  # one for all sources (a report refuses to mix metrics)
        return self.sources[0].metric if self.sources else "error"

    @property
    def percent(self) -> bool:  # whether the metric is shown as a percentage
        return self.sources[0].percent if self.sources else True

    def html(self) -> str:
        e = html.escape
        out = [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{e(self.title)}</title>",
            f"<style>{CSS}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
            f'<p class="sub">Data: {e(self.caption)}. Written {e(now())} by robustweights.</p>',
            *self._claims_html(),
            "<h2>Headlines</h2><ul>",
        ]
        out += [
            f"<li><b>{e(s.label)}</b>: {e(headline(s, self.keys, self.names))}</li>"
            for s in self.sources
        ]
        out.append("</ul><h2>Figures</h2>")
        for name, data in self.pngs.items():
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            out.append(
                f'<figure><img src="{uri}" alt="{e(name)}">'
                f"<figcaption>{e(self.figure_caption(name))} "
                f"Data: {e(self.caption)}.</figcaption></figure>"
            )
        for note in filter(None, (self.no_bits_note(), self.matrix_note())):
            out.append(f"<p>{e(note)}</p>")
        out.append(f"<h2>Mean {e(self.error_label)} at chosen strengths</h2>")
        out.append(
            "<table><tr><th>network</th>"
            + "".join(f"<th>{e(c)}</th>" for c in self.columns)
            + "</tr>"
        )
        for row in self.table:
            out.append(
                f"<tr><td>{e(row['label'])}</td>"
                + "".join(
                    f'<td class="num">{_cell(row[c], self.percent)}</td>' for c in self.columns
                )
                + "</tr>"
            )
        out.append(f"</table><p>{e(self._table_note())}</p>")
        out.append(
            f'<h2>How to read</h2><p>{e(HOW_TO_READ)}</p><h2>Provenance</h2><div class="prov-grid">'
        )
        for s in self.sources:
            (_, label), *rows = provenance(s)
            out.append(
                f'<table class="prov"><tr><th colspan="2">{e(label)}</th></tr>'
                + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows)
                + "</table>"
            )
        out.append("</div></body></html>\n")
        return "\n".join(out)

    def markdown(self) -> str:
        out = [
            f"# {_md(self.title)}",
            "",
            f"Data: {_md(self.caption)}. Written {now()} by robustweights.",
            "",
            *self._claims_md(),
            "## Headlines",
            "",
        ]
        out += [
            f"- **{_md(s.label)}**: {_md(headline(s, self.keys, self.names))}" for s in self.sources
        ]
        out += ["", "## Figures", ""]
        for name in self.pngs:
            out += [
                f"![{name}]({name})",
                "",
                f"{_md(self.figure_caption(name))} Data: {_md(self.caption)}.",
                "",
            ]
        for note in filter(None, (self.no_bits_note(), self.matrix_note())):
            out += [note, ""]
        out += [
            f"## Mean {self.error_label} at chosen strengths",
            "",
            "| network | " + " | ".join(_md(c) for c in self.columns) + " |",
            "|---|" + "---:|" * len(self.columns),
        ]
        out += [
            "| "
            + _md(row["label"])
            + " | "
            + " | ".join(_cell(row[c], self.percent) for c in self.columns)
            + " |"
            for row in self.table
        ]
        out += [
            "",
            self._table_note(),
            "",
            "## How to read",
            "",
            HOW_TO_READ,
            "",
            "## Provenance",
            "",
        ]
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
        out = [
            "<h2>Claims (docs/method.md section 1)</h2><table><tr>"
            + "".join(f"<th>{h}</th>" for h in self._CLAIM_HEAD)
            + "</tr>"
        ]
        for c in self.claims:
            out.append(
                f"<tr><td>{c['claim']}. {e(c['statement'])}</td><td>{e(c['paper'])}</td>"
                f"<td>{e(c['measured'])}</td><td>{e(c['setting'])}</td>"
                f"<td><b>{e(c['verdict'])}</b></td></tr>"
            )
        out.append(
            "</table><p>A verdict comes only from numbers measured in this run; <i>not run at this "
            "scale</i> where the claim needs a setting this run did not have.</p>"
        )
        return out

    def _claims_md(self) -> list[str]:
        if not self.claims:
            return []
        out = [
            "## Claims (docs/method.md section 1)",
            "",
            claims_markdown(self.claims, statements=True),
        ]
        out += [
            "A verdict comes only from numbers measured in this run; *not run at this scale* "
            "where the claim needs a setting this run did not have.",
            "",
        ]
        return out

    def matrix_note(self) -> str:
        if len(self.sources) <= MATRIX_MAX_ROWS or "matrix.png" in self.pngs:
            return ""
        return (
            f"The matrix figure is drawn for at most {MATRIX_MAX_ROWS} networks; these results "
            f"hold {len(self.sources)}, all in the figures above and the table below."
        )

    def no_bits_note(self) -> str:
        if "error_vs_bits.png" in self.pngs:
            return ""
        return (
            "No distortion in these results has an effective-bits figure (docs/method.md section "
            "4: Gaussian noise with sigma > 0, quantizers, sign), so there is no plot of error "
            "against bits."
        )

    def _table_note(self) -> str:
        return (
            "Mean over trials; – where a network was not tested at that strength. Each column "
            "names the strength it shows: the grid value nearest to the one asked for (--at), else "
            "to the middle of each distortion's grid."
        )


def _md(text: str) -> str:
    """Text safe in Markdown, a table cell included: names from strangers' files or flags render as
    text (``<``, ``>`` and ``&`` as entities, no raw HTML; ``|`` escaped; line breaks as spaces)."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
