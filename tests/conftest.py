"""Helpers shared by the test files."""

from robustweights.cli import main


def run_main(capsys, *argv):
    """Run the command line in-process: (exit status, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own mistakes
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    """The single line a user mistake prints (no usage text, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
