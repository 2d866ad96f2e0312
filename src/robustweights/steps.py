"""The training step, eager or as one CUDA graph; the learning rate of each step.

A step is the forward pass, the loss, the backward pass, the optimizer's update and the clip.

At batch 50 a full-width ``bc-vgg`` step on an H200 is bound by kernel
launches, not arithmetic: 5-8 ms eager whatever the batch size
(docs/results/benchmarks/gpu_batch50_h200.txt). :class:`GraphedStep` records
the whole step once with ``torch.cuda.graph`` and then launches it as one
graph per batch (``train --cuda-graph``; on an H200 at batch 50, 1.5-1.8 ms
a step, 4.4-5.2 times the eager rate: docs/results/benchmarks/gpu_graph_h200.txt):

* the batch is copied into fixed input buffers; a batch of another size
  (the last of an epoch) runs eagerly on the same weights and optimizer;
* the learning rate is a tensor on the GPU that the optimizer reads
  (Adam with ``capturable=True``), set before each launch;
* the random projections' generator is registered with the graph, so every
  launch draws new numbers, from the generator's state at that moment (a
  reseeded generator reseeds the graph's draws);
* the warm-up steps that capture needs run on the first batch and are then
  undone (weights, batch-norm buffers, optimizer state and generators are
  put back), so training starts from the same state as without the graph.

Not with ``--compile`` (the graph already holds the whole step), nor under
``torchrun`` (DistributedDataParallel's communication is not captured here).
Several graphed trainings may run at once in threads of one process (each
thread on its own CUDA stream, :func:`robustweights.distributed.run_together`):
each captures on its own stream, in ``thread_local`` error mode (another
thread's work does not break a capture), one capture at a time.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import torch
from torch import Tensor, nn

from . import projected
from .config import CLASSIFICATION_MEASURES
from .errors import UserError, one_line
from .evaluation import as_logits, loss_fn

__all__ = [
    "make_step",
    "is_classification",
    "GraphedStep",
    "lr_at",
    "set_lr",
    "snapshot",
    "restore",
    "EXCLUSIVE",
]


def make_step(
    model: nn.Module,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    loss: str,
    *,
    amp: bool,
    channels_last: bool,
    device: torch.device,
    graphed: bool = False,
    measure=None,
) -> Callable:
    """``step(x, y, check=False) -> (loss, wrong)``: one training step; 0-dim tensors, no host sync.
    ``check`` checks the model's outputs against the targets (the first step of a run).

    The loss is the objective of ``measure`` (a :class:`robustweights.measures.Measure`; None:
    classification with ``loss``). A classification measure's step is the classifier's: the
    ``(batch, classes)`` logits, the loss ``loss`` of them in float32 and the wrong argmaxes
    counted; any other measure's step minimises ``measure.objective`` of the model's output (a
    tensor, or an object or dict holding ``logits``) and counts nothing (``wrong`` stays 0)."""
    autocast = dict(
        device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"
    )
    if graphed:
        autocast["cache_enabled"] = False  # casts cached across a capture would outlive it
    if measure is not None and not is_classification(measure):
        return _objective_step(model, net, opt, measure, autocast, channels_last, device)

    def step(x: Tensor, y: Tensor, check: bool = False):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**autocast):
            logits = as_logits(net(x), y, check_labels=check)
        value = loss_fn(loss, logits.float(), y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        projected.clip_(model)
        return value.detach(), (logits.detach().argmax(1) != y).sum()

    return step


def is_classification(measure) -> bool:
    """Whether ``measure`` judges a classifier (``error``, ``top5_error``, ``loss``): its steps
    count wrong predictions, its runs keep the ``*_error`` figures."""
    return measure.name in CLASSIFICATION_MEASURES


def _objective_step(model, net, opt, measure, autocast, channels_last, device) -> Callable:
    """The step of a measure other than classification's: see :func:`make_step`."""
    nothing = torch.zeros((), dtype=torch.int64, device=device)  # (one tensor: a graph keeps it)

    def step(x: Tensor, y: Tensor, check: bool = False):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**autocast):  # (the objective too: its softmax in float32)
            out = net(x)
            if check and measure.check is not None:
                measure.check(out, y)
            value = measure.objective(out, y).float()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        projected.clip_(model)
        return value.detach(), nothing

    return step


