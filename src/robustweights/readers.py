"""Reading datasets from disk, safely: IDX files, CIFAR-10 python batches, image folders, the demo.

The formats read: IDX files, the CIFAR-10 python format, class-per-folder images
and the Fashion-MNIST subset shipped in ``assets/``. Data may come from strangers:
the CIFAR pickles go through a restricted unpickler (:mod:`robustweights.unpickling`)
that admits only the numpy array reconstruction the format needs, and a file that
is not what it claims to be is one :class:`UserError` line.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import math
import os
import struct
import tarfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import UserError, one_line
from .unpickling import unpickle

_unpickle = unpickle  # the old name, still used by benchmarks/gpu_cifar.py

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]
CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


IDX_FILES = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_FILES = set(CIFAR_BATCHES) | {"batches.meta"}  # the files read from a CIFAR-10 folder
# sha256 of test_batch in the shared copy whose pixels went through JPEG (quality 75);
# numbers measured on it must say so (see ../shared/datasets/README.md).
CIFAR_JPEG_COPY_SHA256 = "01a8b7dda4a32e5d952e8429eabd5dc716b1ade1ac75f5f71a9df9e9e4a849be"
DEMO_ASSET = "fashion-mnist-small.npz"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
# the most data an IDX header may promise (EMNIST's largest file holds 0.6 GB)
IDX_MAX_BYTES = 2**31
CIFAR_FILE_MAX = 64 << 20  # the largest CIFAR-10 file read (an honest batch is 31 MB)
ARCHIVE_MAX_MEMBERS = 1000  # the official archive has 8; each member's header stays in memory
MAX_ASPECT = 16  # wider or taller images are resized only where the crop needs them


def _eight_bit(im, path):
    """An image of 16-bit or float pixels as 8-bit grey ("L"): PIL's own convert("RGB") clips
    them (16-bit images came out white, float ones in [0, 1] black). 16-bit and 32-bit
    integers are read as 16-bit values; floats must lie in [0, 1]."""
    from PIL import Image

    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise UserError(
                f"{path}: float pixels must lie in [0, 1] (found {a.min():.4g} to {a.max():.4g})"
            )
        a = a * 255
    else:
        if a.min() < 0 or a.max() > 65535:
            raise UserError(
                f"{path}: integer pixels must lie in 0..65535 "
                f"(found {a.min():.0f} to {a.max():.0f})"
            )
        a = a / 257
    return Image.fromarray(np.round(a).astype(np.uint8), mode="L")


def read_image(path: str, size: int) -> Tensor:
    """Decode to RGB, resize the shorter side to ``size`` (bilinear, antialiased by PIL),
    crop the centre ``size x size``; returns float32 ``(3, size, size)`` in [0, 1]. An image
    over 16 times wider than tall (or taller) is resized only inside the crop, so that memory
    follows ``size``, not the width a tiny file claims."""
    from PIL import Image  # imported here: only image folders need PIL

    try:
        with Image.open(path) as im:
            im = _eight_bit(im, path).convert("RGB")
            w, h = im.size
            # torchvision's Resize(int) rule: shorter side exactly `size`, the other truncated
            nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            nw, nh = max(nw, size), max(nh, size)
            left, top = (nw - size) // 2, (nh - size) // 2
            if max(nw, nh) <= MAX_ASPECT * size:
                im = im.resize((nw, nh), Image.BILINEAR).crop((left, top, left + size, top + size))
            else:  # resized whole, an 85-byte 5000x1 PNG took 1.3 GB; this is within 1/255 of that
                im = im.resize(
                    (size, size),
                    Image.BILINEAR,
                    box=(
                        left * w / nw,
                        top * h / nh,
                        (left + size) * w / nw,
                        (top + size) * h / nh,
                    ),
                )
            pixels = np.array(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL reports broken files as OSError, ValueError or (some plugins) SyntaxError
        raise UserError(f"{path}: cannot read this image ({one_line(e)})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)  # (3, S, S)


# Each reader returns uint8 pixels (N, C, H, W) and int64 labels for train and test.


def _check_labels(y: object, n: int, where: str) -> np.ndarray:
    try:
        y = np.asarray(y)
    except (ValueError, TypeError, OverflowError) as e:
        raise UserError(f"{where}: labels are not a list of integers ({one_line(e)})") from None
    if y.shape != (n,) or y.dtype.kind not in "iu" or (n and not 0 <= y.min() <= y.max() < 10):
        values = f" from {y.min()} to {y.max()}" if y.size and y.dtype.kind in "iu" else ""
        raise UserError(
            f"{where}: expected {n} integer labels in 0..9, found {y.dtype} {y.shape}{values}"
        )
    return y.astype(np.int64)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not.

    Layout: magic ``0x00 0x00 0x08 ndim`` (type 0x08 = unsigned byte; so 0x00000803
    for images, 0x00000801 for labels), ``ndim`` big-endian uint32 sizes, then the
    bytes row-major. Gzip is recognized by its magic bytes, not the name, because
    browsers often save a decompressed file under the ``.gz`` name. Only the bytes the
    header promises are decompressed (and one more, to see extra data): a 0.5 MB gzip
    of zeros would otherwise fill gigabytes.
    """
    head = 4 + 4 * ndim
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            raw = f.read(head)
            if len(raw) < head or raw[:4] != bytes([0, 0, 8, ndim]):
                raise UserError(
                    f"{path}: not an IDX file of {ndim}-D unsigned bytes "
                    f"(expected magic 0x{0x800 + ndim:08x}, found 0x{raw[:4].hex() or '(empty)'})"
                )
            dims = struct.unpack(f">{ndim}I", raw[4:head])
            size = math.prod(dims)  # np.prod wraps around at 2**64
            if size > IDX_MAX_BYTES:
                raise UserError(
                    f"{path}: its header promises {size:,} data bytes for shape {dims}, "
                    f"more than the {IDX_MAX_BYTES:,} an IDX file may hold here"
                )
            data = bytearray()
            while len(data) <= size and (chunk := f.read(min(size + 1 - len(data), 1 << 24))):
                data += chunk
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read this IDX file ({one_line(e)})") from None
    if len(data) != size:
        found = f"more than {size}" if len(data) > size else len(data)
        raise UserError(
            f"{path}: holds {found} data bytes but its header promises "
            f"{size} for shape {dims} (truncated or corrupt)"
        )
    return np.frombuffer(data, np.uint8).reshape(dims)


