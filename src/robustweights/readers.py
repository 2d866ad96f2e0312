"""Reading datasets from disk, safely: IDX files, the CIFAR-10 python format, image folders, the shipped subset.

Data may come from strangers: the CIFAR pickles go through a restricted
unpickler that admits only the numpy array reconstruction the format needs,
and a file that is not what it claims to be is one :class:`UserError` line.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import math
import operator
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

from .errors import UserError, one_line, short_repr

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
# sha256 of test_batch in the shared copy whose pixels went through JPEG (quality 75);
# numbers measured on it must say so (see ../shared/datasets/README.md).
CIFAR_JPEG_COPY_SHA256 = "01a8b7dda4a32e5d952e8429eabd5dc716b1ade1ac75f5f71a9df9e9e4a849be"
DEMO_ASSET = "fashion-mnist-small.npz"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
IDX_MAX_BYTES = (
    2**31
)  # the most data an IDX header may promise (EMNIST's largest file holds 0.6 GB)
CIFAR_FILE_MAX = 64 << 20  # the largest CIFAR-10 file read (an honest batch is 31 MB)
ARCHIVE_MAX_MEMBERS = 1000  # the official archive has 8; each member's header stays in memory
MAX_ASPECT = 16  # wider or taller images are resized only where the crop needs them


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
            raise UserError(
                f"{path}: float pixels must lie in [0, 1] (found {a.min():.4g} to {a.max():.4g})"
            )
        a = a * 255
    else:
        if a.min() < 0 or a.max() > 65535:
            raise UserError(
                f"{path}: integer pixels must lie in 0..65535 (found {a.min():.0f} to {a.max():.0f})"
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


try:  # numpy >= 2; numpy.core is a deprecated alias there and warns on import
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The only globals an honest CIFAR-10 pickle names, each the name of a checking
# method of _SafeUnpickler: numpy's array reconstruction (under its numpy 1 and
# numpy 2 module names) and _codecs.encode, which Python 3 uses to write bytes at protocol 2.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy", "ndarray"): "_ndarray",
    ("numpy", "dtype"): "_dtype",
    ("_codecs", "encode"): "_encode",
}
MAX_PICKLED_ARRAYS = 16  # an honest batch holds one array


def _number_type(name) -> np.dtype:
    """A dtype a pickle names: a plain bool, integer or float type, nothing that holds objects or sizes."""
    name = name.decode("ascii") if isinstance(name, bytes) else name
    dt = np.dtype(name) if isinstance(name, str) else None
    if dt is None or dt.kind not in "biuf":
        raise ValueError(f"dtype {short_repr(name)} is not a plain number type")
    return dt


class _PickledDtype:
    """What the pickle's ``numpy.dtype(...)`` gets: not a live dtype, because numpy lets a
    later BUILD rewrite a dtype's size and flags under the arrays that use it."""

    def __init__(self, name, align=False, copy=False):
        self.type, self.order = _number_type(name), "|"

    def __setstate__(self, state):  # honest: (3, '|', None, None, None, -1, -1, 0)
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "=", "|") or any(s is not None for s in state[2:5]):
            raise ValueError("dtype state is not that of a plain number type")
        self.order = order

    def dtype(self) -> np.dtype:
        return self.type if self.order == "|" else self.type.newbyteorder(self.order)


