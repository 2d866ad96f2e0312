"""Datasets: loading them (files read by :mod:`robustweights.readers`), preprocessing them, and serving batches.

``load_data(name, data_dir)`` returns a :class:`Data` whose ``train`` and
``test`` splits yield ``(x, y)`` batches: ``x`` float32 ``(B, C, H, W)``,
already preprocessed, and ``y`` int64 ``(B,)``. Five datasets:

* ``fashion-mnist`` and ``mnist``: the four official IDX files (gzipped or not).
* ``cifar10``: the official "python version" (a ``cifar-10-batches-py/``
  folder or the ``cifar-10-python.tar.gz`` archive itself). Its batches are
  pickles, and a pickle can run any code it names, so they are read with an
  unpickler that admits only the numpy array reconstruction they need.
* ``imagefolder``: ImageNet's class-per-folder layout, decoded lazily with PIL.
* ``demo``: a 5000/1000 Fashion-MNIST subset shipped inside the package.

Every mistake a user can make (a wrong name, a missing folder, a truncated or
hostile file) raises :class:`~robustweights.errors.UserError` naming the file.
Randomness (subsets, shuffling, augmentation) comes only from an explicit seed or
``torch.Generator``, so the same state gives the same batches.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError
from .readers import (
    FASHION_CLASSES,
    MNIST_CLASSES,
    list_images,
    read_cifar,
    read_demo,
    read_image,
    read_mnist,
)

DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "demo")
PREPROCESS = ("standardize", "gcn-zca", "none", "normalize:mean=M,std=S")
AUGMENT = ("none", "flip-crop")

DEMO_DESCRIPTION = "Fashion-MNIST subset shipped with robustweights (5000 train / 1000 test)"
STATS_IMAGES = 500  # image-folder mean/std come from this many training images
ZCA_FILTER_BIAS = 0.1  # BinaryConnect's pylearn2 ZCA setting
GCN_SCALE = 55.0  # pylearn2 global_contrast_normalize(scale=55)
CHUNK = 4096  # rows per float64 block in GCN/ZCA: bounds memory to ~100 MB


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


# --------------------------------------------------------------------------- batches


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
    _check_choice("augmentation", kind, AUGMENT)
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
        _check_choice("augmentation", augment, AUGMENT)
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
        for x, y in self._fetch(
            [c for c in order[:stop].split(batch_size) if len(c)]
        ):  # (none empty)
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
        if (
            self.x.device.type != "cpu" and index_batches
        ):  # one copy to the GPU a pass, not a blocking one a batch
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


def as_split(data, split: str = "test"):
    """The split to test: a :class:`Data`'s ``split``, a ``Split``, or any iterable of batches (a DataLoader)."""
    if isinstance(data, Data):
        return getattr(data, split)
    if isinstance(data, (Split, LoaderSplit)):
        return data
    if hasattr(data, "__iter__"):
        return LoaderSplit(data)
    raise UserError(
        f"cannot test on {type(data).__name__}: give a robustweights Data or Split, or a DataLoader "
        f"of (inputs, targets) batches"
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
        # its own generator: iterating a DataLoader draws a base seed from the global random state otherwise,
        # which another row trained at once (rows_at_once) may be seeding for its initialisation
        loader = torch.utils.data.DataLoader(
            self, batch_sampler=batches, num_workers=self.num_workers, generator=torch.Generator()
        )
        for idx, (x, y) in zip(batches, loader):
            bad = (y < 0).nonzero().flatten().tolist()
            if bad:
                self.load_image(idx[bad[0]])  # raises the UserError that names the file
                raise UserError(f"{self.files[idx[bad[0]]][0]}: could not be read during training")
            yield x, y


# --------------------------------------------------------------------------- preprocessing

STANDARDIZED = "standardized (per-channel mean and std of the training pixels)"


def parse_preprocess(spec: str) -> tuple[str, list[float] | None, list[float] | None]:
    """``(kind, mean, std)`` of a preprocessing spec (one of :data:`PREPROCESS`).

    ``standardize`` (per-channel mean and std of the training pixels),
    ``gcn-zca`` (BinaryConnect's), ``none`` (pixels in [0, 1] as they are) or
    ``normalize:mean=M,std=S`` with your own figures, ``(x - M) / S`` on pixels
    in [0, 1]; per channel as ``mean=0.49/0.48/0.45,std=0.25/0.24/0.26``.
    """
    if spec in ("standardize", "gcn-zca", "none"):
        return spec, None, None
    name, _, rest = str(spec).partition(":")
    usage = (
        f"preprocessing {spec!r} is not one of: standardize, gcn-zca, none, "
        "normalize:mean=M,std=S (per channel M1/M2/M3)"
    )
    if name != "normalize":
        raise UserError(usage)
    vals = {}
    for part in rest.split(","):
        k, _, v = part.partition("=")
        if k.strip() in vals:
            raise UserError(usage + f"; {k.strip()} given twice")
        try:
            vals[k.strip()] = [float(x) for x in v.split("/")]
        except ValueError:
            raise UserError(usage) from None
    if set(vals) != {"mean", "std"}:
        unknown = sorted(set(vals) - {"mean", "std"})
        raise UserError(
            usage
            + (
                f"; unknown key {', '.join(map(repr, unknown))}"
                if unknown
                else "; it needs both mean and std"
            )
        )
    if not all(math.isfinite(x) for v in vals.values() for x in v) or not all(
        x >= 1e-6 for x in vals["std"]
    ):
        raise UserError(
            usage + "; every mean must be finite and every std positive (at least 1e-6)"
        )
    return name, vals["mean"], vals["std"]


def describe_preprocess(spec: str) -> str:
    """The words a :class:`Data` prepared with preprocessing ``spec`` carries (its ``preprocessing``)."""
    kind, mean, std = parse_preprocess(spec)
    return (
        {
            "standardize": STANDARDIZED,
            "gcn-zca": "GCN + ZCA whitening (fitted on the training split)",
            "none": "none (pixels in [0, 1])",
        }.get(kind)
        or f"normalized with mean {'/'.join(map(str, mean))}, std {'/'.join(map(str, std))} (pixels in [0, 1])"
    )


def _preprocess(spec: str, train: Tensor, test: Tensor) -> str:
    """Apply preprocessing ``spec`` in place (fitted on ``train`` where it fits anything); its description."""
    kind, mean, std = parse_preprocess(spec)
    if kind == "standardize":
        _standardize(train, test)
    elif kind == "gcn-zca":
        _gcn_zca(train, test)
    elif kind == "normalize":
        c = train.shape[1]
        if len(mean) not in (1, c) or len(std) not in (1, c):
            raise UserError(
                f"preprocessing {spec!r}: give one value or {c} (one per channel) for mean and std"
            )
        m = torch.tensor(mean).view(1, -1, 1, 1)
        sd = torch.tensor(std).view(1, -1, 1, 1)
        for x in (train, test):
            x.sub_(m).div_(sd)
    return describe_preprocess(spec)


def _standardize(train: Tensor, test: Tensor) -> None:
    """In place: ``x <- (x - mean_c) / std_c``, per-channel mean and (population) std of
    the training pixels in [0, 1]. A constant channel keeps std 1 (no division by 0)."""
    std, mean = torch.std_mean(train, dim=(0, 2, 3), keepdim=True, correction=0)  # (1, C, 1, 1)
    std = torch.where(std > 0, std, torch.ones_like(std))
    for x in (train, test):
        x.sub_(mean).div_(std)


def _gcn(x: Tensor) -> Tensor:
    """pylearn2 ``global_contrast_normalize(scale=55)`` on rows of ``x`` (N, D), in place:
    ``x <- 55 (x - mean(x)) / ||x - mean(x)||``; a divisor under 1e-8 is replaced by 1 so
    that constant images stay 0."""
    x -= x.mean(1, keepdim=True)
    divisor = x.norm(dim=1, keepdim=True) / GCN_SCALE
    return x.div_(torch.where(divisor < 1e-8, torch.ones_like(divisor), divisor))


def _gcn_zca(train: Tensor, test: Tensor) -> None:
    """In place: global contrast normalization, then ZCA whitening fitted on train.

    BinaryConnect's CIFAR-10 preprocessing (pylearn2 ``ZCA(filter_bias=0.1)``): with
    ``m`` the mean of the GCN'd training rows and ``C = Xc^T Xc / N`` their covariance,
    ``C = V diag(e) V^T``, ``W = V diag(1 / sqrt(e + 0.1)) V^T`` and ``x <- (x - m) W``.
    The bias keeps near-zero-variance directions from being blown up into noise.
    Statistics are accumulated in float64 over row blocks (``C = X^T X / N - m m^T``,
    one pass, ~100 MB at a time instead of 1.2 GB for CIFAR-10) and decomposed in float64;
    results are float32. CIFAR-10 (50000 x 3072) takes ~20 s on 2 CPU cores.
    """
    rows = [x.view(len(x), -1) for x in (train, test)]  # (N, D) views
    d = rows[0].shape[1]
    total, gram = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for block in rows[0].split(CHUNK):
        g = _gcn(block.double())
        total += g.sum(0)
        gram.addmm_(g.T, g)
        block.copy_(g)
    for block in rows[1].split(CHUNK):
        block.copy_(_gcn(block.double()))
    n = len(rows[0])
    mean = total / n  # (D,)
    eigval, eigvec = torch.linalg.eigh(gram / n - torch.outer(mean, mean))
    # clamp: rounding can leave the (rank-deficient) covariance tiny negative eigenvalues
    w = (eigvec * (eigval.clamp_min(0) + ZCA_FILTER_BIAS).rsqrt()) @ eigvec.T  # (D, D)
    # The product itself runs in float32, twice as fast; its result is stored in float32
    # anyway and differs from the float64 product by ~1e-6 relative.
    mean, w = mean.float(), w.float()
    for x in rows:
        for block in x.split(CHUNK):
            block.copy_((block - mean) @ w)


# --------------------------------------------------------------------------- load_data


@dataclass
class Data:
    """A dataset ready for training; ``description`` says where it came from and any caveat."""

    name: str
    description: str
    num_classes: int
    in_shape: tuple[int, int, int]  # (C, H, W)
    classes: list[str]
    train: Split
    test: Split
    preprocessing: str = ""  # what was done to the inputs, in words (printed beside results)
    val: "Split | None" = None  # held out from the training set for model selection (val_size)


_SUBFOLDER = {"fashion-mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "cifar-10-batches-py"}


def default_data_dir(name: str) -> str | None:
    """Where ``name`` is found when no data_dir is given, or None.

    Searched in order: ``$ROBUSTWEIGHTS_DATA/<subfolder>``; then for the MNISTs
    Debian's ``/usr/share/datasets/<name>``; for CIFAR-10 ``./data/``,
    ``../shared/datasets/`` (from the working directory) and the ``shared/datasets/``
    beside the repository checkout. ``demo`` needs none; ``imagefolder`` has none.
    """
    _check_choice("dataset", name, DATASETS)
    if name not in _SUBFOLDER:
        return None
    sub, places = _SUBFOLDER[name], []
    if os.environ.get("ROBUSTWEIGHTS_DATA"):
        base = Path(os.environ["ROBUSTWEIGHTS_DATA"]).expanduser()
        places += [base / sub] + ([base / "cifar-10-python.tar.gz"] if name == "cifar10" else [])
    if name == "cifar10":
        places += [Path("data") / sub, Path("../shared/datasets") / sub]
        parents = Path(__file__).resolve().parents  # .../<checkout>/src/robustweights/data.py
        if len(parents) > 3:
            places.append(parents[3] / "shared/datasets" / sub)
    else:
        places.append(Path("/usr/share/datasets") / sub)
    return next((str(p.resolve()) for p in places if p.exists()), None)


def _subset(k: int | None, n: int, seed: int, stream: int, what: str) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of size ``k`` (None: keep all); train and
    test draw from independent streams of the same seed."""
    if k is None:
        return None
    if not isinstance(k, int) or not 1 <= k <= n:
        raise UserError(f"{what} subset must be an integer in 1..{n} (the split's size), got {k!r}")
    return np.sort(np.random.default_rng([seed, stream]).choice(n, k, replace=False))


def _load_image_folder(
    root: Path,
    image_size: int | None,
    train_subset: int | None,
    test_subset: int | None,
    seed: int,
    num_workers: int,
) -> Data:
    train_files, classes = list_images(root / "train", None)
    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    test_files, _ = list_images(test_dir, classes)
    size = 224 if image_size is None else image_size
    if not isinstance(size, int) or size < 1 or not isinstance(num_workers, int) or num_workers < 0:
        raise UserError(
            f"need a positive image size and num_workers >= 0, got {image_size!r} and {num_workers!r}"
        )
    files = []
    for k, split, stream, what in (
        (train_subset, train_files, 0, "train"),
        (test_subset, test_files, 1, "test"),
    ):
        idx = _subset(k, len(split), seed, stream, what)
        files.append(split if idx is None else [split[i] for i in idx])
    # mean/std from a seeded pick of up to 500 training images, as they are fed (resized, cropped)
    pick = np.random.default_rng([seed, 2]).choice(
        len(files[0]), min(STATS_IMAGES, len(files[0])), replace=False
    )
    total, total_sq, count = (
        torch.zeros(3, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        0,
    )
    for i in pick:
        x = read_image(files[0][i][0], size).double().flatten(1)  # (3, S*S)
        total, total_sq, count = total + x.sum(1), total_sq + (x * x).sum(1), count + x.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    splits = [FolderSplit(f, size, mean, std, num_workers) for f in files]
    return Data(
        "imagefolder",
        f"image folder {root} ({len(classes)} classes)",
        len(classes),
        (3, size, size),
        classes,
        *splits,
        preprocessing=STANDARDIZED,
    )


def load_data(
    name: str,
    data_dir: str | None = None,
    *,
    preprocess: str = "standardize",
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    val_size: int | None = None,
) -> Data:
    """Load dataset ``name`` (one of DATASETS) from ``data_dir`` or its default place.

    ``train_subset``/``test_subset`` keep a random subset (seeded by ``seed``) before the
    preprocessing is fitted; the preprocessing (PREPROCESS) is fitted on the training
    split only and applied to both. ``val_size`` holds the last ``val_size`` training
    images out as a validation split (BinaryConnect's CIFAR-10 recipe: the last 5,000
    of the 50,000, so 45,000 train), before anything is fitted. ``image_size`` (default 224) and ``num_workers``
    apply to ``imagefolder`` only; the other datasets are held in memory.
    """
    _check_choice("dataset", name, DATASETS)
    parse_preprocess(preprocess)
    if name != "demo":
        if data_dir is None:
            data_dir = default_data_dir(name)
        if data_dir is None and name == "imagefolder":
            raise UserError(
                "imagefolder needs --data-dir: a folder holding train/<class>/ and val/<class>/"
            )
        if data_dir is None:
            raise UserError(
                f"no {name} data found in the default places; pass --data-dir "
                f"or set ROBUSTWEIGHTS_DATA to a folder holding {_SUBFOLDER[name]}/"
            )
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise UserError(f"no such folder {path} (the data folder for {name})")
        if name != "cifar10" and not path.is_dir():
            raise UserError(f"{path}: expected a folder, found a file")
    if name == "imagefolder":
        if preprocess != "standardize":
            raise UserError(
                f"preprocessing {preprocess!r} needs every image in memory; "
                "imagefolder supports only 'standardize'"
            )
        if val_size:
            raise UserError(
                "a validation split (val_size) needs a dataset held in memory, not imagefolder"
            )
        return _load_image_folder(path, image_size, train_subset, test_subset, seed, num_workers)
    if image_size is not None:
        raise UserError(f"image size applies only to imagefolder; {name} images keep their size")

    if name == "demo":
        arrays, classes, description = read_demo(), FASHION_CLASSES, DEMO_DESCRIPTION
    elif name == "cifar10":
        arrays, classes, jpeg, where = read_cifar(path)
        description = f"CIFAR-10{' (JPEG copy)' if jpeg else ''} from {where}"
    else:
        arrays = read_mnist(path)
        classes = FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
        description = f"{'Fashion-MNIST' if name == 'fashion-mnist' else 'MNIST'} from {path}"

    tensors = []
    for k, (x, y), stream, what in (
        (train_subset, arrays[:2], 0, "train"),
        (test_subset, arrays[2:], 1, "test"),
    ):
        idx = _subset(k, len(y), seed, stream, what)
        if idx is not None:
            x, y = x[idx], y[idx]
            description += f"; {what} subset {k} of {len(arrays[2 * stream + 1])} (seed {seed})"
        tensors += [
            torch.from_numpy(np.ascontiguousarray(x)).float().div_(255),  # (N, C, H, W)
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        ]  # (N,)
    val = None
    if val_size:
        n = len(tensors[1])
        if not (isinstance(val_size, int) and 0 < val_size < n):
            raise UserError(
                f"val_size must be an integer between 1 and {n - 1} (the training images), "
                f"not {val_size!r}"
            )
        val = (tensors[0][n - val_size :], tensors[1][n - val_size :])
        tensors[0], tensors[1] = tensors[0][: n - val_size], tensors[1][: n - val_size]
        description += f"; validation: the last {val_size} training images, training on the other {n - val_size}"
    held = (
        torch.cat([tensors[2], val[0]]) if val else tensors[2]
    )  # preprocessed alike, fitted on train only
    preprocessing = _preprocess(preprocess, tensors[0], held)
    if val:
        tensors[2], val = held[: len(tensors[3])], TensorSplit(held[len(tensors[3]) :], val[1])
    return Data(
        name,
        description,
        len(classes),
        tuple(tensors[0].shape[1:]),
        list(classes),
        TensorSplit(tensors[0], tensors[1]),
        TensorSplit(tensors[2], tensors[3]),
        preprocessing,
        val,
    )


def make_image_folders(
    root: Path,
    classes: int = 4,
    train_per_class: int = 40,
    val_per_class: int = 10,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """Write a small learnable class-per-folder dataset (``train/`` and ``val/``) of PNGs under ``root``.

    Class ``k`` is a noisy image whose colour and stripe orientation depend on
    ``k``: enough to learn, nothing like ImageNet.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            d = root / split / f"class{k}"
            d.mkdir(parents=True, exist_ok=True)
            angle = math.pi * k / classes
            stripes = np.sin(2 * math.pi * 4 * (xx * math.cos(angle) + yy * math.sin(angle)))
            colour = np.array([(k % 3 == c) for c in range(3)], dtype=float) * 0.5 + 0.25
            for i in range(n):
                img = (
                    0.5
                    + 0.25 * stripes[..., None] * colour
                    + 0.15 * rng.standard_normal((size, size, 3))
                )
                Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(d / f"{i:04d}.png")
    return root