def read_mnist(folder: Path) -> list[np.ndarray]:
    """The four IDX files of MNIST or Fashion-MNIST: [x_train, y_train, x_test, y_test]."""
    out = []
    for images, labels in IDX_FILES:
        paths = []
        for base in (images, labels):
            found = [folder / n for n in (base, base + ".gz") if (folder / n).is_file()]
            if not found:
                raise UserError(
                    f"{folder}: missing {base} (or {base}.gz), one of the four IDX files"
                )
            paths.append(found[0])
        x = read_idx(paths[0], 3)  # (N, H, W)
        if x.size == 0:  # an empty split would fail later, in training, with no file named
            raise UserError(
                f"{paths[0]}: holds no pixels (shape {x.shape}): nothing to train or test on"
            )
        out += [x[:, None], _check_labels(read_idx(paths[1], 1), len(x), str(paths[1]))]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise UserError(
            f"{folder}: train images are {out[0].shape[2:]} but test images {out[2].shape[2:]}"
        )
    return out


def _cifar_files(path: Path) -> tuple[dict[str, bytes], str]:
    """Raw bytes of the CIFAR-10 batch files, by name, and where they came from.

    ``path`` may be the ``cifar-10-batches-py`` folder, its parent, the official
    ``cifar-10-python.tar.gz``, or a folder holding that archive. Archive members are
    read in memory (nothing is extracted to disk), only from ``cifar-10-batches-py/``
    as in the official archive, each name once, none larger than a batch can be.
    """
    if path.is_dir():
        for folder in (path, path / "cifar-10-batches-py"):
            if (folder / "test_batch").is_file():
                files = {n: folder / n for n in CIFAR_FILES if (folder / n).is_file()}
                for f in files.values():
                    if f.stat().st_size > CIFAR_FILE_MAX:
                        raise UserError(
                            f"{f}: {f.stat().st_size:,} bytes, more than a CIFAR-10 batch can be "
                            f"({CIFAR_FILE_MAX:,}); not a CIFAR-10 file"
                        )
                return {n: f.read_bytes() for n, f in files.items()}, str(folder)
        if not (path / "cifar-10-python.tar.gz").is_file():
            raise UserError(
                f"{path}: holds neither the CIFAR-10 batches (data_batch_1..5, test_batch) "
                "nor cifar-10-python.tar.gz"
            )
        path = path / "cifar-10-python.tar.gz"
    return _cifar_archive_files(path), str(path)


