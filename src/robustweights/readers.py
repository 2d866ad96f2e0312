"""Reading datasets from disk, safely: IDX files, the CIFAR-10 python format, image folders, the shipped subset.

Data may come from strangers: the CIFAR pickles go through a restricted
unpickler that admits only the numpy array reconstruction the format needs,
and a file that is not what it claims to be is one :class:`UserError` line.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import UserError, one_line

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


IDX_FILES = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
# sha256 of test_batch in the shared copy whose pixels went through JPEG (quality 75);
# numbers measured on it must say so (see ../shared/datasets/README.md).
CIFAR_JPEG_COPY_SHA256 = "01a8b7dda4a32e5d952e8429eabd5dc716b1ade1ac75f5f71a9df9e9e4a849be"
DEMO_ASSET = "fashion-mnist-small.npz"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def _eight_bit(im, path):
    """An image of 16-bit or float pixels as 8-bit grey ("L"): PIL's own convert("RGB") clips them (16-bit
    images came out white, float ones in [0, 1] black). 16-bit and 32-bit integers are read as 16-bit values;
    floats must lie in [0, 1]."""
    from PIL import Image

    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise UserError(f"{path}: float pixels must lie in [0, 1] (found {a.min():.4g} to {a.max():.4g})")
        a = a * 255
    else:
        if a.min() < 0 or a.max() > 65535:
            raise UserError(f"{path}: integer pixels must lie in 0..65535 (found {a.min():.0f} to {a.max():.0f})")
        a = a / 257
    return Image.fromarray(np.round(a).astype(np.uint8), mode="L")


def read_image(path: str, size: int) -> Tensor:
    """Decode to RGB, resize the shorter side to ``size`` (bilinear, antialiased by PIL),
    crop the centre ``size x size``; returns float32 ``(3, size, size)`` in [0, 1]."""
    from PIL import Image  # imported here: only image folders need PIL

    try:
        with Image.open(path) as im:
            im = _eight_bit(im, path).convert("RGB")
            w, h = im.size
            # torchvision's Resize(int) rule: shorter side exactly `size`, the other truncated
            nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            im = im.resize((max(nw, size), max(nh, size)), Image.BILINEAR)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            pixels = np.array(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL reports broken files as OSError, ValueError or (some plugins) SyntaxError
        raise UserError(f"{path}: cannot read this image ({one_line(e)})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)        # (3, S, S)


# Each reader returns uint8 pixels (N, C, H, W) and int64 labels for train and test.

def _check_labels(y: object, n: int, where: str) -> np.ndarray:
    try:
        y = np.asarray(y)
    except (ValueError, TypeError, OverflowError) as e:
        raise UserError(f"{where}: labels are not a list of integers ({one_line(e)})") from None
    if y.shape != (n,) or y.dtype.kind not in "iu" or (n and not 0 <= y.min() <= y.max() < 10):
        values = f" from {y.min()} to {y.max()}" if y.size and y.dtype.kind in "iu" else ""
        raise UserError(f"{where}: expected {n} integer labels in 0..9, found {y.dtype} {y.shape}{values}")
    return y.astype(np.int64)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not.

    Layout: magic ``0x00 0x00 0x08 ndim`` (type 0x08 = unsigned byte; so 0x00000803
    for images, 0x00000801 for labels), ``ndim`` big-endian uint32 sizes, then the
    bytes row-major. Gzip is recognized by its magic bytes, not the name, because
    browsers often save a decompressed file under the ``.gz`` name.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read this IDX file ({one_line(e)})") from None
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:4] != bytes([0, 0, 8, ndim]):
        raise UserError(f"{path}: not an IDX file of {ndim}-D unsigned bytes "
                        f"(expected magic 0x{0x800 + ndim:08x}, found 0x{raw[:4].hex() or '(empty)'})")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) - head != int(np.prod(dims)):
        raise UserError(f"{path}: holds {len(raw) - head} data bytes but its header promises "
                        f"{int(np.prod(dims))} for shape {dims} (truncated or corrupt)")
    return np.frombuffer(bytearray(raw), np.uint8, offset=head).reshape(dims)


def read_mnist(folder: Path) -> list[np.ndarray]:
    """The four IDX files of MNIST or Fashion-MNIST: [x_train, y_train, x_test, y_test]."""
    out = []
    for images, labels in IDX_FILES:
        paths = []
        for base in (images, labels):
            found = [folder / n for n in (base, base + ".gz") if (folder / n).is_file()]
            if not found:
                raise UserError(f"{folder}: missing {base} (or {base}.gz), one of the four IDX files")
            paths.append(found[0])
        x = read_idx(paths[0], 3)                                             # (N, H, W)
        out += [x[:, None], _check_labels(read_idx(paths[1], 1), len(x), str(paths[1]))]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise UserError(f"{folder}: train images are {out[0].shape[2:]} but test images {out[2].shape[2:]}")
    return out


try:  # numpy >= 2; numpy.core is a deprecated alias there and warns on import
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The only globals an honest CIFAR-10 pickle names: numpy's array reconstruction
# (under its numpy 1 and numpy 2 module names) and _codecs.encode, which Python 3
# uses to write bytes at protocol 2.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside ``_PICKLE_GLOBALS``.

    A pickle runs code only by naming a callable (``find_class``) and calling it;
    with the callables limited to array reconstruction a file from a stranger can
    at worst hand us wrong data, which the callers then validate.
    """

    def __init__(self, raw: bytes, where: str):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise UserError(f"{self.where}: refuses to load global {module}.{name} "
                            "(a CIFAR-10 batch holds only numpy arrays; this file may be malicious)")
        return _PICKLE_GLOBALS[module, name]


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(raw, where).load()
    except UserError:
        raise
    except Exception as e:  # anything else going wrong inside an untrusted pickle is the file's fault
        raise UserError(f"{where}: not a readable CIFAR-10 pickle, truncated or corrupt "
                        f"({type(e).__name__}: {one_line(e)})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_files(path: Path) -> tuple[dict[str, bytes], str]:
    """Raw bytes of the CIFAR-10 batch files, by name, and where they came from.

    ``path`` may be the ``cifar-10-batches-py`` folder, its parent, the official
    ``cifar-10-python.tar.gz``, or a folder holding that archive. Archive members are
    read in memory (nothing is extracted to disk).
    """
    wanted = set(CIFAR_BATCHES) | {"batches.meta"}
    if path.is_dir():
        for folder in (path, path / "cifar-10-batches-py"):
            if (folder / "test_batch").is_file():
                return {n: (folder / n).read_bytes() for n in wanted if (folder / n).is_file()}, str(folder)
        if not (path / "cifar-10-python.tar.gz").is_file():
            raise UserError(f"{path}: holds neither the CIFAR-10 batches (data_batch_1..5, test_batch) "
                            "nor cifar-10-python.tar.gz")
        path = path / "cifar-10-python.tar.gz"
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted:
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read this CIFAR-10 archive ({one_line(e)})") from None
    return found, str(path)


def read_cifar(path: Path) -> tuple[list[np.ndarray], list[str], bool, str]:
    """CIFAR-10 python version: arrays, class names, whether it is the JPEG copy, source."""
    files, where = _cifar_files(path)
    parts = {}
    for name in CIFAR_BATCHES:
        if name not in files:
            raise UserError(f"{where}: missing {name}")
        label = f"{where}/{name}" if Path(where).is_dir() else f"{where}:{name}"
        batch = _unpickle(files[name], label)
        data = batch.get("data")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise UserError(f"{label}: b'data' must be a uint8 array of shape (N, 3072), found {got}")
        # 3072 = 3 planes (R, G, B) of 32x32 row-major pixels, hence (N, 3, 32, 32)
        parts[name] = data.reshape(-1, 3, 32, 32), _check_labels(batch.get("labels"), len(data), label)
    classes = CIFAR_CLASSES
    if "batches.meta" in files:
        names = _unpickle(files["batches.meta"], f"{where}/batches.meta").get("label_names")
        if isinstance(names, list) and len(names) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = [parts[n] for n in CIFAR_BATCHES[:5]]
    arrays = [np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train]),
              np.array(parts["test_batch"][0]), parts["test_batch"][1]]
    jpeg = hashlib.sha256(files["test_batch"]).hexdigest() == CIFAR_JPEG_COPY_SHA256
    return arrays, classes, jpeg, where


def read_demo() -> list[np.ndarray]:
    """The Fashion-MNIST subset in ``assets/`` (made by scripts/make_demo_data.py)."""
    with (resources.files(__package__) / "assets" / DEMO_ASSET).open("rb") as f, np.load(f) as z:
        return [z["x_train"][:, None], z["y_train"].astype(np.int64),
                z["x_test"][:, None], z["y_test"].astype(np.int64)]


def list_images(split_dir: Path, classes: list[str] | None) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, label)`` of every image under ``split_dir/<class>/``, classes sorted."""
    if not split_dir.is_dir():
        raise UserError(f"no such folder {split_dir} (an image folder needs train/ and val/ or test/)")
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image files>)")
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise UserError(f"{split_dir}: class folders differ from train/ (missing {missing[:5]}, extra {extra[:5]})")
    files = []
    for label, name in enumerate(found):
        # scandir's is_file() needs no stat call: matters for ImageNet's 1.3 million files
        images = sorted(e.path for e in os.scandir(split_dir / name)
                        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"{split_dir / name}: no images (expected files ending in "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        files += [(p, label) for p in images]
    return files, found
