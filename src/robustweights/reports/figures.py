"""Figures of a report: error (or a metric) against strength, effective bits, time; the matrix.

Drawn on matplotlib ``Figure`` objects with the Agg canvas explicitly, not
through pyplot: a report made inside a notebook neither switches the
notebook's backend nor leaves figures open. The curves come from
the ``Source`` objects of robustweights.reports (an input's provenance and
curves); axis labels and which way a parameter is stronger come from the
transform registry; a parameter the registry declares an axis of time (``Param.axis ==
"time"``, a device model's ``t``) is drawn on a log axis, and gets a figure of its own.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from ..errors import UserError
from ..transforms import entry

FIGURE_DPI = 120
PAPER_BITS, PAPER_ERROR = (
    0.68,
    11.0,
)  # docs/method.md claim 2: 11% CIFAR-10 test error at 0.68 effective bits
MARKERS = "osD^vPX*<>ph"


@dataclass(frozen=True)
class Key:
    """Which distortion a curve shows."""

    name: str  # transform name, e.g. "add-gauss"
    param: str  # the swept parameter; "" for a distortion without one (sign, identity)
    # the spec's other parameters, e.g. "scale=max": different values are different distortions
    fixed: str


@dataclass
class Curve:
    """Test error of one network under one distortion, per strength; errors in %."""

    x: list[float]  # strengths, ascending
    mean: list[float]  # mean over trials
    lo: list[float]  # lowest trial
    hi: list[float]  # highest trial
    trials: list[int]
    bits: list[
        float | None
    ]  # mean effective bits per weight; None where the distortion has no figure


@dataclass(frozen=True)
class Panel:
    """One plot: a swept distortion, or side by side every distortion without a parameter."""

    title: str
    keys: tuple[Key, ...]
    names: tuple[str, ...]  # the keys' display names (x tick labels of a panel without parameter)

    @property
    def swept(self) -> bool:
        return bool(self.keys[0].param)


def make_panels(keys: list[Key], names: dict[Key, str]) -> list[Panel]:
    fixed = tuple(k for k in keys if not k.param)
    return [Panel(names[k], (k,), (names[k],)) for k in keys if k.param] + (
        [Panel("without parameter", fixed, tuple(names[k] for k in fixed))] if fixed else []
    )


def plain_text():
    """Matplotlib settings under which every label is drawn as the text it is (no mathtext: a
    network named 'cost $5 vs $10' lost its dollars, and '$x^$' failed the whole report)."""
    return matplotlib.rc_context({"text.parse_math": False})


def palette(n: int) -> list:
    """A colour per network, all different (beyond 20, spread over a continuous colour map)."""
    if n > 20:
        return [matplotlib.colormaps["turbo"](0.05 + 0.9 * i / (n - 1)) for i in range(n)]
    return list(matplotlib.colormaps["tab10" if n <= 10 else "tab20"].colors[:n])


def set_y(ax, sources: list, at_least: float = 0) -> None:
    """One y scale for every panel: 0 to a little above the worst value, or logarithmic for a metric
    other than the error that spans more than two orders of magnitude (a perplexity that
    explodes)."""
    values = [s.baseline for s in sources] + [
        v for s in sources for c in s.curves.values() for v in c.lo + c.hi
    ]
    positive = [v for v in values if v > 0]
    if (
        not sources[0].percent
        and positive
        and len(positive) == len(values)
        and max(positive) / min(positive) > 100
    ):
        ax.set_yscale("log")
        return
    low = min(values + [0])  # a metric that goes negative (an R^2) keeps its points on the figure
    ax.set_ylim(
        low * 1.08 if low < 0 else 0, max(ymax(sources), at_least) if max(values) > 0 else 0
    )


def ymax(sources: list) -> float:
    """A shared upper y limit: comparing panels by eye needs one scale."""
    top = max(
        [s.baseline for s in sources]
        + [h for s in sources for c in s.curves.values() for h in c.hi]
    )
    return min(100.0, top * 1.08 + 2) if sources[0].percent else top * 1.08


def draw_curve(ax, xs, mean, lo, hi, color, marker="o") -> None:
    """Mean as a line with markers, min-max over trials as a band; one strength as a point with a
    bar."""
    if len(xs) == 1:
        ax.errorbar(
            xs,
            mean,
            yerr=[[mean[0] - lo[0]], [hi[0] - mean[0]]],
            fmt=marker,
            color=color,
            ms=5,
            capsize=3,
        )
    else:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
        ax.plot(xs, mean, color=color, marker=marker, ms=3.5, lw=1.6)


def draw_panel(ax, panel: Panel, sources: list, colors: list, *, labels: bool = True) -> None:
    """One panel: each source's curve (with band) and its undistorted error as a dashed line."""
    for s, color in zip(sources, colors):
        ax.axhline(s.baseline, color=color, ls="--", lw=0.9, alpha=0.8)
    if panel.swept:
        key = panel.keys[0]
        for s, color in zip(sources, colors):
            c = s.curves.get(key)
            if c:
                draw_curve(ax, c.x, c.mean, c.lo, c.hi, color)
        if key.param == "bits":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if is_time(key):
            time_axis(ax, [x for s in sources if key in s.curves for x in s.curves[key].x])
        if labels:
            ax.set_xlabel(param_label(key))
    else:
        # Categories side by side; several sources are spread a little so their bars do not hide
        # each other.
        step = min(0.6 / len(sources), 0.2)
        for i, (s, color) in enumerate(zip(sources, colors)):
            for j, key in enumerate(panel.keys):
                c = s.curves.get(key)
                if c:
                    x = j + (i - (len(sources) - 1) / 2) * step
                    draw_curve(ax, [x], c.mean[:1], c.lo[:1], c.hi[:1], color)
        crowded = sum(len(n) for n in panel.names) > 8 * len(panel.names) and len(panel.names) > 1
        ax.set_xticks(
            range(len(panel.keys)),
            panel.names,
            rotation=25 if crowded else 0,
            ha="right" if crowded else "center",
        )
        ax.set_xlim(-0.6, len(panel.keys) - 0.4)
        if labels:
            ax.set_xlabel("distortion (no strength to sweep)")
    if labels:
        ax.set_title(panel.title, fontsize=11)
    ax.grid(alpha=0.3)


