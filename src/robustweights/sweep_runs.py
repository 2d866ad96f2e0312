"""Sweeps with files: sweep.json, resume, rank files, and a sweep run opened and finished.

What `robustweights sweep` (:func:`robustweights.sweeps.run_sweep`) needs
around the cells themselves: :func:`open_run` checks the config and the out
folder, loads what it names (:func:`robustweights.sweep_models.prepare`) and
finds the cells a killed sweep already finished (a folder of another sweep,
checkpoint or data is refused); :class:`RowKeeper` writes each finished row
at once (``results.rankN.jsonl`` per rank under ``torchrun``) and merges the
ranks' rows; :func:`sweep_record` and :func:`write_record` are the one builder
and the one writer of ``sweep.json``, for :func:`save_sweep` (the rows of an
in-memory :func:`robustweights.sweep`) and for the command alike.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from . import data as data_mod
from . import projected
from .config import SweepConfig
from .distributed import agree
from .errors import UserError
from .evaluation import bn_layers, check_covered, sweep_coverage
from .grid import cells
from .measures import Measure
from .results import better_when_higher, complete_row, is_percent, lowest_bits, write_rows
from .runs import check_writable, git_commit, now, write_text
from .sweep_fusion import fuse_setting
from .sweep_models import prepare, selection

__all__ = [
    "sweep_record",
    "write_record",
    "save_sweep",
    "data_fingerprint",
    "check_config",
    "Run",
    "open_run",
    "start_record",
    "RowKeeper",
    "finish",
]


# ---------------------------------------------------------------------------
# sweep.json: one builder, one writer
# ---------------------------------------------------------------------------


def sweep_record(
    rows: list[dict],
    *,
    label: str,
    baseline: float,
    description: str,
    metric: str = "error",
    higher_is_better: bool | None = None,
    split: str = "test",
    coverage: dict | None = None,
    target: float | None = None,
    trials: int | None = None,
    start: str | None = None,
    end: str | None = None,
    measure: dict | None = None,
    **info,
) -> dict:
    """The provenance of a sweep (``sweep.json``), for :func:`save_sweep` and the command alike.

    ``measure`` is the record of the sweep's measure (``Measure.to_dict()``):
    its ``higher_is_better`` and ``percent`` hold unless given here. ``target``
    defaults to the baseline plus/minus 1% of it (1 point for a percentage, as
    the error); ``trials`` to the rows' own count; ``info`` adds fields.
    """
    measure = dict(measure) if isinstance(measure, dict) else None
    if higher_is_better is None and measure is not None:
        higher_is_better = measure.get("higher_is_better")
    up = better_when_higher(metric) if higher_is_better is None else bool(higher_is_better)
    percent = is_percent(metric, measure)
    if measure is not None:
        measure.update(higher_is_better=up, percent=percent)
    if target is None:
        step = 0.01 if percent else 0.01 * abs(baseline)
        target = baseline - step if up else baseline + step
    record = {
        **info,
        "label": label,
        "data_description": description,
        "split": split,
        "metric": metric,
        "higher_is_better": up,
        "measure": measure
        or {"measure": metric, "name": metric, "higher_is_better": up, "percent": percent},
        "baseline_score": baseline,
        "baseline_error": baseline if metric == "error" else None,
        "coverage": coverage,
        "trials": trials if trials is not None else max(r["trial"] for r in rows) + 1,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "start": start or now(),
        "end": end,
        "target_error": target,
        "target": target,
        "lowest_bits": lowest_bits(rows, target, up) if rows else None,
    }
    record.update(info)  # a field the caller names wins
    return record


def write_record(out: Path, record: dict) -> None:
    """Write ``sweep.json`` (atomically): the only place it is written."""
    write_text(Path(out) / "sweep.json", json.dumps(record, indent=2) + "\n")


def save_sweep(
    out: "str | Path",
    rows: list[dict],
    *,
    label: str,
    baseline: float,
    description: str,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    split: str = "test",
    coverage: dict | None = None,
    target: float | None = None,
    **info,
) -> dict:
    """Write the rows of :func:`robustweights.sweep` as a result folder that
    :func:`robustweights.report` reads.

    ``baseline`` is the undistorted score (of the rows' metric unless
    ``metric`` names it); ``description`` names the data (and its caveats);
    ``info`` adds fields to ``sweep.json`` (``model``...). The coverage, ``on``
    and distorted weights come with the rows of :func:`robustweights.sweep`
    (a list, or :func:`robustweights.sweeps.to_frame`'s frame, that carries them).
    ``target`` (default: baseline plus/minus 1% of it, 1 point for the error)
    sets the lowest-effective-bits summary. Returns the provenance written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out {out} exists and is not a folder")
    check_writable(out)
    carried = _carried(rows)
    table = [
        complete_row(r) for r in (rows.to_dict("records") if hasattr(rows, "to_dict") else rows)
    ]
    if not table:
        raise UserError("no rows to save")
    for key in ("on", "distorted_weights", "measure"):
        if carried.get(key) is not None:
            info.setdefault(key, carried[key])
    stamp = now()
    prov = sweep_record(
        table,
        label=label,
        baseline=baseline,
        description=description,
        split=split,
        metric=metric or table[0]["metric"],
        higher_is_better=higher_is_better,
        coverage=coverage if coverage is not None else carried.get("coverage"),
        target=target,
        start=stamp,
        end=stamp,
        **info,
    )
    write_rows(out, table)
    write_record(out, prov)
    return prov


def _carried(rows) -> dict:
    """What the rows of :func:`robustweights.sweep` carry beside them: the attributes of its list
    (``coverage``, ``on``, ``distorted_weights``), or the ``attrs`` of :func:`to_frame`'s frame."""
    if isinstance(getattr(rows, "attrs", None), dict):
        return rows.attrs
    keys = ("coverage", "on", "distorted_weights", "measure")
    return {k: getattr(rows, k, None) for k in keys}


def data_fingerprint(data: data_mod.Data, split: str) -> str:
    """The split a sweep tests on, in a few words a resumed sweep must match: its size, classes and
    the mean and spread of its first inputs to 3 digits (so the same data on another machine's
    arithmetic still matches, while other images at the same place do not)."""
    x, _ = next(iter(getattr(data, split).batches(8)))
    x = x.detach().double().cpu()
    return (
        f"{len(getattr(data, split))} examples, {len(data.classes)} classes, first inputs mean "
        f"{float(x.mean()):.3g} std {float(x.std()):.3g}"
    )


# ---------------------------------------------------------------------------
# Resume: the cells a killed sweep of the same config already finished
# ---------------------------------------------------------------------------


def _comparable(cfg: dict) -> dict:
    """The settings a resumed sweep must share with the one it continues. The batch size is one of
    them when batch-norm statistics are re-estimated or calibrated: it sets their batches (a resume
    at another batch size mixed rows of two sweeps under one sweep.json)."""
    bn = bool(cfg.get("bn_reestimate") or cfg.get("bn_calibrate"))
    cfg = {"data": None, **cfg}  # (a sweep older than --data had none)
    return {
        k: v
        for k, v in cfg.items()
        if k not in SweepConfig.RESUMABLE + ("measure",) or (k == "batch_size" and bn)
    }  # (the measure is compared as resolved: the run's own, named or not, is the same)


def _partial_rows(out: Path) -> list[dict]:
    """Rows that ranks of an interrupted distributed sweep finished (``results.rankN.jsonl``)."""
    rows = []
    for f in sorted(out.glob("results.rank*.jsonl")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by the kill: recompute that cell
    return rows


def _previous_sweep(out: Path) -> dict | None:
    """The ``sweep.json`` of a sweep already in ``out`` (None for a new or empty folder)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={str(out)!r} exists and is not a folder")
    check_writable(out)
    if not out.exists():
        return None
    if (out / "sweep.json").exists():
        try:
            previous = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{out}/sweep.json is unreadable; choose another out=") from None
        if not (isinstance(previous, dict) and isinstance(previous.get("config", {}), dict)):
            raise UserError(f"{out}/sweep.json is not a sweep's record; choose another out=")
        return previous
    if any(out.iterdir()):
        raise UserError(f"{out} exists and is not a sweep result folder; choose another out=")
    return None


def _check_same_measure(out: Path, previous: dict, measure: Measure) -> None:
    """One line when ``out`` holds cells of another measure (a sweep older than measures was
    scored by its ``metric``, the error)."""
    before = previous.get("measure")
    before = before.get("measure") if isinstance(before, dict) else None
    before = before or previous.get("metric") or "error"
    now_spec = measure.spec or measure.name
    if before != now_spec:
        raise UserError(
            f"{out} holds a sweep measured by {before}, not {now_spec}; a resumed sweep keeps "
            f"its measure: give measure={before!r}, or choose another out="
        )


def _check_same_sweep(out: Path, previous: dict, info: dict, cfg: dict) -> None:
    """Refuses a folder that holds a sweep of another checkpoint, data or config."""
    if previous.get("checkpoint_sha256") != info["checkpoint_sha256"]:
        raise UserError(
            f"{out} holds a sweep of another checkpoint ({previous.get('checkpoint')}); "
            "choose another out="
        )
    if previous.get("data_fingerprint") not in (None, info["data_fingerprint"]):  # --data-dir
        raise UserError(
            f"{out} holds cells measured on other data ({previous['data_fingerprint']}, here "
            f"{info['data_fingerprint']}); a resumed sweep must test on the same data: "
            "choose another out="
        )
    if _comparable(previous.get("config", {})) != _comparable(cfg):
        diff = [k for k, v in _comparable(cfg).items() if previous.get("config", {}).get(k) != v]
        raise UserError(
            f"{out} holds a different sweep of this checkpoint ({', '.join(diff)} differ); "
            "choose another out="
        )


def _done_cells(out: Path, previous: dict | None, info: dict, cfg: dict, measure) -> dict:
    """Rows already computed for this sweep, by ``(spec, trial)``; refuses a folder of another
    sweep."""
    if previous is None:
        return {}
    _check_same_sweep(out, previous, info, cfg)
    _check_same_measure(out, previous, measure)
    try:
        old_rows = (
            json.loads((out / "results.json").read_text(encoding="utf-8"))
            if (out / "results.json").exists()
            else []
        )
    except (UnicodeDecodeError, json.JSONDecodeError):
        old_rows = []  # written atomically, so only a hand-edited file gets here: recompute
    if not isinstance(old_rows, list):
        old_rows = []
    # the finished table wins over a rank's stray or cut row; a row without its cell's key is
    # recomputed
    rows = [
        r
        for r in _partial_rows(out) + old_rows
        if isinstance(r, dict)
        and isinstance(r.get("spec"), str)
        and isinstance(r.get("trial"), int)
    ]
    return {(r["spec"], r["trial"]): complete_row(r) for r in rows}


# ---------------------------------------------------------------------------
# A sweep run: opened (checked, loaded, resumed), its rows kept, finished
# ---------------------------------------------------------------------------


def check_config(config: SweepConfig) -> None:
    """The mistakes a sweep config can hold, each one line, before anything is read."""
    if config.trials < 1:
        raise UserError(f"trials must be at least 1, not {config.trials}")
    if config.bn_reestimate < 0:
        raise UserError(f"bn-reestimate must be 0 or more, not {config.bn_reestimate}")
    if config.bn_calibrate < 0:
        raise UserError(f"bn-calibrate must be 0 or more, not {config.bn_calibrate}")
    if config.split not in ("test", "train"):
        raise UserError(f"split must be 'test' or 'train', not {config.split!r}")
    if config.on not in projected.WEIGHTS:
        raise UserError(f"on must be one of {', '.join(projected.WEIGHTS)}, not {config.on!r}")
    cells(config.distortions, config.trials)  # checks the grids
    fuse_setting(config.fuse_trials)


@dataclasses.dataclass
class Run:
    """A sweep run as :func:`open_run` found it: what it sweeps, where, and what is done."""

    config: SweepConfig
    out: Path
    rank: int
    world: int
    model: torch.nn.Module
    data: data_mod.Data
    loss: str
    measure: Measure  # what each cell is judged by
    label: str
    info: dict  # the checkpoint's provenance and the data's fingerprint
    covered: tuple[dict, dict]  # sweep_coverage's (untouched, coverage)
    previous: dict | None  # the sweep.json already in out
    done: dict  # rows already computed, by (spec, trial)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def open_run(config: SweepConfig, rank: int, world: int, device, data=None) -> Run:
    """Check ``config``, load what it names, and read what its out folder holds.

    Rank 0 alone reads the out folder (other machines need not see it) and
    tells every rank what is done; a mistake on any rank (the folder, a
    checkpoint or dataset missing on one machine) stops all of them with its
    line instead of leaving the others waiting. Nothing is written yet: a bad
    ``--keep`` or a sweep with nothing to distort leaves ``--out`` free.
    """
    check_config(config)
    out = Path(config.out)
    previous, done, error = None, None, None
    try:
        previous = _previous_sweep(out) if rank == 0 else None
        model, data, loss, label, info, measure = prepare(
            dataclasses.replace(config, device=str(device)), data
        )
        _check_target(config.target_error, measure)
        test = getattr(data, config.split)
        covered = sweep_coverage(
            model, test, config.keep, config.batch_size, on=config.on, **selection(config)
        )
        check_covered(covered[1])
        info = {**info, "data_fingerprint": data_fingerprint(data, config.split)}
        cfg = dataclasses.asdict(config)
        done = _done_cells(out, previous, info, cfg, measure) if rank == 0 else None
    except UserError as e:
        error = e
    previous, done = agree(error, (previous, done), rank, world)  # also a barrier: rank 0 has read
    return Run(
        config, out, rank, world, model, data, loss, measure, label, info, covered, previous, done
    )


def _check_target(target: float | None, measure: Measure) -> None:
    """One line for a target a measure shown as a percentage cannot reach."""
    if target is not None and measure.percent and not 0 <= target <= 1:
        what = "" if measure.name == "error" else f" ({measure.name} is a percentage)"
        raise UserError(f"target error must be a fraction in [0, 1], not {target!r}{what}")


def start_record(run: Run, baseline: dict, cells_count: int, **info) -> dict:
    """The ``sweep.json`` of a run before its cells (``end`` None), written by rank 0."""
    c, device = run.config, run.device
    record = sweep_record(
        [],
        label=run.label,
        baseline=run.measure.value(baseline),
        description=run.data.description,
        metric=run.measure.name,
        measure=run.measure.to_dict(),
        split=c.split,
        coverage=run.covered[1],
        target=c.target_error,
        trials=c.trials,
        start=(run.previous or {}).get("start"),
        **run.info,
        preprocessing=run.data.preprocessing,
        on=c.on,
        distorted_weights=run.covered[1]["distorted_weights"],
        bn_reestimate=c.bn_reestimate,
        bn_calibrate=c.bn_calibrate,
        seed=c.seed,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        config=dataclasses.asdict(c),
        cells=cells_count,
        batch_norm=bool(bn_layers(run.model)),
        processes=run.world,
        **info,
    )
    if run.rank == 0:
        write_record(run.out, record)
    return record


class RowKeeper:
    """Each finished row on disk at once: the whole table in one process, ``results.rankN.jsonl``
    per rank under ``torchrun`` (read back on resume), merged by :meth:`gather`."""

    def __init__(self, run: Run, todo: list, progress: bool):
        self.run, self.todo = run, todo
        self.order = {c.key(): i for i, c in enumerate(todo)}
        self.so_far = [run.done[c.key()] for c in todo if c.key() in run.done]
        self.mine_rows: list[dict] = []
        self.part = run.out / f"results.rank{run.rank}.jsonl"
        if progress and run.done:
            print(f"resuming {run.out}: {len(self.so_far)} of {len(todo)} cells already done")
        if run.rank == 0 and run.world > 1 and self.so_far:
            # the rows found in rank files, kept before those are rewritten (a second interrupt
            # lost them: the cells were redone)
            write_rows(run.out, self.so_far)

    @property
    def mine(self) -> set:
        """The keys of the missing cells this rank computes."""
        missing = [c.key() for c in self.todo if c.key() not in self.run.done]
        return set(missing[self.run.rank :: self.run.world])

    def sorted(self, rows) -> list[dict]:
        return sorted(rows, key=lambda r: self.order[(r["spec"], r["trial"])])

    def add(self, row: dict) -> None:
        if self.run.world == 1:
            self.so_far.append(row)
            write_rows(self.run.out, self.sorted(self.so_far))
        else:
            self.mine_rows.append(row)
            write_text(self.part, "".join(json.dumps(r) + "\n" for r in self.mine_rows))

    def gather(self, rows: list[dict], record: dict) -> list[dict]:
        """Every rank's rows merged in cell order (``rows`` itself in one process)."""
        if self.run.world == 1:
            return rows
        gathered: list = [None] * self.run.world
        torch.distributed.all_gather_object(gathered, self.mine_rows)
        record["cells_by_rank"] = [len(rs) for rs in gathered]
        # rank 0 has every row now (on another machine, nobody else would delete it)
        self.part.unlink(missing_ok=True)
        merged = dict(self.run.done)
        merged.update({(r["spec"], r["trial"]): r for rs in gathered for r in rs})
        rows = self.sorted(merged.values())
        if len(rows) != len(self.todo):
            raise RuntimeError(
                f"distributed sweep merged {len(rows)} rows for {len(self.todo)} cells"
            )
        return rows


def finish(run: Run, keeper: RowKeeper, rows: list[dict], record: dict, seconds: float) -> dict:
    """Merge the ranks' rows, write the table and the final ``sweep.json`` (rank 0); the provenance
    with ``rows`` added."""
    rows = keeper.gather(rows, record)
    if run.rank == 0:
        write_rows(run.out, rows)
        for f in run.out.glob("results.rank*.jsonl"):  # also those of earlier, killed runs
            f.unlink(missing_ok=True)  # (a rank on a shared folder may delete its own first)
    target = record["target_error"]
    best = lowest_bits(rows, target, record["higher_is_better"])
    record.update(end=now(), seconds=seconds, lowest_bits=best)
    if run.rank == 0:
        write_record(run.out, record)
    return {**record, "rows": rows}
