"""Tests for robustweights.data: preprocessing statistics, reproducible batches, image folders,
user errors, and the real datasets (files are read in test_readers.py)."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robustweights.data import (
    AUGMENT,
    DATASETS,
    PREPROCESS,
    Data,
    FolderSplit,
    TensorSplit,
    augment_batch,
    default_data_dir,
    load_data,
)
from robustweights.errors import UserError
from conftest import need
from data_writers import write_cifar, write_folder, write_mnist

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared/datasets/cifar-10-batches-py"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- preprocessing


def test_standardize_gives_zero_mean_unit_std_on_train(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", n=40)
    x = load_data("cifar10", str(tmp_path)).train.x
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)


def pylearn2_gcn_zca(train: np.ndarray, test: np.ndarray):
    """Reference: pylearn2 global_contrast_normalize(scale=55) then ZCA(filter_bias=0.1)."""

    def gcn(x):
        x = x - x.mean(axis=1, keepdims=True)
        norm = np.sqrt((x**2).sum(axis=1, keepdims=True)) / 55.0
        norm[norm < 1e-8] = 1.0
        return x / norm

    train, test = gcn(train), gcn(test)
    mean = train.mean(axis=0)
    eigs, eigv = np.linalg.eigh(np.dot((train - mean).T, train - mean) / train.shape[0])
    whiten = np.dot(eigv * np.sqrt(1.0 / (eigs + 0.1)), eigv.T)
    return (train - mean) @ whiten, (test - mean) @ whiten


def test_gcn_zca_whitens_train_and_matches_pylearn2(tmp_path):
    arrays, _ = write_mnist(tmp_path, n_train=4000, n_test=300, gz=False)
    data = load_data("mnist", str(tmp_path), preprocess="gcn-zca")
    x = data.train.x.reshape(4000, -1).double()  # (N, 784)
    assert x.mean(0).abs().max() < 1e-4
    eig = torch.linalg.eigvalsh(x.T @ x / len(x))
    # GCN removes the constant direction (each image has mean 0); every other direction
    # has variance e / (e + 0.1) with e ~ 55^2 / 784 per direction: close to 1.
    assert eig[0] < 1e-6 and eig[1:].min() > 0.9 and eig.max() < 1.0
    ref_train, ref_test = pylearn2_gcn_zca(
        arrays[0].reshape(4000, -1) / 255.0, arrays[2].reshape(300, -1) / 255.0
    )
    np.testing.assert_allclose(x.numpy(), ref_train, atol=1e-4)
    np.testing.assert_allclose(data.test.x.reshape(300, -1).numpy(), ref_test, atol=1e-4)


# --------------------------------------------------------------------------- batches


def test_batches_order_and_reproducibility():
    split = TensorSplit(torch.randn(23, 3, 8, 8), torch.arange(23))
    plain = list(split.batches(5))
    assert [len(y) for _, y in plain] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat([y for _, y in plain]), torch.arange(23))
    assert [len(y) for _, y in split.batches(5, drop_last=True)] == [5, 5, 5, 5]
    assert list(split.batches(30, drop_last=True)) == []  # before: one empty batch (a NaN loss)
    with pytest.raises(UserError, match="shard must be"):
        list(split.batches(5, shard=(2, 2)))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return list(split.batches(5, shuffle=True, generator=g, augment="flip-crop"))

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    assert sorted(torch.cat([y for _, y in a]).tolist()) == list(range(23))  # each example once
    for x, y in split.batches(23, shuffle=True, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(x, split.x[y])  # labels follow images


def test_augment_batch_is_a_flip_and_crop_of_each_example():
    x = torch.randn(32, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(3), pad=2)
    assert out.shape == x.shape
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(3), pad=2))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for b in range(32):
        candidates = [
            (f, padded[b, :, i : i + 8, j : j + 8])
            for i in range(5)
            for j in range(5)
            for f in (0, 1)
        ]
        matches = [f for f, crop in candidates if torch.equal(out[b], crop.flip(-1) if f else crop)]
        assert matches, f"example {b} is no flip/crop of its input"
        flips += matches[0]
    assert 0 < flips < 32
    assert augment_batch(x, None, "none") is x
    with pytest.raises(UserError, match="flip-crop"):
        augment_batch(x, None, "rotate")


# --------------------------------------------------------------------------- image folders


def test_imagefolder_loads_classes_and_shapes(tmp_path):
    write_folder(tmp_path)
    data = load_data("imagefolder", str(tmp_path), image_size=16)
    assert (
        data.classes == ["cat", "dog", "emu"]
        and data.num_classes == 3
        and data.in_shape == (3, 16, 16)
    )
    assert (len(data.train), len(data.test)) == (9, 7) and isinstance(data.train, FolderSplit)
    ys = []
    for x, y in data.train.batches(
        4, shuffle=True, generator=torch.Generator().manual_seed(0), augment="flip-crop"
    ):
        assert (
            x.shape == (len(y), 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
        )
        ys += y.tolist()
    assert sorted(ys) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x, y = next(iter(data.test.batches(7)))
    assert y.tolist() == [0, 0, 1, 1, 2, 2, 2]
    # the solid image (last in sorted order) is one colour after resize and crop, standardized
    expected = (torch.tensor([200, 100, 50]) / 255 - data.test.mean) / data.test.std
    torch.testing.assert_close(x[6], expected[:, None, None].expand(3, 16, 16))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_imagefolder_corrupt_image_names_the_file(tmp_path, num_workers):
    write_folder(tmp_path)
    (tmp_path / "val" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = load_data("imagefolder", str(tmp_path), image_size=8, num_workers=num_workers)
    with pytest.raises(UserError, match="broken.png") as err:
        list(data.test.batches(3))
    assert "\n" not in str(err.value)
    (tmp_path / "train" / "cat" / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.jpg"):
        load_data("imagefolder", str(tmp_path), image_size=8)  # read while estimating mean/std


def test_imagefolder_layout_errors(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(UserError, match="imagefolder supports only"):
        load_data("imagefolder", str(tmp_path), preprocess="gcn-zca")
    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(UserError, match="fox"):
        load_data("imagefolder", str(tmp_path))
    for image in (tmp_path / "train" / "cat").iterdir():
        image.unlink()
    (tmp_path / "val" / "fox").mkdir()
    with pytest.raises(UserError, match="cat: no images"):
        load_data("imagefolder", str(tmp_path))


@pytest.mark.parametrize("loop", ["loop.png", "self"])
def test_a_symlink_loop_in_an_image_folder_is_one_line(tmp_path, loop):
    """A file loop.png -> loop.png, or a class folder self -> self, raised OSError [Errno 40] from
    the listing."""
    write_folder(tmp_path)
    where = tmp_path / "train" / ("cat" if loop == "loop.png" else "") / loop
    os.symlink(loop, where)
    with pytest.raises(
        UserError,
        match=re.escape(
            f"{where}: cannot read this entry of the image folder "
            "(Too many levels of symbolic links)"
        ),
    ) as err:
        load_data("imagefolder", str(tmp_path))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- names and folders


def test_user_errors_list_choices_and_name_folders(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="fashion-mnist, mnist, cifar10, imagefolder, demo"):
        load_data("svhn")
    with pytest.raises(UserError, match="standardize, gcn-zca"):
        load_data("demo", preprocess="pca")
    with pytest.raises(UserError, match="none, flip-crop"):
        next(
            TensorSplit(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)).batches(
                1, augment="mixup"
            )
        )
    with pytest.raises(UserError, match="no such folder .*nowhere"):
        load_data("mnist", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="1..5000"):
        load_data("demo", train_subset=5001)
    monkeypatch.setenv("ROBUSTWEIGHTS_DATA", str(tmp_path))
    write_mnist(tmp_path / "mnist")
    assert default_data_dir("mnist") == str(tmp_path / "mnist")
    assert len(load_data("mnist", test_subset=7).test) == 7
    assert (DATASETS, PREPROCESS, AUGMENT)[2] == ("none", "flip-crop")


# --------------------------------------------------------------------------- real data


def test_demo_is_balanced_fashion_mnist():
    data = load_data("demo")
    assert (
        isinstance(data, Data)
        and data.description
        == "Fashion-MNIST subset shipped with robustweights (5000 train / 1000 test)"
    )
    assert (len(data.train), len(data.test), data.in_shape) == (5000, 1000, (1, 28, 28))
    assert torch.bincount(data.train.y).tolist() == [500] * 10
    assert torch.bincount(data.test.y).tolist() == [100] * 10
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    sub = load_data("demo", train_subset=100, seed=1)
    assert len(sub.train) == 100 and "subset 100 of 5000 (seed 1)" in sub.description
    assert torch.equal(sub.train.y, load_data("demo", train_subset=100, seed=1).train.y)


def test_shared_cifar_copy_is_labelled_jpeg(monkeypatch, tmp_path):
    need(SHARED_CIFAR, "shared CIFAR-10 copy")
    data = load_data("cifar10", str(SHARED_CIFAR), train_subset=200, test_subset=50)
    assert "CIFAR-10 (JPEG copy)" in data.description
    assert (len(data.train), len(data.test), data.in_shape) == (200, 50, (3, 32, 32))
    assert data.classes == [
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
    monkeypatch.delenv("ROBUSTWEIGHTS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # found beside the checkout, whatever the working directory
    assert default_data_dir("cifar10") == str(SHARED_CIFAR)


def test_debian_fashion_mnist_loads_in_full():
    need(DEBIAN_FASHION, "Debian dataset-fashion-mnist")
    data = load_data("fashion-mnist", str(DEBIAN_FASHION))
    assert (len(data.train), len(data.test), data.in_shape, data.num_classes) == (
        60000,
        10000,
        (1, 28, 28),
        10,
    )
    assert torch.bincount(data.train.y).tolist() == [6000] * 10
    assert data.description == f"Fashion-MNIST from {DEBIAN_FASHION}"


def test_a_validation_split_is_the_last_training_images_and_fits_nothing():
    from robustweights.data import load_data as load

    raw = load("demo", preprocess="none")
    d = load("demo", val_size=500)
    assert (len(d.train), len(d.val), len(d.test)) == (4500, 500, 1000)
    assert torch.equal(d.val.y, raw.train.y[4500:]) and torch.equal(d.train.y, raw.train.y[:4500])
    mean = raw.train.x[:4500].mean()  # standardization fitted on the 4,500 alone
    std = raw.train.x[:4500].std(correction=0)
    assert torch.allclose(d.val.x, (raw.train.x[4500:] - mean) / std, atol=1e-5)
    assert "validation: the last 500 training images" in d.description
    with pytest.raises(UserError, match="val_size must be"):
        load("demo", val_size=5000)


def test_reading_an_image_folder_leaves_the_global_random_state_alone(tmp_path):
    """Each pass built a DataLoader that drew its base seed from the global random state: a row
    trained at once with another (rows_at_once) could take that draw while the other seeded and
    initialised its model, so the other's starting weights depended on timing."""
    import torch
    from robustweights.data import load_data, make_image_folders

    make_image_folders(tmp_path / "img", classes=2, train_per_class=4, val_per_class=2, size=8)
    data = load_data("imagefolder", data_dir=str(tmp_path / "img"), image_size=8)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for _ in data.train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1)):
        pass
    assert torch.equal(torch.get_rng_state(), before)