def lr_at(config, epoch: int, step: int, steps: int) -> float:
    """Learning rate of a :class:`~robustweights.training.TrainConfig` at ``step`` of ``steps`` in
    ``epoch`` (a pure function, so resuming needs no state)."""
    if config.schedule == "exp":
        end = config.lr_end if config.lr_end is not None else config.lr / 1000
        return config.lr * (end / config.lr) ** (epoch / max(1, config.epochs - 1))
    if config.schedule == "cosine":
        t = (epoch * steps + step) / (config.epochs * steps)
        return config.lr * 0.5 * (1 + math.cos(math.pi * t))
    return config.lr


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate to ``lr``: in place where it is a tensor (read by a captured
    graph)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def snapshot(model: nn.Module, opt: torch.optim.Optimizer, generators: list) -> dict:
    """Copies of everything a training step changes: weights and buffers, optimizer state,
    generators."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "opt": {
            p: {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
            for p, s in opt.state.items()
        },
        "generators": [g.get_state() for g in generators],
    }


def restore(model: nn.Module, opt: torch.optim.Optimizer, generators: list, saved: dict) -> None:
    """Put back :func:`snapshot`'s state in place (the tensors keep their identity: a captured graph
    holds their addresses). Optimizer state made since the snapshot is zeroed: Adam's state before
    its first step."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(saved["model"][k])
        for p, state in opt.state.items():
            before = saved["opt"].get(p, {})
            for k, v in state.items():
                if isinstance(v, Tensor):
                    v.copy_(before[k]) if k in before else v.zero_()
                elif k in before:
                    state[k] = before[k]
    for g, s in zip(generators, saved["generators"]):
        g.set_state(s)


# Work that touches process-wide state, one thread at a time (run_together): a capture
# (torch.cuda.graph synchronises, empties the cache, takes the default generator) and a training's
# set-up (seeds the global random state, counts attribute reads process-wide;
# robustweights.training).
EXCLUSIVE = threading.Lock()


_THREAD = threading.local()


def _capture_streams() -> tuple:
    """This thread's two streams for warming up and recording graphs, made once: torch.cuda.Stream()
    deals out a pool of 32 in turn, so new ones for every capture would in time be another thread's
    live stream."""
    if (
        getattr(_THREAD, "streams", None) is None
        or _THREAD.streams[0].device.index != torch.cuda.current_device()
    ):
        _THREAD.streams = (torch.cuda.Stream(), torch.cuda.Stream())
    return _THREAD.streams


class GraphedStep:
    """``step`` (from :func:`make_step` with ``graphed=True``) captured as one CUDA graph at its
    first full batch and replayed for every batch of that size; see the module docstring."""

    def __init__(
        self,
        step: Callable,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        generators: list,
        warmup: int = 3,
    ):
        if not hasattr(torch.cuda.CUDAGraph, "register_generator_state") and any(
            g.device.type == "cuda" for g in generators
        ):
            raise UserError(
                f"cuda_graph=True with a random projection needs a torch whose CUDA graphs take "
                f"other generators than the default one (torch {torch.__version__} has no "
                f"CUDAGraph.register_generator_state); drop cuda_graph=True"
            )
        for group in opt.param_groups:
            if not (isinstance(group["lr"], Tensor) and group.get("capturable")):
                raise ValueError(
                    "GraphedStep needs an optimizer with capturable=True and a tensor lr"
                )
        self.step, self.model, self.opt, self.generators, self.warmup = (
            step,
            model,
            opt,
            generators,
            warmup,
        )
        self.graph, self.x, self.y, self.out = None, None, None, None

    def __call__(self, x: Tensor, y: Tensor, check: bool = False):
        if check or (self.graph is not None and x.shape != self.x.shape):
            return self.step(x, y, check)  # the first batch's checks, or a batch of another size
        if self.graph is None:
            try:
                self._capture(x, y)
            except (
                RuntimeError
            ) as e:  # e.g. a model that reads a tensor on the host (.item(), an if on a value)
                raise UserError(
                    f"cuda_graph=True: this training step cannot be recorded as a CUDA graph "
                    f"({one_line(e)[:300]}); train without cuda_graph=True"
                ) from None
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.out

    def _capture(self, x: Tensor, y: Tensor) -> None:
        with EXCLUSIVE:
            self._capture_now(x, y)

    def _capture_now(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x.clone(), y.clone()
        saved = snapshot(self.model, self.opt, self.generators)
        side, capture = _capture_streams()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up, as capture needs (cuBLAS handles, autograd state)
            for _ in range(self.warmup):
                self.step(self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        restore(self.model, self.opt, self.generators, saved)
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        for g in self.generators:
            if g.device.type == "cuda":
                self.graph.register_generator_state(g)
        # its own capture stream (torch.cuda.graph's default one is shared by every graph of the
        # process)
        with torch.cuda.graph(self.graph, stream=capture, capture_error_mode="thread_local"):
            self.out = self.step(self.x, self.y)
