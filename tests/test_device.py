"""What must work on the device the suite runs for: ``pytest --device cuda`` runs these on a GPU.

On the CPU (the default) they are ordinary tests. On CUDA they are the checks
no CPU run can make: random draws from CUDA generators (every random projection
once crashed there), training steps of every projection and mode, torch.compile
of random projections (inductor, on the GPU), sweeps, batch-norm calibration and
an exactly resumed run, with data and weights on the device.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustweights as rw
from robustweights import list_transforms, projected, transform
from robustweights.data import TensorSplit, load_data
from robustweights.sweeps import calibrate_bn

SPECS = {
    "identity": "identity",
    "sign": "sign",
    "stoch-sign": "stoch-sign",
    "ternary": "ternary:delta=0.3",
    "quant": "quant:bits=2",
    "power": "power:beta=0.5",
    "stoch-mult": "stoch-mult:gamma=0.5,flip=true",
    "add-gauss": "add-gauss:sigma=0.5",
    "mult-gauss": "mult-gauss:sigma=0.3",
    "clip": "clip",
    "prune": "prune:frac=0.5",
    "bitflip": "bitflip:p=0.1",
    "pcm": "pcm:t=3600",
    "stuck": "stuck:p_on=0.05,p_off=0.05",
}
PROJECTIONS = [
    "identity",
    "sign",
    "stoch-sign",
    "ternary:delta=0.05",
    "quant:bits=2",
    "power:beta=0.5",
    "stoch-mult:gamma=0.5",
    "stoch-mult:gamma=0.5,flip=true",
    "add-gauss:sigma=0.5",
    "mult-gauss:sigma=0.3",
    "clip",
]


def net(device):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 3),
    ).to(device)


def test_the_specs_cover_every_transform():
    assert sorted(SPECS) == list_transforms()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_transform_on_the_device(device, name):
    t = transform(SPECS[name])
    w = torch.randn(64, 32, device=device)
    before = w.clone()
    a = t(w, torch.Generator(device=device).manual_seed(1))
    b = t(w, torch.Generator(device=device).manual_seed(1))
    assert a.device == w.device and a.dtype == w.dtype and a.shape == w.shape
    assert torch.equal(a, b) and torch.equal(w, before)
    if t.random:
        assert not torch.equal(a, t(w, torch.Generator(device=device).manual_seed(2)))
    else:
        # the CPU's numbers (exactly where only comparisons, +-H and exact arithmetic are involved)
        cpu = t(w.cpu(), None).to(device)
        assert (
            torch.equal(a, cpu)
            if name in ("identity", "sign", "ternary", "quant", "clip")
            else torch.allclose(a, cpu, rtol=1e-6, atol=0)
        )


@pytest.mark.parametrize("mode", ["fwd+bwd", "fwd", "none"])
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_a_training_step_of_every_projection_and_mode(device, projection, mode):
    model = net(device)
    g = torch.Generator(device=device).manual_seed(0)
    rw.attach(model, projection, mode=mode, generator=g)  # a CUDA generator: the old crash
    hidden = [s.hidden for s in rw.sites(model)]
    before = [h.detach().clone() for h in hidden]
    opt = torch.optim.Adam(model.parameters(), lr=0.5)  # a big step: weights leave [-1, 1]
    x, y = torch.randn(8, 1, 8, 8, device=device), torch.randint(0, 3, (8,), device=device)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    assert torch.isfinite(loss) and all(
        h.grad is not None and torch.isfinite(h.grad).all() for h in hidden
    )
    opt.step()
    rw.clip_(model)
    assert all(not torch.equal(h, b) for h, b in zip(hidden, before))
    assert all(h.abs().max() <= 1.0 for h in hidden)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.device.type == device.type and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "projection", ["stoch-sign", "stoch-mult:gamma=0.5", "add-gauss:sigma=0.5"]
)
def test_compiled_random_projection_draws_what_eager_draws(device, projection):
    """Inductor on a GPU; dynamo with the eager backend on the CPU (inductor there:
    test_projected.py)."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    b = copy.deepcopy(a)
    ga = torch.Generator(device=device).manual_seed(5)
    gb = torch.Generator(device=device).manual_seed(5)
    rw.attach(a, projection, generator=ga)
    rw.attach(b, projection, generator=gb)
    torch._dynamo.reset()
    compiled = torch.compile(b, backend="inductor" if device.type == "cuda" else "eager")
    x = torch.randn(4, 6, device=device)
    for _ in range(2):
        ya, yb = a(x), compiled(x)
        torch.testing.assert_close(yb, ya)
        ya.sum().backward()
        yb.sum().backward()
    torch.testing.assert_close(projected.hidden(b[0]).grad, projected.hidden(a[0]).grad)
    assert torch.equal(ga.get_state(), gb.get_state())


