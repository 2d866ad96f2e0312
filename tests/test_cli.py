"""The command line: one clear line and exit status 2 for bad input, nothing written damaged."""

import gzip
import json
import subprocess
import sys

import pytest

from conftest import one_error_line, run_main
from robustweights.cli import main

TINY = [
    "--model",
    "mlp",
    "--width",
    "0.25",
    "--dataset",
    "demo",
    "--train-subset",
    "500",
    "--test-subset",
    "200",
    "--epochs",
    "1",
    "--batch-size",
    "50",
    "--quiet",
]


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["train", "--model", "nope", "--dataset", "cifar10", "--data-dir", "/no/such/folder"],
            "unknown model 'nope'",
        ),
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
    ],
)
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
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / (name + ".gz")).write_bytes(gzip.compress(b"\x00\x00\x08\x03 garbage"))
    code, out, err = run_main(
        capsys, "train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path)
    )
    assert code == 2 and "idx" in one_error_line(err)


def test_train_evaluate_and_a_failed_rerun_that_damages_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_main(capsys, "train", *TINY, "--projection", "sign", "--out", str(run))
    assert code == 0 and "test error:" in out
    ckpt = (run / "checkpoint.pt").read_bytes()
    metrics = (run / "metrics.jsonl").read_text()
    code, out, err = run_main(capsys, "train", *TINY, "--out", str(run))
    assert code == 2 and "already holds a run" in one_error_line(err)
    code, out, err = run_main(
        capsys, "train", "--resume", "--out", str(run), "--projection", "nope"
    )
    assert code == 2
    assert (run / "checkpoint.pt").read_bytes() == ckpt and (
        run / "metrics.jsonl"
    ).read_text() == metrics
    code, out, err = run_main(capsys, "evaluate", str(run), "--weights", "hidden", "--json")
    r = json.loads(out)
    assert code == 0 and r["weights"] == "hidden" and 0 <= r["error"] <= 1
    code, out, err = run_main(
        capsys, "train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"
    )
    assert (
        code == 0 and json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2
    )


