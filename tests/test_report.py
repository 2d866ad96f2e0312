"""Reports from sweep result folders: files written, exact table values, clear errors, offline HTML.

The inputs are small result folders written by hand (sweep.json + results.json),
so every mean in the table can be checked against numbers computed here.
"""

import html
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robustweights as rw
from robustweights.errors import UserError
from robustweights.reports import load_results, report, short_description

SIGN_DESC = "CIFAR-10 (JPEG copy) from /work/shared/datasets/cifar-10-batches-py"

# Per-trial errors, chosen so that every mean is exact to one decimal in %.
# sign-trained: flat under noise; float: degrades fast.
ERRORS = {
    "sign": {
        ("add-gauss", 0.0): [0.12, 0.12, 0.12],
        ("add-gauss", 0.5): [0.15, 0.16, 0.20],
        ("add-gauss", 1.0): [0.30, 0.33, 0.36],
        ("power", 0.0): [0.12],
        ("power", 0.5): [0.121],
        ("power", 1.0): [0.125],
        ("quant", 1.0): [0.12],
        ("quant", 2.0): [0.119],
        ("quant", 4.0): [0.12],
        ("sign", 0.0): [0.12],
    },
    "identity": {
        ("add-gauss", 0.0): [0.10, 0.10, 0.10],
        ("add-gauss", 0.5): [0.40, 0.45, 0.44],
        ("add-gauss", 1.0): [0.80, 0.85, 0.87],
        ("power", 0.0): [0.62],
        ("power", 0.5): [0.20],
        ("power", 1.0): [0.10],
        ("quant", 1.0): [0.62],
        ("quant", 2.0): [0.35],
        ("quant", 4.0): [0.11],
        ("sign", 0.0): [0.62],
    },
}
PARAMS = {"add-gauss": "sigma", "power": "beta", "quant": "bits", "sign": ""}


def effective_bits(distortion, value):
    if distortion == "add-gauss":
        return 0.5 * math.log2(1 + 1 / value**2) if value > 0 else None
    if distortion == "quant":
        return value
    return 1.0 if distortion == "sign" or (distortion == "power" and value == 0) else None


def spec(distortion, value):
    param = PARAMS[distortion]
    if distortion == "quant":
        return f"quant:bits={int(value)},scale=max"
    if distortion == "add-gauss":
        return f"add-gauss:sigma={value!r}"
    return f"{distortion}:{param}={value!r},scale=max" if param else "sign:scale=max"


