"""Tests for robustweights.readers and robustweights.unpickling: IDX and CIFAR-10 files written
here, hostile and broken files, images of odd sizes and pixel types."""

import builtins
import codecs
import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustweights.data import load_data
from robustweights.readers import read_idx
from robustweights.errors import UserError
from data_writers import unstandardize, write_cifar, write_idx, write_mnist


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays, paths = write_mnist(tmp_path, gz=gz)
    for a, p in zip(arrays, paths):
        np.testing.assert_array_equal(read_idx(p, a.ndim), a)
    data = load_data("mnist", str(tmp_path))
    assert (data.in_shape, len(data.train), len(data.test)) == ((1, 28, 28), 50, 20)
    assert torch.equal(data.train.y, torch.from_numpy(arrays[1].astype(np.int64)))
    assert torch.equal(data.test.y, torch.from_numpy(arrays[3].astype(np.int64)))
    train_pixels = arrays[0][:, None]
    np.testing.assert_array_equal(unstandardize(data.train.x, train_pixels), train_pixels)
    np.testing.assert_array_equal(unstandardize(data.test.x, train_pixels), arrays[2][:, None])


@pytest.mark.parametrize("damage", ["truncate", "bad-gzip", "cut-gzip", "magic", "count", "label"])
def test_broken_idx_names_the_file(tmp_path, damage):
    arrays, paths = write_mnist(tmp_path, gz=damage in ("bad-gzip", "cut-gzip"))
    victim = paths[0] if damage not in ("count", "label") else paths[1]
    raw = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(raw[:-100])
    elif damage == "bad-gzip":
        victim.write_bytes(raw[:20] + bytes(200) + raw[220:])
    elif damage == "cut-gzip":
        victim.write_bytes(raw[: len(raw) // 2])
    elif damage == "magic":
        victim.write_bytes(b"\x00\x00\x08\x01" + raw[4:])
    elif damage == "count":
        write_idx(victim, arrays[1][:-1], gz=False)
    else:
        write_idx(victim, np.full(50, 10, np.uint8), gz=False)
    with pytest.raises(UserError, match=victim.name) as err:
        load_data("mnist", str(tmp_path))
    assert "\n" not in str(err.value)


def test_gzipped_idx_is_decompressed_only_as_far_as_its_header_promises(tmp_path):
    """A 0.5 MB .gz reached 1.3 GB: the whole stream was decompressed before the header was read."""
    import tracemalloc

    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:  # promises 1,000 bytes, holds 32 MB of zeros
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 10, 10))
        for _ in range(32):
            f.write(bytes(1 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="idx3-ubyte.gz: holds") as err:
            read_idx(bomb, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak:,} bytes"  # before: 32 MB, and copies
    assert "holds more than 1000 data bytes" in str(err.value)
    big = tmp_path / "big"  # a header beyond any IDX file, no data
    big.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 60000, 28))
    with pytest.raises(UserError, match="promises 100,800,000,000 data bytes .* more than"):
        read_idx(big, 3)


def test_idx_dimensions_whose_product_wraps_are_refused(tmp_path):
    """np.prod wrapped (31267408, 218641, 26983373) to 784 at 2**64: 784 bytes passed, then
    reshape raised."""
    path = tmp_path / "wrap"
    path.write_bytes(
        bytes([0, 0, 8, 3]) + struct.pack(">3I", 31267408, 218641, 26983373) + bytes(784)
    )
    with pytest.raises(
        UserError, match="wrap: its header promises 184,467,440,737,095,516,944 data bytes"
    ):
        read_idx(path, 3)