@pytest.fixture(scope="module")
def small_data():
    return load_data("demo", train_subset=600, test_subset=300)


def on(device, data):
    """The data with both splits resident on the device."""
    return type(data)(
        data.name,
        data.description,
        data.num_classes,
        data.in_shape,
        data.classes,
        TensorSplit(data.train.x.to(device), data.train.y.to(device)),
        TensorSplit(data.test.x.to(device), data.test.y.to(device)),
        data.preprocessing,
    )


def test_sweep_and_calibration_on_the_device(device, small_data):
    data = on(device, small_data)
    model = rw.create_model("mlp", num_classes=10, in_shape=(1, 28, 28), width=0.25).to(device)
    rw.attach(model, "sign")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grids = ["add-gauss:sigma=0.5", "quant:bits=2", "stoch-sign"]
    a = rw.sweep(model, data, grids, trials=2, seed=3, bn_batches=2, batch_size=100)
    b = rw.sweep(model, data, grids, trials=2, seed=3, bn_batches=2, batch_size=100)
    assert a == b and len(a) == 5
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    calibrate_bn(model, data.train, 3, 100, device, seed=5)
    first = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    calibrate_bn(model, data.train, 3, 100, device, seed=5)
    again = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert first and all(
        torch.equal(x, y) and x.device.type == device.type for x, y in zip(first, again)
    )


@pytest.mark.parametrize("projection", ["stoch-sign", "sign"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(device, tmp_path, projection):
    def config(out, epochs):
        return rw.TrainConfig(
            model="mlp",
            width=0.25,
            dataset="demo",
            train_subset=600,
            test_subset=300,
            projection=projection,
            epochs=epochs,
            batch_size=50,
            lr=3e-3,
            schedule="constant",
            device=str(device),
            out=str(out),
        )

    whole = rw.train(config(tmp_path / "whole", 2), progress=False)
    rw.train(config(tmp_path / "cut", 1), progress=False)
    resumed = rw.train(config(tmp_path / "cut", 2), resume=True, progress=False)
    assert next(resumed.model.parameters()).device.type == device.type
    for (k, v), w in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    timing = ("seconds", "images_per_second")
    assert [{k: v for k, v in h.items() if k not in timing} for h in whole.history[-1:]] == [
        {k: v for k, v in h.items() if k not in timing} for h in resumed.history[-1:]
    ]
    assert [h["train_loss"] for h in whole.history] == [h["train_loss"] for h in resumed.history]


def _graph_step(device, graphed):
    from robustweights.steps import GraphedStep, make_step

    model = net(device)
    g = torch.Generator(device=device).manual_seed(3)
    projected.attach(model, "stoch-sign", generator=g)
    lr = (
        torch.tensor(0.0, device=device) if graphed else 0.0
    )  # the weights stay: the losses show the draws
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=graphed)
    step = make_step(
        model, model, opt, "ce", amp=False, channels_last=False, device=device, graphed=graphed
    )
    return (GraphedStep(step, model, opt, [g]) if graphed else step), g


def test_a_cuda_graph_step_draws_anew_at_every_launch_as_eager_steps_do(device):
    """train --cuda-graph: the random projection's generator is registered with the graph, so each
    launch draws the numbers the eager step would draw at that point; reseeding the generator
    reseeds the graph."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    x, y = torch.randn(16, 1, 8, 8, device=device), torch.randint(0, 3, (16,), device=device)
    eager, ge = _graph_step(device, False)
    graphed, gg = _graph_step(device, True)
    a = [eager(x, y)[0].item() for _ in range(4)]
    b = [graphed(x, y)[0].item() for _ in range(4)]
    assert len(set(a)) == 4  # new draws at every step
    assert b == pytest.approx(a, rel=1e-4)
    gg.manual_seed(3)
    assert [graphed(x, y)[0].item() for _ in range(2)] == pytest.approx(a[:2], rel=1e-4)


@pytest.mark.parametrize("projection", ["stoch-sign", "sign"])
def test_training_with_a_cuda_graph_follows_eager_training_and_resumes(
    device, tmp_path, projection
):
    """A whole run with --cuda-graph (a partial last batch included, run eagerly) against the same
    run without it, and a graphed run cut after one epoch and resumed."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")

    def config(out, epochs, graph):
        return rw.TrainConfig(
            model="cnn",
            width=0.25,
            dataset="demo",
            train_subset=620,
            test_subset=300,
            projection=projection,
            epochs=epochs,
            batch_size=50,
            lr=3e-3,
            schedule="exp",
            device=str(device),
            cuda_graph=graph,
            bn_calibrate=5,
            out=str(out),
        )

    eager = rw.train(config(tmp_path / "eager", 2, False), progress=False)
    graphed = rw.train(config(tmp_path / "graphed", 2, True), progress=False)
    # Adam's capturable kernel computes its bias corrections on the GPU in float32, the eager one in
    # Python: the runs round apart and binary weights near 0 may flip, so they are compared as runs,
    # not bit for bit. A graph that reused its draws or its first learning rate would be far off.
    assert [h["train_loss"] for h in graphed.history] == pytest.approx(
        [h["train_loss"] for h in eager.history], rel=2e-2
    )
    assert abs(graphed.test_error - eager.test_error) <= 0.03
    rw.train(config(tmp_path / "cut", 1, True), progress=False)
    resumed = rw.train(config(tmp_path / "cut", 2, True), resume=True, progress=False)
    assert resumed.history[0]["train_loss"] == pytest.approx(
        graphed.history[0]["train_loss"], rel=1e-6
    )
    assert resumed.history[1]["train_loss"] == pytest.approx(
        graphed.history[1]["train_loss"], rel=2e-2
    )
    assert abs(resumed.test_error - graphed.test_error) <= 0.03