def test_truncated_checkpoint_on_the_command_line(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    code, out, err = run_main(capsys, "evaluate", str(bad))
    assert code == 2 and "not a readable checkpoint" in one_error_line(err)


def test_installed_entry_point_and_module_run_help_and_errors():
    r = subprocess.run(
        [sys.executable, "-m", "robustweights", "train", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--projection" in r.stdout and "fwd+bwd" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "robustweights", "train", "--model", "nope"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "robustweights", "--debug", "train", "--model", "nope"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_list(capsys):
    code, out, err = run_main(capsys, "list")
    assert code == 0 and "bc-vgg" in out and "stoch-mult" in out and "cifar10" in out


# ---------------------------------------------------------------------------
# A stranger's audit of the command line (ninth session): each failed on the code before it
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", *TINY, "--epochs", "2", "--out", str(run)])
    assert code == 0
    return run


def _hashes(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_train_refuses_a_folder_of_other_files_and_resuming_backwards(tmp_path, capsys, a_run):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "project settings"}')
    code, _, err = run_main(capsys, "train", *TINY, "--out", str(mine))
    assert code == 2 and "holds other files (config.json)" in one_error_line(err)
    assert (mine / "config.json").read_text() == '{"my": "project settings"}'  # before: overwritten
    # a run killed before its first checkpoint left only its own config.json: starting again is fine
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text((a_run / "config.json").read_text())
    assert run_main(capsys, "train", *TINY, "--out", str(started))[0] == 0
    before = _hashes(a_run)
    code, _, err = run_main(capsys, "train", "--resume", "--out", str(a_run), "--epochs", "1")
    assert code == 2 and "has 2 epochs done" in one_error_line(err)  # before: exit 0, config.json
    assert _hashes(a_run) == before  # rewritten with 1 epoch


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--optimizer", "sgd", "--momentum", "-1"], "momentum must be zero or positive"),
        (["--weight-decay", "nan"], "weight_decay must be zero or positive"),
        (["--seed", "99999999999999999999999"], "seed must be an integer in [0, 2**63)"),
        (["--val-size", "0"], "val_size must be positive"),
        (["--bn-calibrate", "-3"], "bn_calibrate must be zero or positive"),
        (["--num-workers", "-2"], "num_workers must be zero or positive"),
        (["--lr-end", "inf"], "lr_end must be positive"),
        (["--preprocess", "normalize:mean=0.5,sdt=0.2"], "unknown key 'sdt'"),
    ],
)
def test_training_values_that_did_nothing_or_crashed_are_one_line(tmp_path, capsys, flags, words):
    code, _, err = run_main(capsys, "train", *TINY, *flags, "--out", str(tmp_path / "r"))
    assert code == 2 and words in one_error_line(err)
    assert not (tmp_path / "r").exists()


def test_a_damaged_checkpoint_is_one_line(tmp_path, capsys, a_run):
    import torch
    from robustweights.runs import FORMAT

    state = torch.load(a_run / "checkpoint.pt", weights_only=True)
    cases = {
        "bare": {"format": FORMAT, "version": 1},
        "clip": {**state, "config": {**state["config"], "clip": "abc"}},
        "loss": {**state, "config": {**state["config"], "loss": "foo"}},
        "model": {**state, "model": [1, 2]},
        "config": {**state, "config": "x"},
    }
    for name, bad in cases.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        code, _, err = run_main(capsys, "evaluate", str(tmp_path / f"{name}.pt"))
        assert code == 2 and "damaged" in one_error_line(err), name


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
        (["--distortion", "add-gauss:sigma=nan:1:0.25"], "needs finite numbers"),
        (["--distortion", "add-gauss:sigma=0:inf:0.5"], "needs finite numbers"),
        (["--distortion", "add-gauss:sigma=0:1:1e-8"], "strengths in one grid (at most 10,000)"),
        (["--target-error", "5"], "target error must be a fraction in [0, 1]"),
        (["--dataset", "mnist"], "--dataset goes with --model-factory"),
        (["--state-dict", "x.pt"], "--state-dict goes with --model-factory"),
    ],
)
def test_sweep_mistakes_that_crashed_or_were_ignored_are_one_line(
    tmp_path, capsys, a_run, argv, words
):
    code, _, err = run_main(
        capsys, "sweep", str(a_run), *argv, "--trials", "1", "--out", str(tmp_path / "s")
    )
    assert code == 2 and words in one_error_line(err)
    assert not (tmp_path / "s").exists()


def test_a_sweep_resumes_however_its_checkpoint_is_spelled_and_keeps_finished_rows(
    tmp_path, capsys, a_run, monkeypatch
):
    out = tmp_path / "s"
    args = ["--distortion", "add-gauss:sigma=0.5", "--trials", "1", "--out", str(out)]
    assert run_main(capsys, "sweep", str(a_run), *args)[0] == 0
    rows = json.loads((out / "results.json").read_text())
    (out / "results.rank0.jsonl").write_text(
        json.dumps({**rows[0], "error": 0.5, "seed": None}) + "\n\xff\n"
    )
    monkeypatch.chdir(a_run.parent)  # the same checkpoint as a relative path to the file
    code, _, err = run_main(capsys, "sweep", "run/checkpoint.pt", *args)
    assert code == 0, err  # before: "checkpoint differ"
    assert json.loads((out / "results.json").read_text()) == rows  # before: the stray rank row won
    (out / "sweep.json").write_text("[]")
    code, _, err = run_main(capsys, "sweep", str(a_run), *args)
    assert code == 2 and "not a sweep's record" in one_error_line(err)


def test_a_raw_pickle_is_refused_in_exactly_one_line(tmp_path, capsys):
    import pickle
    import warnings

    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, _, err = run_main(capsys, "evaluate", str(tmp_path / "raw.pt"))
    assert code == 2 and one_error_line(err)
    assert [str(w.message) for w in seen] == []  # before: torch's two-line warning above our line