@pytest.mark.parametrize("shape", [(0, 28, 28), (5, 0, 0)])
def test_an_empty_mnist_split_is_refused_where_it_is_read(tmp_path, shape):
    """0 training images loaded, and training then stopped on a StopIteration naming no file."""
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(shape, np.uint8), gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(shape[0], np.uint8), gz=False)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).unlink()
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: holds no pixels \(shape"):
        load_data("mnist", str(tmp_path))


# --------------------------------------------------------------------------- CIFAR-10


class Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
def test_malicious_cifar_pickle_is_refused(tmp_path, how):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "marker"
    command = f"touch {marker}"
    evil = (
        Evil(os.system, command)
        if how == "os.system"
        else Evil(builtins.eval, f"__import__('os').system({command!r})")
    )
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": evil, b"labels": [0]}, f, protocol=2)
    with pytest.raises(
        UserError, match=r"data_batch_2: refuses to load global (posix\.system|__builtin__\.eval)"
    ):
        load_data("cifar10", str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage", ["truncated", "wrong-shape", "wrong-dtype", "no-labels", "label-range"]
)
def test_broken_cifar_batch_names_the_file(tmp_path, damage):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    victim = folder / "test_batch"
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    bad = {
        "wrong-shape": {**good, b"data": np.zeros((2, 3000), np.uint8)},
        "wrong-dtype": {**good, b"data": np.zeros((2, 3072), np.float32)},
        "no-labels": {b"data": good[b"data"]},
        "label-range": {**good, b"labels": [0, 10]},
    }.get(damage)
    if bad is None:
        victim.write_bytes(victim.read_bytes()[:5000])
    else:
        victim.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(UserError, match="test_batch"):
        load_data("cifar10", str(folder))


def test_fake_cifar_folder_and_archive_load_exact_pixels(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar(folder)
    data = load_data("cifar10", str(tmp_path))
    assert data.description.startswith("CIFAR-10 from") and "JPEG" not in data.description
    assert data.classes == [f"class{i}" for i in range(10)] and data.in_shape == (3, 32, 32)
    train_rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_pixels = train_rows.reshape(-1, 3, 32, 32)
    pixels = unstandardize(data.train.x, train_pixels)
    np.testing.assert_array_equal(pixels, train_pixels)
    # channel-planar layout: row 0 of data_batch_1, pixel (row 5, column 7) of R, G, B
    rows = batches["data_batch_1"][0]
    assert pixels[0, :, 5, 7].tolist() == [rows[0, c * 1024 + 5 * 32 + 7] for c in range(3)]
    assert data.train.y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert data.test.y.tolist() == batches["test_batch"][1]

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / archive.name).write_bytes(archive.read_bytes())
    for where in (archive, tmp_path / "elsewhere"):
        from_tar = load_data("cifar10", str(where))
        assert torch.equal(from_tar.train.x, data.train.x) and torch.equal(
            from_tar.test.y, data.test.y
        )
        assert from_tar.classes == data.classes


class Call:
    """Pickles as ``func(*args)``: a hostile batch calling an admitted global its own way."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the official files: byte strings, numpy 1's module
    names."""

    def s(b):
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    return (
        b"\x80\x02}("
        + s(b"data")
        + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + s(b"b")
        + b"\x87R(K\x01J"
        + struct.pack("<i", len(data))
        + b"M\x00\x0c\x86cnumpy\ndtype\n"
        + s(b"u1")
        + b"K\x00K\x01\x87R(K\x03"
        + s(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + s(data.tobytes())
        + b"tb"
        + s(b"labels")
        + b"]("
        + b"".join(b"K" + bytes([y]) for y in labels)
        + b"eu."
    )


# A V8 dtype, an array of 4 built on it, then BUILD rewriting the dtype's size to 1 MB under the
# array.
DTYPE_REWRITE = (
    b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87Rq\x01"
    b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x04\x85h\x01\x87Rq\x020"
    b"h\x01(K\x03X\x01\x00\x00\x00|NNNJ\x00\x00\x10\x00K\x01K\x00tb0"
    b"}X\x04\x00\x00\x00datah\x02s."
)


@pytest.mark.parametrize(
    "attack", ["ndarray-zero-strides", "reconstruct-no-data", "dtype-rewrite", "hex-encode"]
)
def test_a_cifar_pickle_cannot_claim_more_than_its_own_bytes(tmp_path, attack):
    """A 227-byte pickle called numpy.ndarray((N, 3072), 'u1', b'\\0', 0, (0, 0)): gigabytes once
    copied; the admitted globals now build nothing larger than the file, and the official format
    still loads."""
    import tracemalloc
    from robustweights.unpickling import numpy_reconstruct as _reconstruct
    from robustweights.unpickling import unpickle as _unpickle

    payload = {
        "ndarray-zero-strides": Call(np.ndarray, (10**6, 3072), np.dtype("u1"), b"\0", 0, (0, 0)),
        "reconstruct-no-data": Call(
            _reconstruct, np.ndarray, (30000, 3072), b"B"
        ),  # 92 MB, no BUILD
        "hex-encode": Call(codecs.encode, b"\0" * 64, "hex"),
    }.get(attack)  # doubles, nested
    raw = (
        DTYPE_REWRITE
        if payload is None
        else pickle.dumps({b"data": payload, b"labels": []}, protocol=2)
    )
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="batch_9: .*(malicious|truncated or corrupt)") as err:
            _unpickle(raw, "batch_9")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(raw) < 300 and peak < 1 << 20 and "\n" not in str(err.value)
    rows = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    for honest in (
        py2_batch(rows, [1, 2, 3]),
        pickle.dumps({b"data": rows, b"labels": [1, 2, 3]}, protocol=2),
        pickle.dumps({b"data": rows, b"labels": [1, 2, 3]}, protocol=4),
    ):
        batch = _unpickle(honest, "honest")
        assert (
            type(batch["data"]) is np.ndarray
            and batch["data"].dtype == np.uint8
            and batch["labels"] == [1, 2, 3]
        )
        np.testing.assert_array_equal(batch["data"], rows)


def test_a_cifar_archive_member_too_large_for_a_batch_is_refused_unread(tmp_path):
    """A 0.5 MB cifar-10-python.tar.gz reached 814 MB: each member was decompressed whole,
    whatever its size."""
    import tracemalloc

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    archive = tmp_path / "cifar-10-python.tar.gz"
    zeros = 65 << 20
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for f in sorted(folder.iterdir()):
            if f.name != "test_batch":
                tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = zeros
        tar.addfile(info, io.BytesIO(bytes(zeros)))
    assert archive.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="cifar-10-python.tar.gz") as err:
            load_data("cifar10", str(archive))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes"  # before: the 65 MB member, read
    assert "test_batch claims 68,157,440 bytes, more than a CIFAR-10 batch" in str(err.value)