def _cifar_archive_files(path: Path) -> dict[str, bytes]:
    """Raw bytes of the CIFAR-10 files inside the archive ``path``, by name: read in memory,
    only from ``cifar-10-batches-py/``, each name once, none larger than a batch can be."""
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for count, member in enumerate(tar):
                folder, _, name = member.name.removeprefix("./").rpartition("/")
                if count >= ARCHIVE_MAX_MEMBERS:
                    raise UserError(
                        f"{path}: more than {ARCHIVE_MAX_MEMBERS} members; not the CIFAR-10 archive"
                    )
                if folder != "cifar-10-batches-py" or name not in CIFAR_FILES:
                    # only the official folder: a zzz/other/test_batch once replaced the real one
                    continue
                if name in found or not member.isfile():
                    how = "twice" if name in found else "as a link or special file"
                    raise UserError(
                        f"{path}: holds {member.name} {how} (the official archive holds each "
                        "batch once, as a regular file)"
                    )
                # checked before decompressing: 2 MB of gzip can hold GBs
                if member.size > CIFAR_FILE_MAX:
                    raise UserError(
                        f"{path}: {member.name} claims {member.size:,} bytes, more than a CIFAR-10 "
                        f"batch can be ({CIFAR_FILE_MAX:,})"
                    )
                found[name] = tar.extractfile(member).read()  # member.size bytes at most
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise UserError(f"{path}: cannot read this CIFAR-10 archive ({one_line(e)})") from None
    return found


def read_cifar(path: Path) -> tuple[list[np.ndarray], list[str], bool, str]:
    """CIFAR-10 python version: arrays, class names, whether it is the JPEG copy, source."""
    files, where = _cifar_files(path)
    parts = {}
    for name in CIFAR_BATCHES:
        if name not in files:
            raise UserError(
                f"{where}: missing {'' if Path(where).is_dir() else 'cifar-10-batches-py/'}{name}"
            )
        label = f"{where}/{name}" if Path(where).is_dir() else f"{where}:{name}"
        batch = unpickle(files[name], label)
        data = batch.get("data")
        if not (
            isinstance(data, np.ndarray)
            and data.dtype == np.uint8
            and data.ndim == 2
            and data.shape[1] == 3072
        ):
            got = (
                f"{data.dtype} {data.shape}"
                if isinstance(data, np.ndarray)
                else type(data).__name__
            )
            raise UserError(
                f"{label}: b'data' must be a uint8 array of shape (N, 3072), found {got}"
            )
        if not len(data):  # an empty split would fail later, in training, with no file named
            raise UserError(f"{label}: holds no images (b'data' has shape {data.shape})")
        # 3072 = 3 planes (R, G, B) of 32x32 row-major pixels, hence (N, 3, 32, 32)
        parts[name] = (
            data.reshape(-1, 3, 32, 32),
            _check_labels(batch.get("labels"), len(data), label),
        )
    classes = CIFAR_CLASSES
    if "batches.meta" in files:
        names = unpickle(files["batches.meta"], f"{where}/batches.meta").get("label_names")
        if isinstance(names, list) and len(names) == 10:
            classes = [
                n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names
            ]
    train = [parts[n] for n in CIFAR_BATCHES[:5]]
    arrays = [
        np.concatenate([p[0] for p in train]),
        np.concatenate([p[1] for p in train]),
        np.array(parts["test_batch"][0]),
        parts["test_batch"][1],
    ]
    jpeg = hashlib.sha256(files["test_batch"]).hexdigest() == CIFAR_JPEG_COPY_SHA256
    return arrays, classes, jpeg, where


def read_demo() -> list[np.ndarray]:
    """The Fashion-MNIST subset in ``assets/`` (made by scripts/make_demo_data.py)."""
    with (resources.files(__package__) / "assets" / DEMO_ASSET).open("rb") as f, np.load(f) as z:
        return [
            z["x_train"][:, None],
            z["y_train"].astype(np.int64),
            z["x_test"][:, None],
            z["y_test"].astype(np.int64),
        ]


def _entries(folder: Path, keep) -> list[os.DirEntry]:
    """The entries of ``folder`` that ``keep`` accepts; a symlink loop or an unreadable entry
    is one line naming it, not an OSError traceback."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if keep(e)]
    except OSError as e:
        raise UserError(
            f"{e.filename or folder}: cannot read this entry of the image folder "
            f"({e.strerror or one_line(e)})"
        ) from None


def list_images(
    split_dir: Path, classes: list[str] | None
) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, label)`` of every image under ``split_dir/<class>/``, classes sorted."""
    if not split_dir.is_dir():
        raise UserError(
            f"no such folder {split_dir} (an image folder needs train/ and val/ or test/)"
        )
    found = sorted(
        e.name for e in _entries(split_dir, lambda e: not e.name.startswith(".") and e.is_dir())
    )
    if not found:
        raise UserError(
            f"{split_dir}: no class folders (expected {split_dir}/<class>/<image files>)"
        )
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise UserError(
            f"{split_dir}: class folders differ from train/ "
            f"(missing {missing[:5]}, extra {extra[:5]})"
        )
    files = []
    for label, name in enumerate(found):
        # scandir's is_file() needs no stat call: matters for ImageNet's 1.3 million files
        images = sorted(
            e.path
            for e in _entries(
                split_dir / name,
                lambda e: os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file(),
            )
        )
        if not images:
            raise UserError(
                f"{split_dir / name}: no images (expected files ending in "
                f"{', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        files += [(p, label) for p in images]
    return files, found
