"""Sweeps: grids, per-cell seeds, exact restoration, files, resume, refusals, effective bits, the
command."""

import copy
import csv
import datetime
import hashlib
import importlib
import importlib.util
import io
import json
import math
import re
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import robustweights as rw
from robustweights import bits as bits_mod
from conftest import one_error_line, run_main
from robustweights.grid import Cell, cell_seed, cells, parse_grid
from robustweights.results import COLUMNS, curve_of, lowest_bits
from robustweights.sweeps import SweepConfig, run_sweep
from robustweights.training import evaluate_split, load_config_data

sweep_mod = importlib.import_module("robustweights.sweeps")

HEADER = "distortion,param,value,trial,seed,error,loss,effective_bits,n_examples"
GRIDS = ["add-gauss:sigma=0.25,0.5", "sign"]  # 2 strengths x 2 trials + 1 deterministic = 5 cells


# ---------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny real network for the whole module: the MLP on the shipped Fashion-MNIST subset, 1
    epoch."""
    root = tmp_path_factory.mktemp("sweep")
    config = rw.TrainConfig(
        model="mlp",
        width=0.25,
        dataset="demo",
        train_subset=500,
        test_subset=300,
        epochs=1,
        batch_size=50,
        lr=3e-3,
        seed=0,
        out=str(root / "run"),
    )
    result = rw.train(config, progress=False)
    data = load_config_data(config)
    return SimpleNamespace(
        root=root, ckpt=root / "run" / "checkpoint.pt", config=config, result=result, data=data
    )


@pytest.fixture
def net(trained):
    """A fresh copy of the trained network (loaded from its checkpoint) and the module's data."""
    model, _ = rw.load(trained.ckpt)
    return model, trained.data


@pytest.fixture(scope="module")
def done_sweep(trained):
    """An uninterrupted `run_sweep` of GRIDS into its own folder (never modified by the tests)."""
    out = trained.root / "full"
    r = run_sweep(sweep_config(trained, out), progress=False)
    return SimpleNamespace(out=out, result=r, rows=r["rows"])


