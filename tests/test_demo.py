"""`robustweights demo` end to end, at one epoch a network (about 40 s on 2 cores)."""

import json

from conftest import one_error_line, run_main


def test_demo_tells_the_story_and_writes_its_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    code, text, err = run_main(capsys, "demo", "--out", str(out), "--epochs", "1", "--quiet")
    assert code == 0, err
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["networks"]) == {"float", "sign", "stoch-sign"}
    nets = summary["networks"]
    assert nets["sign"]["weights"] == "projected" and nets["stoch-sign"]["weights"] == "hidden"
    assert nets["float"]["error"] < 0.5 and nets["sign"]["error"] < 0.5          # learnt something in one epoch
    # the sign network's hidden weights are explained, and re-estimated statistics make them work
    assert nets["sign"]["hidden_error_bn_reestimated"] < nets["sign"]["hidden_error"]
    assert "statistics belong to another network" in text
    for scale in ("max", "std"):
        assert all(len(r) == 3 for r in summary["rises"][scale].values())       # three trials each
    assert "Headline (the paper's most likely convention)" in text and "Beside it" in text
    assert (out / "report" / "report.html").is_file() and (out / "sweep-stoch-sign" / "results.csv").is_file()
    # a folder that is not a demo's is refused, one line, untouched
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    code, _, err = run_main(capsys, "demo", "--out", str(other), "--epochs", "1", "--quiet")
    assert code == 2 and "not a demo folder" in one_error_line(err) and (other / "notes.txt").read_text() == "keep"
