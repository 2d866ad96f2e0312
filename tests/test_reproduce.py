"""`robustweights reproduce`: presets, overrides, verdict rules, and every experiment at tiny scale
end to end."""

import json
import re
import shutil
from pathlib import Path

import pytest

import robustweights as rw
from robustweights.paper import claims as cl
from conftest import need_fashion_mnist, one_error_line, run_main
from robustweights.paper import experiments as rp

KEYS = {"claim", "statement", "paper", "measured", "setting", "verdict"}


@pytest.fixture(scope="module")
def tiny_all(tmp_path_factory):
    need_fashion_mnist()
    out = tmp_path_factory.mktemp("repro") / "all"
    result = rw.reproduce("all", "tiny", out, progress=False)
    return out, result


def test_tiny_all_trains_sweeps_reports_and_judges(tiny_all):
    out, result = tiny_all
    claims = json.loads((out / "claims.json").read_text())
    assert [c["claim"] for c in claims] == [1, 2, 3, 4, 5]
    assert all(KEYS <= c.keys() and c["verdict"] in cl.VERDICTS for c in claims)
    by = {c["claim"]: c for c in claims}
    # claims 1 and 3 are judged at any scale; 2 and 5 only at the paper's; 4 needs ImageNet
    assert by[1]["verdict"] in ("reproduced", "not reproduced")
    assert by[3]["verdict"] in ("reproduced", "not reproduced")
    assert by[2]["verdict"] == by[4]["verdict"] == by[5]["verdict"] == "not run at this scale"
    assert "Fashion-MNIST" in by[1]["setting"] and "mlp" in by[1]["setting"]
    assert re.search(r"\d\.\d\d bits per weight", by[2]["measured"])  # "1.00 bits", not "1 bits"
    # every row trained to a sane error on real data (10 classes: chance is 90%)
    assert set(result["sweeps"]) == set(rp.MATRIX_ROWS)
    for row, s in result["sweeps"].items():
        assert s["baseline_error"] < 0.35, (row, s["baseline_error"])
    # the sign row tested with its own binary weights: sign and power distortions of binary weights
    # change nothing
    sign = result["sweeps"]["sign"]
    for r in sign["rows"]:
        if r["distortion"] in ("sign", "power", "quant"):
            assert r["error"] == sign["baseline_error"]
    # files: report with the claims table, provenance with commit, machine and time
    html = (out / "report" / "report.html").read_text()
    assert "Claims (docs/method.md section 1)" in html and "not run at this scale" in html
    assert (out / "report" / "matrix.png").exists() and (out / "claims.md").read_text().count(
        "\n"
    ) == 7
    record = json.loads((out / "reproduce.json").read_text())
    session = record["sessions"][-1]
    assert session["git_commit"] and session["machine"] and session["seconds"] > 0
    assert record["preset"] == rp.resolve_preset("tiny")
    assert not list(out.rglob("*.tmp*"))


def test_rerun_resumes_without_retraining_and_gives_identical_claims(tiny_all):
    out, _ = tiny_all
    ckpt = out / "train" / "sign" / "checkpoint.pt"
    before = (ckpt.read_bytes(), (out / "sweeps" / "sign" / "results.json").read_bytes())
    claims = (out / "claims.json").read_text()
    again = rw.reproduce("all", "tiny", out, progress=False)
    assert (ckpt.read_bytes(), (out / "sweeps" / "sign" / "results.json").read_bytes()) == before
    assert json.dumps(again["claims"], indent=2) + "\n" == claims
    assert len(json.loads((out / "reproduce.json").read_text())["sessions"]) == 2


def test_same_seed_same_numbers_in_a_new_folder(tiny_all, tmp_path):
    out, first = tiny_all
    r = rw.reproduce("stoch-proj", "tiny", tmp_path / "sp", progress=False)
    for row in ("stoch-mult", "sign", "stoch-sign"):
        assert r["sweeps"][row]["baseline_error"] == first["sweeps"][row]["baseline_error"]
        assert r["trained"][row]["test_error"] == first["trained"][row]["test_error"]
    c5 = r["claims"][4]
    assert c5["verdict"] == "not run at this scale" and "stoch-mult" in c5["measured"]


