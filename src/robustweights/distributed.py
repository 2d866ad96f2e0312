"""Training in parallel: torch.distributed under torchrun, and several trainings in one process.

torchrun runs one process per device, with the few collective steps train and sweep need;
:func:`run_together` runs several independent trainings at once in one process.

    with process_group("auto") as (rank, world, device):
        ...

Backend ``nccl`` on GPUs (one per local rank), ``gloo`` on CPUs. :func:`agree`
makes a user mistake on any rank stop every rank with its line, and hands
rank 0's view (a checkpoint it read, the cells it found done) to every rank.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch

from .errors import UserError

__all__ = [
    "resolve_device",
    "distributed_env",
    "init_distributed",
    "leave_distributed",
    "agree",
    "process_group",
    "run_together",
    "Stopped",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU if there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; one line for
    any other."""
    if not (isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name)):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no CUDA GPU")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(
            f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return torch.device(
        "cuda"
        if name == "auto" and torch.cuda.is_available()
        else ("cpu" if name == "auto" else name)
    )


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) for a plain run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device_name: str) -> tuple[int, int, torch.device, bool]:
    """Join the process group torchrun describes; returns (rank, world, device, whether we
    initialised it).

    Backend ``nccl`` on GPUs (one per local rank), ``gloo`` on CPUs.
    """
    import torch.distributed as dist

    rank, world, local = distributed_env()
    if world == 1:
        return 0, 1, resolve_device(device_name), False
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    gpus = torch.cuda.device_count() if cuda else 0
    if cuda and local >= gpus:  # two ranks on one GPU: nccl refuses, cuda:1 does not exist
        raise UserError(
            f"process {local} on this machine has no GPU of its own ({gpus} GPU(s) here): start at "
            f"most {gpus} per machine (torchrun --nproc-per-node {max(gpus, 1)}), "
            "or use device='cpu'"
        )
    if cuda:
        torch.cuda.set_device(device)
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, ours


def agree(error: UserError | None, state, rank: int, world: int):
    """Every rank raises a mistake (its own, else the first rank's) if any rank made one; else all
    get rank 0's ``state``. In one process: raise ``error`` if any, else return ``state``."""
    import torch.distributed as dist

    if world == 1:
        if error is not None:
            raise error
        return state

    errors: list = [None] * world
    dist.all_gather_object(errors, None if error is None else str(error))
    if errors[rank] is not None:
        raise UserError(errors[rank])
    for r, message in enumerate(errors):
        if message is not None:
            raise UserError(f"(on rank {r}) {message}")
    return from_rank0(state, world)  # the checkpoint rank 0 read with weights_only=True


def from_rank0(obj, world: int):
    """Rank 0's ``obj`` on every rank (under torchrun; ``obj`` itself in one process)."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def leave_distributed(ours: bool, ok: bool) -> None:
    """Destroy the process group we created: after a barrier when this rank succeeded (no rank tears
    down its connections while another still uses them), at once after an error (no waiting on a
    rank that may never arrive)."""
    if ours:
        import torch.distributed as dist

        if ok:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def process_group(device_name: str):
    """Join the process group torchrun describes (nothing to join in one process) for the block;
    yields ``(rank, world, device)`` and leaves the group on exit: after a barrier when the block
    succeeded, at once after an error."""
    rank, world, device, ours = init_distributed(device_name)
    ok = False
    try:
        yield rank, world, device
        ok = True
    finally:
        leave_distributed(ours, ok)


class Stopped(Exception):
    """Raised inside a job of :func:`run_together` (from its ``stop`` check) when the run was
    interrupted."""


def run_together(jobs: list[Callable], at_once: int, device: "str | torch.device" = "cpu") -> list:
    """Run ``jobs`` (each ``job(stop)``, ``stop()`` raising :class:`Stopped` once the run is
    interrupted), ``at_once`` of them at a time in threads of this process; their results in the
    jobs' order.

    For trainings too small to fill a GPU (a batch-50 step of ``bc-vgg`` with ``--cuda-graph``
    leaves most of an H200 idle): each thread works on its own CUDA stream, so their kernels
    overlap. A job should call ``stop()`` at points where stopping loses nothing (after an epoch's
    checkpoint). The first job to fail keeps the others from starting and is raised once the running
    ones end; Ctrl-C asks the running ones to stop and raises KeyboardInterrupt once they have.
    """
    pool = _Pool(jobs, resolve_device(str(device)))
    pool.run(max(1, min(at_once, len(jobs))))
    if pool.errors:
        raise pool.errors[0]
    return pool.results


class _Pool:
    """The shared state of :func:`run_together`: the jobs not started yet, results, errors."""

    def __init__(self, jobs: list[Callable], device: torch.device):
        self.device = device
        self.caller = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self.results, self.errors, self.pending = [None] * len(jobs), [], list(enumerate(jobs))
        self.lock, self.interrupted = threading.Lock(), threading.Event()

    def stop(self):
        if self.interrupted.is_set():
            raise Stopped("interrupted")

    def worker(self, done: threading.Event):
        try:
            self.work()
        finally:
            done.set()

    def work(self):
        """Take jobs one after another until none is left, one failed or the run was interrupted."""
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if stream is not None:  # after what the caller issued before the call (data on the GPU)
            stream.wait_stream(self.caller)
        while True:
            with self.lock:
                if not self.pending or self.errors or self.interrupted.is_set():
                    return
                i, job = self.pending.pop(0)
            try:
                with torch.cuda.stream(stream) if stream is not None else nullcontext():
                    self.results[i] = job(self.stop)
                if stream is not None:
                    stream.synchronize()
            except Stopped:
                return
            except BaseException as e:  # noqa: B902 - handed to the calling thread
                with self.lock:
                    self.errors.append(e)
                return

    def run(self, threads: int):
        """Start ``threads`` workers and wait for them all; on Ctrl-C, stop them and raise."""
        # Each thread says it is done through an event, not Thread.join/is_alive: a join
        # interrupted by Ctrl-C can leave is_alive() False while the thread still runs (CPython
        # before 3.13), and the interrupt was raised before the running jobs had stopped.
        done = []  # one event a started thread
        try:
            for _ in range(threads):
                # made before start: an interrupt inside start() comes after the thread is made,
                # which sets it
                done.append(threading.Event())
                threading.Thread(target=self.worker, args=(done[-1],), daemon=True).start()
            for d in done:
                # in short waits: a signal that reaches another thread still wakes this one
                while not d.wait(0.2):
                    pass
        except KeyboardInterrupt:
            self.interrupted.set()
            for d in done:
                d.wait()
            raise
