"""Print the "Every option" section of docs/usage.md from the command line's own parser.

    python scripts/options_md.py            # the section, as docs/usage.md holds it
    python scripts/options_md.py --write    # replace it in docs/usage.md

tests/test_cli.py checks that docs/usage.md holds what this prints, so that no option goes
undocumented.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustweights.cli.parser import build_parser  # noqa: E402

BEGIN = "<!-- every option: written by scripts/options_md.py, checked by tests/test_cli.py -->"
END = "<!-- end of every option -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def section() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [
        BEGIN,
        "",
        "## Every option",
        "",
        "Each command's options, as `robustweights COMMAND --help` gives them. Every command also"
        " takes",
        "`--debug` (the traceback of an error, instead of its one line).",
        "",
    ]
    for name, p in sub.choices.items():
        fmt = p._get_formatter()
        lines += [
            f"### `robustweights {name}`",
            "",
            _cell(p.description or ""),
            "",
            "| option | what it does |",
            "|---|---|",
        ]
        for a in p._actions:
            if (
                a.help == argparse.SUPPRESS
                or "--debug" in a.option_strings
                or "-h" in a.option_strings
            ):
                continue
            flag = ", ".join(a.option_strings) or a.dest.upper()
            if a.choices and not isinstance(a, argparse._SubParsersAction):
                flag += " {" + ",".join(map(str, a.choices)) + "}"
            lines.append(f"| `{flag}` | {_cell(fmt._expand_help(a) if a.help else '')} |")
        lines.append("")
    return "\n".join(lines + [END]) + "\n"


def main() -> int:
    text = section()
    if "--write" not in sys.argv[1:]:
        sys.stdout.write(text)
        return 0
    usage = ROOT / "docs" / "usage.md"
    old = usage.read_text(encoding="utf-8")
    if BEGIN in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    usage.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
