"""Faults while writing: one line, exit status 2, the files already written whole, and the same
command (train: with --resume) going on to exactly the uninterrupted result, for `train`,
`sweep`, `report` and `reproduce`.

Every file the package writes goes through ``runs.atomic_write``, which ends with ``os.replace``:
a write made to fail there (ENOSPC, EROFS, EACCES) is a failure at that write site. CI runs a
seeded sample of the sites of each command; ``RW_FAULTS_ALL=1`` runs every one
(docs/results/faults has its counts). A real full disk (an 8 KB tmpfs) is tried where this
machine lets the test mount one (as root).
"""

import csv
import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustweights import cli
from conftest import need_fashion_mnist

ALL = os.environ.get("RW_FAULTS_ALL") == "1"
TRAIN = ["train", "--dataset", "demo", "--epochs", "2", "--train-subset", "300", "--quiet"]
TRAIN += ["--test-subset", "200", "--projection", "sign", "--checkpoint-every", "1"]
GRID = ["--distortion", "add-gauss:sigma=0,0.5,1", "--trials", "2", "--quiet"]
ERRORS = [errno.ENOSPC, errno.EROFS, errno.EACCES]


def _main(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


class _Faults:
    """``os.replace`` into ``root`` fails at the ``fail``-th call (counting from 1)."""

    def __init__(self, root: Path, fail: int | None, err: int = errno.ENOSPC):
        self.root, self.fail, self.err, self.calls = str(root), fail, err, 0
        self.real = os.replace

    def __call__(self, src, dst, **kw):
        if str(dst).startswith(self.root):
            self.calls += 1
            if self.calls == self.fail:
                raise OSError(self.err, os.strerror(self.err))
        return self.real(src, dst, **kw)


def _whole(folder: Path) -> int:
    """Every file in ``folder`` reads whole; no temporary file is left. The count of files."""
    n = 0
    for p in folder.rglob("*"):
        if p.is_dir():
            continue
        assert not p.name.startswith("."), f"temporary file left: {p}"
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            [json.loads(line) for line in p.read_text().splitlines()]
        elif p.suffix == ".csv":
            list(csv.DictReader(p.open()))
        elif p.suffix == ".pt":
            torch.load(p, weights_only=True)
        n += 1
    return n


def _tensors(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    return {**state["model"], **{f"opt.{k}": v for k, v in _flat(state["optimizer"])}}


def _flat(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}[{i}]")


def _rows(folder: Path) -> list[dict]:
    return list(csv.DictReader((folder / "results.csv").open()))


def _undated(p: Path) -> str:
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:]+[+-]\d\d:\d\d", "DATE", p.read_text())


def _sites(n: int, k: int, seed: int, command: str) -> list[int]:
    if ALL:  # the counts docs/results/faults records (past pytest's capture)
        print(f"{command}: {n} write sites, each made to fail once", file=sys.__stderr__)
    return list(range(1, n + 1)) if ALL else sorted(random.Random(seed).sample(range(1, n + 1), k))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted train and sweep, and how many files each writes."""
    root = tmp_path_factory.mktemp("ref")
    counts = {}
    for name, argv in [
        ("train", TRAIN + ["--out", root / "run"]),
        ("sweep", ["sweep", root / "run", *GRID, "--out", root / "sweep"]),
        ("report", ["report", root / "sweep", "--out", root / "report"]),
    ]:
        f = _Faults(root, None)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "replace", f)
            assert cli.main([str(a) for a in argv]) == 0
        counts[name] = f.calls
    return root, counts


def _fail_then_go_on(argv, again, out, site, err, capsys, monkeypatch):
    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", _Faults(out, site, err))
        rc, msg = _main(argv, capsys)
    assert rc == 2, msg
    lines = msg.strip().splitlines()
    assert len(lines) == 1 and os.strerror(err) in lines[0] and str(out) in lines[0], msg
    assert "files already written are whole" in lines[0]
    if out.exists():
        _whole(out)
    rc, msg = _main(again if (out / "checkpoint.pt").exists() else argv, capsys)
    assert rc == 0, msg


def test_a_failed_write_in_train_is_one_line_and_resume_ends_bitwise(
    reference, tmp_path, capsys, monkeypatch
):
    ref, counts = reference
    for site in _sites(counts["train"], 3, 0, "train"):
        out = tmp_path / f"run{site}"
        again = ["train", "--resume", "--out", out, "--quiet"]
        err = ERRORS[site % len(ERRORS)]
        _fail_then_go_on(TRAIN + ["--out", out], again, out, site, err, capsys, monkeypatch)
        a, b = _tensors(ref / "run" / "checkpoint.pt"), _tensors(out / "checkpoint.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), site


def test_a_failed_write_in_sweep_and_report_is_one_line_and_the_rerun_equal(
    reference, tmp_path, capsys, monkeypatch
):
    ref, counts = reference
    for site in _sites(counts["sweep"], 2, 1, "sweep"):
        out = tmp_path / f"sweep{site}"
        argv = ["sweep", ref / "run", *GRID, "--out", out]
        _fail_then_go_on(argv, argv, out, site, errno.ENOSPC, capsys, monkeypatch)
        assert _rows(out) == _rows(ref / "sweep"), site
    for site in _sites(counts["report"], 2, 2, "report"):
        out = tmp_path / f"report{site}"
        argv = ["report", ref / "sweep", "--out", out]
        _fail_then_go_on(argv, argv, out, site, errno.EROFS, capsys, monkeypatch)
        assert _undated(out / "report.md") == _undated(ref / "report" / "report.md")


# reproduce at the tiny scale cut further (3 rows, 2 epochs, one strength a column): 76 writes
# (trainings, sweeps, claims, report), seconds on 2 cores; claim 1 is judged from its rows.
REPRO = [
    "reproduce",
    "matrix",
    "--scale",
    "tiny",
    "--quiet",
    "--set",
    "rows=identity,sign,stoch-sign",
]
for _kv in ["epochs=2", "train_subset=1000", "test_subset=500", "trials=1", "add_gauss=0.8"]:
    REPRO += ["--set", _kv]
for _kv in ["add_gauss_max=0.8", "mult_gauss=0.5", "power=0.5", "quant=2"]:
    REPRO += ["--set", _kv]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """An uninterrupted ``reproduce`` and how many files it writes."""
    need_fashion_mnist()
    out = tmp_path_factory.mktemp("repro") / "ref"
    f = _Faults(out, None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", f)
        assert cli.main([str(a) for a in REPRO + ["--out", out]]) == 0
    return out, f.calls


def _numbers(root: Path) -> str:
    """The report's text above its provenance, dates and the run folder left out."""
    text = (root / "report" / "report.md").read_text().split("## Provenance")[0]
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:]+[+-]\d\d:\d\d", "DATE", text.replace(str(root), "OUT"))