NOISE_REFERENCES = {"std": "weight std", "max": "max|W|", "clip": "clip bound H", "mean": "mean|W|"}


def param_label(key: Key) -> str:
    if (key.name, key.param) == ("add-gauss", "sigma"):  # noise is relative to a reference: name it
        ref = dict(p.partition("=")[::2] for p in key.fixed.split(",") if p).get("scale", "std")
        return f"sigma (noise std / {NOISE_REFERENCES.get(ref, ref)})"
    p = param(key)
    return (p.label or key.param) if p is not None else key.param


def param(key: Key):
    """The registry's description of a key's swept parameter (its axis label, which way is
    stronger)."""
    try:
        return entry(key.name).param(key.param)
    except UserError:  # results of a transform this session has not registered
        return None


def legend_handles(sources: list, colors: list) -> list:
    return [
        Line2D([], [], color=c, marker="o", ms=4, lw=1.6, label=s.label)
        for s, c in zip(sources, colors)
    ] + [
        Patch(color="0.5", alpha=0.3, label="min-max over trials"),
        Line2D([], [], color="0.4", ls="--", lw=0.9, label="undistorted"),
    ]


def fig_strength(sources, panels, colors, caption, ylabel) -> Figure:
    """Figure 1: error against each distortion's strength, one panel per distortion."""
    ncols = 2 if len(panels) == 4 else min(3, len(panels))  # 2x2 rather than 3 + 1 alone
    nrows = math.ceil(len(panels) / ncols)
    width = max(4.4 * ncols, 8.0)  # at least room for the legend and the dataset caption
    fig = Figure(figsize=(width, 3.3 * nrows + 1.2), dpi=FIGURE_DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        draw_panel(ax, panel, sources, colors)
        ax.yaxis.set_tick_params(
            labelleft=True
        )  # sharey hides them on inner panels; they help reading
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(ylabel)
    set_y(axes[0][0], sources)
    set_suptitle(
        fig,
        f"{ylabel.replace(' (%)', '').capitalize()} under test-time weight distortions",
        caption,
    )
    handles = legend_handles(sources, colors)
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), max(1, int(width / 2.6))),
        frameon=False,
    )
    return fig


def on_cifar10(sources) -> bool:
    """Every result is a test error on CIFAR-10 (the only data and metric the paper's point belongs
    to)."""
    return bool(sources) and all(
        str(s.prov.get("dataset", "")).startswith("cifar10") and s.metric == "error"
        for s in sources
    )


