"""The ``robustweights`` argument parser: one function per command, with its flags and help.

Every flag of ``train`` and ``sweep`` comes from a field of their config dataclass (its help
text is the field's comment), so ``config.json`` and the command line can never disagree. The
library's messages name a Python parameter (``out='runs/x'``); :func:`flag_form` says them with
the command's flags (``--out runs/x``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import shlex
import textwrap

from .. import data as data_mod

EXAMPLES = "\n".join(
    [
        "examples:",
        "  robustweights demo",
        "  robustweights train --model cnn --dataset fashion-mnist --projection sign --epochs 3"
        " --out runs/sign",
        "  robustweights train --model bc-vgg --width 0.25 --dataset cifar10 --projection sign"
        " --epochs 20 --out runs/bc",
        "  robustweights train --resume --out runs/bc --epochs 30",
        "  robustweights evaluate runs/sign --weights hidden",
        "  robustweights train --model causal-lm --dataset text --data-dir notes.txt"
        " --projection sign --epochs 1 --out runs/lm",
        "  robustweights export runs/sign --out sign.pt --packed",
        '  robustweights sweep runs/sign --distortion "add-gauss:sigma=0:1.5:0.25"'
        ' --distortion "quant:bits=1..8" \\',
        "      --on projected --out runs/sweep-sign",
        "  robustweights sweep --model-factory mymodels:build --state-dict mine.pt"
        " --dataset fashion-mnist \\",
        '      --preprocess none --distortion "add-gauss:sigma=0,0.5,1" --out runs/sweep-mine',
        "  robustweights report runs/sweep-sign runs/sweep-mine --out runs/report",
        "  robustweights list transforms",
        "  robustweights reproduce matrix --scale tiny",
        "  robustweights reproduce all --scale cpu --out runs/repro-cpu --set epochs=10",
        "  robustweights judge runs/window-1 runs/window-2 --out runs/judged",
        "",
    ]
)

SWEEP_EPILOG = (
    "your own model:\n"
    "  --model-factory package.module:function   a function that builds the network; it is\n"
    "      called with the keywords it accepts among num_classes, in_shape (C, H, W) and\n"
    "      width, and must return an nn.Module whose state_dict --state-dict holds\n"
    "      (keys saved through DistributedDataParallel or torch.compile, module. and\n"
    "      _orig_mod., are read without their prefix)\n"
    "  --dataset " + ", ".join(data_mod.DATASETS) + "\n"
    "  --preprocess standardize | gcn-zca | none | normalize:mean=M,std=S\n"
    "      what your model was trained on (none: pixels in [0, 1])\n"
    "  --data package.module:function   your own data instead of --dataset: called with no\n"
    "      arguments, it returns a DataLoader of (inputs, targets) batches, or a dict with\n"
    "      test and optionally train (the batches --bn-reestimate uses)\n"
    "  --measure error | top5_error | loss | perplexity | mse | package.module:function\n"
    "      what each cell is judged by (perplexity: logits (B, T, V) for tokens (B, T));\n"
    "      the tables, the report and the lowest-bits line are in its units\n"
    "examples:\n"
    '  robustweights sweep runs/sign --distortion "add-gauss:sigma=0:1.5:0.25" --on projected\n'
    "  robustweights sweep --model-factory mymodels:build --state-dict mine.pt --dataset demo \\\n"
    '      --preprocess none --distortion "quant:bits=1..8" --exclude "embed*" --out runs/mine\n'
    "  robustweights sweep --model-factory mylm:build --state-dict lm.pt --data mylm:batches \\\n"
    '      --measure perplexity --distortion "add-gauss:sigma=0,0.5" --out runs/lm\n'
    "  robustweights report runs/sweep-sign runs/mine --out runs/report"
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line, with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _field_type(f: dataclasses.Field):
    t = str(f.type)
    return (
        bool
        if t == "bool"
        else int
        if t.startswith("int")
        else float
        if t.startswith("float")
        else str
    )


def add_config_flags(p: argparse.ArgumentParser, cls) -> None:
    """One flag per config field; defaults are suppressed so we can tell which flags were given."""
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help = f.metadata.get("help", "")  # a text that names its own default keeps it, once
        help = (
            help
            if "default" in help
            else f"{help} (default: {'none' if default is None else default})"
        )
        if f.metadata.get("positional"):
            p.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, help=f.metadata["help"])
        elif str(f.type).startswith("list"):
            p.add_argument(
                flag,
                dest=f.name,
                action="append",
                default=argparse.SUPPRESS,
                metavar=f.name.upper().rstrip("S"),
                help=f.metadata.get("help"),
            )
        elif _field_type(f) is bool:
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help)
        else:
            p.add_argument(
                flag,
                type=_field_type(f),
                choices=f.metadata.get("choices"),
                default=argparse.SUPPRESS,
                metavar=f.name.upper() if not f.metadata.get("choices") else None,
                help=help,
            )


def _add_train(sub, debug) -> None:
    from ..training import TrainConfig

    t = sub.add_parser(
        "train",
        parents=[debug],
        help="train a network with projected weights",
        description="Train a network with weights projected in the forward pass "
        "(BinaryConnect style: float hidden weights, straight-through gradients, clipping).",
    )
    add_config_flags(t, TrainConfig)
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    t.add_argument(
        "--fused-seeds",
        type=int,
        default=None,
        metavar="K",
        help="train K seeds (--seed, --seed+1, ...) of this configuration as one fused network "
        "(grouped convolutions, batched linear layers), each in its own run folder "
        "<--out>/seed-<s>; equal to K separate runs within float rounding",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def _add_evaluate(sub, debug) -> None:
    from ..projected import WEIGHTS

    e = sub.add_parser(
        "evaluate",
        parents=[debug],
        help="test error (or perplexity) of a checkpoint",
        description="The measure of a trained checkpoint on its own dataset and preprocessing: "
        "a classifier's test error and loss, a language model's perplexity (or --measure on "
        "--data).",
    )
    e.add_argument("checkpoint", help="checkpoint.pt or the run folder holding it")
    e.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="auto",
        help="which weights the network is tested with: auto (the default) applies the training "
        "projection when it is deterministic (sign, quant...) and uses the hidden weights when it "
        "is random (stoch-sign, noise), as docs/method.md section 3 says; hidden: the hidden float "
        "weights as they are; projected: the training projection applied",
    )
    e.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="split to test on (default: test)",
    )
    e.add_argument(
        "--data-dir", default=None, help="where the dataset is, if not where training found it"
    )
    e.add_argument(
        "--model-factory", default=None, help="allow importing this package.module:function model"
    )
    e.add_argument(
        "--measure",
        default=None,
        help="what to measure: error, top5_error, loss, perplexity, mse or your own "
        "package.module:function (default: the run's own, perplexity for text, else error)",
    )
    e.add_argument(
        "--data",
        default=None,
        metavar="PACKAGE.MODULE:FUNCTION",
        help="measure on your own batches: a function returning a DataLoader of (inputs, "
        "targets), or a dict with 'test' (and 'train') (default: the run's dataset)",
    )
    e.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_export(sub, debug) -> None:
    from ..projected import WEIGHTS

    x = sub.add_parser(
        "export",
        parents=[debug],
        help="write the weights a trained network runs with as a plain state_dict",
        description="Bake a run's network into a file a plain, unattached model loads with "
        "load_state_dict: a sign network's binary weights, not its hidden float ones. "
        "--packed stores every tensor of +-a values at 1 bit per weight.",
    )
    x.add_argument("run", help="the run folder (its kept network) or a checkpoint file")
    x.add_argument("--out", required=True, help="the file to write (a .pt)")
    x.add_argument(
        "--packed",
        action="store_true",
        help="store each tensor of +-a values as its signs, 8 to a byte, with a and its shape "
        "(read back with robustweights.load_baked)",
    )
    x.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="auto",
        help="which weights to write: auto (the default: those the network is evaluated with, "
        "as evaluate), hidden, or projected",
    )
    x.add_argument(
        "--model-factory", default=None, help="allow importing this package.module:function model"
    )


def _add_demo(sub, debug) -> None:
    d = sub.add_parser(
        "demo",
        parents=[debug],
        help="train float and binarized networks on shipped data and compare them",
        description="The main job on embedded data (a Fashion-MNIST subset shipped in the "
        "package): no download, no dataset to install, a few minutes on 2 CPU cores.",
    )
    d.add_argument(
        "--out",
        default="runs/demo",
        help="folder for the three runs, their sweeps and the report (default: runs/demo)",
    )
    d.add_argument(
        "--epochs", type=int, default=None, help="epochs per network (default: the demo's own)"
    )
    d.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_sweep(sub, debug) -> None:
    from ..sweeps import SweepConfig

    sw = sub.add_parser(
        "sweep",
        parents=[debug],
        help="test error (or another measure) of a network under test-time weight distortions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Stress-test a checkpoint (or your own model: --model-factory with --state-dict "
            "and --dataset or --data) against weight distortion grids, judged by --measure (the "
            "checkpoint's own, else the error); writes results.csv, results.json and "
            "sweep.json. Started again on the same --out, it computes only the missing cells. "
            "Every floating-point parameter with 2 or more dimensions is distorted (linear, "
            "convolution, embedding and attention weights, your own nn.Parameter); biases and "
            "normalization parameters are not. The first line printed says what was covered.",
            79,
        ),
        epilog=SWEEP_EPILOG,
    )
    add_config_flags(sw, SweepConfig)
    sw.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_report(sub, debug) -> None:
    rp = sub.add_parser(
        "report",
        parents=[debug],
        help="figures and tables from sweep results",
        description="Turn one or several sweep result folders into report.html (self-contained), "
        "report.md and PNG figures.",
    )
    rp.add_argument("results", nargs="+", help="sweep result folders")
    rp.add_argument("--out", required=True, help="report folder")
    rp.add_argument(
        "--at",
        action="append",
        metavar="DISTORTION=VALUE",
        help="strength for the matrix table, repeatable (default: each grid's middle value)",
    )
    rp.add_argument("--title", default=None, help="the report's title (default: from the inputs)")
    rp.add_argument(
        "--claims",
        default=None,
        metavar="CLAIMS_JSON",
        help="claims.json written by `robustweights reproduce`: its table heads the report",
    )


def _add_reproduce(sub, debug) -> None:
    from ..paper.experiments import EXPERIMENTS, PRESETS, describe

    rr = sub.add_parser(
        "reproduce",
        parents=[debug],
        help="reproduce the paper's claims: train, sweep, report, verdicts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Run an experiment of Merolla et al. 2016 end to end (train every row it needs, "
            "sweep, report) and end with a claims table (claims.json) whose verdicts come only "
            "from numbers measured in the run. Rerun the same command on the same --out to "
            "continue a killed run.",
            79,
        ),
        epilog=describe() + "\n"
        "see every key of a scale with --show; change any with --set KEY=VALUE",
    )
    rr.add_argument(
        "experiment",
        choices=tuple(EXPERIMENTS),
        metavar="EXPERIMENT",
        help="one of: " + ", ".join(EXPERIMENTS),
    )
    rr.add_argument(
        "--scale", choices=tuple(PRESETS), default="tiny", help="preset (default: tiny)"
    )
    rr.add_argument(
        "--out", default=None, help="run folder (default: runs/reproduce-EXPERIMENT-SCALE)"
    )
    rr.add_argument(
        "--set",
        action="append",
        dest="overrides",  # reproduce()'s parameter, so that its messages map back to --set
        metavar="KEY=VALUE",
        help="override a preset key, repeatable (e.g. --set epochs=10 --set width=0.5)",
    )
    rr.add_argument(
        "--show", action="store_true", help="print the preset with overrides applied and exit"
    )
    rr.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_judge(sub, debug) -> None:
    j = sub.add_parser(
        "judge",
        parents=[debug],
        help="judge the claims on rows recorded in several reproduce folders (no checkpoints)",
        description="Judge the claims, by reproduce's rules, on the rows recorded in several "
        "reproduce out folders (one GPU window each; their checkpoints are neither needed nor "
        "read): rows of one experiment, scale and preset, each from the folder whose sweep of "
        "it finished last. Writes claims.json, claims.md (with where each row came from: folder, "
        "date, commit, device, epochs) and judged.json.",
    )
    j.add_argument(
        "folders",
        nargs="+",
        metavar="FOLDER",
        help="reproduce out folders (reproduce.json, train/<row>/metrics.jsonl, sweeps/<row>/), "
        "or folders holding them",
    )
    j.add_argument("--out", required=True, help="folder for claims.json, claims.md, judged.json")


def _add_list(sub, debug) -> None:
    ls = sub.add_parser(
        "list",
        parents=[debug],
        help="list models, transforms, datasets and measures",
        description="List the registered models, the transforms (distortions and projections, "
        "with their parameters), the datasets and the measures.",
    )
    ls.add_argument(
        "what",
        nargs="?",
        choices=("models", "transforms", "datasets", "measures", "all"),
        default="all",
        help="what to list (default: all)",
    )


COMMANDS = {
    "train": _add_train,
    "evaluate": _add_evaluate,
    "export": _add_export,
    "demo": _add_demo,
    "sweep": _add_sweep,
    "report": _add_report,
    "reproduce": _add_reproduce,
    "judge": _add_judge,
    "list": _add_list,
}
"""Each command's name and the function that adds its subparser, in the order --help lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``args.command`` names the command given (None: none was)."""
    p = _Parser(
        prog="robustweights",
        description="Train networks with projected (binarized, quantized, noisy) "
        "weights and stress-test any network against weight distortions.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # --debug is also accepted after the command; SUPPRESS keeps the top-level value when it is
    # not given.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    for add in COMMANDS.values():
        add(sub, debug)
    return p


# A parameter named in a library message: ``name=`` not inside a word, a path, a quoted text, a
# transform spec (``add-gauss:sigma=0.5,scale=max``) or another ``=``, then its value: a quoted
# string, a list or dict literal, a bare number or word, or nothing (``give model_factory=``).
_NAMED = re.compile(
    r"(?<![\w,:=\-'\"/.])(?P<name>[A-Za-z_]\w*)="
    r"(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
    r"|\[[^\[\]]*\]|\{[^{}]*\}|(?:[\w+-]+(?:\.[\w+-]+)*)?)"
)


def command_options(parser: argparse.ArgumentParser, command: str) -> dict:
    """``{dest: action}`` of every option (not positional) of ``command``'s subparser."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions if a.option_strings}


def _as_flag(action: argparse.Action, text: str) -> str | None:
    """``--flag VALUE`` for a parameter's value as a message wrote it (None: leave it as it is)."""
    flag = max(action.option_strings, key=len)
    if not text:
        return flag
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return f"{flag} {text}"
    if action.nargs == 0:  # store_true: resume=True is --resume
        return flag if value is True else None
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return " ".join(f"{flag} {shlex.quote(str(v))}" for v in value) or None
    return flag if value is None else f"{flag} {shlex.quote(str(value))}"


def flag_form(message: str, options: dict) -> str:
    """``message`` as the command line says it: each ``name=`` (with its value) that names one of
    ``options`` (:func:`command_options`) becomes its flag (``out='runs/x'`` -> ``--out runs/x``,
    ``model_factory=`` -> ``--model-factory``, ``resume=True`` -> ``--resume``); nothing else
    changes."""

    def one(m: re.Match) -> str:
        action = options.get(m["name"])
        flag = _as_flag(action, m["value"]) if action is not None else None
        return m[0] if flag is None else flag

    return _NAMED.sub(one, message)
