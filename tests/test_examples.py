"""The worked examples of the README run, at a small size, and sweep metrics other than the
error."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import robustweights as rw

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name):
    spec = importlib.util.spec_from_file_location(f"rw_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not example("char_lm").CORPUS.is_dir(), reason="no /usr/share/common-licenses here"
)
def test_language_model_swept_for_perplexity(tmp_path):
    lm = example("char_lm")
    model, evaluate = lm.build(steps=60, context=32, batch=16)
    base = evaluate(model)["perplexity"]
    assert 1 < base < 40  # learnt something: the alphabet has about 90 symbols
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = rw.sweep(
        model,
        None,
        ["add-gauss:sigma=0,1", "quant:bits=8", "sign"],
        evaluate=evaluate,
        metric="perplexity",
        trials=2,
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    by = {(r["spec"], r["trial"]): r for r in rows}
    assert all(r["metric"] == "perplexity" and r["error"] is None for r in rows)
    assert by[("add-gauss:sigma=0.0", 0)]["score"] == pytest.approx(
        base, rel=1e-5
    )  # no noise: as trained
    assert by[("quant:bits=8,scale=max", 0)]["score"] == pytest.approx(base, rel=0.05)
    assert (
        by[("add-gauss:sigma=1.0", 0)]["score"] > 2 * base
        and by[("sign:scale=max", 0)]["score"] > 2 * base
    )
    # the user's tied embedding is one weight, distorted for both of its readers
    rw.attach(model, "identity", mode="none", clip=None)
    assert [s.name for s in rw.sites(model)][:2] == ["pos", "embed.weight"]
    assert len(rw.sites(model)[1].holders) == 2
    rw.detach(model)
    prov = rw.sweeps.save_sweep(
        tmp_path / "sweep", rows, label="lm", baseline=base, description="licences"
    )
    assert prov["metric"] == "perplexity" and not prov["higher_is_better"]
    assert (
        prov["lowest_bits"]["spec"] == "quant:bits=8,scale=max"
    )  # the only cell within 1% of the baseline?
    r = rw.report([tmp_path / "sweep"], tmp_path / "report")
    md = Path(r["md"]).read_text()
    assert "undistorted perplexity" in md and "Mean test perplexity at chosen strengths" in md
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["baseline_score"] == base


def test_a_metric_missing_from_the_evaluation_is_one_clear_error():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(
        rw.UserError, match="the evaluation gave no 'perplexity' \\(it gave: mse\\)"
    ):
        rw.sweep(model, None, ["sign"], evaluate=lambda m: {"mse": 1.0}, metric="perplexity")
    with pytest.raises(rw.UserError, match="give data to test on"):
        rw.sweep(model, None, ["sign"])


def test_a_regressor_swept_for_mse_through_a_dataloader():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = (model(x).squeeze(1) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)

    def mse(m):
        with torch.no_grad():
            return {
                "mse": sum((m(a).squeeze(1) - b).square().sum().item() for a, b in loader) / len(x)
            }

    rows = rw.sweep(model, loader, ["add-gauss:sigma=0,0.5"], evaluate=mse, metric="mse", trials=3)
    clean = [r["score"] for r in rows if r["value"] == 0]
    noisy = [r["score"] for r in rows if r["value"] == 0.5]
    assert max(clean) < 1e-3 and min(noisy) > 0.1


def test_transformer_classifier_example(tmp_path):
    tc = example("transformer_classifier")
    data = rw.data.load_data("demo", preprocess="none", train_subset=1000, test_subset=300)
    model = tc.train(data, epochs=1)
    rows = rw.sweep(model, data, ["add-gauss:sigma=0,1"], trials=1)
    base = rw.evaluation.evaluate_split(model, data.test)["error"]
    assert rows[0]["error"] == base and rows[1]["error"] > base + 0.05


def test_pcm_chip_example_from_the_command_line_gives_the_python_numbers(
    tmp_path, capsys, monkeypatch
):
    """README "Analog hardware": the user's transformer, trained by the example, swept on a PCM
    chip from Python and from the command line (``--model-factory examples.pcm_chip:...``)
    gives the same error in every cell; the report draws the error against time."""
    from conftest import run_main

    pc = example("pcm_chip")
    data = rw.data.load_data("demo", test_subset=200)
    model = pc.train("transformer", data, train_subset=300)
    torch.save(model.state_dict(), tmp_path / "transformer.pt")
    specs = ["pcm:t=1,3.15e7", "pcm:t=1,3.15e7,compensation=none"]
    rows = rw.sweep(model, data, specs, trials=1)
    monkeypatch.syspath_prepend(str(EXAMPLES.parent))  # the repository root, as the CLI's cwd
    code, out, err = run_main(
        capsys,
        *("sweep", "--model-factory", "examples.pcm_chip:transformer"),
        *("--state-dict", str(tmp_path / "transformer.pt"), "--dataset", "demo"),
        *("--test-subset", "200", "--trials", "1", "--quiet", "--out", str(tmp_path / "cli")),
        *("--distortion", specs[0], "--distortion", specs[1]),
    )
    assert code == 0, err
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    cli = cli["rows"] if isinstance(cli, dict) else cli
    assert [(r["spec"], r["trial"], r["error"]) for r in cli] == [
        (r["spec"], r["trial"], r["error"]) for r in rows
    ]
    year = {r["spec"].split(",")[1]: r["error"] for r in rows if r["value"] == 3.15e7}
    assert year["compensation=none"] > year["compensation=global"]  # drift uncompensated
    r = rw.report([tmp_path / "cli"], tmp_path / "report")
    assert (Path(r["md"]).parent / "error_vs_time.png").is_file()
