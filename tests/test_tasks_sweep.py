"""Sweeps of any task: a language model swept for perplexity from the command line alone.

A tiny causal LM trained a few steps on a licence text, its state_dict saved, a factory and a data
module of the user's own: `robustweights sweep --model-factory --state-dict --data --measure`
must give exactly the numbers of `rw.sweep(..., measure=...)`, and the printed summary, the
report and the lowest-bits line must speak in the measure's units and direction.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import matplotlib.axes
import pytest
import torch

import robustweights as rw
from robustweights.cli import main
from robustweights.language import CausalLM, load_text
from robustweights.measures import get_measure, measure_split
from robustweights.results import lowest_bits
from robustweights.sweeps import save_sweep

LICENCE = "/usr/share/common-licenses/GPL-3"  # Debian base-files: on every Debian system
pytestmark = pytest.mark.skipif(not Path(LICENCE).is_file(), reason=f"{LICENCE} not here")
WINDOW = 32
SIZES = dict(vocab=256, dim=16, layers=1, heads=2, context=WINDOW)

MODULE = f"""
import torch
from torch.utils.data import DataLoader, TensorDataset

from robustweights.language import CausalLM, load_text
from robustweights.measures import Measure


def build():
    return CausalLM(**{SIZES!r})


def data():
    test = load_text({LICENCE!r}, window={WINDOW}).test
    return DataLoader(TensorDataset(test.inputs.long(), test.targets.long()), batch_size=64)


def _right(out, y):
    return {{"right": (out.argmax(-1) == y).sum(), "tokens": y.numel()}}


def _share(sums):
    return {{"token_accuracy": sums["right"] / sums["tokens"]}}


token_accuracy = Measure("token_accuracy", higher_is_better=True, batch=_right, finish=_share)
"""


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A CausalLM trained 30 steps on the licence's training text, its state_dict in a file, and
    the user's module (factory, data, a higher-is-better measure) in a folder."""
    folder = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    model = CausalLM(**SIZES)
    train = load_text(LICENCE, window=WINDOW).train
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        idx = torch.randint(len(train), (32,), generator=g)
        x, y = train.inputs[idx].long(), train.targets[idx].long()
        loss = get_measure("perplexity").objective(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), folder / "lm.pt")
    (folder / "lmtask.py").write_text(textwrap.dedent(MODULE), encoding="utf-8")
    return folder


@pytest.fixture
def user(lm, monkeypatch):
    """The user's folder importable and current, as for a user typing commands beside it."""
    monkeypatch.syspath_prepend(str(lm))
    monkeypatch.chdir(lm)
    import lmtask

    model = lmtask.build()
    model.load_state_dict(torch.load(lm / "lm.pt"))
    return model.eval(), lmtask


def _sweep_cli(out, measure="perplexity", grid="add-gauss:sigma=0,0.5", trials=2) -> int:
    return main(
        [
            "sweep",
            "--model-factory",
            "lmtask:build",
            "--state-dict",
            "lm.pt",
            "--data",
            "lmtask:data",
            "--measure",
            measure,
            "--distortion",
            grid,
            "--trials",
            str(trials),
            "--out",
            str(out),
            "--quiet",
        ]
    )


def test_the_command_line_sweeps_perplexity_exactly_as_the_python_api(user, tmp_path, capsys):
    model, lmtask = user
    assert _sweep_cli(tmp_path / "cli") == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "cli" / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    rows = rw.sweep(model, lmtask.data(), ["add-gauss:sigma=0,0.5"], measure="perplexity", trials=2)
    assert [float(r["score"]) for r in table] == [r["score"] for r in rows]
    assert len(table) == 3 and {r["metric"] for r in table} == {"perplexity"}  # sigma 0: once
    assert [float(r["loss"]) for r in table] == [r["loss"] for r in rows]
    assert all(r["error"] == "" for r in table)  # perplexity has no classification error
    assert rows.measure["measure"] == "perplexity" and rows.measure["higher_is_better"] is False

    record = json.loads((tmp_path / "cli" / "sweep.json").read_text())
    assert record["measure"]["measure"] == "perplexity"
    assert record["metric"] == "perplexity" and record["higher_is_better"] is False
    base = get_measure("perplexity").value(measure_split(model, lmtask.data(), "perplexity"))
    assert record["baseline_score"] == base
    assert record["target_error"] == get_measure("perplexity").default_target(base)
    assert record["lowest_bits"] == lowest_bits(rows, record["target_error"], False)
    assert f"undistorted perplexity {base:.4g} (" in printed
    assert "error" not in printed.split("undistorted")[1].split("\n")[0]
    assert f"mean perplexity <= {record['target_error']:.4g}" in printed
    assert "%" not in printed.split("undistorted")[1]  # no percentages for a perplexity

    # the rows from Python, saved, say the same as the command's record
    prov = save_sweep(tmp_path / "py", rows, label="lm", baseline=base, description="GPL-3")
    assert prov["measure"] == record["measure"] == get_measure("perplexity").to_dict()
    for key in ("target_error", "lowest_bits", "higher_is_better", "baseline_score"):
        assert prov[key] == record[key], key


