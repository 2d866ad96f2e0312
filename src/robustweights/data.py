"""Datasets: loading them (files read by :mod:`robustweights.readers`) into a :class:`Data`.

``load_data(name, data_dir)`` returns a :class:`Data` whose ``train`` and
``test`` splits (:mod:`robustweights.splits`) yield ``(x, y)`` batches: ``x``
float32 ``(B, C, H, W)``, already preprocessed (:mod:`robustweights.preprocess`),
and ``y`` int64 ``(B,)``. Five datasets:

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

import numpy as np
import torch
from torch import Tensor

from .errors import UserError
from .preprocess import (  # noqa: F401 (re-exported: robustweights.data names them)
    CHUNK,
    GCN_SCALE,
    PREPROCESS,
    STANDARDIZED,
    ZCA_FILTER_BIAS,
    apply_preprocess,
    describe_preprocess,
    parse_preprocess,
)
from .readers import (
    FASHION_CLASSES,
    MNIST_CLASSES,
    list_images,
    read_cifar,
    read_demo,
    read_image,
    read_mnist,
)
from .splits import (  # noqa: F401 (re-exported: robustweights.data names them)
    AUGMENT,
    FolderSplit,
    LoaderSplit,
    Split,
    TensorSplit,
    augment_batch,
    check_choice,
)

DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "demo")
DEMO_DESCRIPTION = "Fashion-MNIST subset shipped with robustweights (5000 train / 1000 test)"
STATS_IMAGES = 500  # image-folder mean/std come from this many training images


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


def as_split(data, split: str = "test"):
    """The split to test: a :class:`Data`'s ``split``, a ``Split``, or any iterable of batches
    (a DataLoader)."""
    if isinstance(data, Data):
        return getattr(data, split)
    if isinstance(data, (Split, LoaderSplit)):
        return data
    if hasattr(data, "__iter__"):
        return LoaderSplit(data)
    raise UserError(
        f"cannot test on {type(data).__name__}: give a robustweights Data or Split, or a "
        f"DataLoader of (inputs, targets) batches"
    )


_SUBFOLDER = {"fashion-mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "cifar-10-batches-py"}


def default_data_dir(name: str) -> str | None:
    """Where ``name`` is found when no data_dir is given, or None.

    Searched in order: ``$ROBUSTWEIGHTS_DATA/<subfolder>``; then for the MNISTs
    Debian's ``/usr/share/datasets/<name>``; for CIFAR-10 ``./data/``,
    ``../shared/datasets/`` (from the working directory) and the ``shared/datasets/``
    beside the repository checkout. ``demo`` needs none; ``imagefolder`` has none.
    """
    check_choice("dataset", name, DATASETS)
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


def _folder_stats(files: list[tuple[str, int]], size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (3,) each, of a seeded pick of up to STATS_IMAGES training
    images as they are fed (resized, cropped); a constant channel keeps std 1."""
    pick = np.random.default_rng([seed, 2]).choice(
        len(files), min(STATS_IMAGES, len(files)), replace=False
    )
    total, total_sq, count = (
        torch.zeros(3, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        0,
    )
    for i in pick:
        x = read_image(files[i][0], size).double().flatten(1)  # (3, S*S)
        total, total_sq, count = total + x.sum(1), total_sq + (x * x).sum(1), count + x.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return mean, torch.where(std > 0, std, torch.ones_like(std))


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
            f"need a positive image size and num_workers >= 0, got {image_size!r} and "
            f"{num_workers!r}"
        )
    files = []
    for k, split, stream, what in (
        (train_subset, train_files, 0, "train"),
        (test_subset, test_files, 1, "test"),
    ):
        idx = _subset(k, len(split), seed, stream, what)
        files.append(split if idx is None else [split[i] for i in idx])
    mean, std = _folder_stats(files[0], size, seed)
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


def _data_path(name: str, data_dir: str | None) -> Path:
    """The folder (or CIFAR-10 archive) dataset ``name`` is read from: ``data_dir`` or its
    default place, which must exist."""
    if data_dir is None:
        data_dir = default_data_dir(name)
    if data_dir is None and name == "imagefolder":
        raise UserError(
            "imagefolder needs data_dir=: a folder holding train/<class>/ and val/<class>/"
        )
    if data_dir is None:
        raise UserError(
            f"no {name} data found in the default places; pass data_dir= "
            f"or set ROBUSTWEIGHTS_DATA to a folder holding {_SUBFOLDER[name]}/"
        )
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise UserError(f"no such folder {path} (the data folder for {name})")
    if name != "cifar10" and not path.is_dir():
        raise UserError(f"{path}: expected a folder, found a file")
    return path


