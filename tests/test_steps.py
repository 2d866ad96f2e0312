"""robustweights.steps: the training step, and what `train --cuda-graph` needs that a CPU can check.

The graph itself needs a GPU: tests/test_device.py captures it (pytest --device cuda).
"""

import pytest
import torch
from torch import nn

from conftest import one_error_line, run_main
from robustweights import projected
from robustweights.steps import GraphedStep, make_step, restore, set_lr, snapshot


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(7)
    projected.attach(model, "stoch-sign", generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = make_step(
        model, model, opt, "ce", amp=False, channels_last=False, device=torch.device("cpu")
    )
    return model, opt, g, step


def test_warm_up_steps_are_undone_exactly_and_in_place():
    """Capture needs warm-up steps on a real batch; GraphedStep undoes them, so that training with
    the graph starts where training without it does. Adam's state made during the warm-up is zeroed
    (its state before a first step), and every tensor keeps its storage (a captured graph holds the
    addresses)."""
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    model, opt, g, step = _setup()
    fresh_model, fresh_opt, fresh_g, fresh_step = _setup()
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    saved = snapshot(model, opt, [g])
    for _ in range(3):
        step(x, y)
    assert not torch.equal(projected.hidden(model[0]), projected.hidden(fresh_model[0]))
    restore(model, opt, [g], saved)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == ptrs
    for _ in range(2):  # then training goes on exactly as from the start
        a, b = step(x, y), fresh_step(x, y)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(
        torch.equal(v, w)
        for v, w in zip(model.state_dict().values(), fresh_model.state_dict().values())
    )
    assert torch.equal(g.get_state(), fresh_g.get_state())


def test_set_lr_writes_a_tensor_lr_in_place_and_a_number_plainly():
    p = nn.Parameter(torch.zeros(2))
    lr = torch.tensor(0.1)
    opt = torch.optim.Adam([p], lr=lr)
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == 0.25
    opt = torch.optim.Adam([p], lr=0.1)
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] == 0.25


def test_graphed_step_needs_a_capturable_optimizer_with_a_tensor_lr():
    model, opt, g, step = _setup()
    with pytest.raises(ValueError, match="capturable"):
        GraphedStep(step, model, opt, [g])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--cuda-graph", "--compile"], "cuda_graph"),
        (["--cuda-graph", "--optimizer", "sgd"], "cuda_graph"),
        (["--cuda-graph", "--device", "cpu"], "cuda_graph"),
    ],
)
def test_cuda_graph_mistakes_are_one_line(capsys, argv, words):
    code, _, err = run_main(capsys, "train", "--model", "mlp", "--dataset", "demo", *argv)
    assert code == 2 and words in one_error_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_graph_on_a_machine_without_a_gpu_is_one_line_and_writes_nothing(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "train", "--model", "mlp", "--dataset", "demo", "--epochs", "1", "--cuda-graph"
    )
    assert code == 2 and "cuda_graph needs a GPU" in one_error_line(err)
    code, _, err = run_main(
        capsys,
        "reproduce",
        "all",
        "--scale",
        "tiny",
        "--set",
        "cuda_graph=true",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert (
        code == 2
        and "cuda_graph needs a GPU" in one_error_line(err)
        and not (tmp_path / "r").exists()
    )