def test_effective_bits_experiment(tmp_path, capsys):
    need_fashion_mnist()
    code, out, err = run_main(
        capsys,
        "reproduce",
        "effective-bits",
        "--scale",
        "tiny",
        "--out",
        str(tmp_path / "eb"),
        "--quiet",
        "--set",
        "target_error=0.5",
    )
    assert code == 0, err
    claims = json.loads((tmp_path / "eb" / "claims.json").read_text())
    c2 = claims[1]
    # target 50%: the grid's strongest noise (sigma 1.2 of std(W)) keeps the binarized MLP (sign,
    # the one such network of this experiment) below it; its +-H weights carry (about) the nominal
    # bits there. The float and stoch-mult rows are named, not counted (before, the lowest bits of
    # any row, float included, decided).
    assert c2["best"]["row"] == "sign" and c2["best"]["spec"] == "add-gauss:sigma=1.2"
    assert c2["best"]["effective_bits"] == pytest.approx(
        0.5 * __import__("math").log2(1 + 1 / 1.2**2), abs=1e-3
    )
    assert "not binarized, not counted: identity" in c2["measured"]
    assert c2["verdict"] == "not run at this scale" and "claims" in out


def test_imagenet_path_on_generated_folders(tmp_path, capsys):
    code, out, err = run_main(
        capsys,
        "reproduce",
        "imagenet",
        "--scale",
        "tiny",
        "--out",
        str(tmp_path / "in"),
        "--quiet",
        "--set",
        "epochs=2",
    )
    assert code == 0, err
    assert "no ImageNet on this machine" in out
    c4 = json.loads((tmp_path / "in" / "claims.json").read_text())[3]
    assert c4["verdict"] == "not run at this scale" and "generated image folders" in c4["measured"]
    assert "resnet18" in c4["measured"]
    assert len(list((tmp_path / "in" / "data" / "train").iterdir())) == 4


def _sweep(base, rises):
    rows = []
    for col, rise in rises.items():
        name, scale = (
            ("add-gauss", "max")
            if col == "add-gauss-max"
            else (col, "std" if col == "add-gauss" else None)
        )
        rows.append(
            {"distortion": name, "value": cl.REFERENCE[col], "error": base + rise, "scale": scale}
        )
    return {"baseline_error": base, "rows": rows}


def test_claim_1_rule():
    """Both BinaryConnect networks against the float one; the range-relative noise decides, every
    column counts."""
    preset = rp.resolve_preset("tiny")
    float_ = _sweep(0.10, {"add-gauss": 0.20, "add-gauss-max": 0.60, "sign": 0.60})
    good = {"add-gauss": 0.05, "add-gauss-max": 0.10, "sign": 0.0}
    ok = rp.judge(
        "matrix",
        preset,
        {"identity": float_, "sign": _sweep(0.11, good), "stoch-sign": _sweep(0.12, good)},
        {},
        "s",
    )
    assert (
        ok[0]["verdict"] == "reproduced"
        and ok[0]["rule"] == cl.RULE_1
        and "scale=max" in ok[0]["headline"]
    )
    assert (
        "add-gauss sigma=0.8 of max|W|: float +60.0, sign +10.0, stoch-sign +10.0"
        in ok[0]["measured"]
    )
    assert ok[0]["measured"].startswith(
        "undistorted: float 10.00%, sign 11.00%, stoch-sign 12.00%;"
    )
    # the stochastic network not slower under the headline noise: not reproduced, whatever the sign
    # one does
    one = rp.judge(
        "matrix",
        preset,
        {
            "identity": float_,
            "sign": _sweep(0.11, good),
            "stoch-sign": _sweep(0.12, {**good, "add-gauss-max": 0.35}),
        },
        {},
        "s",
    )
    assert (
        one[0]["verdict"] == "not reproduced"
        and "stoch-sign +35.0 (not slower)" in one[0]["measured"]
    )
    # noise relative to std(W) is reported and counts as any other column
    std = rp.judge(
        "matrix",
        preset,
        {
            "identity": float_,
            "sign": _sweep(0.11, {**good, "add-gauss": 0.11}),
            "stoch-sign": _sweep(0.12, good),
        },
        {},
        "s",
    )
    assert std[0]["verdict"] == "not reproduced" and "sign +11.0 (not slower)" in std[0]["measured"]
    # a column where neither moves shows nothing: skipped, but the headline column must show
    # something
    flat = _sweep(0.10, {"add-gauss": 0.01, "add-gauss-max": 0.01, "sign": 0.60})
    tiny = {"add-gauss": 0.015, "add-gauss-max": 0.015, "sign": 0.0}
    nothing = rp.judge(
        "matrix",
        preset,
        {"identity": flat, "sign": _sweep(0.11, tiny), "stoch-sign": _sweep(0.11, tiny)},
        {},
        "s",
    )
    assert nothing[0]["verdict"] == "not reproduced" and "(no change)" in nothing[0]["measured"]
    assert cl.slower(0.01, 0.02) == "slower" and cl.slower(0.0101, 0.02) == "not slower"


