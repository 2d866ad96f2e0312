"""Random draws and seeds: from any ``torch.Generator`` on any device, also under ``torch.compile``.

:func:`uniform` and :func:`normal` draw shaped like a weight tensor from one
generator only, so a seed fixes every random projection and distortion;
:func:`derive_seed` gives the seed of each generator (an epoch's data order, a
sweep cell) from the run's seed and what the generator is for.

Under ``torch.compile`` every draw runs outside the compiled graph (a graph
break at each random projection), so compiling changes no number. A draw
inside the graph is a node the compiler may run a second time in the backward
pass instead of keeping its result (the partitioner recomputes nodes it
thinks cheap, to save memory), and a generator with state then hands the
backward pass other numbers than the forward pass used: the straight-through
gradient of ``stoch-sign`` came from another binarization than the one the
network ran with. Seen on an NVIDIA H200 with inductor (torch 2.11: outputs
equal to eager, gradients not), and on the CPU with the graphs dumped when the
partitioner is asked to save little (``activation_memory_budget=0``: the
backward graph holds the draws again). A draw made outside the graph enters it
as an input, which is never recomputed. The cost is measured in
``benchmarks/projection_overhead.py --compile``.

Such functions are marked :func:`untraced`: ``torch.compiler.disable``, applied
once ``torch._dynamo`` is imported (by ``torch.compile``, before it traces
anything). Importing it costs about a second, which a command that never
compiles (``robustweights --help``, a sweep) then does not pay.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import sys

import torch
from torch import Tensor

__all__ = ["uniform", "normal", "derive_seed", "untraced"]

_UNTRACED: list = []  # functions to disable once torch._dynamo is imported


def untraced(fn):
    """``fn`` never traced by ``torch.compile`` (``torch.compiler.disable``): now if
    ``torch._dynamo`` is imported, else as its import ends. ``fn`` must be called through its
    module's global name (which is what gets replaced)."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.disable(fn)
    if not _UNTRACED:
        sys.meta_path.insert(0, _DynamoWatch())
    _UNTRACED.append(fn)
    return fn


def _disable_all() -> None:
    for fn in _UNTRACED:
        fn.__globals__[fn.__name__] = torch.compiler.disable(fn)
    _UNTRACED.clear()


class _DynamoWatch(importlib.abc.MetaPathFinder):
    """Finds ``torch._dynamo`` as the other finders do, and disables :data:`_UNTRACED` once its
    module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch._dynamo":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _disable_all()

        spec.loader.exec_module = exec_module
        return spec


def derive_seed(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def uniform(w: Tensor, g: torch.Generator | None) -> Tensor:
    """``U[0, 1)`` draws shaped like ``w``, from ``g`` only (drawn on ``g``'s device)."""
    return _draw(w.shape, g, False, w.dtype, w.device)


def normal(w: Tensor, g: torch.Generator | None) -> Tensor:
    return _draw(w.shape, g, True, w.dtype, w.device)


@untraced
def _draw(shape, g: torch.Generator | None, normal: bool, dtype, device) -> Tensor:
    """Draw on ``g``'s device (``device`` without a generator), returned on ``device``; never
    traced."""
    f = torch.randn if normal else torch.rand
    return f(shape, generator=g, device=g.device if g is not None else device, dtype=dtype).to(
        device
    )