def test_cifar_archive_takes_each_batch_once_from_the_official_folder(tmp_path):
    """A second member zzz/other/test_batch silently replaced the real test batch."""
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar(folder)
    impostor = tmp_path / "impostor"
    impostor.write_bytes(
        pickle.dumps({b"data": np.zeros((6, 3072), np.uint8), b"labels": [3] * 6}, protocol=2)
    )
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        tar.add(impostor, arcname="zzz/other/test_batch")
    assert load_data("cifar10", str(archive)).test.y.tolist() == batches["test_batch"][1]
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        tar.add(impostor, arcname="cifar-10-batches-py/test_batch")
    with pytest.raises(
        UserError, match="cifar-10-python.tar.gz: holds cifar-10-batches-py/test_batch twice"
    ):
        load_data("cifar10", str(archive))


def test_cifar_names_not_in_utf8_and_empty_splits(tmp_path):
    """A key or a label name not in UTF-8 raised UnicodeDecodeError; a test batch of 0 images
    loaded."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [b"\xff\xfe"] + [b"x"] * 9}, protocol=2)
    )
    (folder / "data_batch_1").write_bytes(
        pickle.dumps(
            {b"\xff": 1, b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2
        )
    )
    data = load_data("cifar10", str(folder))
    assert data.classes[:2] == ["\ufffd\ufffd", "x"] and len(data.train) == 26
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=4)
    )
    with pytest.raises(
        UserError, match=r"batches-py/test_batch: holds no images \(b'data' has shape \(0, 3072\)"
    ):
        load_data("cifar10", str(folder))


# --------------------------------------------------------------------------- images, the GPU pack


def test_a_very_wide_or_tall_image_is_resized_only_where_the_crop_needs_it(tmp_path, monkeypatch):
    """An 85-byte 5000x1 PNG took 1.3 GB (resized whole to 1,120,000x224 before the crop); a
    40000x1 one raised MemoryError. Ordinary images keep the resize-then-crop result exactly."""
    from robustweights.readers import read_image

    real_resize, resized = Image.Image.resize, []

    def reference(
        path, size
    ):  # torchvision's Resize(size) then CenterCrop(size), as read_image did
        with Image.open(path) as im:
            w, h = im.size
            nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            im = real_resize(im.convert("RGB"), (max(nw, size), max(nh, size)), Image.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        return (
            torch.from_numpy(np.array(im.crop((left, top, left + size, top + size)))).permute(
                2, 0, 1
            )
            / 255
        )

    monkeypatch.setattr(
        Image.Image,
        "resize",
        lambda im, size, *a, **k: resized.append(size) or real_resize(im, size, *a, **k),
    )
    rng = np.random.default_rng(0)
    for w, h in ((5000, 1), (1, 3000), (37, 23), (20, 300)):
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        resized.clear()
        got = read_image(str(path), 8)
        assert max(a * b for a, b in resized) <= 16 * 8 * 8, (
            w,
            h,
            resized,
        )  # before: 40000x8 for 5000x1
        if max(w, h) <= 16 * min(w, h):
            assert torch.equal(got, reference(path, 8)), (w, h)
        else:
            assert (got - reference(path, 8)).abs().max() <= 1 / 255 + 1e-6, (w, h)


def test_the_gpu_pack_of_cifar_batches_unpacks_byte_for_byte(tmp_path):
    """benchmarks/gpu_cifar.py --pack: a full batch's pixels travel as a lossless WebP mosaic, the
    rest of the file and other files as xz, in two parts; unpacked files must equal the originals
    (the loader checks the JPEG copy's sha256)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_cifar", Path(__file__).parents[1] / "benchmarks/gpu_cifar.py"
    )
    gpu_cifar = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_cifar)
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)  # smooth pictures, each shifted (fast to encode); 100 of noise
    base = (np.arange(3072) // 32 * 3 % 256).astype(np.uint8)
    pixels = base[None, :] + rng.integers(0, 256, (10000, 1), dtype=np.uint8)
    pixels[:100] = rng.integers(0, 256, (100, 3072), dtype=np.uint8)
    with open(
        src / "data_batch_1", "wb"
    ) as f:  # protocol 4 keeps the pixels contiguous, as the real files do
        pickle.dump(
            {
                b"batch_label": b"b1",
                b"labels": [i % 10 for i in range(10000)],
                b"data": pixels.reshape(10000, 3072),
                b"filenames": [b"x.png"] * 10000,
            },
            f,
            protocol=4,
        )
    with open(src / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"a"] * 10}, f, protocol=2)
    gpu_cifar.pack(src, tmp_path / "pack")
    assert (
        tmp_path / "pack" / "b" / "data_batch_1.webp"
    ).exists()  # the pixel path, not the xz fallback
    together = tmp_path / "together"
    together.mkdir()
    for part in ("a", "b"):
        for f in (tmp_path / "pack" / part).iterdir():
            (together / f.name).write_bytes(f.read_bytes())
    gpu_cifar.unpack(together, tmp_path / "out")
    for name in ("data_batch_1", "batches.meta"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()


def test_sixteen_bit_and_float_images_read_as_their_values(tmp_path):
    """PIL's convert('RGB') clips 16-bit pixels (a dark 16-bit image came out white) and floats in
    [0, 1] (black)."""
    from PIL import Image

    from robustweights.readers import read_image

    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "u16.png")
    Image.fromarray((ramp * 255).astype(np.uint8)).save(tmp_path / "u8.png")
    Image.fromarray(ramp.astype(np.float32), mode="F").save(tmp_path / "f.tif")
    eight = read_image(str(tmp_path / "u8.png"), 8)
    for name in ("u16.png", "f.tif"):
        got = read_image(str(tmp_path / name), 8)
        assert (got - eight).abs().max() <= 1 / 255 + 1e-6, name  # before: 99.6% white / black
    Image.fromarray((ramp * 3).astype(np.float32), mode="F").save(tmp_path / "big.tif")
    with pytest.raises(UserError, match=r"float pixels must lie in \[0, 1\]"):
        read_image(str(tmp_path / "big.tif"), 8)
