"""robustweights.fused_training: K runs trained as one fused network write the folders K separate
runs write, with their numbers (within float rounding), and resume."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import robustweights as rw
from conftest import one_error_line, run_main
from robustweights.errors import UserError
from robustweights.fused_training import seed_configs, train_fused
from robustweights.runs import read_checkpoint


def small(tmp_path, name, **kw):
    """A real run, small: the CNN on a slice of the shipped Fashion-MNIST subset, SGD (which
    keeps float rounding at rounding's size: tests/test_fusion.py says why Adam does not)."""
    base = dict(
        model="cnn",
        width=0.25,
        dataset="demo",
        train_subset=250,
        test_subset=100,
        val_size=100,
        epochs=2,
        batch_size=50,
        optimizer="sgd",
        lr=0.01,
        bn_calibrate=2,
        out=str(tmp_path / name),
    )
    base.update(kw)
    return rw.TrainConfig(**base)


ROWS = [
    dict(projection="identity", clip="none", seed=0, augment="flip-crop"),
    dict(projection="stoch-sign", seed=1),
    dict(projection="sign", clip="glorot", seed=2),
]
# How near each row's numbers come to its separate run's. Not nearer than a plain run on one CPU
# thread to the same run on two: that differs by 1e-5 in its first step's loss and 1e-3 after a
# dozen (a maximum's or a ReLU's choice flips with the rounding, and the network amplifies it); a
# sign network drifts further (a hidden weight crosses 0). The step-by-step equality, within
# rounding, is tests/test_fusion.py's.
TOL = [5e-3, 5e-3, 2e-2]
# the cnn's linear biases before a batch norm (and the means that norm keeps of them): their
# gradient is zero but for rounding, so they hold rounding only, whatever the run
NOISE = {"9.bias", "12.bias", "10.running_mean", "13.running_mean"}


def _close(a, b, tol=1e-4):
    """Within ``tol`` of the tensor's scale, or of 0.1 for a tensor of small values (a batch norm's
    shift of 1e-3)."""
    if not a.dtype.is_floating_point:
        assert torch.equal(a, b)
    else:
        assert (a - b).abs().max() <= tol * max(b.abs().max().item(), 0.1)


def test_fused_runs_write_what_separate_runs_write_with_their_numbers(tmp_path):
    fused = [small(tmp_path / "fused", f"r{i}", **r) for i, r in enumerate(ROWS)]
    alone = [small(tmp_path / "alone", f"r{i}", **r) for i, r in enumerate(ROWS)]
    results = train_fused(fused, progress=False)
    for cf, ca, r, tol in zip(fused, alone, results, TOL):
        plain = rw.train(ca, progress=False)
        a, b = Path(cf.out), Path(ca.out)
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert {p.name for p in a.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.pt"}
        ja, jb = (json.loads((d / "config.json").read_text()) for d in (a, b))
        assert {**ja, "out": None} == {**jb, "out": None}
        rows_a, rows_b = (
            [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)
        )
        for ra, rb in zip(rows_a, rows_b, strict=True):
            assert ra.pop("fused_networks") == 3
            assert ra.keys() == rb.keys()
            for key in ("train_loss", "test_loss"):
                assert ra[key] == pytest.approx(rb[key], rel=tol)
            for key in ("train_error", "test_error", "val_error"):
                assert abs(ra[key] - rb[key]) <= 0.021  # (two examples of 100 may flip)
        assert r.best_epoch == plain.best_epoch and r.checkpoint.endswith("best.pt")
        for name in ("checkpoint.pt", "best.pt"):
            sa, sb = read_checkpoint(a / name), read_checkpoint(b / name)
            assert sa["epoch"] == sb["epoch"]
            for key, v in sb["model"].items():
                if key not in NOISE:
                    _close(sa["model"][key], v, 10 * tol)
        # the optimizer state handed back is the plain optimizer's: it loads into one
        oa, ob = (read_checkpoint(d / "checkpoint.pt")["optimizer"] for d in (a, b))
        assert oa["param_groups"] == ob["param_groups"]
        assert {i: {k: v.shape for k, v in s.items()} for i, s in oa["state"].items()} == {
            i: {k: v.shape for k, v in s.items()} for i, s in ob["state"].items()
        }


class Stop(Exception):
    pass


def _stop_after_first_epoch(i, epoch, row):
    if i == 1 and epoch == 1:  # (the last of the two runs: both saved their first epoch)
        raise Stop


def test_a_fused_training_resumes_fused_or_alone(tmp_path):
    """Stopped after epoch 1 and resumed, fused, it ends exactly where it would have; a fused run's
    folder also resumes as a plain run's; runs at different epochs are trained one by one."""
    rows = [dict(r, val_size=None) for r in ROWS[:2]]
    straight = train_fused(
        [small(tmp_path / "s", f"r{i}", **r) for i, r in enumerate(rows)], progress=False
    )
    configs = [small(tmp_path / "k", f"r{i}", **r) for i, r in enumerate(rows)]
    with pytest.raises(Stop):
        train_fused(configs, progress=False, callback=_stop_after_first_epoch)
    resumed = train_fused(configs, resume=True, progress=False)
    timing = ("seconds", "images_per_second")
    for a, b in zip(resumed, straight):
        assert [{k: v for k, v in h.items() if k not in timing} for h in a.history] == [
            {k: v for k, v in h.items() if k not in timing} for h in b.history
        ]
        for key, v in b.model.state_dict().items():
            assert torch.equal(a.model.state_dict()[key], v), key
    # one run an epoch ahead of the other: one by one
    ahead = [small(tmp_path / "m", f"r{i}", epochs=1, **r) for i, r in enumerate(rows)]
    rw.train(ahead[0], progress=False)
    out = train_fused(ahead, resume=[True, False], progress=False)
    assert [len(r.history) for r in out] == [1, 1] and "fused_networks" not in out[1].history[0]
    # a fused run's folder resumes as a plain run
    more = rw.train(dataclasses.replace(configs[0], epochs=3), resume=True, progress=False)
    assert [h["epoch"] for h in more.history] == [1, 2, 3]


def test_seed_configs_name_a_folder_per_seed(tmp_path):
    c = small(tmp_path, "seeds", seed=4, epochs=1, val_size=None, train_subset=None)
    cs = seed_configs(c, 2)
    assert [(x.seed, x.out) for x in cs] == [
        (4, str(tmp_path / "seeds" / "seed-4")),
        (5, str(tmp_path / "seeds" / "seed-5")),
    ]
    with pytest.raises(UserError, match="integer >= 1"):
        seed_configs(c, 0)


def test_what_cannot_be_fused_is_refused_in_one_line(tmp_path):
    a = small(tmp_path, "a")
    with pytest.raises(UserError, match="configuration 1 has lr=0.02, configuration 0 0.01"):
        train_fused([a, small(tmp_path, "b", lr=0.02)], progress=False)
    with pytest.raises(UserError, match="same out= folder"):
        train_fused([a, small(tmp_path, "a", seed=3)], progress=False)
    with pytest.raises(UserError, match="compile=True"):
        train_fused([small(tmp_path, "c", compile=True), small(tmp_path, "d", compile=True)])
    with pytest.raises(UserError, match="configuration 1 has width=0.5"):
        train_fused([a, small(tmp_path, "e", width=0.5)], progress=False)
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_train_fused_seeds_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "seeds"
    flags = ["--model", "mlp", "--width", "0.25", "--dataset", "demo", "--train-subset", "200"]
    flags += ["--test-subset", "100", "--batch-size", "50", "--epochs", "1", "--quiet"]
    code, text, err = run_main(capsys, "train", *flags, "--fused-seeds", "2", "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["seed-0", "seed-1"]
    assert "seed 1: test error" in text and "2 seeds trained as one fused network" in text
    code, text, err = run_main(
        capsys, "train", "--fused-seeds", "2", "--out", str(out), "--resume", "--epochs", "2"
    )
    assert code == 0, err
    for s in (0, 1):
        assert len((out / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()) == 2
        assert read_checkpoint(out / f"seed-{s}")["config"]["seed"] == s
    code, _, err = run_main(capsys, "train", *flags, "--fused-seeds", "0")
    assert code == 2 and "fused seeds must be an integer >= 1" in one_error_line(err)