def sweep_config(trained, out, **kw):
    base = dict(
        checkpoint=str(trained.ckpt),
        distortions=list(GRIDS),
        trials=2,
        test_subset=300,
        out=str(out),
    )
    base.update(kw)
    return SweepConfig(**base)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def snapshot(folder):
    """Every file under ``folder`` with its bytes (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def refuses(fn, match):
    with pytest.raises(rw.UserError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)  # one line
    return str(e.value)


# ---------------------------------------------------------------------------
# 1. grids and cells
# ---------------------------------------------------------------------------


def test_list_grid_keeps_its_order():
    grid = parse_grid("add-gauss:sigma=0,0.25,0.5")
    assert [t.spec for t in grid] == [
        "add-gauss:sigma=0.0",
        "add-gauss:sigma=0.25",
        "add-gauss:sigma=0.5",
    ]
    assert [t.params["sigma"] for t in parse_grid("add-gauss:sigma=0.5,0,0.25")] == [0.5, 0.0, 0.25]


def test_ranges_include_the_stop_without_float_drift():
    assert [t.params["beta"] for t in parse_grid("power:beta=0:1:0.25")] == [0, 0.25, 0.5, 0.75, 1]
    # 0.1 steps are where naive accumulation drifts (0.30000000000000004) or loses the stop (1/0.1)
    tenth = [t.params["beta"] for t in parse_grid("power:beta=0:1:0.1")]
    assert tenth == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert [t.spec for t in parse_grid("add-gauss:sigma=0.1:0.3:0.1")] == [
        "add-gauss:sigma=0.1",
        "add-gauss:sigma=0.2",
        "add-gauss:sigma=0.3",
    ]
    assert len(parse_grid("add-gauss:sigma=0:1.5:0.25")) == 7
    assert [t.params["bits"] for t in parse_grid("quant:bits=1..4")] == [1, 2, 3, 4]
    assert [t.params["sigma"] for t in parse_grid("add-gauss:sigma=0.5")] == [
        0.5
    ]  # a single strength


def test_fixed_parameters_stay_on_every_cell_of_a_grid():
    grid = parse_grid("stoch-mult:gamma=0.5,0.8,flip=true")
    assert [(t.params["gamma"], t.params["flip"]) for t in grid] == [(0.5, True), (0.8, True)]
    cs = cells(["stoch-mult:gamma=0.5,0.8,flip=true"], trials=1)
    assert [(c.param, c.value) for c in cs] == [("gamma", 0.5), ("gamma", 0.8)]
    assert all("flip=true" in c.t.spec for c in cs)


def test_random_distortions_get_trials_deterministic_ones_one_cell():
    cs = cells(["add-gauss:sigma=0.5,1", "sign", "quant:bits=1..2", "power:beta=0:1:0.5"], trials=3)
    assert [(c.t.name, c.value, c.trial) for c in cs] == [
        ("add-gauss", 0.5, 0),
        ("add-gauss", 0.5, 1),
        ("add-gauss", 0.5, 2),
        ("add-gauss", 1.0, 0),
        ("add-gauss", 1.0, 1),
        ("add-gauss", 1.0, 2),
        ("sign", 0.0, 0),
        ("quant", 1.0, 0),
        ("quant", 2.0, 0),
        ("power", 0.0, 0),
        ("power", 0.5, 0),
        ("power", 1.0, 0),
    ]
    assert (
        [c.param for c in cs[:6]] == ["sigma"] * 6 and cs[6].param == "" and cs[7].param == "bits"
    )
    assert (
        len(cells(["stoch-sign"], trials=4)) == 4
        and len(cells(["ternary:delta=0.3"], trials=4)) == 1
    )


def test_a_random_distortion_that_cannot_vary_is_computed_once_per_strength():
    cs = cells(
        ["add-gauss:sigma=0,0.5", "mult-gauss:sigma=0", "bitflip:p=0,0.1,1", "stoch-mult:gamma=1"],
        trials=3,
    )
    assert [(c.t.spec, c.trial) for c in cs] == [("add-gauss:sigma=0.0", 0)] + [
        ("add-gauss:sigma=0.5", i) for i in range(3)
    ] + [("mult-gauss:sigma=0.0", 0), ("bitflip:p=0.0", 0)] + [
        ("bitflip:p=0.1", i) for i in range(3)
    ] + [("bitflip:p=1.0", 0), ("stoch-mult:gamma=1.0,flip=false,scale=max", 0)]
    assert rw.transform("stoch-mult:gamma=1,flip=true").random


@pytest.mark.parametrize(
    "grids, trials, words",
    [
        ([], 2, "no distortion given"),
        (["add-gauss:sigma=-1"], 2, "out of range"),
        (["add-gauss:sigma=1:0:0.5"], 2, "stop >= start"),
        (["add-gauss:sigma=0:1:0"], 2, "step > 0"),
        (["stoch-mult:gamma=0.5,0.8,flip=true,false"], 2, "one parameter per grid"),
        (["wobble:x=1,2"], 2, "unknown transform 'wobble'"),
        (["add-gauss:sigma=0.5"], 0, "trials must be a positive integer"),
        (["add-gauss:sigma=0.5"], -1, "trials must be a positive integer"),
        (["add-gauss:sigma=0,0.5", "add-gauss:sigma=0.5"], 2, "appears twice"),
        (["power:beta=0.5,0.50"], 1, "appears twice"),
        (["add-gauss:sigma="], 2, "sigma=''"),
        (["quant:bits=1..x"], 1, "needs integers"),
    ],
)
def test_grid_mistakes_are_user_errors(grids, trials, words):
    refuses(lambda: cells(grids, trials), re.escape(words))


# ---------------------------------------------------------------------------
# 2. per-cell seeds
# ---------------------------------------------------------------------------


def test_any_cell_rerun_alone_gives_the_same_number(net):
    model, data = net
    rows = rw.sweep(model, data, ["add-gauss:sigma=0.5,1", "sign"], trials=3, seed=7)
    assert len(rows) == 7
    by_key = {(r["spec"], r["trial"]): r for r in rows}
    cell = by_key[("add-gauss:sigma=1.0", 2)]
    c = Cell(rw.transform("add-gauss:sigma=1"), "sigma", 1.0, 2)
    assert cell["seed"] == cell_seed(7, c)

    alone = rw.sweep(model, data, ["add-gauss:sigma=1"], trials=3, seed=7)[2]
    assert alone == cell  # every field, floats exactly
    # the grids in another order: each cell still gets the same draw
    reordered = rw.sweep(model, data, ["sign", "add-gauss:sigma=1,0.5"], trials=3, seed=7)
    assert {(r["spec"], r["trial"]): r for r in reordered} == by_key
    # and by hand: the cell is a distortion drawn from its seed, then a plain evaluation
    with rw.distort(model, "add-gauss:sigma=1", torch.Generator().manual_seed(cell["seed"])):
        r = evaluate_split(model, data.test, batch_size=1000)
    assert (r["error"], r["loss"]) == (cell["error"], cell["loss"])

    # trials are independent draws
    trials = [by_key[("add-gauss:sigma=1.0", t)]["loss"] for t in range(3)]
    assert len(set(trials)) == 3


def test_another_seed_redraws_random_cells_only(net):
    model, data = net
    a = rw.sweep(model, data, ["add-gauss:sigma=1", "sign"], trials=2, seed=7)
    b = rw.sweep(model, data, ["add-gauss:sigma=1", "sign"], trials=2, seed=8)
    for ra, rb in zip(a[:2], b[:2]):
        assert ra["seed"] != rb["seed"] and ra["loss"] != rb["loss"]
    assert a[2]["spec"] == b[2]["spec"] == "sign:scale=max"
    assert (a[2]["error"], a[2]["loss"]) == (b[2]["error"], b[2]["loss"])


def test_sweep_rows_have_the_columns_of_the_schema(net):
    model, data = net
    rows = rw.sweep(model, data, ["sign"], trials=1)
    assert len(rows) == 1 and list(rows[0]) == COLUMNS
    assert rw.sweep(model, data, ["sign"], trials=1) == rows


# ---------------------------------------------------------------------------
# 3. the network comes back bit for bit, also after an interrupt mid-cell
# ---------------------------------------------------------------------------


def test_full_sweep_with_bn_reestimation_restores_everything(net):
    model, data = net
    before = state(model)
    versions = [p._version for p in model.parameters()]
    momenta = [m.momentum for m in bns(model)]
    grids = ["add-gauss:sigma=0.5", "quant:bits=2"]
    with_bn = rw.sweep(model, data, grids, trials=2, seed=0, bn_batches=2, batch_size=100)
    assert same_state(state(model), before)  # weights and batch-norm buffers
    assert [
        p._version for p in model.parameters()
    ] == versions  # the hidden weights were never written
    assert [m.momentum for m in bns(model)] == momenta
    assert all(s.pinned is None for s in rw.sites(model)) and not model.training
    # the re-estimation really changed the statistics
    # used for the cells (so restoring them mattered)
    without = rw.sweep(model, data, grids, trials=2, seed=0, batch_size=100)
    assert all(a["loss"] != b["loss"] for a, b in zip(with_bn, without))
    again = rw.sweep(model, data, grids, trials=2, seed=0, bn_batches=2, batch_size=100)
    assert again == with_bn


@pytest.mark.parametrize("stop_at, in_bn_reestimation", [(3, True), (5, False)])
def test_interrupt_in_the_middle_of_a_cell_restores_everything(net, stop_at, in_bn_reestimation):
    model, data = net
    baseline = evaluate_split(model, data.test, batch_size=100)
    before = state(model)
    momenta = [m.momentum for m in bns(model)]
    layer = rw.sites(model)[0].module
    bn = bns(model)[0]
    seen = {"calls": 0}

    def hook(module, inputs, output):
        seen["calls"] += 1
        if seen["calls"] == stop_at:
            seen.update(
                bn_training=bn.training,
                momentum=bn.momentum,
                pinned=module._rw["weight"].pinned is not None,
                stats_changed=not torch.equal(bn.running_mean, before["2.running_mean"]),
            )
            raise KeyboardInterrupt

    # calls 1 to P are the sweep's check that every distorted weight is read and reaches the output
    # (one pass, then one with each weight read as NaN); then, batch_size 100: each cell runs 2
    # re-estimation batches (calls P + 1, P + 2), then 3 test batches (P + 3 to P + 5)
    stop_at += len(rw.sites(model))
    handle = layer.register_forward_hook(hook)
    with pytest.raises(KeyboardInterrupt):
        rw.sweep(model, data, ["add-gauss:sigma=0.5"], trials=2, bn_batches=2, batch_size=100)
    handle.remove()
    # the interrupt hit where intended: a distorted cell with re-estimated statistics
    # (momentum None while re-estimating: a cumulative average; put back before the cell is tested)
    assert seen["bn_training"] is in_bn_reestimation
    assert seen["momentum"] == (None if in_bn_reestimation else momenta[0])
    assert seen["pinned"] and seen["stats_changed"]

    assert same_state(state(model), before)
    assert all(s.pinned is None for s in rw.sites(model))
    assert [m.momentum for m in bns(model)] == momenta
    assert not model.training and not any(m.training for m in model.modules())
    assert evaluate_split(model, data.test, batch_size=100) == baseline


def test_kept_layers_and_global_rng_stay_out_of_bn_reestimation(net):
    """Re-estimating batch norm must not run the training projection of a layer left undistorted."""
    model, data = net
    rw.attach(model, "stoch-sign")  # a random training projection: tested with the hidden weights
    kw = dict(trials=1, seed=3, bn_batches=2, batch_size=100, keep=("first",))
    rng = torch.get_rng_state()
    a = rw.sweep(model, data, ["add-gauss:sigma=0.5"], **kw)
    assert torch.equal(torch.get_rng_state(), rng)  # no draws from the global generator
    torch.manual_seed(123)
    b = rw.sweep(model, data, ["add-gauss:sigma=0.5"], **kw)
    assert a == b


# ---------------------------------------------------------------------------
# 4. no copy of the model
# ---------------------------------------------------------------------------


def test_sweep_never_copies_the_model(net, monkeypatch, trained, tmp_path):
    model, data = net
    ptrs = [p.data_ptr() for p in model.parameters()]

    def no_deepcopy(*a, **k):
        raise AssertionError("copy.deepcopy called during a sweep")

    monkeypatch.setattr(copy, "deepcopy", no_deepcopy)
    rows = rw.sweep(
        model, data, ["add-gauss:sigma=0.5", "sign"], trials=2, bn_batches=2, batch_size=100
    )
    assert len(rows) == 3 and [p.data_ptr() for p in model.parameters()] == ptrs

    # run_sweep too (dataclasses.asdict deep-copies plain
    # config values: only models and tensors are refused)
    monkeypatch.undo()
    original = copy.deepcopy

    def no_model_copies(obj, *a, **k):
        if isinstance(obj, (nn.Module, torch.Tensor)) or (
            isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())
        ):
            raise AssertionError(f"copy.deepcopy of a {type(obj).__name__} during a sweep")
        return original(obj, *a, **k)

    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    r = run_sweep(
        sweep_config(trained, tmp_path / "out", distortions=["sign"], bn_reestimate=2),
        progress=False,
    )
    assert len(r["rows"]) == 1


# ---------------------------------------------------------------------------
# 5. sweeps with files: provenance, interrupt and resume
# ---------------------------------------------------------------------------


def test_run_sweep_writes_results_and_provenance(trained, done_sweep):
    out = done_sweep.out
    text = (out / "results.csv").read_text()
    assert text.startswith(HEADER)
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 5 and [r["spec"] for r in table] == ["add-gauss:sigma=0.25"] * 2 + [
        "add-gauss:sigma=0.5"
    ] * 2 + ["sign:scale=max"]
    assert (
        float(table[0]["nominal_bits"]) == 0.5 * math.log2(17)
        and float(table[4]["effective_bits"]) == 1.0
    )
    # measured from the weights' signal-to-noise ratio:
    # near the nominal figure (weights of mean near 0)
    assert float(table[0]["effective_bits"]) == pytest.approx(0.5 * math.log2(17), rel=1e-3)
    assert table[0]["scale"] == "std" and table[4]["scale"] == "max"
    rows = json.loads((out / "results.json").read_text())
    assert rows == done_sweep.rows and [r["n_examples"] for r in rows] == [300] * 5
    assert [float(r["error"]) for r in table] == [r["error"] for r in rows]

    prov = json.loads((out / "sweep.json").read_text())
    assert prov["checkpoint_sha256"] == hashlib.sha256(trained.ckpt.read_bytes()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", prov["git_commit"])
    assert prov["torch"] == torch.__version__
    assert prov["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    start, end = (datetime.datetime.fromisoformat(prov[k]) for k in ("start", "end"))
    assert start <= end
    assert prov["baseline_error"] == trained.result.test_error
    assert (
        prov["label"] == "identity (float)" and prov["baseline_weights"] == "hidden"
    )  # identity: W itself
    assert (
        prov["data_description"] == trained.data.description
        and "subset" in prov["data_description"]
    )
    assert prov["cells"] == 5 and prov["trials"] == 2 and prov["config"]["distortions"] == GRIDS
    assert prov["target_error"] == pytest.approx(prov["baseline_error"] + 0.01)


def test_killed_sweep_resumes_with_only_the_missing_cells(
    trained, done_sweep, tmp_path, monkeypatch
):
    real = sweep_mod.measure_split
    calls = {"n": 0, "stop": None}

    def counting(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sweep_mod, "measure_split", counting)
    config = sweep_config(trained, tmp_path / "cut")
    calls["stop"] = 1 + 3 + 1  # the baseline, 3 cells, then killed in the 4th
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, progress=False)
    partial = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert partial == done_sweep.rows[:3]
    assert json.loads((tmp_path / "cut" / "sweep.json").read_text())["end"] is None

    calls.update(n=0, stop=None)
    r = run_sweep(config, progress=False)
    assert calls["n"] == 1 + 2  # the baseline and the 2 missing cells
    assert r["rows"] == done_sweep.rows
    for name in ("results.json", "results.csv"):
        assert (tmp_path / "cut" / name).read_text() == (done_sweep.out / name).read_text()

    # a finished sweep run again (with settings that change no number) computes nothing
    calls["n"] = 0
    again = run_sweep(
        sweep_config(trained, tmp_path / "cut", batch_size=64, device="cpu", target_error=0.5),
        progress=False,
    )
    assert calls["n"] == 1 and again["rows"] == done_sweep.rows and again["target_error"] == 0.5


# ---------------------------------------------------------------------------
# 6. refusals leave every file as it was
# ---------------------------------------------------------------------------


@pytest.fixture
def used_out(done_sweep, tmp_path):
    """A copy of a finished sweep folder, and its bytes."""
    out = tmp_path / "used"
    shutil.copytree(done_sweep.out, out)
    return out, snapshot(out)


def test_same_folder_for_another_checkpoint_or_config_is_refused(trained, used_out, tmp_path):
    out, files = used_out
    other = torch.load(trained.ckpt, weights_only=True)
    key = next(k for k in other["model"] if k.endswith("weight"))
    other["model"][key] = other["model"][key] + 0.01
    torch.save(other, tmp_path / "other.pt")
    refuses(
        lambda: run_sweep(
            sweep_config(trained, out, checkpoint=str(tmp_path / "other.pt")), progress=False
        ),
        "another checkpoint",
    )
    refuses(
        lambda: run_sweep(sweep_config(trained, out, trials=3), progress=False),
        "different sweep.*trials",
    )
    refuses(
        lambda: run_sweep(sweep_config(trained, out, distortions=["sign"]), progress=False),
        "different sweep.*distortions",
    )
    assert snapshot(out) == files


def test_folder_with_unrelated_files_is_refused(trained, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    refuses(
        lambda: run_sweep(sweep_config(trained, out), progress=False), "not a sweep result folder"
    )
    assert snapshot(out) == {"notes.txt": b"my notes\n"}


def test_bad_checkpoint_files_are_refused(trained, used_out, tmp_path):
    out, files = used_out
    cut = tmp_path / "cut.pt"
    cut.write_bytes(trained.ckpt.read_bytes()[:3000])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    other = tmp_path / "other.pt"
    torch.save({"hello": torch.zeros(2)}, other)
    for path, words in [
        (cut, "not a readable checkpoint"),
        (junk, "not a readable checkpoint"),
        (other, "not a robustweights checkpoint"),
        (tmp_path / "missing.pt", "no checkpoint"),
    ]:
        before = path.read_bytes() if path.exists() else None
        refuses(
            lambda: run_sweep(sweep_config(trained, out, checkpoint=str(path)), progress=False),
            words,
        )
        refuses(
            lambda: run_sweep(
                sweep_config(trained, tmp_path / "new", checkpoint=str(path)), progress=False
            ),
            words,
        )
        assert (path.read_bytes() if path.exists() else None) == before
    assert snapshot(out) == files and not (tmp_path / "new").exists()


def test_a_mistake_after_loading_leaves_no_file_behind(trained, tmp_path):
    """A bad --keep is found before anything is written, so the corrected command can use the same
    folder."""
    out = tmp_path / "out"
    refuses(
        lambda: run_sweep(sweep_config(trained, out, keep=["nope"]), progress=False),
        "no such weight",
    )
    assert not out.exists()
    r = run_sweep(sweep_config(trained, out, keep=["first"], distortions=["sign"]), progress=False)
    assert len(r["rows"]) == 1


NETS = """
from torch import nn

