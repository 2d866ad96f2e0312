"""Trials of a sweep cell fused into one network: the numbers of one trial at a time, fallbacks."""

import warnings

import pytest
import torch
from torch import nn

import robustweights as rw
from conftest import one_error_line, run_main
from robustweights import projected, sweep_fusion
from robustweights.data import TensorSplit
from robustweights.errors import UserError
from robustweights.language import TokenSplit, causal_lm

GRIDS = ["add-gauss:sigma=0.3,0.6", "stoch-sign", "sign"]  # 2 x 4 + 4 random trials, 1 not
EXACT = ("seed", "error", "effective_bits", "snr_bits", "entropy_bits", "n_examples", "trial")


def _with_stats(model: nn.Module) -> nn.Module:
    """Batch norm in eval mode with statistics of its own (not the identity of a new layer)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def _image_case(name: str):
    torch.manual_seed(0)
    model = _with_stats(rw.create_model(name, num_classes=10, in_shape=(1, 28, 28), width=0.25))
    x = torch.randn(120, 1, 28, 28)
    y = model(x).argmax(1)  # labels the clean net mostly gets right: errors grow with sigma
    y[::7] = (y[::7] + 1) % 10
    return model, TensorSplit(x, y), "error"


def _lm_case():
    torch.manual_seed(0)
    model = causal_lm(dim=32, layers=1, heads=2, context=16).eval()  # head tied to embed
    assert model.head.weight is model.embed.weight
    return (
        model,
        TokenSplit(torch.randint(0, 256, (16 * 24 + 1,), dtype=torch.uint8), 16),
        ("perplexity"),
    )


CASES = {"cnn": lambda: _image_case("cnn"), "mlp": lambda: _image_case("mlp"), "lm": _lm_case}


def _rows(model, split, measure, fuse, **kw):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        rows = rw.sweep(
            model, split, GRIDS, measure, trials=4, batch_size=50, fuse_trials=fuse, **kw
        )
    return rows, [str(w.message) for w in said if "fuse_trials" in str(w.message)]


def _same_rows(fused, alone):
    assert len(fused) == len(alone) == 13
    for a, b in zip(fused, alone):
        assert a["spec"] == b["spec"]
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        assert a["score"] == pytest.approx(b["score"], rel=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_trials_give_the_numbers_of_one_trial_at_a_time(case):
    model, split, measure = CASES[case]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alone, _ = _rows(model, split, measure, 1)
    calls = []
    real = sweep_fusion.measure_trials
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_fusion, "measure_trials", lambda *a, **k: calls.append(1) or real(*a, **k))
        fused, said = _rows(model, split, measure, 4)
    assert said == [] and len(calls) == 3  # 3 random strengths, 4 trials each, fused
    _same_rows(fused, alone)
    assert len({r["loss"] for r in fused if r["spec"].startswith("add-gauss")}) == 8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not projected.sites(model)  # the user's model given back as it came


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("spec", ["add-gauss:sigma=0.5", "sign"])
def test_fused_logits_are_each_trials_own(case, spec):
    model, split, _ = CASES[case]()
    projected.attach(model, "identity", mode="none", clip=None)
    ss = projected.sites(model)
    pins = []
    for trial in range(4):
        with projected.distort(model, spec, torch.Generator().manual_seed(trial), on="projected"):
            pins.append([s.pinned for s in ss])
    x, _ = next(iter(split.batches(40)))
    with torch.no_grad():
        fused = sweep_fusion.trial_outputs(model, ss, [torch.stack(w) for w in zip(*pins)], x)
        for trial, p in enumerate(pins):
            for s, w in zip(ss, p):
                s.pinned = w
            alone = model(x)
            assert torch.allclose(fused[trial], alone, rtol=0, atol=1e-5)
            assert torch.equal(fused[trial].argmax(-1), alone.argmax(-1))
    assert fused.shape == (4, *alone.shape)


def _unfused_rows_said(case, why, fuse=4, **kw):
    model, split, measure = CASES[case]()
    alone, _ = _rows(model, split, measure, 1, **kw)
    fused, said = _rows(model, split, measure, fuse, **kw)
    _same_rows(fused, alone)
    assert len(said) == 1 and why in said[0], said  # said once, not per cell


def test_a_user_evaluate_and_bn_reestimation_run_one_trial_at_a_time_and_say_so():
    model, split, _ = CASES["mlp"]()
    data = rw.data.Data("t", "t", 10, (1, 28, 28), [str(i) for i in range(10)], split, split)
    alone, _ = _rows(model, data, None, 1, bn_batches=1)
    fused, said = _rows(model, data, None, 4, bn_batches=1)
    _same_rows(fused, alone)
    assert len(said) == 1 and "re-estimated for each trial" in said[0]
    evaluate = rw.get_measure("error").evaluator(split, batch_size=50)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        rw.sweep(model, None, ["add-gauss:sigma=0.5"], trials=2, evaluate=evaluate, fuse_trials=2)
    assert ["evaluate=" in str(m.message) for m in w if "fuse_trials" in str(m.message)] == [True]


class _Reads(nn.Module):
    """A network vmap cannot run: its forward reads a weight's value on the host."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * (1.0 if self.fc.weight.sum().item() < 1e9 else 0.0)


