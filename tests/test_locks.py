"""One writer per folder: a second process is refused in one line; a killed holder leaves none."""

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from robustweights import cli, locks
from robustweights.errors import UserError

HOLD = """
import sys, time
from robustweights import locks
with locks.one_writer(sys.argv[1], "robustweights sweep"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RW_LOCK_DIR", str(tmp_path / "locks"))


def _holder(folder):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, env=env)
    assert p.stdout.readline().strip() == b"held"
    return p


def test_a_second_process_is_refused_naming_the_first_and_a_kill_frees_the_folder(tmp_path):
    folder = tmp_path / "out"
    p = _holder(folder)
    try:
        with pytest.raises(
            UserError, match=rf"being written by process {p.pid} \(robustweights sw"
        ):
            with locks.one_writer(folder):
                pass
        with pytest.raises(UserError):  # the same folder under another spelling
            with locks.one_writer(tmp_path / "x" / ".." / "out"):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with locks.one_writer(folder):  # kill -9 left nothing behind that blocks a resume
        pass
    assert not folder.exists()  # the lock never writes into the run folder


def test_re_entrant_within_a_process_and_released_after(tmp_path):
    folder = tmp_path / "out"
    with locks.one_writer(folder):
        with locks.one_writer(folder):
            done = []

            def row():  # a thread of the same process (reproduce's rows at once) may write too
                with locks.one_writer(folder):
                    done.append(True)

            t = threading.Thread(target=row)
            t.start()
            t.join()
            assert done == [True]
    p = _holder(folder)  # released: another process takes it
    p.send_signal(signal.SIGKILL)
    p.wait()


GRID = ["--distortion", "add-gauss:sigma=0:1.5:0.25", "--trials", "2", "--quiet"]  # 14 cells


def _cli(argv, env):
    return subprocess.Popen(
        [sys.executable, "-m", "robustweights", *map(str, argv)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _when(path, p):
    """Waits until ``p`` has written ``path`` (it holds the folder's lock from before then)."""
    while not path.exists():
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.005)


def _rows(folder):
    return list(csv.DictReader((folder / "results.csv").open()))


def test_two_sweep_processes_on_one_folder_the_second_refused_the_first_unharmed(tmp_path, capsys):
    """Real `robustweights sweep` processes on one --out: the second is refused in one line
    naming the first's process id (exit 2); the first ends with an uninterrupted run's table;
    after a kill -9 of a writer the same command resumes to that table (no lock left behind)."""
    train = ["train", "--dataset", "demo", "--model", "mlp", "--epochs", "1", "--quiet"]
    train += ["--train-subset", "200", "--test-subset", "100", "--out", str(tmp_path / "run")]
    assert cli.main(train) == 0
    sweep = ["sweep", tmp_path / "run", *GRID, "--out"]
    assert cli.main([str(a) for a in [*sweep, tmp_path / "ref"]]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # RW_LOCK_DIR: the fixture's
    out = tmp_path / "s"
    first = _cli([*sweep, out], env)
    _when(out / "sweep.json", first)
    first.send_signal(signal.SIGSTOP)  # it holds the lock and has cells left, whatever the load
    try:
        second = _cli([*sweep, out], env)
        err = second.communicate(timeout=120)[1].strip()
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and len(err.splitlines()) == 1, err
    said = f"robustweights sweep: error: {out} is being written by process {first.pid} "
    assert err.startswith(said + "(robustweights sweep, since "), err
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert _rows(out) == _rows(tmp_path / "ref")
    killed = tmp_path / "k"
    p = _cli([*sweep, killed], env)
    _when(killed / "results.csv", p)  # some cells written, most to go
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 0 < len(_rows(killed)) < len(_rows(tmp_path / "ref"))
    capsys.readouterr()
    assert cli.main([str(a) for a in [*sweep, killed]]) == 0, capsys.readouterr().err
    assert _rows(killed) == _rows(tmp_path / "ref")
