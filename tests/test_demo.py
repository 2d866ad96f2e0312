"""`robustweights demo` end to end, at one epoch a network on a part of its data (about 15 s on 2
cores; the whole data took 44 s)."""

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import one_error_line, run_main
from robustweights.paper import demo


def _on_part_of_the_data(monkeypatch, train=2000, test=500):
    """The demo's whole path (train, test, sweep, report, print) on a seeded part of its shipped
    data: the command and its checks are the same, the numbers are not the demo's (those are in
    docs/results/demo, from the whole data)."""
    real = demo._configs

    def configs(out_path, epochs):
        base, nets = real(out_path, epochs)
        part = {"train_subset": train, "test_subset": test}
        nets = {name: dataclasses.replace(c, **part).validate() for name, c in nets.items()}
        return {**base, **part}, nets

    monkeypatch.setattr(demo, "_configs", configs)


def test_demo_tells_the_story_and_writes_its_folder(tmp_path, capsys, monkeypatch):
    _on_part_of_the_data(monkeypatch)
    out = tmp_path / "demo"
    code, text, err = run_main(capsys, "demo", "--out", str(out), "--epochs", "1", "--quiet")
    assert code == 0, err
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["networks"]) == {"float", "sign", "stoch-sign"}
    nets = summary["networks"]
    assert nets["sign"]["weights"] == "projected" and nets["stoch-sign"]["weights"] == "hidden"
    assert (
        nets["float"]["error"] < 0.5 and nets["sign"]["error"] < 0.5
    )  # learnt something in one epoch
    # the sign network's hidden weights are explained, and re-estimated statistics make them work
    assert nets["sign"]["hidden_error_bn_reestimated"] < nets["sign"]["hidden_error"]
    assert "statistics belong to another network" in text
    for scale in ("max", "std"):
        assert all(len(r) == 3 for r in summary["rises"][scale].values())  # three trials each
    assert "Headline (the paper's most likely convention)" in text and "Beside it" in text
    assert (out / "report" / "report.html").is_file() and (
        out / "sweep-stoch-sign" / "results.csv"
    ).is_file()
    # a folder that is not a demo's is refused, one line, untouched
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    code, _, err = run_main(capsys, "demo", "--out", str(other), "--epochs", "1", "--quiet")
    assert (
        code == 2
        and "not a demo folder" in one_error_line(err)
        and (other / "notes.txt").read_text() == "keep"
    )


def _earlier_demo(folder):
    """A folder as a finished demo leaves it (its demo.json in the format before the "kind" key):
    {path: bytes}."""
    (folder / "float").mkdir(parents=True)
    (folder / "float" / "checkpoint.pt").write_bytes(b"weights")
    (folder / "report").mkdir()
    (folder / "report" / "report.html").write_text("<html></html>")
    (folder / "demo.json").write_text(
        json.dumps({"epochs": 1, "networks": {"float": {"error": 0.2}}})
    )
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _no_training(*args, **kwargs):
    raise AssertionError("train() must not be reached")


@pytest.mark.parametrize("epochs", ["-1", "0"])
def test_bad_epochs_are_refused_before_an_earlier_demo_is_touched(
    tmp_path, capsys, monkeypatch, epochs
):
    """D1: a bad value deleted the whole earlier demo, then reported the error; D7: 0 trained the
    default 8."""
    monkeypatch.setattr(demo, "train", _no_training)
    out = tmp_path / "demo"
    before = _earlier_demo(out)
    code, _, err = run_main(capsys, "demo", "--out", str(out), "--epochs", epochs, "--quiet")
    assert code == 2 and f"epochs must be a positive whole number, not {epochs}" in one_error_line(
        err
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_out_that_is_a_file_or_under_one_is_one_line(tmp_path, capsys, monkeypatch):
    """T8: --out naming a file gave a NotADirectoryError traceback."""
    monkeypatch.setattr(demo, "train", _no_training)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "sub"):
        code, _, err = run_main(capsys, "demo", "--out", str(out), "--epochs", "1", "--quiet")
        assert code == 2 and "is a file, not a folder" in one_error_line(err)
    assert afile.read_text() == "mine"


def test_an_interrupted_demo_can_be_rerun_on_its_folder(tmp_path, capsys, monkeypatch):
    """D10: demo.json was deleted first and written only at the end, so an interrupted demo's folder
    was refused ("not a demo folder"). The marker is now written first, marked unfinished; a folder
    not a demo's is still refused."""
    calls = []

    def interrupted(
        config, **kwargs
    ):  # Ctrl-C while the first network trains, after it wrote a file
        calls.append(config.out)
        assert not Path(
            config.out
        ).exists()  # the earlier (or interrupted) demo's outputs were cleared
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "checkpoint.pt").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train", interrupted)
    for out in (
        tmp_path / "new",
        tmp_path / "finished",
    ):  # a new folder, and an earlier finished demo rerun
        if out.name == "finished":
            _earlier_demo(out)
        code, _, err = run_main(capsys, "demo", "--out", str(out), "--epochs", "1", "--quiet")
        assert code == 130 and "interrupted" in err
        marker = json.loads((out / "demo.json").read_text())
        assert marker["kind"] == demo.KIND and marker["finished"] is False
        assert not (out / "report").exists()  # the earlier demo's outputs were replaced
        # the rerun is accepted: it clears the interrupted outputs and trains again (interrupted
        # again here)
        assert (out / "float" / "checkpoint.pt").exists()
        n = len(calls)
        code, _, err = run_main(capsys, "demo", "--out", str(out), "--epochs", "1", "--quiet")
        assert code == 130 and "not a demo folder" not in err and len(calls) == n + 1
    # a folder whose demo.json is not a demo's marker is still refused, and untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    for content in (b'{"my": "settings"}', b"[]", b"\xff\xfe", b""):
        (mine / "demo.json").write_bytes(content)
        code, _, err = run_main(capsys, "demo", "--out", str(mine), "--epochs", "1", "--quiet")
        assert code == 2 and "not a demo folder" in one_error_line(err)
        assert (mine / "demo.json").read_bytes() == content
