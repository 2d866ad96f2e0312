"""The first inputs a user's evaluation gives a model, captured and cut to a few examples.

A sweep with ``evaluate=fn`` never sees the data: to probe which weights reach
the output (:func:`robustweights.evaluation.unreached`) it runs the evaluation
once and keeps what its first call of the model received, cut to its first
few examples so that each probe forward is cheap whatever the batch size.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["first_inputs", "first_examples"]


def first_inputs(model: nn.Module, forward: Callable[[], object], keep: int):
    """Run ``forward()`` once; the inputs of its first call of ``model`` as ``(args, kwargs)``, cut
    to their first ``keep`` examples (:func:`first_examples`); ``(None, None)`` when it never called
    the model (or the model takes no hooks: a scripted one)."""
    seen: list = []

    def hook(module, args, kwargs):
        if not seen:
            seen.append((args, kwargs))

    try:
        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    except (RuntimeError, AttributeError, TypeError):
        handle = None
    try:
        forward()
    finally:
        if handle is not None:
            handle.remove()
    if not seen:
        return None, None
    args, kwargs = seen[0]
    n = _batch_size_of((args, kwargs))
    return first_examples(args, n, keep), first_examples(kwargs, n, keep)


def _batch_size_of(inputs) -> int | None:
    """The length of the first tensor (of one dimension or more) in nested inputs; None if none."""
    if isinstance(inputs, torch.Tensor):
        return len(inputs) if inputs.dim() else None
    if isinstance(inputs, dict | tuple | list):
        for v in inputs.values() if isinstance(inputs, dict) else inputs:
            n = _batch_size_of(v)
            if n is not None:
                return n
    return None


def first_examples(inputs, n: int | None, keep: int):
    """``inputs`` with every tensor of ``n`` rows (the batch) cut to its first ``keep``; dicts,
    tuples and lists are followed, other values kept as they are."""
    if isinstance(inputs, torch.Tensor):
        return inputs[:keep] if inputs.dim() and len(inputs) == n else inputs
    if isinstance(inputs, dict):
        cut = {k: first_examples(v, n, keep) for k, v in inputs.items()}
        try:
            return type(inputs)(cut)
        except TypeError:
            return cut
    if isinstance(inputs, tuple | list):
        cut = [first_examples(v, n, keep) for v in inputs]
        try:
            return type(inputs)(cut)
        except TypeError:  # a named tuple
            return tuple(cut)
    return inputs
