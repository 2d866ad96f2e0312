"""Reports of a sweep over time since programming: a log time axis, compensation on and off side
by side, the spread over chips, the device parameters in the caption."""

import pytest
import torch
from torch import nn

import robustweights as rw
from robustweights.measures import measure_split
from robustweights.reports import figures
from robustweights.reports.sources import Source, load_results
from robustweights.splits import TensorSplit
from robustweights.sweep_runs import save_sweep

TIMES = [1.0, 3600.0, 86400.0, 3.15e7]
GRID = "pcm:t=1,3600,86400,3.15e7"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tiny network swept over t with compensation global and none, 3 chips."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(400, 1, 3, 4)
    with torch.no_grad():
        y = model(x + 0.3 * torch.randn_like(x)).argmax(1)  # learnable, not perfect
    split = TensorSplit(x, y)
    rows = rw.sweep(model, split, [GRID, GRID + ",compensation=none"], trials=3)
    folder = tmp_path_factory.mktemp("pcm") / "sweep"
    baseline = measure_split(model, split, "error")["error"]
    save_sweep(folder, rows, label="tiny", baseline=baseline, description="random inputs")
    return folder, list(rows)


def test_the_time_figure_has_a_log_axis_both_compensations_and_the_spread(swept):
    folder, rows = swept
    source = Source(folder, *load_results(folder))
    keys = list(source.curves)
    assert [figures.is_time(k) for k in keys] == [True, True]
    fig = figures.fig_time([source], keys, figures.palette(1), "random inputs", "test error (%)")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2  # compensation on and off side by side
    assert [ax.get_title() for ax in axes] == ["pcm, compensation=global", "pcm, compensation=none"]
    for ax, comp in zip(axes, ("global", "none")):
        assert ax.get_xscale() == "log"
        errors = {
            t: [100 * r["error"] for r in rows if r["value"] == t and f"={comp}," in r["spec"]]
            for t in TIMES
        }
        assert all(len(e) == 3 for e in errors.values())
        (line,) = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(TIMES)]
        assert list(line.get_xdata()) == TIMES
        assert list(line.get_ydata()) == pytest.approx([sum(e) / 3 for e in errors.values()])
        (band,) = ax.collections  # the spread over chips: lowest to highest trial
        ys = band.get_paths()[0].vertices[:, 1]
        assert min(ys) == pytest.approx(min(min(e) for e in errors.values()))
        assert max(ys) == pytest.approx(max(max(e) for e in errors.values()))
        assert [t.get_text() for t in ax.get_xticklabels()] == [
            "1 s",
            "1 min",
            "1 h",
            "1 day",
            "1 month",
            "1 year",
        ]
    text = fig.get_suptitle()
    assert "against time since programming" in text
    assert "tile=512, prog=1.0, drift=1.0, read=1.0, g_max=25.0" in text.replace("\n", " ")


def test_the_report_renders_the_time_figure_with_the_device_parameters(swept, tmp_path):
    folder, _ = swept
    out = rw.report([folder], tmp_path / "report")
    assert (tmp_path / "report" / "error_vs_time.png") in out["figures"]
    md = out["md"].read_text()
    assert "![error_vs_time.png](error_vs_time.png)" in md
    assert "Device parameters: pcm (Weights on phase-change memory (Joshi et al. 2020" in md
    assert "tile=512, prog=1.0, drift=1.0, read=1.0, g_max=25.0." in md
    assert "log axis" in out["html"].read_text()


def test_without_a_time_sweep_there_is_no_time_figure(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).eval()
    split = TensorSplit(torch.randn(50, 1, 2, 3), torch.randint(0, 3, (50,)))
    rows = rw.sweep(model, split, ["add-gauss:sigma=0,0.5", "pcm:prog=0.5,1"], trials=1)
    save_sweep(tmp_path / "s", rows, label="lin", baseline=0.5, description="random")
    out = rw.report([tmp_path / "s"], tmp_path / "r")
    assert not (tmp_path / "r" / "error_vs_time.png").exists()
    assert "error_vs_time" not in out["md"].read_text()
