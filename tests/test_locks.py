"""One writer per folder: a second process is refused in one line; a killed holder leaves none."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from robustweights import locks
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