def test_a_claim_whose_rows_were_not_all_trained_is_not_run():
    preset = rp.resolve_preset("tiny")
    float_ = _sweep(0.10, {"add-gauss": 0.20, "add-gauss-max": 0.60, "mult-gauss": 0.1})
    good = _sweep(0.11, {"add-gauss": 0.05, "add-gauss-max": 0.10, "mult-gauss": 0.01})
    claims = rp.judge(
        "all", preset, {"identity": float_, "sign": good, "stoch-sign": good}, {}, "s"
    )
    assert claims[0]["verdict"] == "reproduced"
    # before: claim 3 "reproduced" with none of the clip, sign-fwd, power and stoch-mult rows
    # trained
    assert claims[2]["verdict"] == "not run" and claims[2]["missing_rows"] == [
        "clip",
        "sign-fwd",
        "power",
        "stoch-mult",
    ]
    assert "did not train clip, sign-fwd, power, stoch-mult" in claims[2]["measured"]
    assert claims[4]["verdict"] == "not run" and claims[4]["missing_rows"] == ["stoch-mult"]
    only_sign = rp.judge("matrix", preset, {"identity": float_, "sign": good}, {}, "s")
    assert only_sign[0]["verdict"] == "not run" and "stoch-sign" in only_sign[0]["measured"]
    all_rows = {r: good for r in cl.NEEDS[3]} | {"identity": float_}
    claims = rp.judge("matrix", preset, all_rows, {}, "s")
    assert claims[2]["verdict"] == "reproduced" and claims[2]["rule"] == cl.RULE_3
    worse = rp.judge(
        "matrix",
        preset,
        {
            **all_rows,
            "power": _sweep(0.11, {"add-gauss": 0.05, "add-gauss-max": 0.7, "mult-gauss": 0.01}),
        },
        {},
        "s",
    )
    assert (
        worse[2]["verdict"] == "not reproduced"
        and "power: 11.00%, rise +5.0, +70.0, +1.0 (not below float)" in worse[2]["measured"]
    )


def test_claims_2_and_5_are_judged_only_at_paper_scale():
    paper = rp.resolve_preset("paper")
    assert (
        cl.paper_scale(paper)
        and not cl.paper_scale(rp.resolve_preset("cpu"))
        and cl.shortfall(paper) is None
    )
    row = {
        "distortion": "add-gauss",
        "param": "sigma",
        "value": 0.8,
        "error": 0.105,
        "effective_bits": 0.678,
        "spec": "add-gauss:sigma=0.8",
    }
    other = {"baseline_error": 0.09, "rows": []}
    sweeps = {
        "stoch-mult": {"baseline_error": 0.075, "rows": []},
        "sign": {"baseline_error": 0.09, "rows": [row]},
        "stoch-sign": other,
    }
    claims = rp.judge("all", paper, sweeps, {}, "s")
    assert claims[1]["verdict"] == "reproduced" and claims[4]["verdict"] == "reproduced"
    worse = {
        "stoch-mult": {"baseline_error": 0.08, "rows": []},
        "sign": {"baseline_error": 0.09, "rows": [{**row, "error": 0.12}]},
        "stoch-sign": other,
    }
    claims = rp.judge("all", paper, worse, {}, "s")
    assert claims[1]["verdict"] == "not reproduced" and claims[4]["verdict"] == "not reproduced"
    claims = rp.judge("all", rp.resolve_preset("cpu"), sweeps, {}, "s")
    assert claims[1]["verdict"] == claims[4]["verdict"] == "not run at this scale"
    # A run short of the recipe's budget (before: 114 of 500 epochs was judged 'not reproduced'
    # against the 500-epoch figures): meeting the figure still reproduces it, missing it says
    # nothing of the recipe.
    short = {**paper, "epochs": 114}
    assert cl.shortfall(short) == "114 of the recipe's 500 epochs"
    claims = rp.judge("all", short, worse, {}, "s")
    assert claims[1]["verdict"] == claims[4]["verdict"] == "not run at this scale"
    assert "114 of the recipe's 500 epochs" in claims[4]["note"]
    claims = rp.judge("all", {**paper, "val_size": None}, sweeps, {}, "s")
    assert (
        claims[1]["verdict"] == claims[4]["verdict"] == "reproduced"
        and "no validation split" in claims[4]["note"]
    )


