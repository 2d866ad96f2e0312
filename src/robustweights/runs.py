"""Run folders and their files: atomic writes, the folder guard, safe reading, provenance.

Every file the package writes goes through :func:`write_text` / :func:`write_bytes`
(a temporary file renamed over the target: readers see the old file or the new
one, never half of one; modes follow the umask like any other file). Every
``torch.load`` of a file that may come from a stranger goes through
:func:`safe_load` (``weights_only=True``: tensors and plain containers, never
code). :func:`git_commit`, :func:`machine`, :func:`now` and :func:`sha256` are
the provenance every result records.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import pickle
import platform
import re
import subprocess
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError

__all__ = [
    "CHECKPOINT",
    "BEST",
    "save_checkpoint",
    "read_checkpoint",
    "kept",
    "atomic_write",
    "save_tensors",
    "write_text",
    "write_bytes",
    "check_writable",
    "safe_load",
    "git_commit",
    "machine",
    "now",
    "sha256",
]


CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # with a validation split: the network of the best validation epoch
FORMAT = "robustweights-checkpoint"
VERSION = 1


def now() -> str:
    """The local time, to the second, as every result records it."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` and rename over ``path``: readers see the old file or the
    new one. A failure (a full disk, a read-only file system) leaves the old file as it was and
    raises ``OSError`` naming ``path``, not the temporary file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: follow the umask like any file
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, obj) -> None:
    """``torch.save(obj)`` written atomically. Through a file object, so that a full disk is an
    ``OSError`` (torch's own writer of a path says only "unexpected pos ...")."""

    def write(tmp):
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as e:  # torch's writer, closing after Ctrl-C or a failed write,
                if isinstance(e.__context__, (KeyboardInterrupt, OSError)):  # hides the cause
                    raise e.__context__ from None
                raise

    atomic_write(Path(path), write)


def check_writable(out: Path, name: str = "out") -> None:
    """One line, before any data is loaded, when ``out`` cannot be created or written (nothing is
    created here). ``name``: the parameter ``out`` was given as, in the message."""
    p = Path(out).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{name}={str(out)!r}: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{name}={str(out)!r}: no permission to write in {p}")


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def safe_load(p: Path, what: str):
    """``torch.load(p, weights_only=True)`` with one sentence of ours for each way a file can be
    wrong.

    ``weights_only`` reads tensors and plain containers and never runs code;
    a file that needs more (a pickled whole ``nn.Module``, any other Python
    object) is refused rather than loaded, whatever PyTorch's own message suggests.
    """
    _check_zip_members(p, what)
    try:
        with (
            warnings.catch_warnings()
        ):  # torch's own warnings about odd files: our one line says it
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        name = found.group(1) if found else None
        if name is None and not _pickles_modules(p):
            raise UserError(
                f"{p} is not a readable {what}: not a file torch.save wrote, or truncated or "
                f"corrupt"
            ) from None
        if name and name.startswith("torch.nn.modules") or _pickles_modules(p):
            raise UserError(
                f"{p} holds a pickled whole model ({name}), not a {what}; robustweights reads "
                f"only tensors, never code: save model.state_dict() with torch.save instead"
            ) from None
        raise UserError(
            f"{p} is not a {what}: it holds Python objects other than tensors"
            f"{f' ({name})' if name else ''}, which robustweights refuses to unpickle "
            f"(that could run code)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(
            f"{p} is not a readable {what}: truncated or corrupt ({type(e).__name__})"
        ) from None
    except Exception as e:  # noqa: BLE001 -- torch.load of arbitrary bytes raises nearly anything
        raise UserError(
            f"{p} is not a readable {what} (not a file torch.save wrote: {type(e).__name__})"
        ) from None


def _check_zip_members(p: Path, what: str) -> None:
    """torch.save writes its zip members stored, not compressed: a compressed one (a 1.8 MB file
    that inflates to gigabytes) is refused before torch.load reads it. Files that are not zips are
    left to torch.load."""
    try:
        with zipfile.ZipFile(p) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    size = p.stat().st_size
    if any(m.compress_type != zipfile.ZIP_STORED or m.file_size > size for m in members):
        raise UserError(
            f"{p} is not a {what} torch.save wrote: it holds compressed members (torch.save stores "
            f"them as they are), which robustweights refuses to inflate"
        )


def _pickles_modules(p: Path) -> bool:
    """Whether the pickle inside a ``torch.save`` file names ``torch.nn`` module classes (read as
    bytes, not run)."""
    try:
        with zipfile.ZipFile(p) as z:
            blob = b"".join(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    except (zipfile.BadZipFile, OSError):
        try:
            blob = p.read_bytes()[: 1 << 24]
        except OSError:
            return False
    return b"torch.nn.modules" in blob


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return r.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} CPU cores{gpu}"


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    *,
    model,
    optimizer,
    epoch,
    config,
    history,
    num_classes,
    in_shape,
    data,
    train_bn: dict | None = None,
    model_state: dict | None = None,
) -> None:
    state = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "model": model.state_dict() if model_state is None else model_state,
        "optimizer": optimizer.state_dict() if optimizer else None,
        "config": dataclasses.asdict(config),
        "history": history,
        "num_classes": num_classes,
        "in_shape": list(in_shape),
        "data": data,
        "torch": str(torch.__version__),
        # batch-norm statistics of training, where "model" holds re-estimated ones
        "train_bn": train_bn,
    }
    save_tensors(path, state)


def kept(folder: "str | os.PathLike") -> Path:
    """The checkpoint a run folder keeps: ``best.pt`` (best validation epoch) if there is one, else
    ``checkpoint.pt``."""
    folder = Path(folder)
    return folder / BEST if (folder / BEST).is_file() else folder / CHECKPOINT


def read_checkpoint(path: "str | os.PathLike", *, last: bool = False) -> dict:
    """Read a checkpoint file, or the one a run folder keeps (:func:`kept`; ``last``:
    ``checkpoint.pt``, the one training resumes from), safely; UserError if it is not one."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT if last else kept(p)
    if not p.is_file():
        raise UserError(f"no checkpoint at {p}")
    state = safe_load(p, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{p} is not a robustweights checkpoint")
    shape = state.get("in_shape")
    checks = {
        "config": isinstance(state.get("config"), dict),
        "model": isinstance(state.get("model"), dict)
        and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()
        ),
        "epoch": _count(state.get("epoch")),
        "num_classes": _count(state.get("num_classes")),
        "in_shape": isinstance(shape, list | tuple)
        and len(shape) > 0
        and all(_count(n) for n in shape),
        "history": isinstance(state.get("history", []), list),
        "train_bn": state.get("train_bn") is None or isinstance(state["train_bn"], dict),
        "optimizer": state.get("optimizer") is None or isinstance(state["optimizer"], dict),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:  # a stranger's or damaged file: one line, not a KeyError further on
        raise UserError(
            f"{p} is a damaged robustweights checkpoint: {', '.join(bad)} missing or of the wrong "
            f"type"
        )
    return state


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