def test_help_texts_are_whole(capsys):
    for argv, words in (
        (["--help"], '"quant:bits=1..8" \\\n'),
        (["evaluate", "--help"], "split to test on"),
        (["report", "--help"], "the report's title"),
        (["list", "--help"], "what to list"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert words in capsys.readouterr().out, argv


def test_usage_md_documents_every_option_as_the_parser_has_it():
    """usage.md promised 'every option' and lacked --loss, --train-subset, --split, --title... Its
    "Every option" section is written from the parser by scripts/options_md.py; a new or changed
    option means running `python scripts/options_md.py --write`."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("options_md", root / "scripts" / "options_md.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    usage = (root / "docs" / "usage.md").read_text(encoding="utf-8")
    assert mod.section() in usage, (
        "docs/usage.md is behind the parser: run python scripts/options_md.py --write"
    )
    for flag in (
        "--loss",
        "--train-subset",
        "--split",
        "--title",
        "--claims",
        "--json",
        "--set",
        "--keep",
    ):
        assert f"`{flag}" in usage, flag


def test_resuming_a_strangers_run_never_imports_the_model_it_names(tmp_path, capsys, monkeypatch):
    """`train --resume --out RUN` built its configuration from the checkpoint and imported and
    called the `package.module:function` model it named (a stranger's run folder with a module
    beside it ran its code); `load` already refused that without --model-factory."""
    import torch

    code, _, err = run_main(capsys, "train", *TINY, "--out", str(tmp_path / "run"))
    assert code == 0, err
    (tmp_path / "evil_rw_factory.py").write_text(
        "from pathlib import Path\n"
        "def build(**kw):\n"
        f"    Path({str(tmp_path / 'RAN')!r}).write_text('ran')\n"
        "    raise SystemExit(0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["config"]["model"] = "evil_rw_factory:build"
    torch.save(state, ckpt)
    code, _, err = run_main(
        capsys, "train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "2", "--quiet"
    )
    assert code == 2 and "give --model evil_rw_factory:build to allow that" in one_error_line(err)
    assert not (tmp_path / "RAN").exists()


# The `robustweights` script has no current folder on sys.path (`python -m` has it): deleting
# sys.path[0] ('' under -c) runs main() as the script does.
SCRIPT = "import sys; del sys.path[0]; from robustweights.cli import main; sys.exit(main())"


def test_a_factory_beside_the_user_is_imported_without_pythonpath(tmp_path):
    """`robustweights sweep --model-factory mymod:build`, run in the folder holding mymod.py,
    failed with "cannot import module 'mymod'" unless PYTHONPATH named that folder."""
    import os
    from pathlib import Path

    import torch
    from torch import nn

    import robustweights

    (tmp_path / "rw_cwd_factory.py").write_text(
        "from torch import nn\n"
        "def build(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))\n"
    )
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), tmp_path / "w.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(robustweights.__file__).parent.parent)}
    args = ["--state-dict", "w.pt", "--dataset", "demo", "--test-subset", "100"]
    args += ["--distortion", "add-gauss:sigma=0,0.5", "--trials", "1", "--quiet"]
    for name, expected in (("rw_cwd_factory:build", 0), ("rw_cwd_missing:build", 2)):
        out = name.split(":")[0]
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, "sweep", "--model-factory", name, *args, "--out", out],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == expected, done.stderr
    assert "cannot import module 'rw_cwd_missing'" in done.stderr
    rows = json.loads((tmp_path / "rw_cwd_factory" / "results.json").read_text())
    assert [(r["value"], r["trial"]) for r in rows] == [(0.0, 0), (0.5, 0)]
    assert not (tmp_path / "rw_cwd_missing").exists()


def test_a_library_message_names_the_parameter_and_the_command_line_its_flag(tmp_path, capsys):
    """Part 10, item 5: a notebook user who called ``rw.run_sweep(SweepConfig(out=...))`` read
    ``--out``; the library now says ``out='...'`` and the command line says ``--out ...``."""
    import robustweights as rw

    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "file" / "run")
    said = f"{tmp_path / 'file'} is a file, not a folder"
    calls = (
        (
            lambda: rw.run_sweep(rw.SweepConfig(checkpoint="/no/such.pt", out=out), progress=False),
            ["sweep", "/no/such.pt"],
        ),
        (
            lambda: rw.train(
                rw.TrainConfig(dataset="cifar10", data_dir="/no/such", out=out), progress=False
            ),
            ["train", "--dataset", "cifar10", "--data-dir", "/no/such"],
        ),
    )
    for library, argv in calls:
        with pytest.raises(rw.UserError) as e:
            library()
        assert str(e.value) == f"out={out!r}: {said}"
        code, _, err = run_main(capsys, *argv, "--out", out)
        assert (
            code == 2
            and one_error_line(err) == f"robustweights {argv[0]}: error: --out {out}: {said}"
        )
    with pytest.raises(rw.UserError, match=r"^resume=True needs out=, the run folder"):
        rw.train(rw.TrainConfig(), resume=True, progress=False)


def test_flag_form_maps_only_the_options_of_the_command():
    from robustweights.cli.parser import build_parser, command_options, flag_form

    parser = build_parser()
    sweep, train, reproduce = (command_options(parser, c) for c in ("sweep", "train", "reproduce"))
    cases = [
        (
            sweep,
            "out='runs/x': no permission to write in /root",
            "--out runs/x: no permission to write in /root",
        ),
        (sweep, "give model_factory= again", "give --model-factory again"),
        (
            sweep,
            "dataset=, preprocess= go with a dataset by name; data='m:f' gives",
            "--dataset, --preprocess go with a dataset by name; --data m:f gives",
        ),
        (
            sweep,
            "e.g. distortions=['add-gauss:sigma=0,0.5,1']",
            "e.g. --distortion add-gauss:sigma=0,0.5,1",
        ),
        (sweep, "keep= 'nope': no such weight", "--keep 'nope': no such weight"),
        (sweep, "out='my runs' is a folder", "--out 'my runs' is a folder"),
        (train, "resume=True needs out=, the run folder", "--resume needs --out, the run folder"),
        (train, "batch_size=1 gives 1: raise it", "--batch-size 1 gives 1: raise it"),
        (train, "try a lower learning rate (lr=).", "try a lower learning rate (--lr)."),
        (reproduce, "overrides= epoch: no such key", "--set epoch: no such key"),
        # not an option of the command: as it is
        (train, "give model_factory= again; keep= 'x'", "give model_factory= again; keep= 'x'"),
    ]
    for options, message, said in cases:
        assert flag_form(message, options) == said
    # a transform spec, and a transform's parameter as a message quotes it, are never touched
    # (scale is a flag of reproduce, sigma= and bits= of none)
    for message in (
        "add-gauss:sigma=0.5,scale=max is not valid",
        "grid add-gauss:scale=max,sigma=0:1:0.25 and quant:bits=1..8",
        "add-gauss:scale='wobble' is not valid; allowed: std, max, clip, mean or a number",
        "pattern 'out=x' matches no parameter; in /tmp/out=3",
    ):
        for options in (sweep, train, reproduce):
            assert flag_form(message, options) == message
    assert flag_form("scale='tiny' and add-gauss:scale=max", reproduce) == (
        "--scale tiny and add-gauss:scale=max"
    )


def test_a_transform_message_is_said_as_the_library_says_it(capsys):
    import robustweights as rw

    spec = "add-gauss:sigma=0.5,scale=wobble"
    with pytest.raises(rw.UserError) as e:
        rw.run_sweep(rw.SweepConfig(checkpoint="/no/such.pt", distortions=[spec]), progress=False)
    code, _, err = run_main(capsys, "sweep", "/no/such.pt", "--distortion", spec)
    assert code == 2 and "add-gauss:scale='wobble' is not valid" in str(e.value)
    assert one_error_line(err) == f"robustweights sweep: error: {e.value}"
