"""Killed anywhere, resumed exactly: SIGKILL `train`, `sweep` and `reproduce` at random moments.

For each command: one uninterrupted reference run, then runs killed with SIGKILL at random
moments (uniform between the moment the reference first wrote its folder and its end), each
resumed by running the same command again (for `train`, with `--resume` once the folder holds
a checkpoint), until one ends by itself. The final files are compared with the reference's:
every tensor of the checkpoints bitwise (model and optimizer state), the epoch figures without
their timings, every results table cell for cell. Prints the counts and writes them as JSON.

    python benchmarks/fault_kills.py --kills 10 --out runs/faults      # about 10 minutes on 2 cores
    python benchmarks/fault_kills.py --kills 1 --commands train,sweep  # CI's small version
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TIMING = ("second", "time", "elapsed", "images_per", "date", "started", "finished", "wall")
TRAIN = ["train", "--dataset", "demo", "--epochs", "3", "--train-subset", "600"]
TRAIN += ["--test-subset", "300", "--projection", "sign", "--checkpoint-every", "1", "--quiet"]
SWEEP_GRIDS = ["--distortion", "add-gauss:sigma=0:1:0.25", "--distortion", "quant:bits=1..4"]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "robustweights", *args]


def commands(work: Path, run: Path) -> dict[str, tuple[list[str], list[str] | None]]:
    """Each command: the first invocation and the resuming one (None: the same again)."""
    sweep = ["sweep", str(run), *SWEEP_GRIDS, "--trials", "3", "--quiet"]
    repro = ["reproduce", "matrix", "--scale", "tiny", "--quiet"]
    return {
        "train": (cli(*TRAIN, "--out", str(work)), cli("train", "--resume", "--out", str(work))),
        "sweep": (cli(*sweep, "--out", str(work)), None),
        "reproduce": (cli(*repro, "--out", str(work)), None),
    }


def _first_write(cmd: list[str], out: Path) -> tuple[float, float]:
    """An uninterrupted run: (seconds until ``out`` first exists, seconds in all)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    appeared = None
    while p.poll() is None:
        if appeared is None and out.exists():
            appeared = time.perf_counter() - start
        time.sleep(0.02)
    if p.returncode != 0:
        raise SystemExit(f"reference run failed ({p.returncode}): {p.stderr.read().decode()}")
    total = time.perf_counter() - start
    return (appeared if appeared is not None else 0.0), total


def _killed_run(first, again, out: Path, window, kills: int, rng) -> dict:
    """Runs with ``kills`` SIGKILLs at random moments, then to the end: what happened."""
    done = {"kills": 0, "resumes": 0}
    for k in range(kills + 1):
        cmd = first if (again is None or not (out / "checkpoint.pt").exists()) else again
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if k < kills:
            try:
                p.wait(timeout=rng.uniform(*window))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                done["kills"] += 1
                continue
        p.wait()
        if p.returncode != 0:
            raise SystemExit(f"resume failed ({p.returncode}): {p.stderr.read().decode()}")
        done["resumes"] += k > 0
        if k < kills:  # it ended before the kill came: no more kills for this run
            break
    return done


def _ignored(key: str) -> bool:
    """Timings, and the folder a run was written to, differ between two runs by nature."""
    return key in ("out", "run", "folder") or any(t in key for t in TIMING)


def _same(a, b, where: str) -> list[str]:
    if isinstance(a, torch.Tensor):
        ok = isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if ok else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in a.keys() | b.keys() if not _ignored(str(k))]
        return [d for k in sorted(keys, key=str) for d in _same(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def _table(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return [
            {k: v for k, v in r.items() if not any(t in k for t in TIMING)}
            for r in csv.DictReader(f)
        ]


def compare(ref: Path, got: Path) -> tuple[int, list[str]]:
    """Every checkpoint and results table under ``ref`` against ``got``: (files checked, diffs)."""
    checked, diffs = 0, []
    for p in sorted(ref.rglob("*.pt")):
        a = torch.load(p, map_location="cpu", weights_only=True)
        b = torch.load(got / p.relative_to(ref), map_location="cpu", weights_only=True)
        diffs += _same(a, b, str(p.relative_to(ref)))
        checked += 1
    for p in sorted(ref.rglob("results.csv")) + sorted(ref.rglob("claims.json")):
        q = got / p.relative_to(ref)
        if p.suffix == ".csv":
            same = _table(p) == _table(q)
        else:
            same = not _same(json.loads(p.read_text()), json.loads(q.read_text()), "")
        diffs += [] if same else [str(p.relative_to(ref))]
        checked += 1
    return checked, diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10, help="kills per command (default 10)")
    ap.add_argument("--commands", default="train,sweep,reproduce")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/faults", help="work folder (emptied first)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(args.out).absolute()
    shutil.rmtree(root, ignore_errors=True)
    os.environ["RW_LOCK_DIR"] = str(root / "locks")
    names = args.commands.split(",")
    run = root / "ref-train"  # the sweep distorts the reference training run
    report = {"kills": 0, "resumes": 0, "files_checked": 0, "differences": [], "commands": {}}
    for name in ["train"] + [n for n in names if n != "train"]:
        first, again = commands(root / f"ref-{name}", run)[name]
        appeared, total = _first_write(first, root / f"ref-{name}")
        if name not in names:
            continue
        got = {"kills": 0, "resumes": 0, "rounds": 0, "files_checked": 0}
        while (
            got["kills"] < args.kills and got["rounds"] < 4 * args.kills
        ):  # rounds of up to 3 kills each, from an empty folder
            work = root / f"killed-{name}-{got['rounds']}"
            first, again = commands(work, run)[name]
            kills = min(3, args.kills - got["kills"])
            done = _killed_run(first, again, work, (appeared, total), kills, rng)
            checked, diffs = compare(root / f"ref-{name}", work)
            got = {k: got[k] + done.get(k, 0) for k in ("kills", "resumes")} | {
                "rounds": got["rounds"] + 1,
                "files_checked": got["files_checked"] + checked,
            }
            report["differences"] += [f"{name} round {got['rounds']}: {d}" for d in diffs]
        report["commands"][name] = {**got, "seconds_uninterrupted": round(total, 1)}
        for k in ("kills", "resumes", "files_checked"):
            report[k] += got[k]
        diffs = [d for d in report["differences"] if d.startswith(name)]
        checked = got["files_checked"]
        print(f"{name}: {got['kills']} kills, {checked} files checked, {len(diffs)} differ")
    print(json.dumps(report, indent=1))
    (root / "faults.json").write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["differences"] else 0


if __name__ == "__main__":
    sys.exit(main())