def _same_reproduction(ref: Path, got: Path) -> int:
    """Every checkpoint's tensors bitwise, every results table cell for cell, the claims and the
    report's numbers as the uninterrupted run's (its provenance names each run's folder, hash and
    seconds). The count of files compared."""
    pts = sorted(p.relative_to(ref) for p in ref.rglob("*.pt"))
    assert pts == sorted(p.relative_to(got) for p in got.rglob("*.pt"))
    for p in pts:
        a, b = _tensors(ref / p), _tensors(got / p)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), p
    tables = sorted(p.parent.relative_to(ref) for p in ref.rglob("results.csv"))
    for t in tables:
        assert _rows(got / t) == _rows(ref / t), t
    assert json.loads((got / "claims.json").read_text()) == json.loads(
        (ref / "claims.json").read_text()
    )
    assert _numbers(got) == _numbers(ref)
    return len(pts) + len(tables) + 2


def test_a_failed_write_in_reproduce_is_one_line_and_the_rerun_equal(
    reproduced, tmp_path, capsys, monkeypatch
):
    ref, calls = reproduced
    assert calls > 50  # trainings, sweeps, claims and report all write through atomic_write
    for site in _sites(calls, 2, 3, "reproduce"):
        out = tmp_path / f"repro{site}"
        argv = REPRO + ["--out", out]
        err = ERRORS[site % len(ERRORS)]
        _fail_then_go_on(argv, argv, out, site, err, capsys, monkeypatch)
        assert _same_reproduction(ref, out) >= 8, site


def test_a_folder_that_cannot_be_made_is_one_line(reference, capsys):
    ref, _ = reference
    rc, msg = _main(["sweep", ref / "run", *GRID, "--out", "/proc/rw-cannot-be-made"], capsys)
    assert rc == 2 and len(msg.strip().splitlines()) == 1 and "/proc/rw-cannot-be-made" in msg


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)])
    return done.returncode == 0


def test_a_real_full_disk_mid_sweep_then_freed_goes_on_to_the_same_table(
    reference, tmp_path, capsys
):
    ref, _ = reference
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        grid = ["--distortion", "add-gauss:sigma=0:1.5:0.1", "--trials", "2", "--quiet"]
        assert (
            cli.main([str(a) for a in ["sweep", ref / "run", *grid, "--out", tmp_path / "u"]]) == 0
        )
        capsys.readouterr()
        argv = ["sweep", ref / "run", *grid, "--out", disk / "s"]  # 32 rows: about 16 KB of files
        rc, msg = _main(argv, capsys)
        assert rc == 2 and "No space left on device" in msg and len(msg.strip().splitlines()) == 1
        _whole(disk / "s")
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        rc, msg = _main(argv, capsys)
        assert rc == 0, msg
        assert _rows(disk / "s") == _rows(tmp_path / "u")
    finally:
        subprocess.run(["umount", str(disk)])


class _Interrupts:
    def __reduce__(self):
        raise KeyboardInterrupt  # Ctrl-C arriving while torch.save writes


def test_ctrl_c_inside_a_checkpoint_write_is_an_interrupt_and_the_old_file_stays(tmp_path):
    from robustweights.runs import save_tensors

    path = tmp_path / "checkpoint.pt"
    save_tensors(path, {"w": torch.arange(3)})
    with pytest.raises(KeyboardInterrupt):  # not torch's "unexpected pos" RuntimeError
        save_tensors(path, {"w": torch.zeros(10**5), "x": _Interrupts()})
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_the_command_line_called_in_process_gives_the_caller_its_sigterm_handler_back(capsys):
    import signal

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        assert cli.main(["list", "measures"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
