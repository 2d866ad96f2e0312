"""`robustweights judge`: rows recorded in several reproduce folders (GPU windows), judged together
without their checkpoints, give the claims of one run holding them all."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import robustweights as rw
from conftest import one_error_line, run_main
from robustweights.paper import experiments as rp
from robustweights.paper import judging as jg

ROOT = Path(__file__).resolve().parents[1]
# the shipped demo data, small, each grid only the strength the rules read: three reproduce runs in
# a few seconds; a validation split, as the paper preset has, so the rows are tested with their best
# validation epoch's network
SETS = {
    "dataset": "demo",
    "train_subset": 500,
    "test_subset": 200,
    "val_size": 100,
    "epochs": 2,
    "trials": 1,
    "add_gauss": "0.8",
    "add_gauss_max": "0.8",
    "mult_gauss": "0.5",
    "power": "0.5",
    "quant": "2",
}


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """One run holding the rows of claims 1, 2 and 5, and two "windows" holding two rows each,
    their checkpoints deleted (what a GPU window sends back)."""
    base = tmp_path_factory.mktemp("judge")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rp, "have_matplotlib", lambda: False)  # no report: the claims are the point
        for name, rows in [
            ("full", "identity,sign,stoch-sign,stoch-mult"),
            ("w1", "stoch-mult,stoch-sign"),
            ("w2", "identity,sign"),
        ]:
            over = {**SETS, "rows": rows, **({"rows_at_once": 2} if name == "w2" else {})}
            runs[name] = rw.reproduce("all", "tiny", base / name, over, progress=False)
    for w in ("w1", "w2"):
        for pt in (base / w).rglob("*.pt"):
            pt.unlink()
    return base, runs


def test_rows_of_two_windows_give_the_claims_of_one_run_holding_them(
    windows, tmp_path, monkeypatch
):
    base, runs = windows
    import torch

    def no_load(*a, **k):
        raise AssertionError("judging loaded a checkpoint")

    monkeypatch.setattr(torch, "load", no_load)
    r = jg.judge_recorded([base / "w1", base / "w2"], out=tmp_path / "j")
    assert r["claims"] == runs["full"]["claims"]  # verdicts, figures and settings, exactly
    assert [c["verdict"] for c in r["claims"]][:3] != ["not run"] * 3
    assert (tmp_path / "j" / "claims.json").read_bytes() == (
        base / "full" / "claims.json"
    ).read_bytes()
    # the rows in the order a run of the preset trains them, each from its window
    assert [(p["row"], Path(p["folder"]).name) for p in r["rows"]] == [
        ("identity", "w2"),
        ("sign", "w2"),
        ("stoch-sign", "w1"),
        ("stoch-mult", "w1"),
    ]
    full = runs["full"]["trained"]
    for p in r["rows"]:
        assert p["epochs"] == 2 and p["best_epoch"] in (1, 2)
        assert p["test_error"] == full[p["row"]]["test_error"]
        assert p["commits"] == [rw.paper.experiments.git_commit()] and p["device"] == "cpu"
    assert r["rows"][0]["step"] == "eager, 2 rows at once" and r["rows"][2]["step"] == "eager"
    md = (tmp_path / "j" / "claims.md").read_text()
    assert "| row | folder | recorded | commit | device | epochs | step | test error |" in md
    assert f"`{base / 'w1'}`" in md and "2 (best" in md
    judged = json.loads((tmp_path / "j" / "judged.json").read_text())
    assert judged["inputs"] == [str(base / "w1"), str(base / "w2")]
    assert judged["preset"]["rows"] == "identity,sign,stoch-sign,stoch-mult"
    assert not list((tmp_path / "j").glob("*.tmp*"))
    # claims.json reads back as reproduce's does (robustweights report --claims takes it)
    assert rw.paper.read_claims(tmp_path / "j" / "claims.json") == r["claims"]


def test_the_command_and_a_folder_collecting_windows(windows, tmp_path, capsys):
    base, runs = windows
    collected = tmp_path / "paper-500"
    for w in ("w1", "w2"):
        shutil.copytree(base / w, collected / w)
    (collected / "README.md").write_text("windows")
    code, out, err = run_main(capsys, "judge", str(collected), "--out", str(collected))
    assert code == 0, err
    assert "claims (" in out and "stoch-mult  " in out and "claims: " in out
    assert json.loads((collected / "claims.json").read_text()) == runs["full"]["claims"]
    # judging again with the claims written beside the windows: the same table
    code, _, err = run_main(capsys, "judge", str(collected), "--out", str(tmp_path / "again"))
    assert (
        code == 0
        and (tmp_path / "again" / "claims.json").read_bytes()
        == (collected / "claims.json").read_bytes()
    )


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_row_recorded_twice_is_judged_from_its_later_recording(windows, tmp_path, capsys):
    base, runs = windows
    again = _copy(base / "w2", tmp_path / "w2-again")
    _edit(again / "sweeps" / "sign" / "sweep.json", lambda s: s.update(end="2099-01-01T00:00:00"))
    r = jg.judge_recorded([base / "w1", again, base / "w2"], progress=True)
    said = capsys.readouterr().out
    assert f"row sign is recorded in {again} and {base / 'w2'}: judged from {again}" in said
    # identity: the same end in both, so the one named later
    assert f"row identity is recorded in {again} and {base / 'w2'}: judged from {base / 'w2'}" in (
        said
    )
    by = {p["row"]: Path(p["folder"]) for p in r["rows"]}
    assert by["sign"] == again and by["identity"] == base / "w2"
    assert r["claims"] == runs["full"]["claims"]


def test_a_row_whose_sweep_did_not_finish_is_not_recorded(windows, tmp_path):
    base, _ = windows
    w = _copy(base / "w1", tmp_path / "w1")
    _edit(w / "sweeps" / "stoch-sign" / "sweep.json", lambda s: s.update(end=None))
    shutil.rmtree(w / "sweeps" / "stoch-mult")
    r = jg.judge_recorded([w, base / "w2"])
    assert [p["row"] for p in r["rows"]] == ["identity", "sign"]
    assert f"{w}: the sweep of row stoch-sign did not finish (not recorded)" in r["notes"]
    assert f"{w}: row stoch-mult was not swept (not recorded)" in r["notes"]
    by = {c["claim"]: c for c in r["claims"]}
    assert by[1]["verdict"] == "not run" and by[1]["missing_rows"] == ["stoch-sign"]


def _bad(base: Path, tmp: Path, case: str) -> tuple[list[str], str]:
    """The command's folders for a mistake, and words its one line must hold."""
    w1 = str(base / "w1")
    if case == "missing":
        return [w1, str(tmp / "nowhere")], "is not a folder"
    if case == "empty":
        (tmp / "empty").mkdir()
        return [str(tmp / "empty")], "holds no reproduce.json"
    w = _copy(base / "w2", tmp / "w")
    if case == "epochs":
        _edit(w / "reproduce.json", lambda r: r["preset"].update(epochs=3))
        return [w1, str(w)], "(epochs differ): only rows of one preset"
    if case == "scale":
        _edit(w / "reproduce.json", lambda r: r.update(scale="cpu"))
        return [w1, str(w)], "only rows of one experiment and scale"
    if case == "record":
        (w / "reproduce.json").write_text('{"experiment": "all", "scale"')
        return [w1, str(w)], "reproduce.json is corrupt"
    if case == "sweep":
        (w / "sweeps" / "sign" / "sweep.json").write_text("{")
        return [w1, str(w)], "sweep.json is corrupt"
    if case == "results":
        (w / "sweeps" / "sign" / "results.json").write_text('[{"distortion": 3}]')
        return [w1, str(w)], "results.json is not a sweep's rows"
    if case == "metrics":
        (w / "train" / "sign" / "metrics.jsonl").write_bytes(b"\xff\xfe")
        return [w1, str(w)], "metrics.jsonl is corrupt"
    if case == "short":
        path = w / "train" / "sign" / "metrics.jsonl"
        path.write_text(path.read_text().splitlines()[0] + "\n")
        return [w1, str(w)], "holds 1 epochs, the preset 2"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "epochs", "scale", "record", "sweep", "results", "metrics", "short"],
)
def test_bad_inputs_print_one_line_and_write_nothing(windows, tmp_path, capsys, case):
    base, _ = windows
    folders, words = _bad(base, tmp_path, case)
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "judge", *folders, "--out", str(out))
    assert code == 2 and words in one_error_line(err), err
    assert not out.exists()


