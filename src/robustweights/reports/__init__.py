"""Reports: figures and tables from sweep result folders, for people to look at.

    robustweights report runs/sweep-sign runs/sweep-float --out reports/sign-vs-float
    rw.report(["runs/sweep-sign", "runs/sweep-float"], "reports/sign-vs-float",
              at={"add-gauss": 0.8})

A sweep result folder (written by :func:`robustweights.sweeps.run_sweep`) holds
``sweep.json`` (provenance: checkpoint, data, weights, commit, machine) and
``results.json`` (one row per distortion, strength and trial). A report turns
one or several such folders into, in ``out``:

- ``error_vs_strength.png``: test error against the strength of each test-time
  distortion, one line per checkpoint (mean over trials, min-max band);
- ``error_vs_bits.png``: test error against effective bits per weight
  (docs/method.md section 4), with the paper's 11% at 0.68 bits marked;
- ``error_vs_time.png``: for a sweep over time since programming (a device model's ``t``,
  ``docs/devices.md``), test error against time on a log axis, one line per network with the
  spread over chips (trials), compensation on and off side by side, and the device parameters
  in the caption;
- ``matrix.png``: docs/method.md section 3's matrix (training projection by
  test-time distortion), when the inputs hold at least two ways of training;
- ``report.html`` (self-contained: images embedded as data URIs, inline CSS,
  nothing fetched, so it opens offline and can be mailed), ``report.md``
  (links the PNGs beside it) and ``report.json`` (what went in; it also marks
  the folder as a report, so that a rerun may overwrite it and never a folder
  that holds something else).

Every figure names the dataset with its caveat (``CIFAR-10 (JPEG copy)``), and
the report lists each input's provenance, as docs/method.md asks of every result.

Reading the folders is :mod:`.sources`, the words and tables :mod:`.document`,
the figures :mod:`.figures`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..runs import check_writable, now, write_bytes, write_text
from .document import MATRIX_MAX_ROWS, Document, mean_at, table_columns
from .figures import (
    device_text,
    fig_bits,
    fig_matrix,
    fig_strength,
    fig_time,
    is_time,
    make_panels,
    palette,
    plain_text,
    to_png,
)
from .sources import Key, Source, dataset_caption, load_results, short_description

__all__ = ["report", "load_results", "short_description", "MARKER"]

MARKER = (
    "robustweights report"  # report.json "kind": a folder holding it is a report we may overwrite
)
FIGURES = ("error_vs_strength.png", "error_vs_bits.png", "error_vs_time.png", "matrix.png")
OUTPUTS = FIGURES + (
    "report.html",
    "report.md",
)  # what a rerun may replace or remove; report.json aside


def report(
    result_dirs: "list[str | Path]",
    out: "str | Path",
    *,
    at: "dict[str, float] | None" = None,
    title: str | None = None,
    claims: "list[dict] | None" = None,
) -> dict:
    """Write figures, ``report.html``, ``report.md`` and ``report.json`` for sweep result folders
    into ``out``.

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
    folders = _folders(result_dirs)
    out = Path(out)
    old_files = _check_out(out)  # (a file, or a folder of anything but an earlier report: refused)
    check_writable(out)  # before any work: one line for a folder that cannot be written
    sources = [Source(f, *load_results(f)) for f in folders]
    _name_sources(sources)
    # in order of first appearance: the sweep's order
    keys = list(dict.fromkeys(k for s in sources for k in s.curves))
    names = _display_names(keys)
    panels = make_panels(keys, names)
    columns = table_columns(keys, names, sources, at or {})

    # Everything is drawn and rendered (figures, pages, manifests) before the first byte is written,
    # so a failure leaves `out` as it was.
    caption = dataset_caption(sources)
    ylabel = _error_label(sources)
    pngs = _draw(sources, keys, names, panels, caption, ylabel)
    table = [
        {"label": s.label, **{label: mean_at(s, key, value) for label, key, value in columns}}
        for s in sources
    ]
    doc = Document(
        title or "Robustness to test-time weight distortions",
        caption,
        sources,
        keys,
        names,
        pngs,
        [label for label, _, _ in columns],
        table,
        ylabel,
        claims or [],
        {"error_vs_time.png": device_text(list(filter(is_time, keys)))},
    )
    manifest = _manifest(sources, columns, list(pngs) + ["report.html", "report.md"])
    _write(out, old_files, manifest, pngs, doc.markdown(), doc.html())
    return {
        "html": out / "report.html",
        "md": out / "report.md",
        "figures": [out / n for n in pngs],
        "table": table,
    }