def _small_runs(device, graph, rows, **kw) -> list:
    """Two-epoch runs of the small CNN on the shipped demo data, one per ``(seed, projection)``
    of ``rows``, on ``device``, as CUDA graphs when ``graph``; ``kw`` sets the rest."""
    base = dict(model="cnn", width=0.25, dataset="demo", epochs=2, batch_size=50)
    return [
        rw.TrainConfig(**base, **kw, seed=s, projection=p, device=str(device), cuda_graph=graph)
        for s, p in rows
    ]


@pytest.mark.parametrize("graph", [False, True])
def test_rows_trained_at_once_in_threads_with_or_without_cuda_graph_train_as_one_by_one(
    device, graph
):
    """run_together (reproduce's rows_at_once): trainings in threads, each on its own CUDA stream,
    with or without --cuda-graph (captures in thread_local mode, one at a time), end as the same
    trainings one by one."""
    from robustweights.distributed import run_together

    if graph and device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    rows = [(0, "stoch-sign"), (1, "sign"), (2, "stoch-mult:gamma=0.5")]
    configs = _small_runs(device, graph, rows, train_subset=620, test_subset=300, lr=3e-3)
    alone = [rw.train(c, progress=False) for c in configs]
    together = run_together(
        [lambda stop, c=c: rw.train(c, progress=False) for c in configs], 3, device
    )
    cpu = (
        device.type == "cpu"
    )  # a GPU's atomics (pooling, cuDNN's backward) may round another way in any run
    for a, b in zip(alone, together):
        assert [h["train_loss"] for h in b.history] == pytest.approx(
            [h["train_loss"] for h in a.history], rel=1e-6 if cpu else 2e-2
        )
        assert b.test_error == pytest.approx(a.test_error, abs=0 if cpu else 0.03)
        if cpu:  # the same operations in the same order: bit for bit
            assert all(
                torch.equal(v, w)
                for v, w in zip(a.model.state_dict().values(), b.model.state_dict().values())
            )


@pytest.mark.parametrize("graph", [False, True])
def test_fused_networks_on_the_device_with_or_without_cuda_graph_train_as_separate_ones(
    device, graph
):
    """fused_training.train_fused (reproduce's fused=K, train --fused-seeds K) on the device, eager
    and as one CUDA graph a step: each network ends near its separate training (SGD; a GPU's
    atomics round another way in any run, so within 2e-2 of the losses and 3 points of error)."""
    from robustweights.fused_training import train_fused

    if device.type != "cuda":
        pytest.skip("a GPU check (the CPU's is tests/test_fused_training.py)")

    def configs():
        return _small_runs(
            device, graph, [(0, "stoch-sign"), (1, "sign")], train_subset=400, test_subset=200,
            optimizer="sgd", lr=0.01,
        )  # fmt: skip

    alone = [rw.train(c, progress=False) for c in configs()]
    fused = train_fused(configs(), progress=False)
    for a, b in zip(alone, fused):
        assert [h["train_loss"] for h in b.history] == pytest.approx(
            [h["train_loss"] for h in a.history], rel=2e-2
        )
        assert b.test_error == pytest.approx(a.test_error, abs=0.03)
