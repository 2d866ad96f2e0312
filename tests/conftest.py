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
