"""Splits of a dataset and their batches: in memory, from image files, from any DataLoader.

A split yields ``(x, y)`` batches: ``x`` float32 ``(B, C, H, W)``, already
preprocessed, and ``y`` int64 ``(B,)``. Randomness (shuffling, augmentation) comes
only from an explicit ``torch.Generator``, so the same state gives the same batches.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError
from .readers import read_image

AUGMENT = ("none", "flip-crop")


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is one of ``choices``, in one line that lists them."""
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def augment_batch(
    x: Tensor, generator: torch.Generator | None, kind: str = "flip-crop", pad: int = 4
) -> Tensor:
    """Random horizontal flip (p = 1/2) and random crop after zero padding, per example.

    Example ``b`` becomes ``out[b, :, i, j] = xp[b, :, dy_b + i, dx_b + j']`` where ``xp``
    is ``x`` zero-padded by ``pad`` on each side, ``dy_b, dx_b ~ U{0..2 pad}`` and
    ``j' = W-1-j`` if flipped else ``j``: crop then flip as one gather. The data are
    already standardized, so a zero pad is the mean colour. The random numbers are
    drawn on the CPU from ``generator`` (same state, same draws on every device) and
    moved to ``x.device``.
    """
    check_choice("augmentation", kind, AUGMENT)
    if kind == "none":
        return x
    b, _, h, w = x.shape  # (B, C, H, W)
    flip = torch.rand(b, generator=generator) < 0.5  # (B,)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)  # (B,) each
    rows = dy[:, None] + torch.arange(h)  # (B, H)
    cols = torch.arange(w).expand(b, w)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)  # (B, W)
    rows, cols = rows.to(x.device), cols.to(x.device)
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return xp[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


class Split:
    """One split of a dataset: a sized source of ``(x, y)`` batches.

    Subclasses say how to fetch the examples of a list of indices (``_fetch``);
    ordering, batching, device transfer and augmentation live here so that both
    kinds of split draw from ``generator`` in the same way: first one permutation
    ``torch.randperm(n)`` (if ``shuffle``), then one augmentation draw per batch.
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def _fetch(self, index_batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: str = "none",
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``x`` float32 ``(B, C, H, W)`` and ``y`` int64 ``(B,)`` on ``device``.

        ``shuffle=False`` gives dataset order; ``drop_last`` drops a final short batch.
        ``shard=(rank, world)`` keeps every ``world``-th example of the order from
        ``rank`` on (distributed training: every rank draws the same order, then
        takes its own share; the last ``n % world`` examples are left out so that
        every rank runs the same number of steps).
        """
        check_choice("augmentation", augment, AUGMENT)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        rank, world = shard
        if not (isinstance(world, int) and isinstance(rank, int) and 0 <= rank < world):
            raise UserError(f"shard must be (rank, world) with 0 <= rank < world, not {shard!r}")
        if world > 1:
            order = order[: n - n % world][rank::world]
            n = len(order)
        stop = n - n % batch_size if drop_last else n
        index_batches = [c for c in order[:stop].split(batch_size) if len(c)]  # none empty
        for x, y in self._fetch(index_batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield augment_batch(x, generator, augment), y


class TensorSplit(Split):
    """A split held whole in memory: ``x`` float32 ``(N, C, H, W)`` preprocessed, ``y`` int64.

    Batches are plain indexing (a copy, so callers may modify them); no DataLoader,
    no worker processes. ``x`` and ``y`` may also live on the GPU already.
    """

    def __init__(self, x: Tensor, y: Tensor):
        if x.ndim != 4 or y.shape != (x.shape[0],):
            raise ValueError(
                f"need x (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.y.shape[0]

    def _fetch(self, index_batches):
        index_batches = list(index_batches)
        # one copy to the GPU a pass, not a blocking one a batch
        if self.x.device.type != "cpu" and index_batches:
            whole = torch.cat(index_batches).to(self.x.device)
            index_batches = whole.split([len(i) for i in index_batches])
        for idx in index_batches:
            yield self.x[idx], self.y[idx]


class LoaderSplit:
    """Any iterable of ``(inputs, targets)`` batches (a ``DataLoader``) served like a split.

    Its own batch size and order are kept (``batch_size``/``shuffle`` are
    ignored); tensors are moved to ``device``. Inputs may be any tensor
    (token ids, features), so models other than image classifiers can be swept.
    """

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        try:
            return len(self.loader.dataset)
        except (AttributeError, TypeError):
            return sum(len(y) for _, y in self.loader)

    def batches(
        self, batch_size=None, shuffle=False, generator=None, augment="none", device=None, **_
    ):
        for x, y in self.loader:
            yield (
                x.to(device) if device is not None else x,
                y.to(device) if device is not None else y,
            )


class FolderSplit(Split):
    """Images decoded lazily from files (ImageNet layout), standardized with ``mean``/``std``.

    ``files`` holds ``(path, label)``. A ``torch.utils.data.DataLoader`` with
    ``num_workers`` worker processes decodes them; the batch order comes from
    ``generator`` through an explicit list of index batches, so the loader's own
    randomness is never used.
    """

    def __init__(
        self,
        files: list[tuple[str, int]],
        image_size: int,
        mean: Tensor,
        std: Tensor,
        num_workers: int = 0,
    ):
        self.files, self.image_size, self.num_workers = files, image_size, num_workers
        self.mean, self.std = mean.float(), std.float()  # (3,) each

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int) -> Tensor:
        """Example ``i`` as float32 ``(3, S, S)``; raises UserError naming a bad file."""
        x = read_image(self.files[i][0], self.image_size)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        # A worker's exception reaches the main process as a multi-line traceback, so a
        # bad image is flagged with label -1 here and re-read (and reported) in _fetch.
        try:
            return self.load_image(i), self.files[i][1]
        except UserError:
            return torch.zeros(3, self.image_size, self.image_size), -1

    def _fetch(self, index_batches):
        batches = [idx.tolist() for idx in index_batches]
        # its own generator: iterating a DataLoader draws a base seed from the global random
        # state otherwise, which another row trained at once (rows_at_once) may be seeding for
        # its initialisation
        loader = torch.utils.data.DataLoader(
            self, batch_sampler=batches, num_workers=self.num_workers, generator=torch.Generator()
        )
        for idx, (x, y) in zip(batches, loader):
            bad = (y < 0).nonzero().flatten().tolist()
            if bad:
                self.load_image(idx[bad[0]])  # raises the UserError that names the file
                raise UserError(f"{self.files[idx[bad[0]]][0]}: could not be read during training")
            yield x, y