def fig_bits(sources, keys, names, colors, caption, ylabel) -> Figure | None:
    """Figure 2: error against effective bits per weight; None when no row has an effective-bits
    figure."""
    bit_keys = [
        k
        for k in keys
        if any(b is not None for s in sources if k in s.curves for b in s.curves[k].bits)
    ]
    if not bit_keys:
        return None
    markers = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(bit_keys)}
    fig = Figure(figsize=(9, 5.4), dpi=FIGURE_DPI, layout="constrained")
    ax = fig.subplots()
    for s, color in zip(sources, colors):
        ax.axhline(s.baseline, color=color, ls="--", lw=0.9, alpha=0.8)
        for k in bit_keys:
            c = s.curves.get(k)
            pts = (
                sorted(p for p in zip(c.bits, c.mean, c.lo, c.hi) if p[0] is not None) if c else []
            )
            if pts:
                b, m, lo, hi = (list(v) for v in zip(*pts))
                draw_curve(ax, b, m, lo, hi, color, marker=markers[k])
    # the paper's point is a CIFAR-10 figure: drawn on CIFAR-10 results only
    paper = on_cifar10(sources)
    if paper:
        _mark_paper(ax)
    ax.set_xlim(left=0)
    set_y(ax, sources, PAPER_ERROR + 5 if paper else 0)
    ax.set_xlabel("effective bits per weight")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    # Over the axes, not the figure: the legends take the right-hand side.
    ax.set_title(
        wrapped_title(
            f"{ylabel.replace(' (%)', '').capitalize()} against effective bits per weight",
            caption,
            6.4,
        ),
        fontsize=12,
    )
    _bits_legends(fig, sources, colors, {k: (markers[k], names[k]) for k in bit_keys}, paper)
    return fig


def _mark_paper(ax) -> None:
    """The paper's point (11% test error at 0.68 effective bits per weight) and its line."""
    ax.axvline(PAPER_BITS, color="0.25", lw=0.8, ls=":")
    ax.plot([PAPER_BITS], [PAPER_ERROR], marker="*", ms=11, color="0.15", ls="none")
    # Written low, beside the line: the curves rarely go below the undistorted error, so nothing
    # hides it.
    ax.text(
        PAPER_BITS,
        0.025,
        " paper: 11% at 0.68 bits",
        ha="left",
        va="bottom",
        fontsize=8.5,
        color="0.15",
        transform=blended_transform_factory(ax.transData, ax.transAxes),
    )  # x in bits, y in axes fraction


def _bits_legends(fig, sources, colors, distortions: dict, paper: bool) -> None:
    """The legends of figure 2: networks by colour, distortions (``key: (marker, name)``) by
    marker, and the paper's star where it is drawn."""
    fig.legend(
        handles=legend_handles(sources, colors),
        loc="outside right upper",
        title="network",
        frameon=False,
    )
    fig.legend(
        handles=[
            Line2D([], [], color="0.2", marker=marker, ls="none", label=name)
            for marker, name in distortions.values()
        ]
        + [Line2D([], [], color="0.15", marker="*", ms=10, ls="none", label="paper (CIFAR-10)")]
        * paper,
        loc="outside right lower",
        title="distortion",
        frameon=False,
    )


def fig_matrix(sources, panels, colors, caption, ylabel) -> Figure:
    """Figure 3: rows are the networks (their training projection), columns the test-time
    distortions."""
    nr, nc = len(sources), len(panels)
    fig = Figure(figsize=(2.8 * nc + 1.4, 2.1 * nr + 1.3), dpi=FIGURE_DPI, layout="constrained")
    axes = fig.subplots(nr, nc, sharey=True, sharex="col", squeeze=False)
    for i, (s, color) in enumerate(zip(sources, colors)):
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            draw_panel(ax, panel, [s], [color], labels=False)
            if i == 0:
                ax.set_title(panel.title, fontsize=10)
            if i == nr - 1:
                ax.set_xlabel(param_label(panel.keys[0]) if panel.swept else "", fontsize=8.5)
        axes[i][0].set_ylabel(f"{s.label}\n{ylabel}", fontsize=9)
    set_y(axes[0][0], sources)
    set_suptitle(fig, "Training projection (rows) against test-time distortion (columns)", caption)
    return fig


TIME_TICKS = (
    (1, "1 s"),
    (60, "1 min"),
    (3600, "1 h"),
    (86400, "1 day"),
    (2.6e6, "1 month"),
    (3.15e7, "1 year"),
    (3.15e8, "10 years"),
)


def is_time(key: Key) -> bool:
    """Whether ``key`` is swept over a parameter of time (``Param.axis == "time"``)."""
    p = param(key) if key.param else None
    return p is not None and p.axis == "time"


