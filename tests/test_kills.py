"""Killed anywhere, resumed exactly: CI's small run of benchmarks/fault_kills.py.

SIGKILL a `sweep` at random moments, resume it with the same command, and compare its results
table with an uninterrupted run's (train's kills run in the full version; its resume after a
failed write is bitwise in tests/test_faults.py, after SIGTERM below). The full run
(`python benchmarks/fault_kills.py --kills 10`: 30 kills over train, sweep and reproduce) is
recorded in docs/results/faults.
"""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "fault_kills.py"


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_files(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fault_kills", SCRIPT)
    faults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faults)
    out = tmp_path / "faults"
    rc = faults.main(["--kills", "2", "--commands", "sweep", "--out", str(out)])
    report = json.loads((out / "faults.json").read_text())
    assert report["differences"] == [] and rc == 0
    assert report["files_checked"] >= len(report["commands"]) == 1
    assert report["kills"] >= 2  # killed twice before it ended


def test_sigterm_ends_a_run_cleanly_with_a_line_saying_how_it_goes_on(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    argv = ["train", "--dataset", "demo", "--epochs", "30", "--train-subset", "300"]
    argv += ["--test-subset", "100", "--checkpoint-every", "1", "--out", str(out)]
    env = {**os.environ, "RW_LOCK_DIR": str(tmp_path / "locks")}
    p = subprocess.Popen(
        [sys.executable, "-m", "robustweights", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in p.stdout:  # a log, not a terminal: one line an epoch
        if line.startswith("epoch 2/30"):  # epoch 1's checkpoint is written
            break
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "robustweights train: interrupted; files already written are whole; "
        f"`robustweights train --resume --out {out}` goes on from the last checkpoint"
    )
    assert "\r" not in rest  # no redrawn bars in a log
    done = subprocess.run(
        [sys.executable, "-m", "robustweights", "train", "--resume", "--out", str(out)]
        + ["--epochs", "2", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