def test_out_may_not_be_a_reproduce_folder(windows, capsys):
    base, _ = windows
    before = (base / "w1" / "claims.json").read_bytes()
    code, _, err = run_main(capsys, "judge", str(base / "w2"), "--out", str(base / "w1"))
    assert code == 2 and "is a reproduce folder" in one_error_line(err) and "--out" in err
    assert (base / "w1" / "claims.json").read_bytes() == before


def _paper_window(src: Path, dest: Path, row: str, epochs: int) -> None:
    """A folder as a GPU window of the paper preset sends it back for ``row`` (its files made from
    a tiny run's: only its preset and epoch count are read for the next row)."""
    (dest / "train").mkdir(parents=True)
    shutil.copytree(src / "sweeps" / row, dest / "sweeps" / row)
    first = (src / "train" / row / "metrics.jsonl").read_text().splitlines()[0]
    (dest / "train" / row).mkdir()
    (dest / "train" / row / "metrics.jsonl").write_text((first + "\n") * epochs)
    record = json.loads((src / "reproduce.json").read_text())
    preset = rp.resolve_preset("paper", {"rows": row, "epochs": epochs, "cuda_graph": True})
    record.update(scale="paper", preset=preset, rows=[row])
    (dest / "reproduce.json").write_text(json.dumps(record))


def test_next_row_is_the_first_of_the_order_not_recorded_with_the_recipe_whole(windows, tmp_path):
    base, _ = windows
    assert jg.RECORD_ORDER == ("stoch-mult", "stoch-sign", "identity", "sign")
    assert jg.next_row(tmp_path / "none") == "stoch-mult"
    assert jg.next_row(ROOT / "docs" / "results" / "reproduce-gpu" / "paper-500") == "stoch-mult"
    folder = tmp_path / "paper-500"
    _paper_window(base / "w1", folder / "stoch-mult-cut", "stoch-mult", 91)  # not the recipe whole
    _paper_window(base / "w1", folder / "stoch-sign", "stoch-sign", 500)
    assert jg.next_row(folder) == "stoch-mult"
    _paper_window(base / "w1", folder / "stoch-mult", "stoch-mult", 500)
    assert jg.next_row(folder) == "identity"
    # the lease script asks the same (its `second` call trains that row when ROW is unset)
    env = {**os.environ, "PY": sys.executable, "RECORDED": str(folder)}
    r = subprocess.run(
        ["bash", "benchmarks/gpu_lease.sh", "next"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout) == (0, "identity\n"), r.stderr
