"""The conductance mapping of analog in-memory hardware: weights to differential pairs, per tile.

A weight tensor is read as a crossbar matrix (:func:`matrix`: ``(out, in * kh * kw)`` for a
convolution, the tensor itself for a linear layer, an embedding or attention's ``in_proj``),
split into tiles of at most ``tile`` rows and columns (``tile=0``: the whole matrix). Per tile,
with ``s = g_max / max|W|`` over the tile, each weight is a pair of devices
``g+ = clip(s W, 0, g_max)``, ``g- = clip(-s W, 0, g_max)``, and the weight read back from any
pair of conductances is ``(g+ - g-) / s`` (:class:`Pair`). Conductances are in microsiemens
(``g_max = 25 uS`` by default). The device models that program and read the pairs live in
:mod:`robustweights.devices`; the mapping is defined in ``docs/devices.md`` section 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "G_MAX",
    "TILE",
    "Pair",
    "to_pair",
    "matrix",
    "Block",
    "tile_blocks",
    "tile_sums",
    "tile_max",
    "scale_tiles_",
    "per_element",
]

G_MAX = 25.0  # uS, the largest conductance a device is programmed to
TILE = 512  # rows and columns of one crossbar tile


def matrix(w: Tensor) -> Tensor:
    """``w`` as the crossbar matrix it is stored in: ``(out, everything else)``.

    A 1-D tensor is one row, a 0-D one a 1x1 matrix.
    """
    if w.dim() >= 2:
        return w.reshape(w.shape[0], -1)
    return w.reshape(1, -1)


def _sides(shape, tile: int) -> tuple[int, int]:
    """Rows and columns of one tile of a ``shape`` matrix (a tile never outgrows the matrix)."""
    r, c = shape
    return (max(1, min(tile, r)), max(1, min(tile, c))) if tile else (max(1, r), max(1, c))


def _spans(n: int, side: int) -> list[tuple[slice, slice, int]]:
    """The runs of whole tiles along one side of ``n``: ``(elements, tile indices, tile side)``.

    At most two: the tiles of ``side`` elements, then a last, shorter one.
    """
    whole = n // side
    spans = [(slice(0, whole * side), slice(0, whole), side)] if whole else []
    if n % side:
        spans.append((slice(whole * side, n), slice(whole, whole + 1), n % side))
    return spans


@dataclass(frozen=True)
class Block:
    """A regular block of tiles of a crossbar matrix: ``rows`` by ``cols`` elements, tiles of
    ``h`` by ``w``; ``at`` is its place in a ``(tiles down, tiles across)`` per-tile array."""

    rows: slice
    cols: slice
    h: int
    w: int
    at: tuple[slice, slice]

    def view(self, x: Tensor) -> Tensor:
        """The block of matrix ``x`` as a ``(tiles down, h, tiles across, w)`` view of ``x``."""
        return x[self.rows, self.cols].unflatten(0, (-1, self.h)).unflatten(2, (-1, self.w))


def tile_blocks(shape, tile: int) -> list[Block]:
    """The regular blocks of the tiles of a ``shape`` matrix: at most four (whole tiles, the
    shorter last row and column of tiles), so that per-tile work makes no copy of the matrix."""
    tr, tc = _sides(shape, tile)
    return [
        Block(rows, cols, h, w, (ti, tj))
        for rows, ti, h in _spans(shape[0], tr)
        for cols, tj, w in _spans(shape[1], tc)
    ]


def _per_tile(x: Tensor, tile: int, reduce) -> Tensor:
    tr, tc = _sides(x.shape, tile)
    out = x.new_empty(-(-x.shape[0] // tr), -(-x.shape[1] // tc))
    for b in tile_blocks(x.shape, tile):
        out[b.at] = reduce(b.view(x), (1, 3))
    return out


def tile_sums(x: Tensor, tile: int) -> Tensor:
    """The sum of ``x`` (a crossbar matrix) over each tile: ``(tiles down, tiles across)``."""
    return _per_tile(x, tile, torch.sum)


def tile_max(x: Tensor, tile: int) -> Tensor:
    """The largest element of ``x`` (a crossbar matrix) in each tile."""
    return _per_tile(x, tile, torch.amax)


def scale_tiles_(x: Tensor, v: Tensor, tile: int) -> Tensor:
    """``x`` (a crossbar matrix) multiplied in place by its tile's value in ``v``; returns ``x``."""
    for b in tile_blocks(x.shape, tile):
        b.view(x).mul_(v[b.at][:, None, :, None])
    return x


def per_element(v: Tensor, tile: int, shape: tuple[int, int]) -> Tensor:
    """A per-tile value ``v`` (``(R, C)``) spread over the elements of a ``shape`` matrix."""
    tr, tc = _sides(shape, tile)
    return v.repeat_interleave(tr, 0)[: shape[0]].repeat_interleave(tc, 1)[:, : shape[1]]


@dataclass(frozen=True)
class Pair:
    """The differential pairs of one weight tensor: ``plus`` and ``minus`` in uS.

    Both are crossbar matrices (:func:`matrix`); ``scale`` is each element's tile scale
    ``s = g_max / max|W|`` (uS per unit of weight); ``live`` is False in a tile whose weights
    are all 0 (it has no scale, and reads as 0).
    """

    plus: Tensor
    minus: Tensor
    scale: Tensor
    live: Tensor
    shape: torch.Size  # the weight tensor's own shape
    tile: int
    g_max: float

    def weights(self, plus: Tensor | None = None, minus: Tensor | None = None) -> Tensor:
        """The weights that conductances ``plus`` and ``minus`` read as, in the tensor's shape.

        ``(g+ - g-) / s``; without arguments, the mapped conductances themselves.
        """
        plus = self.plus if plus is None else plus
        minus = self.minus if minus is None else minus
        w = torch.where(self.live, (plus - minus) / self.scale, torch.zeros_like(plus))
        return w.reshape(self.shape)


def to_pair(w: Tensor, g_max: float = G_MAX, tile: int = TILE) -> Pair:
    """Map weights ``w`` (any shape) to differential pairs of conductances (module docstring)."""
    m = matrix(w.detach())
    biggest = per_element(tile_max(m.abs(), tile), tile, m.shape)
    live = biggest > 0
    scale = g_max / torch.where(live, biggest, torch.ones_like(biggest))
    plus = (scale * m).clamp(0, g_max)
    minus = (-scale * m).clamp(0, g_max)
    return Pair(plus, minus, scale, live, w.shape, tile, g_max)