def _folders(result_dirs) -> list[Path]:
    """The sweep result folders asked for, each once (a repeated one is refused)."""
    folders = [
        Path(d) for d in ([result_dirs] if isinstance(result_dirs, (str, Path)) else result_dirs)
    ]
    if not folders:
        raise UserError("give at least one sweep result folder")
    seen = set()
    for f in folders:
        if f.resolve() in seen:
            raise UserError(f"{f} is given twice; give each sweep result folder once")
        seen.add(f.resolve())
    return folders


def _draw(sources, keys, names, panels, caption, ylabel) -> dict[str, bytes]:
    """Every figure of the report as PNG bytes by file name, drawn in memory (nothing written)."""
    colors = palette(len(sources))
    with plain_text():  # names from files and flags are text: a '$' is no maths
        figures = {
            "error_vs_strength.png": fig_strength(sources, panels, colors, caption, ylabel),
            "error_vs_bits.png": fig_bits(sources, keys, names, colors, caption, ylabel),
            "error_vs_time.png": fig_time(sources, keys, colors, caption, ylabel),
        }
        if (
            len({(s.prov.get("train_projection"), s.prov.get("train_mode")) for s in sources}) >= 2
            and len(sources) <= MATRIX_MAX_ROWS
        ):  # (320 networks drew a figure 80,000 pixels tall)
            figures["matrix.png"] = fig_matrix(sources, panels, colors, caption, ylabel)
        return {name: to_png(fig) for name, fig in figures.items() if fig is not None}


def _manifest(sources, columns, files: list[str]) -> dict:
    """report.json: the marker that a folder holds a report, its inputs and the files it wrote."""
    return {
        "kind": MARKER,
        "inputs": [str(s.folder.resolve()) for s in sources],
        "labels": [s.label for s in sources],
        "at": {label: value for label, _, value in columns if value is not None},
        "files": files,
        "written": now(),
    }


def _write(out: Path, old_files: list, manifest: dict, pngs: dict, markdown: str, page: str):
    """Write a rendered report into ``out``, over an earlier report's files."""
    files = manifest["files"]
    claimed = list(dict.fromkeys(old_files + files))
    first_json = json.dumps({**manifest, "files": claimed}, indent=2) + "\n"
    last_json = json.dumps(manifest, indent=2) + "\n"
    # The marker goes first: a report interrupted half way still owns its folder and can be rerun.
    write_text(out / "report.json", first_json)
    for name, data in pngs.items():
        write_bytes(out / name, data)
    write_text(out / "report.md", markdown)
    write_text(out / "report.html", page)
    # e.g. matrix.png of an earlier report with more inputs
    for name in set(old_files) - set(files):
        (out / name).unlink(missing_ok=True)
    write_text(out / "report.json", last_json)


def _check_out(out: Path) -> list[str]:
    """Refuse an ``out`` that holds anything but an earlier report; return that report's files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another out=")
    try:
        if not out.exists() or not any(out.iterdir()):
            return []
    except OSError as e:
        raise UserError(f"{out} cannot be read ({e.strerror}); choose another out=") from None
    try:
        previous = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable or not JSON: not ours
        previous = None
    if not (isinstance(previous, dict) and previous.get("kind") == MARKER):
        raise UserError(
            f"{out} exists and is not a robustweights report folder; choose another out="
        )
    return [f for f in previous.get("files", []) if f in OUTPUTS]  # never remove anything else


def _name_sources(sources: list[Source]) -> None:
    """Make legend labels unique: a repeated label gets its folder's name (then its position)
    added."""
    base = {id(s): s.label for s in sources}
    for make in (
        lambda s, i: f"{base[id(s)]} [{s.folder.name}]",
        lambda s, i: f"{base[id(s)]} [{s.folder.name} #{i + 1}]",
    ):
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
            names[k] = (
                f"{k.name} "
                f"({', '.join(filter(None, [f'vs {k.param}' if k.param else '', k.fixed]))})"
            )
    return names


def _error_label(sources: list[Source]) -> str:
    metrics = {s.metric for s in sources}
    if len(metrics) > 1:
        raise UserError(
            f"these results measure different metrics ({', '.join(sorted(metrics))}); "
            "report each metric on its own"
        )
    metric = metrics.pop()
    what = f"{metric} (%)" if any(s.percent for s in sources) else metric
    splits = {s.prov.get("split") or "test" for s in sources}
    return f"{splits.pop()} {what}" if len(splits) == 1 else what
