"""Training for the device: random distortions (pcm, add-gauss, the stochastic rules) as training
projections, with the straight-through gradient, fresh draws per forward, hidden weights in eval."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustweights as rw
from conftest import one_error_line, run_main
from robustweights import registry
from robustweights.projected import hidden, sites, use_weights

NOISE = [
    "pcm:t=86400",
    "pcm:t=1,compensation=none",
    "add-gauss:sigma=0.1,scale=max",
    "stoch-sign",
    "stoch-mult:gamma=0.5",
]


def _layer(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(6, 4)


@pytest.mark.parametrize("spec", NOISE)
def test_straight_through_gradient_is_the_gradient_at_the_drawn_weights(spec):
    """dL/dW := dL/dWp, exactly, where Wp is the draw the forward pass used."""
    layer = _layer()
    g = torch.Generator().manual_seed(3)
    rw.attach(layer, spec, generator=g, clip=0.5)
    x, target = torch.randn(5, 6), torch.randn(5, 4)
    w = hidden(layer).detach().clone()
    F.mse_loss(layer(x), target).backward()
    g.manual_seed(3)  # the same draw, by hand
    wp = rw.transform(spec).with_defaults(scale="clip")(w, g, clip=0.5).requires_grad_(True)
    assert not torch.equal(wp, w)  # a distortion acted
    F.mse_loss(F.linear(x, wp, layer.bias), target).backward()
    assert torch.equal(hidden(layer).grad, wp.grad)


def test_clipping_as_configured_after_a_noise_trained_step():
    layer = _layer()
    rw.attach(layer, "pcm:t=3600", generator=torch.Generator().manual_seed(0), clip=0.2)
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    F.mse_loss(layer(torch.randn(8, 6)), torch.randn(8, 4)).backward()
    opt.step()
    assert hidden(layer).abs().max() > 0.2  # the step went past the bound
    rw.clip_(layer)
    assert hidden(layer).abs().max().item() == sites(layer)[0].H == pytest.approx(0.2)


@pytest.mark.parametrize("spec", ["pcm:t=86400", "add-gauss:sigma=0.1,scale=max"])
def test_each_training_forward_draws_anew_and_evaluation_uses_the_hidden_weights(spec):
    layer = _layer()
    g = torch.Generator().manual_seed(0)
    rw.attach(layer, spec, generator=g)
    x = torch.randn(3, 6)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)
    g.manual_seed(0)
    assert torch.equal(layer(x), a)  # the draws come from the site's generator alone
    layer.eval()
    state = g.get_state()
    assert layer.weight is hidden(layer)
    assert torch.equal(layer(x), F.linear(x, hidden(layer), layer.bias))
    assert torch.equal(g.get_state(), state)  # evaluation draws nothing
    with use_weights(layer, "projected"):  # a user who asks gets a draw
        assert not torch.equal(layer.weight, hidden(layer))
    assert sites(layer)[0].eval_uses_hidden()


def _noise_run(seed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(seed)
    rw.attach(model, "pcm:t=86400", generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 6, generator=data), torch.randint(0, 3, (16,), generator=data)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        rw.clip_(model)
    return model.state_dict()


def test_same_seed_same_noise_trained_weights_other_seed_differs():
    a, b, c = _noise_run(0), _noise_run(0), _noise_run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_what_cannot_be_a_projection_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @rw.register_transform("test-only-readout", projection=False)
    def readout(w, g, H):
        """A test-time distortion only."""
        return w.clone()

    @rw.register_transform("test-only-flatten")
    def flatten(w, g, H):
        """Changes the weight's shape."""
        return w.flatten()

    layer = _layer()
    with pytest.raises(rw.UserError, match="test-time distortion only, not a training projection"):
        rw.attach(layer, "test-only-readout")
    with pytest.raises(rw.UserError, match="test-time distortion only"):
        rw.TrainConfig(projection="test-only-readout").validate()
    with pytest.raises(rw.UserError, match="one value here"):  # a sweep's grid is no projection
        rw.attach(layer, "pcm:t=1,3600")
    with pytest.raises(rw.UserError, match="must keep its weight's shape"):
        rw.attach(layer, "test-only-flatten")
        layer(torch.randn(2, 6))
    with rw.distort(_layer(), "test-only-readout"):  # still a distortion
        pass


TINY = [
    "--model",
    "mlp",
    "--width",
    "0.25",
    "--dataset",
    "demo",
    "--train-subset",
    "300",
    "--test-subset",
    "100",
    "--batch-size",
    "50",
    "--schedule",
    "constant",
    "--projection",
    "pcm:t=3600",
    "--quiet",
]


def test_cli_trains_with_a_pcm_projection_and_resumes_bitwise(tmp_path, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, out, err = run_main(capsys, "train", *TINY, "--epochs", "2", "--out", str(whole))
    assert code == 0 and "test error:" in out, err
    code, out, err = run_main(capsys, "train", *TINY, "--epochs", "1", "--out", str(cut))
    assert code == 0, err
    code, out, err = run_main(
        capsys, "train", "--resume", "--out", str(cut), "--epochs", "2", "--quiet"
    )
    assert code == 0, err
    (a, ca), (b, cb) = rw.load(whole), rw.load(cut)
    assert ca.projection == cb.projection == "pcm:t=3600"
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert rw.evaluate(a, ca)["weights"] == "hidden"
    code, out, err = run_main(capsys, "train", *TINY, "--projection", "pcm:t=1,3600")
    assert code == 2 and "one value here" in one_error_line(err)