def _check_image_folder_options(preprocess: str, val_size: int | None) -> None:
    if preprocess != "standardize":
        raise UserError(
            f"preprocessing {preprocess!r} needs every image in memory; "
            "imagefolder supports only 'standardize'"
        )
    if val_size:
        raise UserError(
            "a validation split (val_size) needs a dataset held in memory, not imagefolder"
        )


def _read_arrays(name: str, path: Path | None) -> tuple[list[np.ndarray], list[str], str]:
    """uint8 ``[x_train, y_train, x_test, y_test]``, class names and a description of an
    in-memory dataset."""
    if name == "demo":
        return read_demo(), FASHION_CLASSES, DEMO_DESCRIPTION
    if name == "cifar10":
        arrays, classes, jpeg, where = read_cifar(path)
        return arrays, classes, f"CIFAR-10{' (JPEG copy)' if jpeg else ''} from {where}"
    classes = FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    description = f"{'Fashion-MNIST' if name == 'fashion-mnist' else 'MNIST'} from {path}"
    return read_mnist(path), classes, description


def _subset_tensors(
    arrays: list[np.ndarray],
    train_subset: int | None,
    test_subset: int | None,
    seed: int,
    description: str,
) -> tuple[list[Tensor], str]:
    """``[x_train, y_train, x_test, y_test]`` as tensors (pixels float32 in [0, 1]) after the
    seeded subsets, and the description saying which subsets were kept."""
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
    return tensors, description


def _hold_out_val(
    tensors: list[Tensor], val_size: int | None, description: str
) -> tuple[tuple[Tensor, Tensor] | None, str]:
    """In ``tensors``: the last ``val_size`` training images taken out; returns them
    ``(x, y)`` (None without ``val_size``) and the description saying so."""
    if not val_size:
        return None, description
    n = len(tensors[1])
    if not (isinstance(val_size, int) and 0 < val_size < n):
        raise UserError(
            f"val_size must be an integer between 1 and {n - 1} (the training images), "
            f"not {val_size!r}"
        )
    val = (tensors[0][n - val_size :], tensors[1][n - val_size :])
    tensors[0], tensors[1] = tensors[0][: n - val_size], tensors[1][: n - val_size]
    description += (
        f"; validation: the last {val_size} training images, training on the other {n - val_size}"
    )
    return val, description


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
    of the 50,000, so 45,000 train), before anything is fitted. ``image_size`` (default
    224) and ``num_workers`` apply to ``imagefolder`` only; the other datasets are held
    in memory.
    """
    check_choice("dataset", name, DATASETS)
    parse_preprocess(preprocess)
    path = None if name == "demo" else _data_path(name, data_dir)
    if name == "imagefolder":
        _check_image_folder_options(preprocess, val_size)
        return _load_image_folder(path, image_size, train_subset, test_subset, seed, num_workers)
    if image_size is not None:
        raise UserError(f"image size applies only to imagefolder; {name} images keep their size")
    arrays, classes, description = _read_arrays(name, path)
    tensors, description = _subset_tensors(arrays, train_subset, test_subset, seed, description)
    val, description = _hold_out_val(tensors, val_size, description)
    # the validation images are preprocessed like the test images, fitted on train only
    held = torch.cat([tensors[2], val[0]]) if val else tensors[2]
    preprocessing = apply_preprocess(preprocess, tensors[0], held)
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
    """Write a small learnable class-per-folder dataset (``train/`` and ``val/``) of PNGs
    under ``root``.

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


def user_data(spec: str) -> Data:
    """The data a user's ``package.module:function`` gives (``--data``), as a :class:`Data`.

    The function is called with no arguments and returns a ``DataLoader`` (or any iterable of
    ``(inputs, targets)`` batches) to measure on, or a dict with ``test`` and optionally
    ``train`` (the batches batch-norm statistics are re-estimated on). Only a name the user
    typed is imported (:mod:`robustweights.factories`)."""
    from .factories import import_named

    made = import_named(spec, f"data {spec!r}")()
    parts = made if isinstance(made, dict) else {"test": made}
    unknown = sorted(set(parts) - {"test", "train"})
    if "test" not in parts or unknown:
        raise UserError(
            f"data {spec!r} returned a dict with keys {sorted(parts)}: it needs 'test' (and may "
            f"have 'train'), each a DataLoader of (inputs, targets) batches"
        )
    test = as_split(parts["test"])
    train = as_split(parts["train"]) if parts.get("train") is not None else None
    return Data(
        name=spec,
        description=f"the batches {spec} gives",
        num_classes=0,
        in_shape=(),
        classes=[],
        train=train,
        test=test,
    )
