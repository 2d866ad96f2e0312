"""Random draws for the transforms: from any ``torch.Generator`` on any device, also inside ``torch.compile``.

:func:`uniform` and :func:`normal` draw shaped like a weight tensor from one
generator only, so a seed fixes every random projection and distortion. A
generator registered with :func:`traceable` is drawn from inside compiled code
through one opaque operator, so compiling changes no number.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["uniform", "normal", "traceable"]


def uniform(w: Tensor, g: torch.Generator | None) -> Tensor:
    """``U[0, 1)`` draws shaped like ``w``, from ``g`` only (drawn on ``g``'s device)."""
    return _draw(w, g, normal=False)


def normal(w: Tensor, g: torch.Generator | None) -> Tensor:
    return _draw(w, g, normal=True)


# torch.compiler.is_compiling appeared in torch 2.3; the package admits torch >= 2.1.
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _draw(w: Tensor, g: torch.Generator | None, normal: bool) -> Tensor:
    if g is not None and _is_compiling() and id(g) in _TOKENS:
        gid = id(g)
        return torch.ops.robustweights.draw(_TOKENS[gid], gid, list(w.shape), normal, w.dtype, w.device)
    return _draw_now(w.shape, g, normal, w.dtype, w.device)


def _draw_now(shape, g: torch.Generator | None, normal: bool, dtype, device) -> Tensor:
    """Draw on ``g``'s device (``device`` without a generator), returned on ``device``."""
    f = torch.randn if normal else torch.rand
    return f(shape, generator=g, device=g.device if g is not None else device, dtype=dtype).to(device)


# torch.compile cannot trace a draw from an explicit generator (the graph breaks at every
# projected layer and each piece is recompiled). A generator made traceable with
# `traceable(g)` is drawn from inside compiled code through the opaque operator
# `robustweights::draw`, which looks the generator up by id. It "mutates" a per-generator
# token tensor so that the compiled graph keeps the draws in program order and never merges
# two of them: the numbers are the ones the same steps draw without compiling.
# The table holds the generators themselves, not weak references: some generators refuse
# weak references (CUDA generators in several torch releases), and a held generator's id
# can never be reused by another object. The cost is a few bytes per registered generator.
_GENERATORS: dict[int, torch.Generator] = {}
_TOKENS: dict[int, Tensor] = {}


def traceable(g: torch.Generator | None) -> None:
    """Let code compiled with ``torch.compile`` draw from ``g`` without a graph break.

    Works for any generator on any device; ``g`` stays referenced for the life of
    the process (see the comment above).
    """
    if g is None or id(g) in _TOKENS or not hasattr(torch.library, "custom_op"):
        return
    gid = id(g)
    _GENERATORS[gid] = g
    _TOKENS[gid] = torch.zeros((), dtype=torch.int64, device=g.device)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4
    @torch.library.custom_op("robustweights::draw", mutates_args=("token",),
                             schema="(Tensor(a!) token, int generator, SymInt[] shape, bool normal, "
                                    "ScalarType dtype, Device device) -> Tensor")
    def _draw_op(token, generator, shape, normal, dtype, device):
        token.add_(1)
        return _draw_now(shape, _GENERATORS[generator], normal, dtype, device)

    @_draw_op.register_fake
    def _(token, generator, shape, normal, dtype, device):
        return torch.empty(shape, dtype=dtype, device=device)