def test_the_report_of_a_perplexity_sweep_speaks_perplexity(user, tmp_path, monkeypatch):
    assert _sweep_cli(tmp_path / "sw", trials=1) == 0
    labels = []
    set_ylabel = matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "set_ylabel",
        lambda ax, text, *a, **k: labels.append(text) or set_ylabel(ax, text, *a, **k),
    )
    assert main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / "rep")]) == 0
    assert labels and set(labels) == {"test perplexity"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Mean test perplexity at chosen strengths" in md
    assert "error (%)" not in md and "undistorted perplexity" in md
    record = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert f"{record['baseline_score']:.4g}" in md  # not as a percentage


def test_a_higher_is_better_measure_gets_lowest_bits_its_way(user, tmp_path, capsys):
    grid = "add-gauss:sigma=0,0.02,0.05,3"
    assert _sweep_cli(tmp_path / "acc", "lmtask:token_accuracy", grid, trials=1) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "acc" / "sweep.json").read_text())
    rows = json.loads((tmp_path / "acc" / "results.json").read_text())
    assert record["higher_is_better"] is True and record["metric"] == "token_accuracy"
    assert record["measure"]["measure"] == "lmtask:token_accuracy"
    base = record["baseline_score"]
    assert record["target_error"] == pytest.approx(base - 0.01 * base, rel=1e-12)
    best = record["lowest_bits"]
    assert best == lowest_bits(rows, record["target_error"], True)
    assert best is not None and best["mean_score"] >= record["target_error"]
    assert lowest_bits(rows, record["target_error"], False) is None  # the other way: nothing
    strongest = [r["score"] for r in rows if r["value"] == 3]
    assert strongest[0] < record["target_error"]  # the noise that breaks it is no candidate
    assert f"lowest effective bits with mean token_accuracy >= {record['target_error']:.4g}" in (
        printed
    )


def test_resuming_with_another_measure_is_refused_in_one_line(user, tmp_path, capsys):
    assert _sweep_cli(tmp_path / "r", trials=1) == 0
    capsys.readouterr()
    assert _sweep_cli(tmp_path / "r", measure="loss", trials=1) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "measured by perplexity, not loss" in err and "--measure perplexity" in err
    assert _sweep_cli(tmp_path / "r", trials=1) == 0  # the same measure resumes: nothing to do


def test_a_measure_or_data_a_sweep_folder_names_is_not_imported(user, tmp_path, capsys):
    """A resumed sweep is checked against what sweep.json names, never run from it: with another
    measure it stops before importing the folder's."""
    assert _sweep_cli(tmp_path / "u", "lmtask:token_accuracy", trials=1) == 0
    capsys.readouterr()
    assert _sweep_cli(tmp_path / "u", trials=1) == 2
    assert "give --measure lmtask:token_accuracy" in capsys.readouterr().err


def test_data_goes_alone_and_sweep_refuses_measure_with_evaluate(user, tmp_path, capsys):
    model, lmtask = user
    args = ["sweep", "--model-factory", "lmtask:build", "--state-dict", "lm.pt"]
    assert main(args + ["--data", "lmtask:data", "--dataset", "demo"]) == 2
    assert "--dataset goes with a dataset by name" in capsys.readouterr().err
    with pytest.raises(rw.UserError, match="not both"):
        rw.sweep(model, None, ["sign"], "perplexity", evaluate=lambda m: {"error": 0.0})
    with pytest.raises(rw.UserError, match="leave metric out"):
        rw.sweep(model, lmtask.data(), ["sign"], "perplexity", metric="loss")