def net():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
"""


@pytest.fixture
def own_model(tmp_path, monkeypatch):
    (tmp_path / "rw_sweep_test_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rw_sweep_test_nets", raising=False)
    torch.manual_seed(0)
    good = tmp_path / "good.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), good)
    bad = tmp_path / "bad.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 7)).state_dict(), bad)
    return good, bad


def factory_config(tmp_path, out, **kw):
    base = dict(
        model_factory="rw_sweep_test_nets:net",
        state_dict=str(tmp_path / "good.pt"),
        dataset="demo",
        test_subset=300,
        distortions=["add-gauss:sigma=0,0.5", "sign"],
        trials=2,
        out=str(out),
    )
    base.update(kw)
    return SweepConfig(**base)


def test_own_model_mistakes_are_refused(own_model, tmp_path):
    out = tmp_path / "out"
    refuses(
        lambda: run_sweep(
            factory_config(tmp_path, out, model_factory="rw_no_such_module:net"), progress=False
        ),
        "cannot import module 'rw_no_such_module'",
    )
    refuses(
        lambda: run_sweep(
            factory_config(tmp_path, out, state_dict=str(tmp_path / "bad.pt")), progress=False
        ),
        "does not fit the model",
    )
    refuses(
        lambda: run_sweep(
            factory_config(tmp_path, out, state_dict=str(tmp_path / "nope.pt")), progress=False
        ),
        "no state_dict file",
    )
    (tmp_path / "junk.pt").write_bytes(b"junk")
    refuses(
        lambda: run_sweep(
            factory_config(tmp_path, out, state_dict=str(tmp_path / "junk.pt")), progress=False
        ),
        "not a readable state_dict",
    )
    refuses(
        lambda: run_sweep(factory_config(tmp_path, out, dataset=None), progress=False), "dataset="
    )
    assert not out.exists()


def test_own_model_sweeps(own_model, tmp_path):
    good, _ = own_model
    r = run_sweep(factory_config(tmp_path, tmp_path / "out"), progress=False)
    assert r["label"] == "rw_sweep_test_nets:net (own model)"
    assert r["checkpoint_sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert len(r["rows"]) == 4 and all(0 <= row["error"] <= 1 for row in r["rows"])
    assert r["rows"][0]["error"] == r["baseline_error"]  # sigma = 0 is the undistorted network
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["label"].endswith(
        "(own model)"
    )


# ---------------------------------------------------------------------------
# 7. effective bits
# ---------------------------------------------------------------------------


def test_capacity_bits_per_distortion():
    cap = bits_mod.capacity_bits
    assert cap("add-gauss:sigma=0.8") == pytest.approx(0.5 * math.log2(1 + 1 / 0.64))
    assert round(cap("add-gauss:sigma=0.8"), 2) == 0.68  # the paper's figure
    assert cap("mult-gauss:sigma=0.8") == cap("add-gauss:sigma=0.8")
    assert cap("add-gauss:sigma=1") == 0.5
    assert cap("add-gauss:sigma=0") is None
    assert cap("quant:bits=3") == 3 and cap("quant:bits=1") == 1
    assert cap("ternary:delta=0.5") == pytest.approx(math.log2(3))
    assert cap("sign") == cap("stoch-sign") == cap("power:beta=0") == 1
    assert (
        cap("power:beta=0.5") is None and cap("identity") is None and cap("prune:frac=0.5") is None
    )


def test_entropy_bits():
    assert bits_mod.entropy_bits(torch.tensor([1.0, -1.0, 1.0, -1.0])) == pytest.approx(1.0)
    assert bits_mod.entropy_bits(torch.tensor([0.5, 0.5, 0.5])) == 0
    assert bits_mod.entropy_bits(torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(2.0)
    assert bits_mod.weighted_entropy([torch.tensor([1.0, -1.0]), torch.ones(6)]) == pytest.approx(
        0.25
    )


def test_entropy_of_discrete_cells_in_a_sweep(net):
    model, data = net
    rows = rw.sweep(
        model,
        data,
        ["quant:bits=1..3", "sign", "power:beta=0,0.5", "add-gauss:sigma=0.5"],
        trials=1,
    )
    quant = {int(r["value"]): r for r in rows if r["distortion"] == "quant"}
    for k, r in quant.items():
        assert 0 < r["entropy_bits"] <= k and r["effective_bits"] == k
    assert quant[1]["entropy_bits"] < quant[2]["entropy_bits"] < quant[3]["entropy_bits"]
    sign = next(r for r in rows if r["distortion"] == "sign")
    assert 0 < sign["entropy_bits"] <= 1 and sign["entropy_bits"] == quant[1]["entropy_bits"]
    power = {r["value"]: r for r in rows if r["distortion"] == "power"}
    assert power[0.0]["entropy_bits"] == sign["entropy_bits"] and power[0.0]["effective_bits"] == 1
    assert power[0.5]["entropy_bits"] is None and power[0.5]["effective_bits"] is None
    assert next(r for r in rows if r["distortion"] == "add-gauss")["entropy_bits"] is None


def test_lowest_bits_uses_the_mean_error_over_trials():
    def row(spec, bits, error):
        return {"spec": spec, "effective_bits": bits, "error": error}

    rows = [
        row("a", 0.5, 0.25),
        row("a", 0.5, 0.5),  # mean 0.375 (one trial alone meets 0.25)
        row("b", 1.0, 0.125),
        row("b", 1.0, 0.25),  # mean 0.1875
        row("c", None, 0.0),  # no figure: never chosen
        row("d", 2.0, 0.0625),
    ]
    assert lowest_bits(rows, 0.25) == {
        "spec": "b",
        "effective_bits": 1.0,
        "mean_error": 0.1875,
        "mean_score": 0.1875,
        "metric": "error",
        "trials": 2,
    }
    assert lowest_bits(rows, 0.375)["spec"] == "a"  # at the target counts
    assert lowest_bits(rows, 0.1)["spec"] == "d"
    assert lowest_bits(rows, 0.01) is None
    assert lowest_bits([], 1.0) is None
    # a metric where higher is better (an accuracy): the target is a floor
    acc = [{**r, "metric": "accuracy", "score": 1 - r["error"]} for r in rows]
    assert lowest_bits(acc, 0.75, higher_is_better=True)["spec"] == "b"
    assert lowest_bits(acc, 0.99, higher_is_better=True) is None


def test_lowest_bits_needs_the_error_to_stay_within_the_target_along_its_curve():
    """method.md section 4: 'the lowest b_eff at which test error *stays* at or below a target'. A
    noisy curve that leaves the target at a weaker strength and comes back at a stronger one does
    not count below where it left; another curve (another scale) is its own."""

    def row(sigma, bits, error, scale="std"):
        spec = f"add-gauss:sigma={sigma}" + ("" if scale == "std" else f",scale={scale}")
        return {
            "spec": spec,
            "distortion": "add-gauss",
            "param": "sigma",
            "value": sigma,
            "effective_bits": bits,
            "error": error,
        }

    curve = [row(0.4, 1.4, 0.10), row(0.6, 1.0, 0.12), row(0.8, 0.68, 0.109)]  # 0.8 back under 11%
    assert lowest_bits(curve, 0.11)["spec"] == "add-gauss:sigma=0.4"  # before: sigma=0.8, 0.68 bits
    assert lowest_bits(curve, 0.125)["spec"] == "add-gauss:sigma=0.8"
    other = [row(0.2, 0.9, 0.105, "max"), row(0.4, 0.5, 0.2, "max")]
    assert lowest_bits(curve + other, 0.11)["spec"] == "add-gauss:sigma=0.2,scale=max"
    # a bits figure that is not a number never wins (before:
    # a NaN listed first was kept, as nothing is below it)
    assert lowest_bits([row(1.0, float("nan"), 0.0)] + curve, 0.11)["spec"] == "add-gauss:sigma=0.4"
    assert curve_of(row(0.8, 0.68, 0.1, "max")) == "add-gauss:scale=max"
    # strengths without a bits figure still end the curve (before: left out first, so a power curve
    # that failed at beta 0.5 counted again at beta 0, "1 bit" at 40% error against a baseline of
    # 30%)
    power = [
        {
            "spec": f"power:beta={b}",
            "distortion": "power",
            "param": "beta",
            "value": b,
            "effective_bits": bits,
            "error": e,
        }
        for b, bits, e in ((1.0, None, 0.30), (0.5, None, 0.90), (0.0, 1.0, 0.30))
    ]
    assert lowest_bits(power, 0.31) is None
    assert lowest_bits(power, 0.95)["spec"] == "power:beta=0.0"
    quant = [
        {
            "spec": f"quant:bits={k}",
            "distortion": "quant",
            "param": "bits",
            "value": k,
            "effective_bits": k,
            "error": e,
        }
        for k, e in ((8, 0.1), (2, 0.3), (1, 0.1))
    ]  # fewer bits is stronger
    assert lowest_bits(quant, 0.2)["spec"] == "quant:bits=8"


# ---------------------------------------------------------------------------
# 8. the command
# ---------------------------------------------------------------------------


def test_sweep_command(trained, tmp_path, capsys):
    d = tmp_path / "cli"
    code, out, err = run_main(
        capsys,
        "sweep",
        str(trained.ckpt),
        "--distortion",
        "add-gauss:sigma=0,1",
        "--trials",
        "2",
        "--test-subset",
        "300",
        "--out",
        str(d),
        "--quiet",
    )
    assert code == 0, err
    assert "lowest effective bits" in out or "no distortion with an effective-bits figure" in out
    assert "add-gauss:sigma=1.0" in out and "(float)" in out
    assert len(json.loads((d / "results.json").read_text())) == 3  # sigma=0 cannot vary: one cell


def test_a_distortion_without_effective_bits_gets_its_measured_snr_bits_line(
    trained, tmp_path, capsys
):
    """A device model has no effective-bits figure, but the weights as read have a signal-to-noise
    ratio: the lowest-bits line gives those bits, as results.lowest_bits finds them."""
    d = tmp_path / "snr"
    code, out, err = run_main(
        capsys, "sweep", str(trained.ckpt), "--distortion", "pcm:t=1,3600,prog=0.2,read=0.2",
        "--trials", "2", "--test-subset", "300", "--out", str(d), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((d / "sweep.json").read_text())
    rows = json.loads((d / "results.json").read_text())
    assert all(r["effective_bits"] is None and r["snr_bits"] > 1 for r in rows)
    best = lowest_bits(rows, record["target_error"], bits="snr_bits")
    assert best is not None and best["spec"].startswith("pcm:t=")
    assert lowest_bits(rows, record["target_error"]) is None  # no effective-bits figure
    assert (
        "lowest measured bits (signal-to-noise of the weights as read) with it: "
        f"{best['effective_bits']:.2f} bits per weight ({best['spec']}," in out
    )


@pytest.mark.parametrize(
    "grid, words", [("add-gauss:sigma=-1", "sigma >= 0"), ("add-gauss:sigma=", "sigma=''")]
)
def test_sweep_command_mistakes_print_one_line(trained, tmp_path, capsys, grid, words):
    d2 = tmp_path / "bad"
    code, out, err = run_main(
        capsys, "sweep", str(trained.ckpt), "--distortion", grid, "--out", str(d2)
    )
    assert code == 2
    assert words in one_error_line(err)
    assert not d2.exists()


def test_bn_calibration_is_exact_repeatable_and_only_touches_statistics(net):
    """calibrate_bn: the same batches give bit-identical statistics; weights and momenta stay as
    they were."""
    model, data = net
    weights = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if "running" not in k and "num_batches" not in k
    }
    momenta = [m.momentum for m in bns(model)]
    sweep_mod.calibrate_bn(model, data.train, 3, 100, "cpu", seed=5)
    first = [(m.running_mean.clone(), m.running_var.clone()) for m in bns(model)]
    assert int(bns(model)[0].num_batches_tracked) == 3
    sweep_mod.calibrate_bn(model, data.train, 3, 100, "cpu", seed=5)
    assert all(
        torch.equal(a, m.running_mean) and torch.equal(b, m.running_var)
        for (a, b), m in zip(first, bns(model))
    )
    # a cumulative average over the 3 batches: the first
    # layer's mean is the mean of its inputs' pre-activations
    g = torch.Generator().manual_seed(5)
    xs = torch.cat(
        [x for _, (x, _) in zip(range(3), data.train.batches(100, shuffle=True, generator=g))]
    )
    lin = rw.sites(model)[0].module
    with torch.no_grad():
        pre = lin(xs.flatten(1))
    assert torch.allclose(bns(model)[0].running_mean, pre.mean(0), atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert [m.momentum for m in bns(model)] == momenta and not model.training


def test_run_sweep_calibrates_once_before_baseline_and_cells(trained, tmp_path):
    r = run_sweep(sweep_config(trained, tmp_path / "cal", bn_calibrate=3), progress=False)
    model, _ = rw.load(trained.ckpt)
    sweep_mod.calibrate_bn(
        model, trained.data.train, 3, 1000, "cpu", seed=sweep_mod.derive_seed(0, "calibrate")
    )
    assert r["baseline_error"] == evaluate_split(model, trained.data.test)["error"]
    assert r["bn_calibrate"] == 3
    plain = run_sweep(sweep_config(trained, tmp_path / "plain"), progress=False)
    assert [a["loss"] for a in r["rows"]] != [b["loss"] for b in plain["rows"]]


def test_the_demo_calls_a_difference_a_finding_only_beyond_the_spread_over_trials():
    from robustweights.paper.demo import compare

    assert compare({"float": [0.70, 0.75], "sign": [0.05, 0.10]}) == [
        "sign degrades less than float (by 65.0 points; every trial)"
    ]
    assert (
        compare({"float": [0.60, 0.75], "sign": [0.55, 0.65]}) == []
    )  # overlapping trials: no finding


def test_sweep_returns_rows_and_to_frame_makes_a_frame(net):
    model, data = net
    rows = rw.sweep(model, data, ["sign"], trials=1)
    assert isinstance(rows, list) and rows[0]["spec"] == "sign:scale=max"
    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(rw.UserError, match="needs pandas"):
            sweep_mod.to_frame(rows)
    else:
        assert list(sweep_mod.to_frame(rows).columns) == COLUMNS


def test_spec_lines_give_the_mean_and_spread_per_strength_in_the_metric_of_the_rows():
    from robustweights.results import spec_lines

    rows = [
        {"spec": "add-gauss:sigma=0.5", "error": e, "trial": i} for i, e in enumerate((0.1, 0.2))
    ]
    rows += [{"spec": "sign", "error": 0.3, "trial": 0}]
    assert spec_lines(rows, width=20) == [
        "  add-gauss:sigma=0.5  error 15.00% (min 10.00%, max 20.00%, 2 trials)",
        "  sign                 error 30.00%",
    ]
    lm = [
        {"spec": "quant:bits=2", "metric": "perplexity", "score": s, "error": None}
        for s in (12.0, 13.0)
    ]
    assert spec_lines(lm, width=12) == ["  quant:bits=2 perplexity 12.5 (min 12, max 13, 2 trials)"]


def test_weights_holding_nan_or_inf_are_refused_and_the_model_comes_back():
    """A NaN made max|W| count as 1 and sign send it to -H; an inf made every weight NaN: numbers
    wrong without a word. Now one line, and the model as it came."""
    data = rw.data.load_data("demo", preprocess="none")
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(rw.UserError, match=r"NaN or inf values \(1.weight\)"):
        rw.sweep(net, data, ["sign"], trials=1)
    assert not rw.sites(net) and all(
        torch.equal(v, before[k]) or torch.isnan(v).any() for k, v in net.state_dict().items()
    )
    assert torch.isnan(net[1].weight[0, 0]) and torch.equal(
        net[1].weight[1:], before["1.weight"][1:]
    )


def test_a_metrics_direction_is_read_from_the_words_of_its_name():
    """By substring, top1_error, top5_err, error2, cauchy_loss and accuracy_drop counted as better
    when higher: the lowest-bits summary then picked the cell with 80% error."""
    from robustweights.results import better_when_higher

    for lower in (
        "error",
        "top1_error",
        "top5_err",
        "error2",
        "cauchy_loss",
        "accuracy_drop",
        "perplexity",
        "nll",
    ):
        assert not better_when_higher(lower), lower
    for higher in ("accuracy", "top1", "top5", "val_acc", "acc@1", "f1", "BLEU", "r2", "auc"):
        assert better_when_higher(higher), higher
    assert not better_when_higher(
        "mystery"
    )  # no word says: lower (higher_is_better= makes it sure)


def test_a_sweep_tests_a_checkpoint_on_its_own_test_subset_unless_told(trained, tmp_path, capsys):
    """`evaluate` tested a run trained with --test-subset 300 on its 300 examples, `sweep` on all
    1000 (another undistorted error for the same network, and minutes instead of seconds on
    CIFAR-10)."""
    code, _, err = run_main(
        capsys,
        "sweep",
        str(trained.ckpt),
        "--distortion",
        "sign",
        "--out",
        str(tmp_path / "a"),
        "--quiet",
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "a" / "results.json").read_text())
    assert rows[0]["n_examples"] == 300
    code, _, err = run_main(
        capsys,
        "sweep",
        str(trained.ckpt),
        "--distortion",
        "sign",
        "--test-subset",
        "1000",
        "--out",
        str(tmp_path / "b"),
        "--quiet",
    )
    assert (
        code == 0
        and json.loads((tmp_path / "b" / "results.json").read_text())[0]["n_examples"] == 1000
    )


def test_a_sweep_with_nothing_to_distort_leaves_its_out_folder_free(trained, tmp_path, capsys):
    """It stopped with one line but left a sweep.json with end null, so --out then refused any other
    checkpoint ('holds a sweep of another checkpoint')."""
    code, _, err = run_main(
        capsys,
        "sweep",
        str(trained.ckpt),
        "--distortion",
        "sign",
        "--keep",
        "*",
        "--out",
        str(tmp_path / "s"),
    )
    assert code == 2 and "nothing to distort" in one_error_line(err)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_a_state_dict_with_keys_that_are_not_names_is_one_line(tmp_path):
    """{0: tensor} passed the check of values and raised TypeError in the key matching."""
    torch.save({0: torch.zeros(2), "fc.weight": torch.zeros(2, 2)}, tmp_path / "sd.pt")
    with pytest.raises(rw.UserError, match="does not hold a state_dict"):
        sweep_mod._load_state_dict(str(tmp_path / "sd.pt"))


def test_a_resume_at_another_batch_size_is_refused_when_batch_norm_is_re_estimated(
    trained, tmp_path
):
    """The batch size sets the batches batch-norm statistics are re-estimated on: a sweep resumed at
    another one mixed rows of two sweeps under one sweep.json. Without re-estimation it changes no
    number and may change."""
    kw = dict(distortions=["add-gauss:sigma=0.5"], trials=1)
    run_sweep(
        sweep_config(trained, tmp_path / "bn", bn_reestimate=2, batch_size=100, **kw),
        progress=False,
    )
    with pytest.raises(rw.UserError, match="batch_size differ"):
        run_sweep(
            sweep_config(trained, tmp_path / "bn", bn_reestimate=2, batch_size=50, **kw),
            progress=False,
        )
    run_sweep(sweep_config(trained, tmp_path / "plain", batch_size=100, **kw), progress=False)
    run_sweep(sweep_config(trained, tmp_path / "plain", batch_size=50, **kw), progress=False)


def test_a_sweep_resumed_on_other_data_is_refused(tmp_path):
    """data_dir may change on a resume (the data moved), so a resume on other image folders of the
    same classes and size kept every cell measured on the old data beside a baseline measured on the
    new (float +57.5 became +52.5 in a reproduce folder, and claim 4 got a verdict)."""
    from robustweights.data import make_image_folders

    make_image_folders(tmp_path / "a", classes=3, train_per_class=8, val_per_class=4, size=16)
    make_image_folders(
        tmp_path / "b", classes=3, train_per_class=8, val_per_class=4, size=16, seed=5
    )
    rw.train(
        rw.TrainConfig(
            model="mlp",
            width=0.25,
            dataset="imagefolder",
            data_dir=str(tmp_path / "a"),
            image_size=16,
            epochs=1,
            batch_size=8,
            out=str(tmp_path / "run"),
        ),
        progress=False,
    )
    kw = dict(
        checkpoint=str(tmp_path / "run"), distortions=["sign"], trials=1, out=str(tmp_path / "s")
    )
    run_sweep(SweepConfig(**kw, data_dir=str(tmp_path / "a")), progress=False)
    run_sweep(
        SweepConfig(**kw, data_dir=str(tmp_path / "a")), progress=False
    )  # the same data: resumes
    with pytest.raises(rw.UserError, match="holds cells measured on other data"):
        run_sweep(SweepConfig(**kw, data_dir=str(tmp_path / "b")), progress=False)


# ---------------------------------------------------------------------------
# coverage recorded on every path; the default `on`
# ---------------------------------------------------------------------------


def test_a_sweep_saved_from_the_api_records_its_coverage_as_the_command_does(
    net, done_sweep, tmp_path
):
    """`rows = rw.sweep(...)` then `save_sweep(rows)` (the README's way) wrote "coverage": null; the
    rows carry it now, and sweep.json has every field the command's has in common."""
    model, data = net
    rows = rw.sweep(model, data, ["sign"], trials=1)
    assert isinstance(rows, list) and rows.coverage["covered"] and rows.on == "auto"
    base = evaluate_split(model, data.test)["error"]
    prov = sweep_mod.save_sweep(tmp_path / "api", rows, label="mlp", baseline=base, description="d")
    saved = json.loads((tmp_path / "api" / "sweep.json").read_text())
    assert saved["coverage"] == rows.coverage == prov["coverage"]
    assert saved["on"] == "auto" and saved["distorted_weights"] == "hidden"  # a float network
    assert rows.coverage["summary"].endswith("on auto: the hidden weights")
    command = json.loads((done_sweep.out / "sweep.json").read_text())
    shared = set(
        sweep_mod.sweep_runs.sweep_record([], label="", baseline=0, description="", trials=1)
    )
    assert shared <= set(saved) and shared <= set(command)
    assert command["coverage"]["distorted_weights"] == command["distorted_weights"] == "hidden"
    if importlib.util.find_spec("pandas") is not None:  # the frame keeps it too
        frame = sweep_mod.to_frame(rows)
        sweep_mod.save_sweep(tmp_path / "frame", frame, label="m", baseline=base, description="d")
        again = json.loads((tmp_path / "frame" / "sweep.json").read_text())
        assert again["coverage"] == rows.coverage


@pytest.fixture(scope="module")
def sign_trained(tmp_path_factory):
    """A short sign-trained CNN (batch norm after its layers) on the shipped subset."""
    root = tmp_path_factory.mktemp("sign")
    config = rw.TrainConfig(
        model="cnn",
        width=0.25,
        dataset="demo",
        projection="sign",
        train_subset=500,
        test_subset=200,
        epochs=1,
        batch_size=50,
        seed=0,
        out=str(root / "run"),
    )
    rw.train(config, progress=False)
    return SimpleNamespace(root=root, ckpt=root / "run" / "checkpoint.pt", config=config)


def test_a_sign_network_is_swept_on_the_weights_it_runs_with_by_default(sign_trained, tmp_path):
    """The default distorted a sign network's hidden weights with the batch-norm statistics of its
    binary ones: every cell of a Fashion-MNIST sign CNN read 90% (chance) against its 9.54%."""
    model, config = rw.load(sign_trained.ckpt)
    data = load_config_data(config)
    own = rw.training.evaluate(model, config, data=data)
    assert own["weights"] == "projected"
    rows = rw.sweep(model, data, ["add-gauss:sigma=0"], trials=1)
    assert rows[0]["error"] == own["error"] and rows.distorted_weights == "projected"
    hidden = rw.sweep(model, data, ["add-gauss:sigma=0"], trials=1, on="hidden")
    assert hidden[0]["error"] != own["error"]  # the old default: statistics of other weights
    assert hidden.distorted_weights == "hidden" and hidden.coverage["summary"].endswith(
        "on hidden: the hidden weights"
    )
    r = run_sweep(
        SweepConfig(
            checkpoint=str(sign_trained.ckpt),
            distortions=["add-gauss:sigma=0"],
            trials=1,
            out=str(tmp_path / "sw"),
        ),
        progress=False,
    )
    assert r["on"] == "auto" and r["distorted_weights"] == "projected"
    assert r["rows"][0]["error"] == r["baseline_error"] == own["error"]
    assert r["coverage"]["summary"].endswith("on auto: the projected weights")
    with pytest.raises(rw.UserError, match="on must be one of auto, hidden, projected"):
        rw.sweep(model, data, ["sign"], trials=1, on="binary")
