"""Training other tasks than classification: a causal LM on text, judged by perplexity, from the
command line to an exported plain model; classification runs as before."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

import robustweights as rw
from robustweights.bake import load_baked
from robustweights.checkpoints import config_of, load, load_config_data
from robustweights.cli import main
from robustweights.config import TrainConfig
from robustweights.measures import measure_split
from robustweights.models import create_model
from robustweights.runs import read_checkpoint
from robustweights.training import evaluate, train

LICENCE = Path("/usr/share/common-licenses/GPL-3")  # Debian base-files: on every Debian system
needs_licence = pytest.mark.skipif(not LICENCE.is_file(), reason=f"{LICENCE} not on this system")
LM = ["--model", "causal-lm", "--width", "0.25", "--dataset", "text", "--window", "32"]
STEPS = ["--epochs", "2", "--batch-size", "8", "--lr", "0.005", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: these tiny models run many times faster so on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """The first 12,000 bytes of a licence: a short text."""
    path = tmp_path_factory.mktemp("text") / "licence.txt"
    path.write_bytes(LICENCE.read_bytes()[:12000])
    return path


@pytest.fixture(scope="module")
def lm_run(text, tmp_path_factory):
    """A sign causal LM trained from the command line: its folder and what train printed."""
    out = tmp_path_factory.mktemp("runs") / "lm"
    argv = ["train", *LM, "--data-dir", str(text), "--projection", "sign", *STEPS]
    return out, _printed(argv + ["--out", str(out)])


def _printed(argv) -> str:
    """What ``robustweights ARGV`` prints (in this process), after it exits with 0."""
    from contextlib import redirect_stdout
    from io import StringIO

    buf = StringIO()
    with redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@needs_licence
def test_the_command_line_trains_a_causal_lm_judged_by_perplexity(lm_run):
    out, printed = lm_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["test_perplexity"] < 100, rows  # (a byte vocabulary: chance is 256)
    assert not any("error" in k for r in rows for k in r), rows
    assert last["test_perplexity"] == pytest.approx(torch.exp(torch.tensor(last["test_loss"])))
    # the best validation epoch is the lowest perplexity, kept as best.pt
    best = min(rows, key=lambda r: (r["val_perplexity"], -r["epoch"]))
    assert last["best_epoch"] == best["epoch"] and (out / "best.pt").is_file()
    assert last["best_val_perplexity"] == best["val_perplexity"]
    assert f"test perplexity: {last['best_test_perplexity']:.4g} (projected weights)" in printed
    assert json.loads((out / "config.json").read_text())["measure"] == "auto"


@needs_licence
def test_evaluate_prints_the_perplexity_measure_split_gives(lm_run):
    out, _ = lm_run
    model, config = load(out)
    data = load_config_data(config)
    with rw.projected.use_weights(model, "auto"):
        want = measure_split(model, data.test, "perplexity", batch_size=config.eval_batch_size)
    got = json.loads(_printed(["evaluate", str(out), "--json"]))
    assert got["perplexity"] == want["perplexity"] and got["measure"] == "perplexity"
    assert got["weights"] == "projected" and got["n"] == len(data.test)
    line = _printed(["evaluate", str(out)])
    assert line.startswith(f"test perplexity: {want['perplexity']:.4g}  loss: {want['loss']:.4f}")
    # the library call, and the hidden weights (a float network: another perplexity)
    assert evaluate(model, config)["perplexity"] == want["perplexity"]
    hidden = evaluate(model, config, weights="hidden")["perplexity"]
    assert hidden != want["perplexity"]


@needs_licence
def test_evaluate_takes_a_measure_and_the_users_data(lm_run, tmp_path, monkeypatch):
    out, _ = lm_run
    model, config = load(out)
    test = load_config_data(config).test
    (tmp_path / "lmdata.py").write_text(
        "from robustweights.checkpoints import load, load_config_data\n"
        "def batches():\n"
        f"    return list(load_config_data(load({str(out)!r})[1]).test.batches(7))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    got = json.loads(_printed(["evaluate", str(out), "--data", "lmdata:batches", "--json"]))
    with rw.projected.use_weights(model, "auto"):
        want = measure_split(model, test, "perplexity")
    assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-12)
    assert got["n"] == len(test)
    # a measure that does not fit the model's outputs is one line, exit 2
    assert main(["evaluate", str(out), "--measure", "error"]) == 2


@needs_licence
def test_export_gives_a_plain_causal_lm_with_evaluates_perplexity(lm_run, tmp_path):
    out, _ = lm_run
    reported = json.loads(_printed(["evaluate", str(out), "--json"]))["perplexity"]
    f = tmp_path / "lm.pt"
    line = _printed(["export", str(out), "--out", str(f), "--packed"])
    assert line.startswith(f"wrote {f}: {f.stat().st_size:,} bytes on disk (projected weights; ")
    assert "binary tensors at 1 bit per weight" in line
    config = config_of(read_checkpoint(out / "best.pt"), out)
    plain = create_model("causal-lm", num_classes=256, in_shape=(32,), width=config.width)
    plain.load_state_dict(load_baked(f))
    got = measure_split(plain, load_config_data(config).test, "perplexity")["perplexity"]
    assert got == reported
    # the sign weights, not the hidden ones
    w = plain.blocks[0].attn.qkv.weight
    assert w.abs().unique().numel() == 1


class Output:
    """A Hugging Face-like model output: the logits as an attribute."""

    def __init__(self, logits):
        self.logits = logits


class Wrapped(torch.nn.Module):
    """A built-in model whose output is an :class:`Output`."""

    def __init__(self, name, **kw):
        super().__init__()
        self.net = create_model(name, **kw)

    def forward(self, x):
        return Output(self.net(x))


def wrapped_lm(num_classes, in_shape, width):
    return Wrapped("causal-lm", num_classes=num_classes, in_shape=in_shape, width=width)


def wrapped_mlp(num_classes, in_shape, width):
    return Wrapped("mlp", num_classes=num_classes, in_shape=in_shape, width=width)


def _short(**kw) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=8, lr=0.005, device="cpu", **kw)


@needs_licence
def test_a_model_whose_output_holds_logits_trains_as_the_plain_one(text, monkeypatch):
    monkeypatch.setitem(sys.modules, "tasks_train_models", sys.modules[__name__])
    lm = dict(dataset="text", data_dir=str(text), window=32, width=0.25, projection="sign")
    image = dict(dataset="demo", train_subset=200, test_subset=100, width=0.25, projection="sign")
    for kw, name in ((lm, "causal-lm"), (image, "mlp")):
        factory = f"tasks_train_models:wrapped_{name.split('-')[-1]}"
        plain = train(_short(model=name, **kw), progress=False)
        own = train(_short(model=factory, **kw), progress=False, model_factory=factory)
        assert own.measure == plain.measure == ("perplexity" if name == "causal-lm" else "error")
        assert own.history[-1]["train_loss"] == plain.history[-1]["train_loss"]
        assert own.test_value == plain.test_value
        theirs = list(plain.model.state_dict().values())
        assert all(torch.equal(a, b) for a, b in zip(own.model.state_dict().values(), theirs))


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--dataset", "text"], "needs --data-dir"),
        (["--dataset", "text", "--data-dir", "X", "--loss", "sq-hinge"], "classification loss"),
        (["--dataset", "text", "--data-dir", "X", "--train-subset", "9"], "train_subset"),
        (["--dataset", "text", "--data-dir", "X", "--measure", "error"], "judged by perplexity"),
        (["--dataset", "demo", "--measure", "perplexity"], "judges a language model"),
        (["--dataset", "demo", "--window", "9"], "window applies only to the text dataset"),
    ],
)
def test_a_task_that_does_not_fit_its_data_is_one_line(capsys, argv, words):
    assert main(["train", *argv, "--model", "causal-lm", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_a_classifier_trains_as_before_and_an_old_checkpoint_resumes(tmp_path):
    """A checkpoint written before measures (no measure, no window in its configuration) loads
    and resumes; ``measure`` top5_error selects and reports by top-5 error."""
    out = tmp_path / "run"
    kw = dict(dataset="demo", train_subset=200, test_subset=100, model="mlp", width=0.25)
    first = train(_short(out=str(out), **kw), progress=False)
    assert first.measure == "error" and first.test_value == first.test_error
    assert set(first.history[0]) >= {"train_error", "test_error", "test_loss"}
    state = read_checkpoint(out / "checkpoint.pt")
    for key in ("measure", "window"):
        del state["config"][key]
    torch.save(state, out / "checkpoint.pt")
    assert config_of(state, out).measure == "auto"
    longer = dataclasses.replace(_short(out=str(out), **kw), epochs=2)
    again = train(longer, resume=True, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2]
    top5 = train(_short(measure="top5_error", val_size=50, **kw), progress=False)
    last = top5.history[-1]
    assert top5.measure == "top5_error" and top5.test_value == last["best_test_top5_error"]
    assert last["test_top5_error"] <= last["test_error"] and "val_top5_error" in last
