"""Measures: error gives exactly evaluate_split's numbers; perplexity and MSE are what they say,
token-weighted over batches of any size; user measures, directions and one-line refusals."""

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustweights.data import load_data
from robustweights.errors import UserError
from robustweights.evaluation import evaluate_split
from robustweights.measures import MEASURES, Measure, get_measure, measure_split, register_measure
from robustweights.models import create_model


@pytest.fixture(scope="module")
def demo_cnn():
    """The CNN after a few SGD steps on the demo data (an error well away from 0 and 90%)."""
    torch.manual_seed(0)
    data = load_data("demo")
    model = create_model("cnn", num_classes=10, in_shape=(1, 28, 28), width=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i, (x, y) in enumerate(data.train.batches(100)):
        if i == 20:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, data


@pytest.mark.parametrize("loss", ["ce", "sq-hinge"])
def test_error_is_exactly_evaluate_split(demo_cnn, loss):
    model, data = demo_cnn
    model.train()  # measure_split evaluates in eval mode and gives the flags back
    want = evaluate_split(model, data.test, loss=loss, batch_size=300)  # 1000 = 3 x 300 + 100
    got = measure_split(model, data.test, get_measure("error", loss=loss), batch_size=300)
    assert model.training
    assert got == want
    assert list(got) == ["error", "loss", "n"]
    assert 0.05 < got["error"] < 0.8


def test_top5_and_loss_measures_agree_with_a_direct_computation(demo_cnn):
    model, data = demo_cnn
    model.eval()
    with torch.no_grad():
        logits = model(data.test.x)
    top5 = (logits.topk(5, 1).indices != data.test.y[:, None]).all(1).sum().item() / len(logits)
    got = measure_split(model, data.test, "top5_error", batch_size=256)
    assert got["top5_error"] == top5
    assert got["top5_error"] < got["error"]
    loss = measure_split(model, data.test, "loss", batch_size=256)
    assert loss["loss"] == pytest.approx(F.cross_entropy(logits, data.test.y).item(), rel=1e-6)
    assert (MEASURES["loss"].percent, MEASURES["error"].percent) == (False, True)


def _lm_batches(sizes, t=7, v=11, seed=0):
    """Batches (inputs, targets) of a fixed 'model' whose logits are the inputs themselves."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(sum(sizes), t, v, generator=g) * 3  # (N, T, V)
    targets = torch.randint(0, v, (sum(sizes), t), generator=g)  # (N, T)
    return list(zip(logits.split(sizes), targets.split(sizes))), logits, targets


class Passthrough(nn.Module):
    """The inputs are the logits (or an output object holding them)."""

    def __init__(self, wrap=False):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.wrap = wrap

    def forward(self, x):
        return types.SimpleNamespace(logits=x) if self.wrap else x


@pytest.mark.parametrize("wrap", [False, True])
def test_perplexity_is_token_weighted_over_batches_of_any_size(wrap):
    batches, logits, targets = _lm_batches([5, 1, 3])
    got = measure_split(Passthrough(wrap), batches, "perplexity")
    whole = F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # mean over all 63 tokens
    assert got["perplexity"] == pytest.approx(math.exp(whole.item()), rel=1e-6)
    nll64 = F.cross_entropy(logits.flatten(0, 1).double(), targets.flatten()).item()
    assert got["loss"] == pytest.approx(nll64, rel=1e-6)
    assert got["bits_per_token"] == pytest.approx(got["loss"] / math.log(2), rel=1e-12)
    assert (got["n"], got["tokens"]) == (9, 63)
    one = measure_split(Passthrough(wrap), [(logits, targets)], "perplexity")
    assert one["loss"] == pytest.approx(got["loss"], rel=1e-12)  # batching changes nothing


def test_perplexity_refuses_classifier_shapes_and_tokens_beyond_the_vocabulary():
    x = torch.randn(4, 10)
    with pytest.raises(UserError, match=r"perplexity needs logits \(B, T, vocabulary\)"):
        measure_split(Passthrough(), [(x, torch.zeros(4, dtype=torch.long))], "perplexity")
    batches, _, targets = _lm_batches([2])
    with pytest.raises(UserError, match="11 logits per token, but the data has token 11"):
        measure_split(Passthrough(), [(batches[0][0], targets * 0 + 11)], "perplexity")


def test_mse_over_every_output_element():
    x = torch.randn(10, 3)
    y = torch.randn(10, 3)
    batches = list(zip(x.split([4, 6]), y.split([4, 6])))
    got = measure_split(Passthrough(), batches, "mse")
    assert got["mse"] == pytest.approx(F.mse_loss(x, y).item(), rel=1e-6)
    col = measure_split(Passthrough(), [(x[:, :1], y[:, 0])], "mse")  # (B, 1) for (B,) targets
    assert col["mse"] == pytest.approx(F.mse_loss(x[:, 0], y[:, 0]).item(), rel=1e-6)
    with pytest.raises(UserError, match="mse needs outputs shaped as the targets"):
        measure_split(Passthrough(), [(x, y[:, :2])], "mse")


def test_objectives_are_the_training_losses():
    batches, logits, targets = _lm_batches([4])
    ppl = MEASURES["perplexity"].objective(logits, targets)
    assert torch.equal(ppl, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))
    x, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    assert torch.equal(MEASURES["error"].objective(x, y), F.cross_entropy(x, y))


def test_directions_targets_and_formats():
    err, ppl = get_measure("error"), get_measure("perplexity")
    assert not err.higher_is_better and not ppl.higher_is_better
    assert err.default_target(0.1) == pytest.approx(0.11)
    assert ppl.default_target(20.0) == pytest.approx(20.2)
    up = Measure("acc", higher_is_better=True, percent=True, evaluate=lambda m, b: 1.0)
    assert up.default_target(0.9) == pytest.approx(0.89)
    assert (err.format(0.1234), ppl.format(12.3456)) == ("12.34%", "12.35")
    assert ppl.to_dict() == {
        "measure": "perplexity",
        "name": "perplexity",
        "higher_is_better": False,
        "percent": False,
    }


def test_unknown_names_and_misfits_are_one_line():
    with pytest.raises(UserError, match="unknown measure 'accuracy'; use one of error, loss, mse"):
        get_measure("accuracy")
    with pytest.raises(UserError, match="applies to the classification measures"):
        get_measure("perplexity", loss="sq-hinge")
    with pytest.raises(UserError, match="unknown loss 'hinge'"):
        get_measure("error", loss="hinge")
    with pytest.raises(UserError, match="cannot import module 'no_such_mod_rw'"):
        get_measure("no_such_mod_rw:fn")
    with pytest.raises(UserError, match="the evaluation split is empty"):
        measure_split(Passthrough(), [], "perplexity")
    with pytest.raises(UserError, match="either batch and finish, or evaluate"):
        Measure("x")
    with pytest.raises(UserError, match="already registered"):
        register_measure(Measure("error", evaluate=lambda m, b: 0.0))


@pytest.fixture
def user_module(monkeypatch):
    mod = types.ModuleType("rw_user_measures")

    def mean_output(model, batches):  # a plain evaluation, direction declared on it
        return sum(float(model(x).sum()) for x, _ in batches)

    mean_output.higher_is_better = True

    def undeclared(model, batches):
        return {"score": 1.0}

    def factory():
        return Measure("half", evaluate=lambda m, b: {"half": 0.5, "other": 2})

    mod.mean_output, mod.undeclared, mod.factory = mean_output, undeclared, factory
    mod.ready = Measure("ready", higher_is_better=True, evaluate=lambda m, b: 3.0)
    monkeypatch.setitem(sys.modules, "rw_user_measures", mod)
    return mod


def test_user_measures_by_package_module_function(user_module):
    batches = [(torch.ones(2, 3), torch.zeros(2)), (torch.ones(1, 3), torch.zeros(1))]
    m = get_measure("rw_user_measures:mean_output")
    assert (m.name, m.higher_is_better) == ("mean_output", True)
    assert m.spec == "rw_user_measures:mean_output"
    assert measure_split(Passthrough(), batches, m) == {"mean_output": 9.0}
    half = get_measure("rw_user_measures:factory")
    assert measure_split(Passthrough(), batches, half) == {"half": 0.5, "other": 2}
    assert half.to_dict()["measure"] == "rw_user_measures:factory"
    assert get_measure("rw_user_measures:ready").value({"ready": 3}) == 3.0
    with pytest.raises(UserError, match="say whether higher is better"):
        get_measure("rw_user_measures:undeclared")
    score = get_measure("rw_user_measures:undeclared", higher_is_better=False, name="score")
    assert measure_split(Passthrough(), batches, score) == {"score": 1.0}
    wrong = get_measure("rw_user_measures:undeclared", higher_is_better=False)
    with pytest.raises(UserError, match="gave no 'undeclared' \\(it gave: score\\)"):
        measure_split(Passthrough(), batches, wrong)


def test_user_data_is_a_loader_or_a_dict_and_refuses_anything_else(tmp_path, monkeypatch):
    import torch

    from robustweights.data import user_data

    (tmp_path / "rw_user_data_mod.py").write_text(
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "def loader():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    ds = TensorDataset(torch.randn(10, 3, generator=g), torch.arange(10) % 2)\n"
        "    return DataLoader(ds, batch_size=4)\n"
        "def both():\n"
        "    return {'test': loader(), 'train': loader()}\n"
        "def wrong():\n"
        "    return {'val': loader()}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    d = user_data("rw_user_data_mod:loader")
    assert d.train is None and len(d.test) == 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g)
    got = torch.cat([b[0] for b in d.test.batches()])
    assert torch.equal(got, x)
    assert user_data("rw_user_data_mod:both").train is not None
    with pytest.raises(UserError, match=r"keys \['val'\]: it needs 'test'"):
        user_data("rw_user_data_mod:wrong")
    with pytest.raises(UserError, match="no callable 'nope'"):
        user_data("rw_user_data_mod:nope")
