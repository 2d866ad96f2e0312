"""The ``robustweights`` command line: parse, call the library, print.

Every flag of ``train`` comes from a field of :class:`~robustweights.training.TrainConfig`
(its help text is the field's comment), so ``config.json`` and the command line
can never disagree. A mistake a user can make prints one line and exits with
status 2 (``--debug`` shows the traceback); anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

from . import data as data_mod
from .errors import Diverged, UserError

EXAMPLES = r"""examples:
  robustweights demo
  robustweights train --model cnn --dataset fashion-mnist --projection sign --epochs 3 --out runs/sign
  robustweights train --model bc-vgg --width 0.25 --dataset cifar10 --projection sign --epochs 20 --out runs/bc
  robustweights train --resume --out runs/bc --epochs 30
  robustweights evaluate runs/sign --weights hidden
  robustweights sweep runs/sign --distortion "add-gauss:sigma=0:1.5:0.25" --distortion "quant:bits=1..8" \
      --on projected --out runs/sweep-sign
  robustweights sweep --model-factory mymodels:build --state-dict mine.pt --dataset fashion-mnist \
      --preprocess none --distortion "add-gauss:sigma=0,0.5,1" --out runs/sweep-mine
  robustweights report runs/sweep-sign runs/sweep-mine --out runs/report
  robustweights list transforms
  robustweights reproduce matrix --scale tiny
  robustweights reproduce all --scale cpu --out runs/repro-cpu --set epochs=10
