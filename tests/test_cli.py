"""The command line: one clear line and exit status 2 for bad input, nothing written damaged."""

import gzip
import json
import subprocess
import sys

import pytest

from conftest import one_error_line, run_main
from robustweights.cli import main

TINY = ["--model", "mlp", "--width", "0.25", "--dataset", "demo", "--train-subset", "500", "--test-subset", "200",
        "--epochs", "1", "--batch-size", "50", "--quiet"]


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "nope", "--dataset", "cifar10", "--data-dir", "/no/such/folder"], "unknown model 'nope'"),
    (["train", "--projection", "wobble"], "unknown transform 'wobble'"),
    (["train", "--projection", "stoch-mult:gamma=2"], "0 < gamma <= 1"),
    (["train", "--width", "-1"], "width"),
    (["train", "--width", "0.0001", "--dataset", "demo"], "width"),
    (["train", "--dataset", "cifar10", "--data-dir", "/no/such/folder"], "/no/such/folder"),
    (["train", "--epochs", "0"], "epochs"),
    (["train", "--clip", "soft"], "clip"),
    (["train", "--mode", "sideways"], "sideways"),
    (["train", "--resume"], "--out"),
    (["evaluate", "/no/such/checkpoint.pt"], "no checkpoint"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_gives_one_line_and_status_2(capsys, argv, words):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert words in one_error_line(err)


def test_argparse_mistakes_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "many"])
    assert e.value.code == 2
    assert "--epochs" in one_error_line(capsys.readouterr().err)


def test_corrupt_dataset_file_is_named(tmp_path, capsys):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / (name + ".gz")).write_bytes(gzip.compress(b"\x00\x00\x08\x03 garbage"))
    code, out, err = run_main(capsys, "train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path))
    assert code == 2 and "idx" in one_error_line(err)


def test_train_evaluate_and_a_failed_rerun_that_damages_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_main(capsys, "train", *TINY, "--projection", "sign", "--out", str(run))
    assert code == 0 and "test error:" in out
    ckpt = (run / "checkpoint.pt").read_bytes()
    metrics = (run / "metrics.jsonl").read_text()
    code, out, err = run_main(capsys, "train", *TINY, "--out", str(run))
    assert code == 2 and "already holds a run" in one_error_line(err)
    code, out, err = run_main(capsys, "train", "--resume", "--out", str(run), "--projection", "nope")
    assert code == 2
    assert (run / "checkpoint.pt").read_bytes() == ckpt and (run / "metrics.jsonl").read_text() == metrics
    code, out, err = run_main(capsys, "evaluate", str(run), "--weights", "hidden", "--json")
    r = json.loads(out)
    assert code == 0 and r["weights"] == "hidden" and 0 <= r["error"] <= 1
    code, out, err = run_main(capsys, "train", "--resume", "--out", str(run), "--epochs", "2", "--quiet")
    assert code == 0 and json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2


def test_truncated_checkpoint_on_the_command_line(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    code, out, err = run_main(capsys, "evaluate", str(bad))
    assert code == 2 and "not a readable checkpoint" in one_error_line(err)


def test_installed_entry_point_and_module_run_help_and_errors():
    r = subprocess.run([sys.executable, "-m", "robustweights", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--projection" in r.stdout and "fwd+bwd" in r.stdout
    r = subprocess.run([sys.executable, "-m", "robustweights", "train", "--model", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "robustweights", "--debug", "train", "--model", "nope"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_list(capsys):
    code, out, err = run_main(capsys, "list")
    assert code == 0 and "bc-vgg" in out and "stoch-mult" in out and "cifar10" in out