def test_a_network_vmap_cannot_run_is_measured_one_trial_at_a_time():
    _, split, _ = CASES["mlp"]()
    model = _Reads()
    alone, _ = _rows(model, split, "error", 1)
    fused, said = _rows(model, split, "error", 4)
    _same_rows(fused, alone)
    assert len(said) == 1 and "the fused network failed" in said[0] and ".item()" in said[0]


def test_a_fused_output_that_differs_is_never_used(monkeypatch):
    real = sweep_fusion.trial_outputs
    monkeypatch.setattr(sweep_fusion, "trial_outputs", lambda *a: real(*a) + 1.0)
    _unfused_rows_said("mlp", "differs from one trial's by 1")


def test_auto_fuses_on_cuda_only_and_the_setting_is_checked(monkeypatch):
    assert sweep_fusion.fused_count("auto", "cpu", 5) == 1
    assert sweep_fusion.fused_count("auto", "cuda:0", 5) == 5
    assert sweep_fusion.fused_count("auto", "cuda", 20) == sweep_fusion.AUTO_MOST
    assert sweep_fusion.fused_count("3", "cpu", 5) == 3 and sweep_fusion.fused_count(9, "cpu", 2)
    monkeypatch.setattr(sweep_fusion, "measure_trials", None)  # never called on a cpu by auto
    model, split, measure = CASES["mlp"]()
    _, said = _rows(model, split, measure, "auto")
    assert said == []
    for bad in (0, -1, "many", 2.5, True):
        with pytest.raises(UserError, match="fuse_trials="):
            rw.sweep(model, split, ["add-gauss:sigma=0.5"], fuse_trials=bad)


def test_the_command_line_fuses_and_a_resume_may_change_it(tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--model", "mlp", "--width", "0.25", "--dataset", "demo", "--epochs", "1"]
    train += ["--train-subset", "200", "--test-subset", "100", "--quiet", "--out", str(run)]
    assert run_main(capsys, *train)[0] == 0
    sweep = ["sweep", str(run), "--distortion", "add-gauss:sigma=0.5,1", "--trials", "3"]
    sweep += ["--quiet"]
    assert run_main(capsys, *sweep, "--fuse-trials", "3", "--out", str(tmp_path / "a"))[0] == 0
    assert run_main(capsys, *sweep, "--fuse-trials", "1", "--out", str(tmp_path / "b"))[0] == 0
    a, b = ((tmp_path / d / "results.csv").read_text().splitlines() for d in "ab")
    col = a[0].split(",").index("error")
    assert [r.split(",")[col] for r in a] == [r.split(",")[col] for r in b] and len(a) == 7
    # a finished sweep resumed with another fuse_trials: nothing to do, the same table
    assert run_main(capsys, *sweep, "--fuse-trials", "2", "--out", str(tmp_path / "a"))[0] == 0
    assert (tmp_path / "a" / "results.csv").read_text().splitlines() == a
    code, _, err = run_main(capsys, *sweep, "--fuse-trials", "0", "--out", str(tmp_path / "c"))
    assert code == 2 and "--fuse-trials 0" in one_error_line(err)
