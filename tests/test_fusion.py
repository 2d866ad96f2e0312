"""robustweights.fusion: K networks trained as one fused network equal K separate trainings.

Step by step, on random data: each network its own projection (float, sign with Glorot H,
stoch-sign with H = 1, sign in mode fwd, clip only), its own seed, its own batches; after every step
each network's weights, batch-norm statistics, optimizer state, loss and wrong count agree with its
separate training within float rounding, and the random draws are the same ones.

Adam is checked in float64: in float32 the separate and the fused runs part within a step or two,
for a reason that is not fusion's. A linear layer's bias before a batch norm has a gradient that is
zero but for rounding (about 1e-9, the batch norm takes the mean out), and Adam divides it by its
own root mean square: rounding becomes a step of the learning rate's size, of either sign (and a
sign network's hidden weight a step from 0 flips). In float64 the rounding is 1e-16 and stays below
Adam's epsilon; SGD, which does not divide, is checked in float32.
"""

import contextlib

import pytest
import torch
from torch import nn

from robustweights import fusion, models, projected
from robustweights.errors import UserError
from robustweights.fused_training import make_fused_step
from robustweights.steps import make_step

CPU = torch.device("cpu")
# (projection, mode, clip): the reproduce rows float, sign, stoch-sign, sign-fwd, clip
ROWS = [
    ("identity", "fwd+bwd", None),
    ("sign", "fwd+bwd", "glorot"),
    ("stoch-sign", "fwd+bwd", 1.0),
    ("sign", "fwd", "glorot"),
    ("identity", "none", 0.05),
]


def _network(model: str, k: int, row) -> tuple[nn.Module, torch.Generator]:
    """Network ``k`` of ``ROWS``: seeded by ``k``, its projection drawing from its own
    generator."""
    torch.manual_seed(k)
    shape = (1, 8, 8) if model == "cnn" else (3, 8, 8)
    m = models.create_model(model, num_classes=5, in_shape=shape, width=0.125)
    g = torch.Generator().manual_seed(100 + k)
    projection, mode, clip = row
    projected.attach(m, projection, mode=mode, clip=clip, generator=g)
    return m, g


@contextlib.contextmanager
def _default_dtype(dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _optimizer(name: str, params):
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-2)
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _trained_both_ways(model: str, rows, steps: int, check, optimizer="adam"):
    """Train ``rows`` separately and fused on the same batches; ``check(k, ...)`` after each
    step."""
    separate = [_network(model, k, r) for k, r in enumerate(rows)]
    together = [_network(model, k, r) for k, r in enumerate(rows)]
    fused = fusion.fuse([m for m, _ in together])
    opts = [_optimizer(optimizer, m.parameters()) for m, _ in separate]
    plain_steps = [
        make_step(m, m, o, "ce", amp=False, channels_last=False, device=CPU)
        for (m, _), o in zip(separate, opts)
    ]
    fused_opt = _optimizer(optimizer, fused.parameters())
    fused_step = make_fused_step(fused, fused_opt, "ce", amp=False, channels_last=False, device=CPU)
    data = torch.Generator().manual_seed(5)
    in_c = 1 if model == "cnn" else 3
    for step in range(steps):
        xs = [torch.randn(16, in_c, 8, 8, generator=data) for _ in rows]
        ys = [torch.randint(0, 5, (16,), generator=data) for _ in rows]
        losses, wrong = fused_step(torch.cat(xs, 1), torch.stack(ys, 1), check=step == 0)
        for k in range(len(rows)):
            loss_k, wrong_k = plain_steps[k](xs[k], ys[k], check=step == 0)
            check(k, separate[k], together[k][1], fused, fused_opt, opts[k], losses, wrong, loss_k)
            assert wrong[k] == wrong_k
    return separate, together, fused


def _close(a, b, tol=1e-5, floor=0.0):
    """Equal within ``tol`` of the tensor's scale (its largest magnitude), or within ``floor``:
    the rounding of a float sum of many terms is relative to their size, not to each result."""
    assert a.shape == b.shape and a.dtype == b.dtype
    if not a.dtype.is_floating_point:
        assert torch.equal(a, b)
        return
    bound = tol * b.abs().max().item() + floor
    assert (a - b).abs().max() <= bound, ((a - b).abs().max(), bound)


