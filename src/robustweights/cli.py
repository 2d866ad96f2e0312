"""The ``robustweights`` command line: parse, call the library, print.

Every flag of ``train`` comes from a field of :class:`~robustweights.train.TrainConfig`
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
from pathlib import Path

from . import data as data_mod
from .errors import UserError

EXAMPLES = """examples:
  robustweights demo
  robustweights train --model cnn --dataset fashion-mnist --projection sign --epochs 3 --out runs/sign
  robustweights train --model bc-vgg --width 0.25 --dataset cifar10 --projection sign --epochs 20 --out runs/bc
  robustweights train --resume --out runs/bc --epochs 30
  robustweights evaluate runs/sign --weights hidden
  robustweights list transforms
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line, with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _field_type(f: dataclasses.Field):
    t = str(f.type)
    return bool if t == "bool" else int if t.startswith("int") else float if t.startswith("float") else str


def _add_config_flags(p: argparse.ArgumentParser, cls) -> None:
    """One flag per config field; defaults are suppressed so we can tell which flags were given."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help = f"{f.metadata.get('help', '')} (default: {f.default})"
        if _field_type(f) is bool:
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help)
        else:
            p.add_argument(flag, type=_field_type(f), choices=f.metadata.get("choices"), default=argparse.SUPPRESS,
                           metavar=f.name.upper() if not f.metadata.get("choices") else None, help=help)


def _given(args, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def cmd_train(args) -> int:
    from .training import TrainConfig, read_checkpoint, train

    given = _given(args, TrainConfig)
    if args.resume:
        if "out" not in given:
            raise UserError("--resume needs --out, the run folder to continue")
        saved = read_checkpoint(Path(given["out"]))["config"]
        config = TrainConfig.from_dict({**saved, **given})
    else:
        config = TrainConfig(**given)
    result = train(config, resume=args.resume, progress=not args.quiet)
    h = result.history[-1] if result.history else {}
    print(f"test error: {result.test_error:.2%} ({h.get('test_weights', '?')} weights) after {config.epochs} "
          f"epochs, {result.seconds:.0f} s; model {config.model} width {config.width}, projection "
          f"{config.projection} ({config.mode}), data {config.dataset}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def cmd_evaluate(args) -> int:
    from .training import evaluate, load

    model, config = load(args.checkpoint, model_factory=args.model_factory)
    r = evaluate(model, config, split=args.split, data_dir=args.data_dir, weights=args.weights)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{args.split} error: {r['error']:.2%}  loss: {r['loss']:.4f}  ({r['weights']} weights, "
              f"{r['n']} examples of {r['dataset']})")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out=args.out, epochs=args.epochs, progress=not args.quiet)
    return 0


def cmd_list(args) -> int:
    from .models import list_models
    from .transforms import _REGISTRY, list_transforms

    if args.what in ("models", "all"):
        print("models: " + ", ".join(list_models()) + "  (or package.module:function)")
    if args.what in ("transforms", "all"):
        print("transforms:")
        for name in list_transforms():
            e = _REGISTRY[name]
            params = ", ".join(p.name for p in e.params)
            doc = e.doc.splitlines()[0] if e.doc else ""
            print(f"  {name:<11} {('[' + params + ']') if params else '':<26} {doc}")
    if args.what in ("datasets", "all"):
        print("datasets: " + ", ".join(data_mod.DATASETS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .projected import WEIGHTS
    from .training import TrainConfig

    p = _Parser(prog="robustweights", description="Train networks with projected (binarized, quantized, noisy) "
                "weights and stress-test any network against weight distortions.",
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a network with projected weights",
                       description="Train a network with weights projected in the forward pass "
                       "(BinaryConnect style: float hidden weights, straight-through gradients, clipping).")
    _add_config_flags(t, TrainConfig)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test error of a checkpoint",
                       description="Test error and loss of a trained checkpoint on its own dataset and preprocessing.")
    e.add_argument("checkpoint", help="checkpoint.pt or the run folder holding it")
    e.add_argument("--weights", choices=WEIGHTS, default="auto",
                   help="auto: the training projection if deterministic, else hidden (method.md section 3)")
    e.add_argument("--split", choices=("test", "train"), default="test")
    e.add_argument("--data-dir", default=None, help="where the dataset is, if not where training found it")
    e.add_argument("--model-factory", default=None, help="allow importing this package.module:function model")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train float and binarized networks on shipped data and compare them",
                       description="The main job on embedded data (a Fashion-MNIST subset shipped in the package): "
                       "no download, no dataset to install, a few minutes on 2 CPU cores.")
    d.add_argument("--out", default="runs/demo", help="folder for the two runs (default: runs/demo)")
    d.add_argument("--epochs", type=int, default=None, help="epochs per network (default: the demo's own)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    ls = sub.add_parser("list", help="list models, transforms and datasets")
    ls.add_argument("what", nargs="?", choices=("models", "transforms", "datasets", "all"), default="all")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except KeyboardInterrupt:
        print(f"robustweights {args.command}: interrupted; files already written are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
