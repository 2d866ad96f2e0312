"""The text dataset and the causal transformer: windows that give the file's bytes back, a model
that is causal and learns (validation perplexity far under the uniform 256), one-line refusals."""

from pathlib import Path

import pytest
import torch

import robustweights as rw
from robustweights import projected
from robustweights.errors import UserError
from robustweights.language import MODEL_NAME, CausalLM, load_text, read_text
from robustweights.measures import get_measure, measure_split
from robustweights.models import create_model

LICENCE = Path("/usr/share/common-licenses/GPL-3")  # Debian base-files: on every Debian system
needs_licence = pytest.mark.skipif(not LICENCE.is_file(), reason=f"{LICENCE} not on this system")


def _joined(split) -> bytes:
    """The bytes a split's windows cover: every input, then the last target."""
    tail = split.targets[-1, -1:]
    return bytes(torch.cat([split.inputs.flatten(), tail]).tolist())


@needs_licence
def test_windows_give_the_files_bytes_back_in_contiguous_blocks():
    raw = LICENCE.read_bytes()
    data = load_text(LICENCE, window=64, val_fraction=0.1, test_fraction=0.2)
    n = len(raw)
    starts = [0, n - round(0.3 * n), n - round(0.2 * n), n]  # train, validation, test blocks
    for split, start, end in zip((data.train, data.val, data.test), starts, starts[1:]):
        covered = _joined(split)
        assert raw[start : start + len(covered)] == covered
        assert len(split) == (end - start - 1) // 64  # every whole window of the block
        assert torch.equal(split.targets[:, :-1], split.inputs[:, 1:])  # the next byte
        assert torch.equal(split.targets[:-1, -1], split.inputs[1:, 0])  # across windows too
    x, y = next(iter(data.train.batches(5)))
    assert (x.dtype, y.dtype, x.shape, y.shape) == (torch.long, torch.long, (5, 64), (5, 64))
    assert f"train {len(data.train):,}, validation {len(data.val):,}" in data.description
    assert (data.num_classes, data.in_shape, len(data.classes)) == (256, (64,), 256)


def test_a_folder_is_its_files_in_order_hidden_ones_skipped(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second file, é\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file\n" * 20)
    (tmp_path / ".hidden").write_bytes(b"\xff\xfe not read")
    raw, files = read_text(tmp_path)
    assert [f.name for f in files] == ["a.txt", "two.txt"]
    assert raw == (tmp_path / "a.txt").read_bytes() + (tmp_path / "b" / "two.txt").read_bytes()
    data = load_text(tmp_path, window=8, val_fraction=0)
    assert data.val is None and "2 files" in data.description
    assert raw.startswith(_joined(data.train))


def test_bad_paths_and_files_that_are_not_text_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="a folder with no files"):
        load_text(tmp_path / "empty")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"ab\x80\x81cd" * 100)
    with pytest.raises(UserError, match=r"weights.bin: not UTF-8 text \(byte 2 is not\)"):
        load_text(binary)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"text\0more" * 100)
    with pytest.raises(UserError, match=r"nul.txt: not text \(a NUL byte at byte 4\)"):
        load_text(nul)
    big = tmp_path / "big.txt"
    big.write_text("x" * 5000)
    with pytest.raises(UserError, match="5,000 bytes of text, over the limit of 4,096"):
        load_text(big, max_bytes=4096)
    with pytest.raises(UserError, match="the validation text 500 bytes, not one window of 501"):
        load_text(big, window=500)
    for kw in (dict(window=0), dict(val_fraction=1.5), dict(test_fraction=0)):
        with pytest.raises(UserError):
            load_text(big, **kw)


def test_the_model_is_causal_and_ties_its_head():
    torch.manual_seed(0)
    model = CausalLM(vocab=256, dim=32, layers=2, heads=4, context=16).eval()
    x = torch.randint(0, 256, (3, 16))
    later = x.clone()
    later[:, 9:] = torch.randint(0, 256, (3, 7))
    with torch.no_grad():
        a, b = model(x), model(later)
    assert a.shape == (3, 16, 256)
    assert torch.equal(a[:, :9], b[:, :9]) and not torch.equal(a[:, 9:], b[:, 9:])
    assert model.head.weight is model.embed.weight
    assert CausalLM(tie=False).head.weight is not CausalLM(tie=False).embed.weight
    names = projected.attach(model, "sign")  # trained binarized: every matrix, the tied one once
    assert names == ["embed.weight", "pos.weight"] + [
        f"blocks.{i}.{w}.weight"
        for i in range(2)
        for w in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
    ]
    assert model(x).shape == (3, 16, 256)
    with pytest.raises(UserError, match="context is 16"):
        measure_split(model, [(torch.zeros(1, 17, dtype=torch.long),) * 2], "perplexity")


def test_create_model_builds_it_by_name():
    model = create_model(MODEL_NAME, num_classes=256, in_shape=None, width=0.5, dim=64, heads=4)
    assert isinstance(model, CausalLM) and model.embed.weight.shape == (256, 32)
    with pytest.raises(UserError, match="takes no option"):
        create_model(MODEL_NAME, num_classes=256, in_shape=None, depth=3)
    with pytest.raises(UserError, match="heads 0 is not allowed"):
        create_model(MODEL_NAME, num_classes=256, in_shape=None, heads=0)


@pytest.fixture(scope="module")
def trained():
    """A tiny model after 100 Adam steps on a licence text, with its data."""
    data = load_text(LICENCE, window=32)
    torch.manual_seed(0)
    model = CausalLM(dim=32, layers=1, heads=4, context=32)
    ppl = get_measure("perplexity")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    step = 0
    while step < 100:
        for x, y in data.train.batches(32, shuffle=True, generator=g, drop_last=True):
            loss = ppl.objective(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == 100:
                break
    return model.eval(), data


@needs_licence
def test_a_tiny_model_learns_the_text(trained):
    model, data = trained
    before = measure_split(CausalLM(dim=32, layers=1, heads=4, context=32), data.val, "perplexity")
    after = measure_split(model, data.val, "perplexity", batch_size=50)
    assert before["perplexity"] > 200  # about uniform over the 256 bytes at the start
    assert after["perplexity"] < 60  # 35 (about a unigram model's) after 100 steps
    assert after["tokens"] == len(data.val) * 32


@needs_licence
def test_a_sweep_reports_perplexity_through_the_measure(trained):
    model, data = trained
    m = get_measure("perplexity")
    rows = rw.sweep(
        model,
        None,
        ["add-gauss:sigma=0,2"],
        evaluate=m.evaluator(data.val, batch_size=200),
        metric=m.name,
        trials=1,
    )
    assert [r["metric"] for r in rows] == ["perplexity"] * 2
    clean, noisy = (r["score"] for r in rows)
    assert clean == pytest.approx(measure_split(model, data.val, m)["perplexity"], rel=1e-12)
    assert noisy > clean
    assert not projected.sites(model)  # the user's plain model is given back as it came