class _PickledArray(np.ndarray):
    """An array being unpickled: its state (the pickle's BUILD) must be bytes of a ``_PickledDtype``,
    rebuilt here so that nothing in the pickle keeps a handle on the dtype."""

    def __setstate__(self, state):  # honest: (1, shape, dtype, is_fortran, data)
        if not (
            isinstance(state, tuple)
            and len(state) == 5
            and isinstance(state[2], _PickledDtype)
            and isinstance(state[4], bytes)
        ):
            raise ValueError("array state is not (version, shape, dtype, fortran, bytes)")
        super().__setstate__(state[:2] + (state[2].dtype(),) + state[3:])


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside ``_PICKLE_GLOBALS``.

    A pickle runs code only by naming a callable (``find_class``) and calling it;
    with the callables limited to checked array reconstruction a file from a stranger
    can at worst hand us wrong data, which the callers then validate. The arrays it
    builds may not claim more bytes than the file holds: an honest batch's pixels are
    bytes in the file, while a 227-byte pickle could ask for gigabytes.
    """

    def __init__(self, raw: bytes, where: str):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.where, self.size, self.budget, self.arrays = where, len(raw), len(raw), 0

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise UserError(
                f"{self.where}: refuses to load global {module}.{name} "
                "(a CIFAR-10 batch holds only numpy arrays; this file may be malicious)"
            )
        return getattr(self, _PICKLE_GLOBALS[module, name])

    def _ndarray(self, *args):
        raise UserError(
            f"{self.where}: calls numpy.ndarray directly, as an honest batch never does "
            "(this file may be malicious)"
        )

    def _dtype(self, *args):
        return _PickledDtype(*args)

    def _encode(self, text, encoding="utf-8"):
        if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
            raise ValueError("_codecs.encode is admitted only to turn latin1 text into bytes")
        return text.encode("latin1")

    def _reconstruct(
        self, subtype, shape, dtype
    ):  # honest: (numpy.ndarray, (0,), b'b'), then BUILD
        dt = dtype.dtype() if isinstance(dtype, _PickledDtype) else _number_type(dtype)
        shape = shape if isinstance(shape, tuple) else (shape,)
        self.arrays += 1
        if subtype != self._ndarray or len(shape) > 32 or self.arrays > MAX_PICKLED_ARRAYS:
            raise ValueError("not the array reconstruction numpy writes")
        dims = tuple(min(operator.index(d), 2**64) for d in shape)
        nbytes = math.prod(dims) * dt.itemsize
        if nbytes > self.budget:
            raise UserError(
                f"{self.where}: claims an array of {nbytes:,} bytes in a file of {self.size:,} "
                "(an honest batch's pixels are bytes in the file; this file may be malicious)"
            )
        self.budget -= max(nbytes, 0)
        return _reconstruct(_PickledArray, dims, dt)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(raw, where).load()
    except UserError:
        raise
    except (
        Exception
    ) as e:  # anything else going wrong inside an untrusted pickle is the file's fault
        raise UserError(
            f"{where}: not a readable CIFAR-10 pickle, truncated or corrupt "
            f"({type(e).__name__}: {one_line(e)})"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    # keys as text (a key not in UTF-8 is no key we look up); arrays as plain numpy arrays
    return {
        k.decode(errors="replace") if isinstance(k, bytes) else k: v.view(np.ndarray)
        if isinstance(v, _PickledArray)
        else v
        for k, v in obj.items()
    }


def _cifar_files(path: Path) -> tuple[dict[str, bytes], str]:
    """Raw bytes of the CIFAR-10 batch files, by name, and where they came from.

    ``path`` may be the ``cifar-10-batches-py`` folder, its parent, the official
    ``cifar-10-python.tar.gz``, or a folder holding that archive. Archive members are
    read in memory (nothing is extracted to disk), only from ``cifar-10-batches-py/``
    as in the official archive, each name once, none larger than a batch can be.
    """
    wanted = set(CIFAR_BATCHES) | {"batches.meta"}
    if path.is_dir():
        for folder in (path, path / "cifar-10-batches-py"):
            if (folder / "test_batch").is_file():
                files = {n: folder / n for n in wanted if (folder / n).is_file()}
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
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for count, member in enumerate(tar):
                folder, _, name = member.name.removeprefix("./").rpartition("/")
                if count >= ARCHIVE_MAX_MEMBERS:
                    raise UserError(
                        f"{path}: more than {ARCHIVE_MAX_MEMBERS} members; not the CIFAR-10 archive"
                    )
                if folder != "cifar-10-batches-py" or name not in wanted:
                    continue  # only the official folder: a zzz/other/test_batch once replaced the real one
                if name in found or not member.isfile():
                    how = "twice" if name in found else "as a link or special file"
                    raise UserError(
                        f"{path}: holds {member.name} {how} (the official archive holds each "
                        "batch once, as a regular file)"
                    )
                if (
                    member.size > CIFAR_FILE_MAX
                ):  # checked before decompressing: 2 MB of gzip can hold GBs
                    raise UserError(
                        f"{path}: {member.name} claims {member.size:,} bytes, more than a CIFAR-10 "
                        f"batch can be ({CIFAR_FILE_MAX:,})"
                    )
                found[name] = tar.extractfile(member).read()  # member.size bytes at most
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise UserError(f"{path}: cannot read this CIFAR-10 archive ({one_line(e)})") from None
    return found, str(path)


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
        batch = _unpickle(files[name], label)
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
        names = _unpickle(files["batches.meta"], f"{where}/batches.meta").get("label_names")
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
            f"{split_dir}: class folders differ from train/ (missing {missing[:5]}, extra {extra[:5]})"
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
