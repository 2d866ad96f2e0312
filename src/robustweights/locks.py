"""One writer per folder: a lock held while a command writes a run folder, gone when its process is.

Two ``train``, ``sweep`` or ``reproduce`` processes on one ``--out`` would each compute every
cell and overwrite each other's files. :func:`one_writer` takes an exclusive ``flock`` on a
small file named after the folder's resolved path, in a lock folder outside the run folder (so
run folders hold only their own files); the kernel releases it when the process ends in any way,
``kill -9`` included, so a resume after a kill always finds the folder free. A second process is
refused with one line naming the holder's process id and command. Within one process the lock is
re-entrant (``reproduce`` trains and sweeps rows in threads of one process).

The lock folder is ``$RW_LOCK_DIR``, else ``robustweights-locks`` in the temporary folder. It
works between processes of one machine (not across machines sharing a network file system), and
is skipped on systems without ``fcntl``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; the folder is not guarded there
    fcntl = None

_HELD: dict[str, list] = {}  # key -> [file descriptor, holders in this process]
_GUARD = threading.Lock()


def lock_dir() -> Path:
    """Where lock files live: ``$RW_LOCK_DIR`` or ``<tmp>/robustweights-locks``."""
    return Path(
        os.environ.get("RW_LOCK_DIR") or Path(tempfile.gettempdir()) / "robustweights-locks"
    )


def lock_path(folder) -> Path:
    """The lock file of ``folder`` (which need not exist yet): one per resolved path."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode("utf-8", "surrogateescape"))
    return lock_dir() / f"{key.hexdigest()[:32]}.lock"


def _open(path: Path) -> tuple[int, bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # a lock folder shared by the machine's users
        os.chmod(path.parent, 0o1777)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:  # another user's lock file: flock works on a read-only descriptor
        return os.open(path, os.O_RDONLY), False


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"process {int(info['pid'])} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _acquire(folder, command: str) -> int:
    path = lock_path(folder)
    fd, writable = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(
            f"{folder} is being written by {holder}; wait for it to end, or write elsewhere "
            f"(one writer per folder)"
        ) from None
    if writable:
        info = {"pid": os.getpid(), "command": command, "since": time.strftime("%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**info, "folder": str(folder)}).encode(), 0)
    return fd


@contextlib.contextmanager
def one_writer(folder, command: str = "robustweights"):
    """Holds ``folder``'s lock for the block; :class:`UserError` if another process holds it."""
    if fcntl is None:
        yield
        return
    key = str(lock_path(folder))
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            _HELD[key] = [_acquire(folder, command), 1]
    try:
        yield
    finally:
        with _GUARD:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                os.close(_HELD.pop(key)[0])  # releases the flock; the file stays (no unlink race)
