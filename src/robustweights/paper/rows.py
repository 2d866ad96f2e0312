"""Training the rows of a reproduce run: one by one, ``rows_at_once`` in threads, or ``fused``.

With ``--set fused=K`` the rows are taken K at a time, in order, and each group is trained as one
fused network (:func:`robustweights.fused_training.train_fused`): every row still gets its own
``train/<row>/`` folder, as a row trained alone writes it, so the sweeps, the report and the claims
read them unchanged; the numbers equal the rows trained alone within float rounding. With
``rows_at_once`` as well, that many groups train at once in threads.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..config import TrainConfig
from ..distributed import run_together
from ..errors import UserError
from ..fused_training import train_fused
from ..training import train

__all__ = ["train_rows"]


def train_rows(configs: dict, rows, preset: dict, data, progress: bool, say) -> dict:
    """Train every row (in turn, or ``rows_at_once`` together; ``fused`` rows at a time as one
    network): ``{row: what its training measured}``."""
    if preset["fused"] > 1:
        return _train_fused_rows(configs, rows, preset, data, progress, say)
    at_once = min(preset["rows_at_once"], len(rows))

    def train_row(i, row, stop=None):
        label = f"[train {i + 1}/{len(rows)}]"
        return _train_row(configs[row], row, label, at_once, data, progress, say, stop)

    if at_once > 1:  # threads, one CUDA stream each (robustweights.distributed.run_together)
        jobs = [lambda stop, i=i, row=row: train_row(i, row, stop) for i, row in enumerate(rows)]
        return dict(zip(rows, run_together(jobs, at_once, configs[rows[0]].device)))
    return {row: train_row(i, row) for i, row in enumerate(rows)}


def _train_row(cfg: TrainConfig, row: str, label: str, at_once, data, progress, say, stop) -> dict:
    """Train one row, resuming its folder if it has one; ``stop`` (rows trained together) is called
    after each epoch, which then prints one line instead of a progress bar."""
    say(
        f"{label} {row}: {cfg.projection} ({cfg.mode}), clip {cfg.clip}, {cfg.epochs} epochs"
        + (" (already trained)" if _finished(cfg) else "")
        + (f", {at_once} rows at once" if stop else ""),
        flush=True,
    )
    # (a row killed before its first checkpoint starts over: train says so)
    resume = Path(cfg.out).exists()

    def each_epoch(epoch, h):
        say(
            f"  {row} epoch {epoch}/{cfg.epochs}: test error {h['test_error']:.2%}, "
            f"{h['images_per_second']:.0f} img/s",
            flush=True,
        )
        stop()

    with _other_settings(resume):
        r = train(
            cfg,
            resume=resume,
            progress=progress and not stop,
            data=data,
            callback=stop and each_epoch,
        )
    return _measured(r)


def _measured(r) -> dict:
    """What reproduce.json records of a row's training (a TrainResult)."""
    last = r.history[-1] if r.history else None
    return {
        "test_error": r.test_error,
        "epochs": len(r.history),
        "train_seconds": sum(h["seconds"] for h in r.history),
        "test_weights": last["test_weights"] if last else None,
        "test_error_stored_bn": last.get("test_error_stored_bn") if last else None,
    }


def _finished(cfg: TrainConfig) -> bool:
    m = Path(cfg.out) / "metrics.jsonl"
    try:
        return len(m.read_text(encoding="utf-8").splitlines()) >= cfg.epochs
    except (OSError, UnicodeDecodeError):
        # missing or unreadable: not known to be finished (train decides)
        return False


def _train_fused_rows(configs: dict, rows, preset: dict, data, progress: bool, say) -> dict:
    """The rows trained ``fused`` at a time: ``{row: what its training measured}``."""
    k = preset["fused"]
    groups = [list(rows[i : i + k]) for i in range(0, len(rows), k)]
    at_once = min(preset["rows_at_once"], len(groups))

    def train_group(i, group, stop=None):
        first = i * k
        label = f"[train {first + 1}-{first + len(group)}/{len(rows)}]"
        return _train_group([configs[r] for r in group], group, label, data, progress, say, stop)

    if at_once > 1:
        jobs = [lambda stop, i=i, g=g: train_group(i, g, stop) for i, g in enumerate(groups)]
        done = run_together(jobs, at_once, configs[rows[0]].device)
    else:
        done = [train_group(i, g) for i, g in enumerate(groups)]
    return {row: m for group in done for row, m in group.items()}


def _train_group(cfgs: list, group: list, label: str, data, progress, say, stop) -> dict:
    """Train one group of rows as one fused network, resuming the folders that exist."""
    trained = [r for r, c in zip(group, cfgs) if _finished(c)]
    say(
        f"{label} {', '.join(group)}: fused ({len(group)} networks), {cfgs[0].epochs} epochs"
        + (f" ({', '.join(trained)} already trained)" if trained else ""),
        flush=True,
    )
    resume = [Path(c.out).exists() for c in cfgs]

    def each_epoch(i, epoch, h):
        say(
            f"  {group[i]} epoch {epoch}/{cfgs[i].epochs}: test error {h['test_error']:.2%}, "
            f"{h['images_per_second']:.0f} img/s (fused)",
            flush=True,
        )
        if i == len(group) - 1:  # every row of the group saved this epoch
            stop()

    with _other_settings(any(resume)):
        results = train_fused(
            cfgs,
            resume=resume,
            progress=progress and not stop,
            data=data,
            callback=each_epoch if stop else None,
        )
    return {row: _measured(r) for row, r in zip(group, results)}


@contextmanager
def _other_settings(resume: bool):
    """A row folder trained with other settings: one line saying so."""
    try:
        yield
    except UserError as e:
        if resume and "cannot resume" in str(e):
            raise UserError(
                f"{str(e).split(':', 1)[0].removeprefix('cannot resume ')} was "
                f"trained with other settings: {e}"
            ) from None
        raise