def _checker(tol, floor):
    """Losses, weights and statistics within ``tol`` of their scale; the optimizer's state too, or
    within ``floor`` (a rounding-level gradient's moments are rounding)."""

    def check(k, plain, fused_gen, fused, fused_opt, opt, losses, wrong, loss_k):
        model, gen = plain
        _close(losses[k], loss_k, tol)
        state = fusion.network_state(fused, k)
        assert list(state) == list(model.state_dict())
        for key, v in model.state_dict().items():
            _close(state[key], v, tol)
        # the optimizer state handed back: what the separate optimizer holds
        split = fusion.split_optimizer_state(fused, fused_opt.state_dict(), k)
        for i, s in opt.state_dict()["state"].items():
            for name, v in s.items():
                if isinstance(v, torch.Tensor):
                    _close(split["state"][i][name], v, tol, floor)
        # the same random draws: both generators have drawn as much
        assert torch.equal(fused_gen.get_state(), gen.get_state())

    return check


def test_fused_adam_training_equals_separate_trainings_step_by_step():
    with _default_dtype(torch.float64):
        _trained_both_ways("cnn", ROWS, 5, _checker(1e-6, 1e-12))


def test_fused_sgd_training_equals_separate_trainings_in_float32():
    _trained_both_ways("cnn", ROWS, 6, _checker(5e-5, 1e-6), optimizer="sgd")


def test_fused_bc_vgg_equals_separate_trainings():
    """The paper's CIFAR network (two linear layers of its own, six convolutions)."""
    with _default_dtype(torch.float64):
        _trained_both_ways("bc-vgg", ROWS[1:4], 4, _checker(1e-6, 1e-12))


def test_a_network_split_out_loads_into_its_plain_class_and_computes_the_same():
    # (trained a little: the batch-norm statistics moved)
    separate, together, fused = _trained_both_ways("cnn", ROWS[:3], 2, lambda *a: None, "sgd")
    x = torch.randn(4, 1, 8, 8)
    fused.eval()
    out = fusion.split_logits(fused(torch.cat([x] * 3, 1)), 3)
    for k, (projection, mode, clip) in enumerate(ROWS[:3]):
        plain = models.create_model("cnn", num_classes=5, in_shape=(1, 8, 8), width=0.125)
        plain.load_state_dict(fusion.network_state(fused, k))  # strict: the plain keys exactly
        projected.attach(plain, projection, mode=mode, clip=clip)
        _close(out[:, k], plain.eval()(x))
        _close(out[:, k], separate[k][0].eval()(x), 1e-4)  # (2 SGD steps in float32)


def test_fused_eval_uses_each_networks_evaluation_weights():
    """Outside training a sign network computes with its binary weights, a stoch-sign one with its
    hidden weights (docs/method.md section 3), in the fused network as alone."""
    nets = [_network("cnn", k, r)[0] for k, r in enumerate(ROWS[:3])]
    fused = fusion.fuse(nets).eval()
    x = torch.randn(4, 1, 8, 8)
    out = fusion.split_logits(fused(torch.cat([x] * 3, 1)), 3)
    for k, m in enumerate(nets):
        torch.testing.assert_close(out[:, k], m.eval()(x), rtol=1e-5, atol=1e-5)


def test_fusing_draws_nothing_from_the_global_random_state():
    nets = [_network("bc-vgg", k, ROWS[0])[0] for k in range(2)]
    before = torch.random.get_rng_state()
    fusion.fuse(nets)
    assert torch.equal(before, torch.random.get_rng_state())


def test_networks_of_other_architectures_are_refused():
    a = models.create_model("cnn", num_classes=5, in_shape=(1, 8, 8), width=0.125)
    b = models.create_model("cnn", num_classes=5, in_shape=(1, 8, 8), width=0.25)
    with pytest.raises(UserError, match="network 1's 0 is Conv2d.*one architecture"):
        fusion.fuse([a, b])


def test_a_module_fusion_cannot_act_per_network_on_is_refused():
    nets = [nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)) for _ in range(2)]
    with pytest.raises(UserError, match="1 is a Dropout"):
        fusion.fuse(nets)
    nets = [nn.Sequential(nn.Flatten(0)) for _ in range(2)]
    with pytest.raises(UserError, match="0 is a Flatten"):
        fusion.fuse(nets)


def test_resnet18_fuses_and_computes_each_network():
    torch.manual_seed(0)
    nets = [
        models.create_model("resnet18", num_classes=3, in_shape=(3, 8, 8), width=0.0625)
        for _ in range(2)
    ]
    for k, m in enumerate(nets):
        projected.attach(m, ["identity", "sign"][k])
    fused = fusion.fuse(nets).eval()
    x = torch.randn(2, 3, 8, 8)
    out = fusion.split_logits(fused(torch.cat([x, x], 1)), 2)
    for k, m in enumerate(nets):
        torch.testing.assert_close(out[:, k], m.eval()(x), rtol=1e-5, atol=1e-5)