def time_axis(ax, xs: list[float]) -> None:
    """A log axis of time in seconds, ticks named (1 s, 1 h, 1 day, ...) where they fall in the
    grid; a time of 0 on a linear stretch below the smallest other time (symlog)."""
    positive = [x for x in xs if x > 0]
    if len(positive) < len(xs):
        ax.set_xscale("symlog", linthresh=min(positive, default=1.0))
    else:
        ax.set_xscale("log")
    lo, hi = min(xs, default=1.0), max(xs, default=1.0)
    ticks = [(v, name) for v, name in TIME_TICKS if lo / 3 <= v <= hi * 3]
    if len(ticks) >= 2:
        ax.set_xticks([v for v, _ in ticks], [name for _, name in ticks], minor=False, fontsize=8)


def _reading(key: Key) -> tuple[str, str]:
    """A time key's fixed parameters split: ``(those of the reading, the others)``; the reading's
    (``Param.axis == "read"``: compensation) make the columns of the time figure."""
    read, rest = [], []
    for part in filter(None, key.fixed.split(",")):
        p = entry(key.name).param(part.partition("=")[0])
        (read if p is not None and p.axis == "read" else rest).append(part)
    return ",".join(read), ",".join(rest)


def device_text(keys: list[Key]) -> str:
    """The device parameters of the time keys, for a caption: each model's words and the
    parameters it was swept with."""
    models: dict[str, dict[str, None]] = {}  # each model's words once, then its settings
    for k in keys:
        e = entry(k.name)
        _, rest = _reading(k)
        quiet = [f"{p.name}={p.default}" for p in e.params if p.quiet and p.name not in rest]
        models.setdefault(k.name, {})[", ".join(rest.split(",") + quiet)] = None
    out = []
    for name, settings in models.items():
        words = entry(name).doc.split("\n")[0].replace("``", "").rstrip(".")
        out.append(f"{name} ({words}): " + "; ".join(settings))
    return "Device parameters: " + ". ".join(out) + "."


def fig_time(sources, keys, colors, caption, ylabel) -> Figure | None:
    """Figure 4: error against time since programming on a log axis, per network, the band the
    spread over chips (trials); one column per way of reading (compensation on and off side by
    side), one row per device configuration. None without a time sweep."""
    rows: dict[str, dict[str, Key]] = {}
    for k in filter(is_time, keys):
        read, rest = _reading(k)
        rows.setdefault(f"{k.name}:{rest}", {})[read] = k
    if not rows:
        return None
    cols = list(dict.fromkeys(r for by_read in rows.values() for r in by_read))
    width = max(4.6 * len(cols), 8.0)
    fig = Figure(figsize=(width, 3.4 * len(rows) + 1.6), dpi=FIGURE_DPI, layout="constrained")
    axes = fig.subplots(len(rows), len(cols), sharey=True, squeeze=False)
    for i, (row, by_read) in enumerate(rows.items()):
        for j, read in enumerate(cols):
            ax, key = axes[i][j], by_read.get(read)
            if key is None:
                ax.set_visible(False)
                continue
            draw_panel(ax, Panel(read or row, (key,), (read,)), sources, colors)
            name, rest = row.split(":", 1)
            title = [name, rest if len(rows) > 1 else "", read or "as swept"]
            ax.set_title(", ".join(filter(None, title)), fontsize=11)
            ax.yaxis.set_tick_params(labelleft=True)
        axes[i][0].set_ylabel(ylabel)
    set_y(axes[0][0], sources)
    text = f"{caption}. {device_text([k for r in rows.values() for k in r.values()])}"
    set_suptitle(
        fig, f"{ylabel.replace(' (%)', '').capitalize()} against time since programming", text
    )
    handles = legend_handles(sources, colors)
    handles[-2] = Patch(color="0.5", alpha=0.3, label="min-max over chips (trials)")
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False
    )
    return fig


def wrapped_title(title: str, caption: str, inches: float) -> str:
    """Title and dataset caption, wrapped to ``inches`` (a long caveat must not be clipped)."""
    return "\n".join(
        [title] + textwrap.wrap(caption, int(inches * 9.5))
    )  # characters per inch at 12 pt


def set_suptitle(fig: Figure, title: str, caption: str) -> None:
    fig.suptitle(wrapped_title(title, caption, fig.get_figwidth()), fontsize=12)


def to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # the Agg canvas, explicitly: no pyplot, no global backend
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=FIGURE_DPI, facecolor="white", bbox_inches="tight", pad_inches=0.1
    )
    return buf.getvalue()