def test_claim_2_reads_only_networks_trained_with_binarized_weights():
    """Claim 2 is about 'one such network' (trained with binarized weights): before, a float network
    meeting 0.68 bits reproduced it, and a run without any binarized row was judged."""
    paper = rp.resolve_preset("paper")
    good = {
        "distortion": "add-gauss",
        "param": "sigma",
        "value": 0.8,
        "error": 0.105,
        "effective_bits": 0.678,
        "spec": "add-gauss:sigma=0.8",
    }
    meets = {"baseline_error": 0.09, "rows": [good]}
    misses = {"baseline_error": 0.09, "rows": [{**good, "error": 0.2}]}
    claims = rp.judge(
        "effective-bits", paper, {"identity": meets, "stoch-mult": meets, "sign": misses}, {}, "s"
    )
    assert claims[1]["verdict"] == "not reproduced"
    assert (
        "not binarized, not counted: identity 0.68, stoch-mult 0.68 bits" in claims[1]["measured"]
    )
    claims = rp.judge("effective-bits", paper, {"identity": meets, "stoch-mult": meets}, {}, "s")
    assert (
        claims[1]["verdict"] == "not run"
        and "one of the rows sign, stoch-sign, sign-fwd" in claims[1]["measured"]
    )
    claims = rp.judge("effective-bits", paper, {"identity": misses, "stoch-sign": meets}, {}, "s")
    assert claims[1]["verdict"] == "reproduced" and claims[1]["best"]["row"] == "stoch-sign"


def test_claim_4_reads_both_noise_references_with_the_range_as_headline():
    """method.md 5a: a verdict reports the rises under std(W) and max|W| and names its headline
    (before: the std(W) rise alone decided, with no rule or headline)."""
    preset = rp.resolve_preset("tiny")

    def sweep(base, std, mx):
        rows = [
            {
                "distortion": "add-gauss",
                "value": 0.8,
                "error": base + std,
                "spec": "add-gauss:sigma=0.8",
            },
            {
                "distortion": "add-gauss",
                "value": 0.8,
                "error": base + mx,
                "scale": "max",
                "spec": "add-gauss:sigma=0.8,scale=max",
            },
        ]
        return {"baseline_error": base, "rows": rows}

    fine = {"identity": sweep(0.3, 0.30, 0.40), "sign": sweep(0.32, 0.05, 0.1)}
    claims = rp.judge("imagenet", preset, fine, {}, "s", imagenet_data="/data/imagenet")
    assert (
        claims[3]["verdict"] == "reproduced"
        and claims[3]["rule"] == cl.RULE_4
        and "scale=max" in claims[3]["headline"]
    )
    assert (
        "of max|W|: float +40.0, sign +10.0" in claims[3]["measured"]
        and "of std(W): float +30.0" in claims[3]["measured"]
    )
    range_worse = {"identity": sweep(0.3, 0.30, 0.01), "sign": sweep(0.32, 0.05, 0.2)}
    claims = rp.judge("imagenet", preset, range_worse, {}, "s", imagenet_data="/data/imagenet")
    assert claims[3]["verdict"] == "not reproduced"


