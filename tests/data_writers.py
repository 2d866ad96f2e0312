"""Files written for the data tests: IDX and CIFAR-10 folders, image folders, and the inverse of
standardization (shared by test_data.py and test_readers.py)."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    raw = (
        bytes([0, 0, 8, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(folder: Path, n_train=50, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    ]
    names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_idx(folder / n, a, gz) for n, a in zip(names, arrays)]
    return arrays, paths


def write_cifar(folder: Path, n=6, seed=0):
    """A fake cifar-10-batches-py: channel-planar uint8 rows, as the official files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 1024:2048] //= 2  # channels with different statistics
        labels = rng.integers(0, 10, n).tolist()
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * n,
                },
                f,
                protocol=2,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072},
            f,
            protocol=2,
        )
    return batches


def unstandardize(x: torch.Tensor, train_pixels: np.ndarray) -> np.ndarray:
    """Undo per-channel standardization computed from uint8 train pixels (N, C, H, W)."""
    p = train_pixels.astype(np.float64) / 255
    mean, std = p.mean(axis=(0, 2, 3)), p.std(axis=(0, 2, 3))
    return np.rint((x.double().numpy() * std[:, None, None] + mean[:, None, None]) * 255)


# --------------------------------------------------------------------------- image folders


def write_folder(root: Path):
    rng = np.random.default_rng(0)
    sizes = [(20, 30), (40, 16), (33, 33)]
    for split, count in (("train", 3), ("val", 2)):
        for c, name in enumerate(["cat", "dog", "emu"]):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                w, h = sizes[(i + c) % 3]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png"
                )
    Image.new("RGB", (50, 20), (200, 100, 50)).save(root / "val" / "emu" / "solid.png")