def make_sweep(folder, projection, *, label=None, description=SIGN_DESC, baseline=None, drop=()):
    """A result folder as `robustweights sweep` writes it, from ERRORS[projection]."""
    folder.mkdir(parents=True)
    rows = []
    for (distortion, value), errors in ERRORS[projection].items():
        if distortion in drop:
            continue
        for trial, error in enumerate(errors):
            rows.append(
                {
                    "distortion": distortion,
                    "param": PARAMS[distortion],
                    "value": value,
                    "trial": trial,
                    "seed": 1000 + trial,
                    "error": error,
                    "loss": 2 * error,
                    "effective_bits": effective_bits(distortion, value),
                    "n_examples": 1000,
                    "entropy_bits": None,
                    "spec": spec(distortion, value),
                    "on": "hidden",
                }
            )
    kind = "float" if projection == "identity" else "fwd+bwd"
    prov = {
        "label": label or f"{projection} ({kind})",
        "train_projection": projection,
        "train_mode": "fwd+bwd",
        "dataset": "cifar10",
        "data_description": description,
        "split": "test",
        "model": "bc-vgg",
        "width": 0.25,
        "checkpoint": f"runs/{projection}/checkpoint.pt",
        "checkpoint_sha256": "ab12" * 16,
        "baseline_error": ERRORS[projection][("add-gauss", 0.0)][0],
        "baseline_weights": "projected",
        "bn_reestimate": 0 if projection == "sign" else 20,
        "on": "hidden",
        "git_commit": "c686197",
        "torch": "2.13.0",
        "device": "cpu",
        "start": "2025-01-01T10:00:00+00:00",
        "end": "2025-01-01T10:42:13+00:00",
        "trials": 3,
        "seed": 0,
    }
    if baseline is not None:
        prov["baseline_error"] = baseline
    (folder / "sweep.json").write_text(json.dumps(prov, indent=2))
    (folder / "results.json").write_text(json.dumps(rows, indent=1))
    return folder


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A report of a sign-trained and a float network (written once: drawing takes a second or
    two)."""
    root = tmp_path_factory.mktemp("report")
    sign = make_sweep(root / "sweep-sign", "sign")
    flt = make_sweep(
        root / "sweep-float", "identity", description="CIFAR-10 from /data/cifar-10-batches-py"
    )
    r = report([sign, flt], root / "out")
    return root, r


def one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


def check_png(path, min_size=(400, 250)):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1], im.size
        assert im.width <= 4000 and im.height <= 4000, im.size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert len(colours) > 50, f"{path.name} looks blank: {len(colours)} colours"


def test_writes_html_md_json_and_three_figures(two):
    root, r = two
    out = root / "out"
    names = {p.name for p in r["figures"]}
    assert names == {"error_vs_strength.png", "error_vs_bits.png", "matrix.png"}
    for p in r["figures"]:
        assert p.parent == out
        check_png(p)
    assert r["html"] == out / "report.html" and r["md"] == out / "report.md"
    marker = json.loads((out / "report.json").read_text())
    assert marker["kind"] == "robustweights report"
    assert marker["inputs"] == [
        str((root / "sweep-sign").resolve()),
        str((root / "sweep-float").resolve()),
    ]
    assert sorted(os.listdir(out)) == sorted(names | {"report.html", "report.md", "report.json"})


def test_html_is_self_contained(two):
    root, r = two
    page = r["html"].read_text()
    lowered = page.lower()
    assert (
        '<img src="http' not in lowered
        and "<script src=" not in lowered
        and '<link href="http' not in lowered
    )
    assert 'src="//' not in lowered and "url(http" not in lowered and "@import" not in lowered
    assert lowered.count('<img src="data:image/png;base64,') == 3
    for label in ("sign (fwd+bwd)", "identity (float)"):
        assert html.escape(label) in page
    # Inputs disagree about the dataset: each description is named, without its path.
    assert (
        "CIFAR-10 (JPEG copy)" in page
        and "/work/shared/datasets" not in page.split("<h2>Provenance")[0]
    )
    assert "on, 20 training batches per cell" in page and "off (statistics as trained)" in page
    assert "ab12ab12ab12" in page and "ab12ab12ab12a" not in page  # sha256 shown to 12 characters
    assert "10:42:13" in page and "42 min 13 s" in page


def test_markdown_links_the_figures_beside_it(two):
    root, r = two
    md = r["md"].read_text()
    for name in ("error_vs_strength.png", "error_vs_bits.png", "matrix.png"):
        assert f"]({name})" in md
    assert "| sign (fwd+bwd) | 17.0 | 12.1 | 11.9 | 12.0 |" in md
    assert "| identity (float) | 43.0 | 20.0 | 35.0 | 62.0 |" in md


def test_table_holds_the_means_at_the_middle_of_each_grid(two):
    _, r = two
    # Grids: sigma 0, 0.5, 1 -> 0.5; beta 0, 0.5, 1 -> 0.5; bits 1, 2, 4 -> median 2.
    cols = ["add-gauss sigma=0.5", "power beta=0.5", "quant bits=2", "sign"]
    assert [list(row) for row in r["table"]] == [["label"] + cols] * 2
    sign, flt = r["table"]
    assert sign["label"] == "sign (fwd+bwd)" and flt["label"] == "identity (float)"
    assert [sign[c] for c in cols] == pytest.approx([(15 + 16 + 20) / 3, 12.1, 11.9, 12.0])
    assert [flt[c] for c in cols] == pytest.approx([(40 + 45 + 44) / 3, 20.0, 35.0, 62.0])


def test_table_at_chosen_strengths_and_missing_cells(tmp_path):
    sign = make_sweep(tmp_path / "a", "sign")
    flt = make_sweep(tmp_path / "b", "identity", drop=("quant",))
    r = report([sign, flt], tmp_path / "out", at={"add-gauss": 0.9, "power": 0.0, "quant": 4})
    cols = [
        "add-gauss sigma=1",
        "power beta=0",
        "quant bits=4",
        "sign",
    ]  # 0.9 -> nearest grid value 1
    assert [list(row)[1:] for row in r["table"]] == [cols] * 2
    assert [r["table"][0][c] for c in cols] == pytest.approx([33.0, 12.0, 12.0, 12.0])
    assert [r["table"][1][c] for c in cols[:2]] == pytest.approx([84.0, 62.0])
    assert r["table"][1]["quant bits=4"] is None
    assert "| identity (float) | 84.0 | 62.0 | – | 62.0 |" in r["md"].read_text()
    with pytest.raises(UserError) as e:
        report([sign], tmp_path / "out2", at={"prune": 0.5})
    assert "prune" in one_line(e) and "add-gauss" in one_line(e)
    assert not (tmp_path / "out2").exists()  # nothing written for a bad argument


def test_single_input_has_no_matrix_and_names_its_dataset(tmp_path):
    r = report([make_sweep(tmp_path / "a", "sign")], tmp_path / "out", title="Sign net")
    assert {p.name for p in r["figures"]} == {"error_vs_strength.png", "error_vs_bits.png"}
    assert not (tmp_path / "out" / "matrix.png").exists()
    page = r["html"].read_text()
    assert "<title>Sign net</title>" in page and "Data: CIFAR-10 (JPEG copy)." in page
    # Headline: undistorted error, then the strongest setting of each distortion (beta=0, bits=1:
    # the sign end).
    assert "undistorted error 12.0% (projected weights)" in page
    assert "add-gauss sigma=1: 33.0% (min 30.0%, max 36.0% over 3 trials)" in page
    assert "power beta=0: 12.0%" in page and "quant bits=1: 12.0%" in page


def test_no_effective_bits_no_bits_figure(tmp_path):
    folder = make_sweep(tmp_path / "a", "sign", drop=("quant", "sign"))
    rows = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps([{**r, "effective_bits": None} for r in rows]))
    r = report([folder], tmp_path / "out")
    assert [p.name for p in r["figures"]] == ["error_vs_strength.png"]
    assert "no plot of error against bits" in r["md"].read_text()


def test_rerun_into_its_own_folder_replaces_the_report(tmp_path):
    sign = make_sweep(tmp_path / "a", "sign")
    flt = make_sweep(tmp_path / "b", "identity")
    report([sign, flt], tmp_path / "out")
    assert (tmp_path / "out" / "matrix.png").exists()
    r = report([sign], tmp_path / "out")  # fewer inputs: the old matrix goes
    assert not (tmp_path / "out" / "matrix.png").exists()
    assert "identity (float)" not in r["html"].read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["labels"] == [
        "sign (fwd+bwd)"
    ]


def test_same_labels_are_told_apart(tmp_path):
    a = make_sweep(tmp_path / "seed0", "sign")
    b = make_sweep(tmp_path / "seed1", "sign")
    r = report([a, b], tmp_path / "out")
    assert [row["label"] for row in r["table"]] == [
        "sign (fwd+bwd) [seed0]",
        "sign (fwd+bwd) [seed1]",
    ]


def test_not_a_sweep_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        report([tmp_path / "empty"], tmp_path / "out")
    assert str(tmp_path / "empty") in one_line(e) and "sweep.json" in one_line(e)
    with pytest.raises(UserError) as e:
        load_results(tmp_path / "nope")
    assert "nope" in one_line(e)
    with pytest.raises(UserError) as e:
        report([], tmp_path / "out")
    one_line(e)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("results.json", '[{"distortion": "add-gauss", "param": "sig', "results.json is corrupt"),
        ("results.json", "[]", "no result rows"),
        (
            "results.json",
            '[{"distortion": "sign", "param": "", "value": 0, "error": 1.5}]',
            "outside [0, 1]",
        ),
        ("results.json", '[{"distortion": "sign", "value": 0, "error": 0.5}]', "lacks param"),
        ("sweep.json", "\x00\x01garbage", "sweep.json is corrupt"),
        ("sweep.json", '{"data_description": "x", "baseline_error": 0.1}', "lacks 'label'"),
    ],
)
def test_corrupt_result_files_are_one_line(tmp_path, name, text, words):
    folder = make_sweep(tmp_path / "a", "sign")
    (folder / name).write_text(text)
    with pytest.raises(UserError) as e:
        report([folder], tmp_path / "out")
    msg = one_line(e)
    assert words in msg and str(folder) in msg


def test_out_folder_with_other_files_is_refused(tmp_path):
    sign = make_sweep(tmp_path / "a", "sign")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "mine" / "report.html").write_text("<p>my own page</p>")
    for out in (tmp_path / "mine", sign):  # a folder of one's own, and a sweep result folder
        with pytest.raises(UserError) as e:
            report([sign], out)
        assert "is not a robustweights report folder; choose another out=" in one_line(e)
    assert (tmp_path / "mine" / "report.html").read_text() == "<p>my own page</p>"
    assert sorted(os.listdir(sign)) == ["results.json", "sweep.json"]


def test_short_description_keeps_the_caveat_drops_the_path():
    assert short_description(SIGN_DESC) == "CIFAR-10 (JPEG copy)"
    assert (
        short_description("CIFAR-10 from /d; test subset 1000 of 10000 (seed 0)")
        == "CIFAR-10; test subset 1000 of 10000 (seed 0)"
    )
    assert (
        short_description("Fashion-MNIST subset shipped with robustweights")
        == "Fashion-MNIST subset shipped with robustweights"
    )


def chromium():
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or next((p for p in ("/usr/bin/chromium",) if os.path.exists(p)), None)
    )


def test_html_renders_in_a_headless_browser(two, tmp_path):
    """The page as a person sees it: headless Chromium, no network, a screenshot with the figures in
    it."""
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing on CI: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    _, r = two
    shot = tmp_path / "shot.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        "--hide-scrollbars",
        r["html"].resolve().as_uri(),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)}
    )
    assert shot.exists(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 2000)
        assert len(rgb.getcolors(maxcolors=1 << 20)) > 200
        # The embedded figures show: their coloured lines and bands (text and tables are grey).
        px = np.asarray(rgb.resize((640, 1000)), dtype=int)
        coloured = int(((px.max(axis=2) - px.min(axis=2)) > 60).sum())
        assert coloured > 2000, f"only {coloured} coloured pixels: are the images missing?"


def test_the_report_explains_hidden_weight_curves_of_a_network_that_runs_projected(tmp_path):
    rows = [
        {
            "distortion": "add-gauss",
            "param": "sigma",
            "value": v,
            "trial": 0,
            "seed": 0,
            "error": e,
            "effective_bits": None,
            "spec": f"add-gauss:sigma={v}",
        }
        for v, e in ((0.5, 0.9), (1.0, 0.9))
    ]
    rw.sweeps.save_sweep(
        tmp_path / "hidden",
        rows,
        label="sign",
        baseline=0.11,
        description="demo",
        on="hidden",
        baseline_weights="projected",
    )
    rw.sweeps.save_sweep(
        tmp_path / "projected",
        rows,
        label="sign",
        baseline=0.11,
        description="demo",
        on="projected",
        baseline_weights="projected",
    )
    for name, noted in (("hidden", True), ("projected", False)):
        md = Path(rw.report([tmp_path / name], tmp_path / f"r-{name}")["md"]).read_text()
        assert ("the statistics belong to other weights" in md) is noted


def test_noise_relative_to_the_range_keeps_its_own_column_for_a_float_network(tmp_path):
    """A float network's sweep default scale is max; add-gauss's reference is std unless named. The
    key of 'add-gauss:sigma=0.8,scale=max' used to drop 'scale=max' for it, merging the two
    references into one curve whose mean was the average of both (50.7% in the tiny reproduce table:
    20.6% and 80.9%)."""
    from robustweights.reports.sources import curves

    def rows(ref_errors):
        out = []
        for spec_, errs in ref_errors.items():
            out += [
                {
                    "distortion": "add-gauss",
                    "param": "sigma",
                    "value": 0.8,
                    "trial": i,
                    "error": e,
                    "effective_bits": None,
                    "spec": spec_,
                }
                for i, e in enumerate(errs)
            ]
        return out

    both = {"add-gauss:sigma=0.8": [0.20, 0.22], "add-gauss:sigma=0.8,scale=max": [0.80, 0.82]}
    for default in ("max", "clip", None):  # a float network, a projected one, an old sweep
        c = curves(rows(both), default)
        assert sorted((k.fixed, v.mean[0]) for k, v in c.items()) == [
            ("", pytest.approx(21.0)),
            ("scale=max", pytest.approx(81.0)),
        ]
    # a transform whose scale follows the sweep default still drops it: float and sign power curves
    # share a panel
    power = [
        {
            "distortion": "power",
            "param": "beta",
            "value": 0.5,
            "trial": 0,
            "error": 0.3,
            "effective_bits": None,
            "spec": "power:beta=0.5,scale=max",
        }
    ]
    assert [k.fixed for k in curves(power, "max")] == [""]

    flt = make_sweep(tmp_path / "float", "identity", drop=("power", "quant", "sign"))
    data = json.loads((flt / "results.json").read_text())
    data += [
        {**r, "spec": r["spec"] + ",scale=max", "error": min(1.0, r["error"] + 0.05)} for r in data
    ]
    (flt / "results.json").write_text(json.dumps(data))
    (flt / "sweep.json").write_text(
        json.dumps({**json.loads((flt / "sweep.json").read_text()), "scale_default": "max"})
    )
    table = report([flt], tmp_path / "out", at={"add-gauss": 1.0})["table"][0]
    cols = {k: v for k, v in table.items() if k != "label"}
    assert sorted(round(v, 1) for v in cols.values()) == [84.0, 89.0]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


@pytest.fixture
def old_report(tmp_path):
    """A report folder written from one sweep, and a second, good sweep to report into it."""
    sign = make_sweep(tmp_path / "sign", "sign", drop=("quant", "power"))
    report([sign], tmp_path / "rep")
    return tmp_path / "rep", make_sweep(tmp_path / "float", "identity", drop=("quant", "power"))


def test_a_failure_while_rendering_leaves_an_existing_report_as_it_was(old_report, monkeypatch):
    """The pages used to be rendered after report.json and the PNGs were written: a failure there
    left the folder mixed (new figures and manifest, old pages)."""
    from robustweights.reports import document

    rep, flt = old_report
    before = snapshot(rep)

    def broken(*args, **kwargs):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(document.Document, "html", broken)
    with pytest.raises(RuntimeError):
        report([flt], rep)
    assert snapshot(rep) == before


@pytest.mark.parametrize(
    "change, words",
    [
        ({"paper": 0.5}, "'paper' must be a string, not 0.5"),
        ({"measured": None}, "'measured' must be a string"),
        ({"claim": "1"}, "'claim' must be a whole number"),
        ({"verdict": "proven"}, "'verdict' must be one of"),
    ],
)
def test_claims_of_the_wrong_type_are_one_line_and_change_nothing(
    old_report, tmp_path, change, words
):
    from robustweights.cli import main
    from robustweights.paper.claims import read_claims

    rep, flt = old_report
    before = snapshot(rep)
    good = {
        "claim": 1,
        "statement": "s",
        "paper": "p",
        "measured": "m",
        "setting": "x",
        "verdict": "reproduced",
    }
    path = tmp_path / "claims.json"
    path.write_text(json.dumps([good, {**good, **change}]))
    with pytest.raises(UserError) as e:
        read_claims(path)
    assert words in one_line(e) and str(path) in one_line(e) and "entry 2" in one_line(e)
    assert main(["report", str(flt), "--claims", str(path), "--out", str(rep)]) == 2
    assert snapshot(rep) == before


@pytest.mark.parametrize(
    "change, words",
    [
        ({"split": ["a"]}, "split must be a string or null"),
        ({"train_projection": ["sign"]}, "train_projection must be a string or null"),
        ({"scale_default": [1]}, "scale_default must be a string or null"),
        ({"coverage": "x"}, "coverage must be an object"),
        ({"coverage": {"summary": 5}}, "coverage.summary must be a string or null"),
        ({"config": {"keep": 5}}, "config.keep must be a list"),
    ],
)
def test_sweep_fields_of_the_wrong_type_are_one_line_naming_folder_and_field(
    old_report, change, words
):
    rep, flt = old_report
    before = snapshot(rep)
    (flt / "sweep.json").write_text(
        json.dumps({**json.loads((flt / "sweep.json").read_text()), **change})
    )
    with pytest.raises(UserError) as e:
        report([flt], rep)
    assert words in one_line(e) and str(flt / "sweep.json") in one_line(e)
    assert snapshot(rep) == before


def test_out_in_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    sign = make_sweep(tmp_path / "a", "sign", drop=("quant", "power"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access  # root may write anywhere: deny ro for it too, as for everyone else
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw)
    )
    try:
        with pytest.raises(UserError) as e:
            report([sign], ro / "rep")
        assert "no permission to write in" in one_line(e) and str(ro) in one_line(e)
        assert not (ro / "rep").exists()
    finally:
        ro.chmod(0o755)


def test_strangers_names_render_as_text_and_metrics_keep_their_digits(tmp_path):
    """A label with '$' was read as maths ('$x^$' failed the report with a traceback; 'cost $5 vs
    $10' lost its dollars); Markdown let '<script>' through as raw HTML; an accuracy of 0.8739
    showed as 0.9."""
    a = make_sweep(tmp_path / "a", "sign", label="net $x^$ <script>alert(1)</script>")
    b = make_sweep(tmp_path / "b", "identity", label="cost $5 vs $10 | model\r\nsecond line")
    r = report([a, b], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "<script>" not in md and "&lt;script&gt;" in md and "net $x^$" in md
    assert "cost $5 vs $10 \\| model second line" in md and "\r" not in md
    assert "<script>" not in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert r is not None
    # a metric other than the error: four significant digits in the table and the spread
    for folder in (a, b):
        rows = json.loads((folder / "results.json").read_text())
        for row in rows:
            row.update(metric="accuracy", score=round(1 - row["error"] + 0.0039, 4))
        (folder / "results.json").write_text(json.dumps(rows))
        prov = json.loads((folder / "sweep.json").read_text())
        prov.update(
            metric="accuracy",
            higher_is_better=True,
            baseline_score=1 - prov["baseline_error"] + 0.0039,
        )
        (folder / "sweep.json").write_text(json.dumps(prov))
    report([a, b], tmp_path / "acc")
    md = (tmp_path / "acc" / "report.md").read_text(encoding="utf-8")
    assert (
        "| 0.8339 | 0.8829 |" in md
    )  # sign at sigma 0.5 and beta 0.5: 1 - (0.17, 0.121) + 0.0039 (was 0.8, 0.9)
    assert (
        "(min 0.6439, max 0.7039 over 3 trials)" in md
    )  # sign at sigma 1: 1 - (0.36, 0.30) + .0039


def test_a_report_is_written_in_utf_8_whatever_the_locale(two, tmp_path):
    """Under an ASCII locale the report failed with UnicodeEncodeError after writing report.json and
    the figures, leaving a half-written folder."""
    root, _ = two
    env = {
        **os.environ,
        "LC_ALL": "C",
        "LANG": "C",
        "PYTHONCOERCECLOCALE": "0",
        "PYTHONUTF8": "0",
        "PYTHONPATH": str(Path(rw.__file__).parent.parent),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "utf8=0",
            "-m",
            "robustweights",
            "report",
            str(root / "sweep-sign"),
            str(root / "sweep-float"),
            "--out",
            str(tmp_path / "c"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "–" in (tmp_path / "c" / "report.html").read_text(encoding="utf-8")


def test_every_network_gets_its_own_colour():
    from robustweights.reports.figures import palette

    for n in (1, 10, 11, 20, 21, 45):
        assert len(palette(n)) == n and len(set(map(tuple, palette(n)))) == n, (
            n
        )  # before: net20 = net0


def test_the_matrix_figure_is_left_out_beyond_its_rows_and_the_report_says_so(tmp_path):
    """A report of 320 sweeps drew a matrix.png 80,809 pixels tall (and took minutes)."""
    from robustweights.reports.document import MATRIX_MAX_ROWS

    n = MATRIX_MAX_ROWS + 1
    folders = [
        make_sweep(tmp_path / f"s{i}", "sign" if i % 2 else "identity", label=f"net{i}")
        for i in range(n)
    ]
    report(folders, tmp_path / "out")
    assert not (tmp_path / "out" / "matrix.png").exists()
    assert (
        f"at most {MATRIX_MAX_ROWS} networks; these results hold {n}"
        in (tmp_path / "out" / "report.md").read_text()
    )
    check_png(tmp_path / "out" / "error_vs_strength.png")