@pytest.mark.parametrize(
    "args, words",
    [
        (["matrix", "--scale", "huge"], "invalid choice"),
        (["matrix", "--set", "epoch=3"], "no such key"),
        (["matrix", "--set", "epochs=three"], "expected an integer"),
        (["matrix", "--set", "epochs"], "key=value"),
        (["matrix", "--set", "add_gauss=0.1,0.2"], "must hold 0.8"),
        (["matrix", "--set", "lr=-1"], "lr must be a positive number"),
        (["matrix", "--set", "on=both"], "on must be"),
        (["matrix", "--set", "fused=0"], "fused must be at least 1"),
        (["matrix", "--set", "fused=2", "--set", "compile=true"], "do not take compile"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_mistakes_print_one_line_and_write_nothing(tmp_path, capsys, args, words):
    out = tmp_path / "r"
    code, _, err = run_main(capsys, "reproduce", *args, "--out", str(out), "--quiet")
    assert code == 2 and words in one_error_line(err), err
    assert not out.exists()


def test_folder_of_another_run_or_other_settings_is_refused(tiny_all, tmp_path, capsys):
    out, _ = tiny_all
    code, _, err = run_main(capsys, "reproduce", "matrix", "--out", str(out), "--quiet")
    assert code == 2 and "holds `reproduce all --scale tiny`" in err
    code, _, err = run_main(
        capsys, "reproduce", "all", "--out", str(out), "--quiet", "--set", "epochs=5"
    )
    assert code == 2 and "epochs differ" in err
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    code, _, err = run_main(capsys, "reproduce", "all", "--out", str(tmp_path / "x"), "--quiet")
    assert code == 2 and "not a reproduce folder" in err
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_a_folder_made_before_a_setting_existed_resumes_at_its_default(tmp_path):
    """cuda_graph came after docs/results/reproduce-cpu was made: that folder must still resume, and
    a run that set the new key to something else must not."""
    import dataclasses

    preset = rp.resolve_preset("cpu")
    old = {k: v for k, v in preset.items() if k != "cuda_graph"}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / rp.MARKER).write_text(
        json.dumps({"experiment": "all", "scale": "cpu", "preset": old})
    )
    assert rp._check_out(tmp_path / "r", "all", "cpu", preset)["preset"] == old
    with pytest.raises(rw.UserError, match="cuda_graph differ"):
        rp._check_out(
            tmp_path / "r",
            "all",
            "cpu",
            dataclasses.replace(rp.PRESETS["cpu"], cuda_graph=True).__dict__,
        )


def test_show_prints_the_preset_with_overrides(capsys):
    code, out, _ = run_main(
        capsys, "reproduce", "matrix", "--scale", "cpu", "--show", "--set", "epochs=9"
    )
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["epochs"] == "9" and lines["model"] == "bc-vgg" and lines["width"] == "0.25"


def test_rows_override_trains_only_those_rows(tmp_path):
    need_fashion_mnist()
    rows = "rows=identity,sign,stoch-sign"
    r = rw.reproduce("matrix", "tiny", tmp_path / "m", overrides=[rows, "epochs=1"], progress=False)
    assert set(r["sweeps"]) == {"identity", "sign", "stoch-sign"} and sorted(
        p.name for p in (tmp_path / "m" / "train").iterdir()
    ) == ["identity", "sign", "stoch-sign"]
    assert r["claims"][0]["verdict"] in (
        "reproduced",
        "not reproduced",
    )  # claim 1 needs only these three
    assert r["claims"][2]["verdict"] == "not run"  # claim 3 needs four more rows
    with pytest.raises(rw.UserError, match="rows must be"):
        rp.resolve_preset("tiny", {"rows": "identity,bogus"})


def test_report_command_takes_the_claims_table(tiny_all, tmp_path, capsys):
    out, _ = tiny_all
    sweeps = [str(out / "sweeps" / row) for row in ("identity", "sign")]
    code, _, err = run_main(
        capsys,
        "report",
        *sweeps,
        "--out",
        str(tmp_path / "rep"),
        "--claims",
        str(out / "claims.json"),
    )
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Claims (docs/method.md section 1)" in md and md.count("not run at this scale") >= 3
    (tmp_path / "bad.json").write_text('{"claim": 1}')
    code, _, err = run_main(
        capsys,
        "report",
        *sweeps,
        "--out",
        str(tmp_path / "rep2"),
        "--claims",
        str(tmp_path / "bad.json"),
    )
    assert code == 2 and "not a claims table" in err and not (tmp_path / "rep2").exists()


def _without_claims_or_report(tiny_all, folder: Path) -> Path:
    """A copy of the finished tiny run with its claims and report deleted: rerun, it trains and
    sweeps nothing (every row and cell is there) and comes to the claims and the report again."""
    shutil.copytree(tiny_all[0], folder)
    for name in ("claims.json", "claims.md"):
        (folder / name).unlink()
    shutil.rmtree(folder / "report")
    return folder


def test_claims_are_written_even_without_matplotlib(tiny_all, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rp, "have_matplotlib", lambda: False)
    out = _without_claims_or_report(tiny_all, tmp_path / "nm")
    r = rw.reproduce("all", "tiny", out, progress=False)
    assert r["report"] is None and not (out / "report").exists()
    assert json.loads((out / "claims.json").read_text()) == tiny_all[1]["claims"]
    assert "report skipped (matplotlib is not installed)" in capsys.readouterr().out


def test_a_broken_report_module_is_an_error_not_a_skipped_report(tiny_all, tmp_path, monkeypatch):
    """matplotlib is a dependency: with it installed, an ImportError from the report code is a bug
    to raise. (It used to be caught as "report skipped", hiding e.g. a renamed function behind a
    missing library.)"""
    import builtins

    real_import = builtins.__import__

    def broken_reports(name, globals=None, locals=None, fromlist=(), level=0):
        if (
            name == "reports"
            and level >= 1
            and "experiments" in (globals or {}).get("__name__", "")
        ):
            raise ImportError("cannot import name 'fig_bits' from 'robustweights.reports.figures'")
        return real_import(name, globals, locals, fromlist, level)

    assert rp.have_matplotlib()
    monkeypatch.setattr(builtins, "__import__", broken_reports)
    out = _without_claims_or_report(tiny_all, tmp_path / "broken")
    with pytest.raises(ImportError, match="fig_bits"):
        rw.reproduce("all", "tiny", out, progress=False)
    # the numbers were written before the report
    assert (out / "claims.json").exists() and not (out / "report").exists()


def test_a_preset_is_typed_and_set_reads_values_by_the_field_type():
    p = rp.resolve_preset(
        "tiny",
        ["val_size=300", "lr_end=none", "amp=true", "trials=3", "clip=0.5", "target_error=0.2"],
    )
    assert (p["val_size"], p["lr_end"], p["amp"], p["trials"], p["clip"], p["target_error"]) == (
        300,
        None,
        True,
        3,
        "0.5",
        0.2,
    )
    # before, a key whose default was None took any text, so val_size=1000 reached training as a
    # string
    with pytest.raises(rw.UserError, match="val_size: expected an integer"):
        rp.resolve_preset("tiny", ["val_size=lots"])
    assert isinstance(rp.PRESETS["paper"], rp.Preset) and rp.PRESETS["paper"].epochs == 500
    assert "paper" in rp.describe() and all(name in rp.describe() for name in rp.EXPERIMENTS)


def test_rows_trained_at_once_give_the_numbers_of_rows_trained_in_turn(tmp_path):
    """rows_at_once=3: the three rows train together in threads (on a GPU, one CUDA stream each); on
    the CPU the same operations in the same order, so the same weights bit for bit and the same
    claims."""
    import torch

    sets = {"dataset": "demo", "train_subset": 1500, "test_subset": 300, "epochs": 2}
    one = rw.reproduce("stoch-proj", "tiny", tmp_path / "one", sets, progress=False)
    three = rw.reproduce(
        "stoch-proj", "tiny", tmp_path / "three", {**sets, "rows_at_once": 3}, progress=False
    )
    assert one["claims"] == three["claims"]
    for row in ("stoch-mult", "sign", "stoch-sign"):
        a, b = (
            torch.load(tmp_path / d / "train" / row / "checkpoint.pt", weights_only=True)["model"]
            for d in ("one", "three")
        )
        assert all(torch.equal(a[k], b[k]) for k in a), row
    with pytest.raises(rw.UserError, match="rows_at_once must be at least 1"):
        rp.resolve_preset("tiny", ["rows_at_once=0"])


def test_fused_rows_write_a_folder_each_that_the_sweeps_read(tmp_path):
    """fused=2: stoch-mult and sign train as one fused network, stoch-sign (left alone in its group)
    as a plain run; in threads two groups at once. Every row has its own run folder, swept and
    judged as ever; a second call resumes them all without training."""
    sets = {"dataset": "demo", "train_subset": 600, "test_subset": 200, "epochs": 1, "trials": 1}
    sets.update(fused=2, rows_at_once=2)
    r = rw.reproduce("stoch-proj", "tiny", tmp_path / "f", sets, progress=False)
    assert set(r["sweeps"]) == {"stoch-mult", "sign", "stoch-sign"}
    fused = {}
    for row in r["sweeps"]:
        (line,) = (tmp_path / "f" / "train" / row / "metrics.jsonl").read_text().splitlines()
        fused[row] = json.loads(line).get("fused_networks")
        assert (tmp_path / "f" / "sweeps" / row / "sweep.json").is_file()
    assert fused == {"stoch-mult": 2, "sign": 2, "stoch-sign": None}
    again = rw.reproduce("stoch-proj", "tiny", tmp_path / "f", sets, progress=False)
    assert again["claims"] == r["claims"] and again["trained"] == r["trained"]


def test_the_gpu_lease_scripts_second_call_runs_on_the_cpu_and_falls_back(tmp_path):
    """benchmarks/gpu_lease.sh second (its CPU smoke test: the paper preset's path on the shipped
    demo data): two rows at once, then, with call 1's files saying the CUDA graph passed, the graph
    attempt failing here (no GPU) and the eager one taking over in the time left. A broken lease
    script costs a GPU lease."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def second(rows, out):
        env = {
            **os.environ,
            "OUT": str(out),
            "CPU": "1",
            "PY": sys.executable,
            "LEASE_TMP": str(tmp_path / "t"),
            "BUDGET": "300",
            "EPOCHS": "1",
            "ROW": rows,
        }
        out.mkdir()
        return subprocess.run(
            ["bash", "benchmarks/gpu_lease.sh", "second"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
        )

    r = second("stoch-sign,sign", tmp_path / "o1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (tmp_path / "o1" / "log.txt").read_text()
    assert (
        "rows_at_once=2" in log
        and "exit 0" in log
        and (tmp_path / "o1" / "paper.tgz").stat().st_size > 0
    )
    for name, text in [("graph_ok", ""), ("rate_graph", "30000\n")]:
        (tmp_path / "t" / name).write_text(text)
    r = second("sign", tmp_path / "o2")
    log = (tmp_path / "o2" / "log.txt").read_text()
    assert (
        r.returncode == 0
        and "cuda_graph=true" in log
        and "exit 2 (graph, 1 at once): the next way" in log
    ), log
    assert log.rstrip().splitlines()[-2] == "exit 0"


def _no_data(*args, **kwargs):
    raise AssertionError("nothing may be loaded, trained or written for this mistake")


@pytest.mark.parametrize(
    "setting, words",
    [
        (
            "quant=2,20",
            "bits='20' is out of range",
        ),  # found by the sweep only after every row was trained
        (
            "quant=1.5,2.7,2",
            "quant grid must be whole numbers of bits",
        ),  # was silently truncated to 1,2,2
        ("quant=2,2", "appears twice"),
    ],
)
def test_a_grid_the_sweep_would_refuse_is_refused_before_training(
    tmp_path, capsys, monkeypatch, setting, words
):
    """D5: the grids reached grid.cells() only in run_sweep, after training and after reproduce.json
    was written, so the corrected command was then refused on that folder ("quant differ")."""
    monkeypatch.setattr(rp, "load_config_data", _no_data)
    out = tmp_path / "r"
    code, _, err = run_main(
        capsys,
        "reproduce",
        "matrix",
        "--set",
        "rows=identity",
        "--set",
        setting,
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 2 and words in one_error_line(err), err
    assert not out.exists()
    with pytest.raises(rw.UserError, match=words.replace("(", r"\(")):
        rp.resolve_preset("cpu", [setting])


def test_every_preset_passes_the_sweeps_grid_check():
    for scale in rp.PRESETS:
        assert rp.resolve_preset(scale)["quant"]


def test_an_out_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    """T10: an unwritable --out (or one under a file) gave a PermissionError (NotADirectoryError)
    traceback."""
    import os

    monkeypatch.setattr(rp, "load_config_data", _no_data)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, _, err = run_main(capsys, "reproduce", "matrix", "--out", str(afile / "r"), "--quiet")
    assert code == 2 and "is a file, not a folder" in one_error_line(err)
    assert afile.read_text() == "mine"
    # no write permission (as root chmod has no effect: the check itself is told so)
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real(p, mode, **kw)
    )
    code, _, err = run_main(
        capsys, "reproduce", "matrix", "--out", str(tmp_path / "ro" / "r"), "--quiet"
    )
    assert code == 2 and "no permission to write" in one_error_line(err)
    assert not (tmp_path / "ro").exists()


@pytest.mark.parametrize(
    "marker",
    [b"[]", b'"text"', b'{"experiment": "matrix", "scale": "tiny", "preset": []}', b"\xff\xfe\n"],
)
def test_a_mis_shaped_marker_is_one_line_and_untouched(tmp_path, capsys, monkeypatch, marker):
    """T18: a reproduce.json that is `[]` or has `"preset": []` gave an AttributeError traceback."""
    monkeypatch.setattr(rp, "load_config_data", _no_data)
    out = tmp_path / "r"
    out.mkdir()
    (out / rp.MARKER).write_bytes(marker)
    code, _, err = run_main(capsys, "reproduce", "matrix", "--out", str(out), "--quiet")
    line = one_error_line(err)
    assert code == 2 and ("is not a reproduce record" in line or "is unreadable" in line), line
    assert (out / rp.MARKER).read_bytes() == marker and len(list(out.iterdir())) == 1


def test_a_marker_whose_sessions_are_not_a_list_is_one_line(tmp_path, capsys, monkeypatch):
    """The same settings, but "sessions" a number: list(3) raised a TypeError once the settings
    matched."""
    monkeypatch.setattr(rp, "load_config_data", _no_data)
    out = tmp_path / "r"
    out.mkdir()
    marker = json.dumps(
        {
            "experiment": "matrix",
            "scale": "tiny",
            "preset": rp.resolve_preset("tiny"),
            "sessions": 3,
        }
    )
    (out / rp.MARKER).write_text(marker)
    code, _, err = run_main(capsys, "reproduce", "matrix", "--out", str(out), "--quiet")
    assert code == 2 and "is not a reproduce record" in one_error_line(err)
    assert (out / rp.MARKER).read_text() == marker


def test_a_binary_metrics_file_counts_as_unreadable_not_a_crash(tmp_path):
    """T19: _finished caught only OSError, so a binary train/<row>/metrics.jsonl raised
    UnicodeDecodeError. It is treated as a missing one is: not known to be finished (the "(already
    trained)" note is left off; train() itself decides from the checkpoint)."""
    from robustweights.paper import rows

    cfg = rp.row_config(rp.resolve_preset("tiny"), "sign", tmp_path, "matrix")
    Path(cfg.out).mkdir(parents=True)
    assert rows._finished(cfg) is False  # missing
    (Path(cfg.out) / "metrics.jsonl").write_bytes(b"\xff\xfe\n")
    assert rows._finished(cfg) is False  # binary
    (Path(cfg.out) / "metrics.jsonl").write_text("{}\n" * cfg.epochs)
    assert rows._finished(cfg) is True


def test_gpu_tip_points_a_gpu_run_to_the_fast_path_and_stays_quiet_otherwise():
    paper = rp.resolve_preset("paper")
    tip = rp.gpu_tip(paper, 4, cuda=True)
    assert "cuda_graph=true" in tip and "rows_at_once=4" in tip
    assert "rows_at_once" not in rp.gpu_tip(paper, 1, cuda=True)
    assert rp.gpu_tip(paper, 4, cuda=False) is None  # the CPU: nothing to say
    graphed = rp.resolve_preset("paper", ["cuda_graph=true"])
    assert "rows_at_once=4" in rp.gpu_tip(graphed, 4, cuda=True)
    assert (
        rp.gpu_tip(rp.resolve_preset("paper", ["cuda_graph=true", "rows_at_once=4"]), 4, cuda=True)
        is None
    )
    assert rp.gpu_tip(graphed, 1, cuda=True) is None
    assert (
        rp.gpu_tip(rp.resolve_preset("paper", ["optimizer=sgd"]), 4, cuda=True) is None
    )  # the graph needs Adam


def test_claims_give_the_measured_bits_beside_each_noise_rise():
    """method.md 4: never the nominal strength alone. Sigma 0.8 of max|W| was 0.68 bits for the
    H200's sign network and 0.02 bits for its float one
    (docs/results/reproduce-gpu/91-epochs-4-rows), and claim 1 printed only 'sigma=0.8 of max|W|'
    beside both rises."""
    preset = rp.resolve_preset("tiny")

    def sweep(base, rise_max, bits_max):
        s = _sweep(base, {"add-gauss": 0.05, "add-gauss-max": rise_max})
        for r in s["rows"]:
            r["effective_bits"] = bits_max if r["scale"] == "max" else 0.68
        return s

    sweeps = {
        "identity": sweep(0.15, 0.754, 0.02),
        "sign": sweep(0.14, 0.152, 0.68),
        "stoch-sign": sweep(0.13, 0.06, float("nan")),
    }
    measured = rp.judge("matrix", preset, sweeps, {}, "s")[0]["measured"]
    assert (
        "add-gauss sigma=0.8 of max|W|: float +75.4 at 0.02 bits, sign +15.2 at 0.68 bits, "
        "stoch-sign +6.0"
        in measured
        and "stoch-sign +6.0 at" not in measured
    )  # a NaN figure is left out
    assert "of std(W): float +5.0 at 0.68 bits" in measured
    c4 = rp.judge("imagenet", preset, sweeps, {}, "s", imagenet_data="/data/imagenet")[3][
        "measured"
    ]
    assert "of max|W|: float +75.4 at 0.02 bits, sign +15.2 at 0.68 bits" in c4


def test_a_misspelt_model_is_refused_before_the_folder_is_claimed(tmp_path, capsys):
    """reproduce.json was written before the model was built, so after the one-line error the
    corrected command on the same --out was refused ('model differ')."""
    from conftest import one_error_line, run_main

    code, _, err = run_main(
        capsys,
        "reproduce",
        "matrix",
        "--scale",
        "tiny",
        "--set",
        "model=foo",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert code == 2 and "foo" in one_error_line(err)
    assert not (tmp_path / "r" / "reproduce.json").exists()