"""


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


def _add_config_flags(p: argparse.ArgumentParser, cls) -> None:
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


def _given(args, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def cmd_train(args) -> int:
    from .distributed import agree, distributed_env, process_group
    from .training import TrainConfig, train

    given = _given(args, TrainConfig)
    if not args.resume:
        config = TrainConfig(**given)
        result = train(config, progress=not args.quiet)
    else:
        if "out" not in given:
            raise UserError("--resume needs --out, the run folder to continue")
        # Under torchrun rank 0 alone reads the run folder (the other machines need not see it) and hands the
        # others its configuration; a resumed run there uses --device, else auto.
        if distributed_env()[1] > 1:
            given.setdefault("device", "auto")
        with process_group(given.get("device", "auto")) as (rank, world, _):
            saved, error = None, None
            try:
                saved = _saved_config(given) if rank == 0 else None
            except UserError as e:
                error = e
            config = TrainConfig.from_dict({**agree(error, saved, rank, world), **given})
            result = train(config, resume=True, progress=not args.quiet)
    if distributed_env()[0] != 0:
        return 0  # under torchrun, rank 0 reports
    h = result.history[-1] if result.history else {}
    print(
        f"test error: {result.test_error:.2%} ({h.get('test_weights', '?')} weights) after {config.epochs} "
        f"epoch{'s' * (config.epochs != 1)}, {result.seconds:.0f} s; model {config.model} width {config.width}, projection "
        f"{config.projection} ({config.mode}), data {config.dataset}"
    )
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _saved_config(given: dict) -> dict:
    """The configuration of the run ``--out`` holds, for ``train --resume``."""
    from .models import check_factory_allowed
    from .runs import read_checkpoint

    saved = read_checkpoint(Path(given["out"]))["config"]
    check_factory_allowed(
        saved.get("model"),
        given.get("model"),
        given["out"],
        f"resuming imports and runs it: give --model {saved.get('model')} to allow that",
    )
    return saved


def cmd_evaluate(args) -> int:
    from .training import evaluate, load

    model, config = load(args.checkpoint, model_factory=args.model_factory)
    r = evaluate(model, config, split=args.split, data_dir=args.data_dir, weights=args.weights)
    if args.json:
        print(json.dumps(r))
    else:
        print(
            f"{args.split} error: {r['error']:.2%}  loss: {r['loss']:.4f}  ({r['weights']} weights, "
            f"{r['n']} examples of {r['dataset']}; inputs {r['preprocessing']})"
        )
    return 0


def cmd_demo(args) -> int:
    from .paper.demo import run_demo

    run_demo(out=args.out, epochs=args.epochs, progress=not args.quiet)
    return 0


def cmd_reproduce(args) -> int:
    from .paper.experiments import reproduce, resolve_preset, summary

    if args.show:
        preset = resolve_preset(args.scale, args.set or [])
        width = max(map(len, preset))
        for k, v in preset.items():
            print(f"{k:<{width}}  {v}")
        return 0
    out = args.out or f"runs/reproduce-{args.experiment}-{args.scale}"
    command = "robustweights " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    result = reproduce(
        args.experiment,
        args.scale,
        out,
        overrides=args.set or [],
        progress=not args.quiet,
        command=command,
    )
    print("\n" + summary(result))
    return 0


def cmd_sweep(args) -> int:
    from .sweeps import SweepConfig, run_sweep
    from .distributed import distributed_env
    from .results import spec_lines

    config = SweepConfig(**_given(args, SweepConfig))
    r = run_sweep(config, progress=not args.quiet)
    if distributed_env()[0] != 0:
        return 0  # under torchrun, rank 0 reports
    print(f"sweep of {r['label']} on {r['data_description']} ({r['split']} split)")
    if r["on"] == "hidden" and "projected" in r["baseline_weights"]:
        print(
            "note: this network runs with projected weights; distorting its hidden weights tests weights it "
            "was not trained to run with (batch-norm statistics included). --on projected distorts the weights "
            "it runs with; --bn-reestimate N re-estimates the statistics."
        )
    if args.quiet:  # else the sweep printed it as it started
        print(r["coverage"]["summary"])
    bn = (
        ""
        if not r.get("batch_norm", True)
        else "; batch-norm statistics "
        + (
            f"re-estimated on {r['bn_reestimate']} training batches per cell"
            if r["bn_reestimate"]
            else f"calibrated once on {r['bn_calibrate']} training batches"
            if r.get("bn_calibrate")
            else "as stored (not re-estimated)"
        )
    )
    print(
        f"undistorted error {r['baseline_error']:.2%} ({r['baseline_weights']} weights; inputs "
        f"{r.get('preprocessing') or 'as the dataset loader gives them'}); distorted: {r['on']} weights"
        + bn
    )
    print("\n".join(spec_lines(r["rows"])))
    best = r["lowest_bits"]
    if best:
        print(
            f"lowest effective bits with mean error <= {r['target_error']:.2%}: {best['effective_bits']:.2f} "
            f"bits per weight ({best['spec']}, mean error {best['mean_error']:.2%})"
        )
    else:
        print(
            f"no distortion with an effective-bits figure kept the mean error <= {r['target_error']:.2%}"
        )
    print(f"results: {config.out}/results.csv, results.json, sweep.json")
    return 0


def cmd_report(args) -> int:
    from .reports import report

    at = {}
    for item in args.at or []:
        name, _, value = item.partition("=")
        try:
            at[name] = float(value)
        except ValueError:
            raise UserError(
                f"--at {item!r}: expected DISTORTION=VALUE, e.g. add-gauss=0.8"
            ) from None
    claims = None
    if args.claims:
        from .paper.claims import read_claims

        claims = read_claims(args.claims)
    r = report(args.results, args.out, at=at or None, title=args.title, claims=claims)
    print(f"report: {r['html']} (and {Path(r['md']).name}, {len(r['figures'])} figures)")
    return 0


def cmd_list(args) -> int:
    from .models import list_models
    from .transforms import entry, list_transforms

    if args.what in ("models", "all"):
        print("models: " + ", ".join(list_models()) + "  (or package.module:function)")
    if args.what in ("transforms", "all"):
        print("transforms:")
        for name in list_transforms():
            e = entry(name)
            params = ", ".join(p.name for p in e.params)
            doc = e.doc.splitlines()[0].replace("``", "") if e.doc else ""
            print(f"  {name:<11} {('[' + params + ']') if params else '':<26} {doc}")
    if args.what in ("datasets", "all"):
        print("datasets: " + ", ".join(data_mod.DATASETS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .projected import WEIGHTS
    from .training import TrainConfig

    p = _Parser(
        prog="robustweights",
        description="Train networks with projected (binarized, quantized, noisy) "
        "weights and stress-test any network against weight distortions.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # --debug is also accepted after the command; SUPPRESS keeps the top-level value when it is not given.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )

    t = sub.add_parser(
        "train",
        parents=[debug],
        help="train a network with projected weights",
        description="Train a network with weights projected in the forward pass "
        "(BinaryConnect style: float hidden weights, straight-through gradients, clipping).",
    )
    _add_config_flags(t, TrainConfig)
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        parents=[debug],
        help="test error of a checkpoint",
        description="Test error and loss of a trained checkpoint on its own dataset and preprocessing.",
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
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser(
        "demo",
        parents=[debug],
        help="train float and binarized networks on shipped data and compare them",
        description="The main job on embedded data (a Fashion-MNIST subset shipped in the package): "
        "no download, no dataset to install, a few minutes on 2 CPU cores.",
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
    d.set_defaults(func=cmd_demo)

    from .sweeps import SweepConfig

    sw = sub.add_parser(
        "sweep",
        parents=[debug],
        help="test error of a network under test-time weight distortions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Stress-test a checkpoint (or your own model: --model-factory with --state-dict "
            "and --dataset) against weight distortion grids; writes results.csv, results.json and "
            "sweep.json. Started again on the same --out, it computes only the missing cells. "
            "Every floating-point parameter with 2 or more dimensions is distorted (linear, "
            "convolution, embedding and attention weights, your own nn.Parameter); biases and "
            "normalization parameters are not. The first line printed says what was covered.",
            79,
        ),
        epilog="your own model:\n"
        "  --model-factory package.module:function   a function that builds the network; it is\n"
        "      called with the keywords it accepts among num_classes, in_shape (C, H, W) and\n"
        "      width, and must return an nn.Module whose state_dict --state-dict holds\n"
        "      (keys saved through DistributedDataParallel or torch.compile, module. and\n"
        "      _orig_mod., are read without their prefix)\n"
        "  --dataset " + ", ".join(data_mod.DATASETS) + "\n"
        "  --preprocess standardize | gcn-zca | none | normalize:mean=M,std=S\n"
        "      what your model was trained on (none: pixels in [0, 1])\n"
        "examples:\n"
        '  robustweights sweep runs/sign --distortion "add-gauss:sigma=0:1.5:0.25" --on projected\n'
        "  robustweights sweep --model-factory mymodels:build --state-dict mine.pt --dataset demo \\\n"
        '      --preprocess none --distortion "quant:bits=1..8" --exclude "embed*" --out runs/mine\n'
        "  robustweights report runs/sweep-sign runs/mine --out runs/report",
    )
    _add_config_flags(sw, SweepConfig)
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

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
    rp.set_defaults(func=cmd_report)

    from .paper.experiments import EXPERIMENTS, PRESETS, describe

    rr = sub.add_parser(
        "reproduce",
        parents=[debug],
        help="reproduce the paper's claims: train, sweep, report, verdicts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Run an experiment of Merolla et al. 2016 end to end (train every row it needs, sweep, report) and end "
            "with a claims table (claims.json) whose verdicts come only from numbers measured in the run. Rerun "
            "the same command on the same --out to continue a killed run.",
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
        metavar="KEY=VALUE",
        help="override a preset key, repeatable (e.g. --set epochs=10 --set width=0.5)",
    )
    rr.add_argument(
        "--show", action="store_true", help="print the preset with overrides applied and exit"
    )
    rr.add_argument("--quiet", action="store_true", help="no progress bars")
    rr.set_defaults(func=cmd_reproduce)

    ls = sub.add_parser(
        "list",
        parents=[debug],
        help="list models, transforms and datasets",
        description="List the registered models, the transforms (distortions and projections, "
        "with their parameters) and the datasets.",
    )
    ls.add_argument(
        "what",
        nargs="?",
        choices=("models", "transforms", "datasets", "all"),
        default="all",
        help="what to list (default: all)",
    )
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # (imports the library: seconds)
    except KeyboardInterrupt:
        print("robustweights: interrupted; nothing was written", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"robustweights {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        if args.debug:
            raise
        print(f"robustweights {args.command}: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"robustweights {args.command}: interrupted; files already written are intact",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
