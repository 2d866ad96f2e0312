"""The distortion grid grammar, in one place: which transforms, strengths and trials a sweep runs.

A grid is a transform spec whose one swept parameter holds a list
(``add-gauss:sigma=0,0.25,0.5``), an inclusive range ``start:stop:step``
(``power:beta=0:1:0.1``) or an integer range ``a..b`` (``quant:bits=1..8``); a
grid without a list is a single strength. Every (distortion, strength, trial)
is a :class:`Cell`; random distortions get ``trials`` independent draws,
deterministic ones (and random ones that cannot vary, such as ``sigma=0``) one.
Each cell has its own seed derived from the sweep seed and the cell
(:func:`cell_seed`), so any cell can be rerun alone. A parameter that declares
itself an axis of the reading (``Param(..., axis="time")``, such as the time
since programming of a device model) is left out of the seed: the cells of one
trial that differ only in it share their draws, one chip read at several times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .draws import derive_seed
from .errors import UserError
from .transforms import Transform, entry, parse_spec, transform

__all__ = ["expand", "parse_grid", "swept_param", "Cell", "cells", "cell_seed"]


MAX_VALUES = 10_000  # strengths in one grid: more is a typo (a step of 1e-8), not an experiment


def _check_count(n: int, where: str) -> None:
    if n > MAX_VALUES:
        raise UserError(
            f"{where}: {n:,} strengths in one grid (at most {MAX_VALUES:,}); "
            f"check the step or range"
        )


def expand(raw: list[str], where: str) -> list[str]:
    """Values of one parameter: a list, ``start:stop:step`` (stop included) or ``a..b``
    (integers)."""
    if len(raw) == 1 and ".." in raw[0]:
        a, _, b = raw[0].partition("..")
        try:
            lo, hi = int(a), int(b)
        except ValueError:
            raise UserError(f"{where}: a range a..b needs integers, got {raw[0]!r}") from None
        _check_count(hi - lo + 1, where)
        return [str(v) for v in range(lo, hi + 1)]
    if len(raw) == 1 and raw[0].count(":") == 2:
        try:
            a, b, s = (float(x) for x in raw[0].split(":"))
        except ValueError:
            raise UserError(
                f"{where}: a range is start:stop:step with numbers, got {raw[0]!r}"
            ) from None
        if not all(math.isfinite(x) for x in (a, b, s)):
            raise UserError(f"{where}: range {raw[0]!r} needs finite numbers")
        if not s > 0 or b < a:
            raise UserError(f"{where}: range {raw[0]!r} needs step > 0 and stop >= start")
        n = int(math.floor((b - a) / s + 1e-9))
        _check_count(n + 1, where)
        return [repr(round(a + i * s, 10)) for i in range(n + 1)]
    return raw


def parse_grid(spec: str, scale: str | None = None) -> list[Transform]:
    """The transforms of a distortion grid, in grid order (see the module docstring).

    ``scale``, if given, is the ``scale`` of every transform whose spec does not name one.
    """
    name, raw = parse_spec(spec)
    values = {k: expand(v, spec) for k, v in raw.items()}
    swept = [k for k, v in values.items() if len(v) > 1]
    if len(swept) > 1:
        raise UserError(f"{spec!r}: sweep one parameter per grid, not {', '.join(swept)}")
    if any(len(v) == 0 for v in values.values()):
        raise UserError(f"{spec!r}: empty grid")
    key = swept[0] if swept else None
    p = entry(name).param(key) if key is not None else None
    if p is not None and p.kind == "choice":
        raise UserError(
            f"{spec!r}: {key} takes one word per grid; give one grid per value "
            f"({', '.join(f'{name}:...,{key}={v}' for v in values[key])})"
        )
    fixed = ",".join(f"{k}={v[0]}" for k, v in values.items() if k != key)
    out = []
    for v in values[key] if key else [None]:
        parts = [p for p in (fixed, f"{key}={v}" if key else "") if p]
        t = transform(name + (":" + ",".join(parts) if parts else ""))
        out.append(t.with_defaults(scale=scale) if scale else t)
    return out


def swept_param(t: Transform, grid: list[Transform]) -> tuple[str, float]:
    """(parameter name, value) that distinguishes ``t`` within its grid; ('', 0.0) for a single
    fixed cell."""
    if len(grid) > 1:
        for k, v in t.params.items():
            if any(g.params[k] != v for g in grid):
                return k, float(v)
    numeric = [k for k, p in ((p.name, p) for p in t.entry.params) if p.kind in ("float", "int")]
    return (numeric[0], float(t.params[numeric[0]])) if numeric else ("", 0.0)


@dataclass(frozen=True)
class Cell:
    t: Transform
    param: str
    value: float
    trial: int

    def key(self) -> tuple[str, int]:
        return self.t.spec, self.trial


def cells(distortions: list[str], trials: int, scale: str | None = None) -> list[Cell]:
    """Every cell of the grids, in order; random distortions get ``trials`` trials, others one."""
    if not distortions:
        raise UserError("no distortion given; e.g. distortions=['add-gauss:sigma=0,0.5,1']")
    if not (isinstance(trials, int) and trials >= 1):
        raise UserError(f"trials must be a positive integer, not {trials!r}")
    out = []
    for spec in distortions:
        grid = parse_grid(spec, scale)
        for t in grid:
            param, value = swept_param(t, grid)
            for trial in range(trials if t.random else 1):
                out.append(Cell(t, param, value, trial))
    seen = set()
    for c in out:
        if c.key() in seen:
            raise UserError(f"distortion {c.t.spec} appears twice in the grids")
        seen.add(c.key())
    return out


def cell_seed(seed: int, c: Cell) -> int:
    """The seed of a cell: from the sweep seed, the distortion and the trial.

    Parameters declared as an axis of the reading (``Param.axis``, e.g. ``t`` of ``pcm``) are
    left out of the distortion's spec here, so a trial's seed does not depend on them; any other
    transform's seed is that of its full canonical spec.
    """
    reading = {p.name for p in c.t.entry.params if p.axis}
    spec = c.t.spec
    if reading:
        kept = {k: v for k, v in c.t.params.items() if k not in reading}
        spec = Transform(c.t.name, kept).spec
    return derive_seed(seed, spec, c.trial) % (2**62)
