"""Killed anywhere, resumed exactly: CI's small run of benchmarks/fault_kills.py.

SIGKILL a `train` and a `sweep` at random moments, resume each with the same command, and
compare every checkpoint tensor and results table with an uninterrupted run's. The full run
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
    rc = faults.main(["--kills", "2", "--commands", "train,sweep", "--out", str(out)])
    report = json.loads((out / "faults.json").read_text())
    assert report["differences"] == [] and rc == 0
    assert report["files_checked"] >= len(report["commands"]) == 2
    assert report["kills"] >= 2  # each command killed at least once before it ended
