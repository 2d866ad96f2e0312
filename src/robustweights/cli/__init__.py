"""The ``robustweights`` command line: each command's function (parse, call the library, print).

The parser, with every flag and help text, is :mod:`robustweights.cli.parser`. A mistake a user
can make prints one line and exits with status 2 (``--debug`` shows the traceback); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import Diverged, UserError
from .parser import build_parser, command_options, flag_form

__all__ = ["build_parser", "main"]


def _given(args, cls) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def cmd_train(args) -> int:
    from ..distributed import agree, distributed_env, process_group
    from ..measures import for_config
    from ..training import TrainConfig, train

    given = _given(args, TrainConfig)
    if args.fused_seeds is not None:
        return _train_fused_seeds(args, given)
    if not args.resume:
        config = TrainConfig(**given)
        result = train(config, progress=not args.quiet)
    else:
        if "out" not in given:
            raise UserError("--resume needs --out, the run folder to continue")
        # Under torchrun rank 0 alone reads the run folder (the other machines need not see it)
        # and hands the others its configuration; a resumed run there uses --device, else auto.
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
    m = for_config(config)
    print(
        f"test {m.name.replace('_', ' ')}: {m.format(result.test_value)} "
        f"({h.get('test_weights', '?')} weights) after "
        f"{config.epochs} epoch{'s' * (config.epochs != 1)}, {result.seconds:.0f} s; "
        f"model {config.model} width {config.width}, projection "
        f"{config.projection} ({config.mode}), data {config.dataset}"
    )
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _train_fused_seeds(args, given: dict) -> int:
    """``train --fused-seeds K``: K seeds as one fused network, a run folder each."""
    from ..fused_training import seed_configs, train_fused
    from ..training import TrainConfig

    if args.resume and "out" not in given:
        raise UserError("--resume needs --out, the folder holding the seed-<s> run folders")
    configs = seed_configs(TrainConfig(**given), args.fused_seeds)
    if args.resume:  # each seed's saved configuration, with what this command gives
        configs = [
            TrainConfig.from_dict(
                {**_saved_config({**given, "out": c.out}), **given, "seed": c.seed, "out": c.out}
            )
            for c in configs
        ]
    results = train_fused(configs, resume=args.resume, progress=not args.quiet)
    for c, r in zip(configs, results):
        print(
            f"seed {c.seed}: test {r.measure.replace('_', ' ')} {r.test_value:.4g} after "
            f"{len(r.history)} epochs" + (f"; checkpoint: {r.checkpoint}" if r.checkpoint else "")
        )
    print(f"{len(results)} seeds trained as one fused network in {results[0].seconds:.0f} s")
    return 0


def _saved_config(given: dict) -> dict:
    """The configuration of the run ``--out`` holds, for ``train --resume``."""
    from ..models import check_factory_allowed
    from ..runs import read_checkpoint

    saved = read_checkpoint(Path(given["out"]))["config"]
    check_factory_allowed(
        saved.get("model"),
        given.get("model"),
        given["out"],
        f"resuming imports and runs it: give --model {saved.get('model')} to allow that",
    )
    return saved


def cmd_evaluate(args) -> int:
    from ..checkpoints import load
    from ..training import evaluate, measure_for

    model, config = load(args.checkpoint, model_factory=args.model_factory)
    m = measure_for(config, args.measure)
    r = evaluate(
        model,
        config,
        split=args.split,
        data_dir=args.data_dir,
        weights=args.weights,
        measure=m,
        data=args.data,
    )
    if args.json:
        print(json.dumps(r))
        return 0
    loss = f"  loss: {r['loss']:.4f}" if "loss" in r else ""
    count = f"{r['n']} examples of " if "n" in r else ""
    inputs = f"; inputs {r['preprocessing']}" if r["preprocessing"] else ""
    print(
        f"{args.split} {m.name.replace('_', ' ')}: {m.format(m.value(r))}{loss}  "
        f"({r['weights']} weights, {count}{r['dataset']}{inputs})"
    )
    return 0


def cmd_export(args) -> int:
    from ..bake import export_run

    r = export_run(
        args.run,
        args.out,
        packed=args.packed,
        weights=args.weights,
        model_factory=args.model_factory,
    )
    line = f"wrote {r['out']}: {r['bytes']:,} bytes on disk ({r['weights']} weights"
    if r["packed"]:
        line += (
            f"; {r['binary_tensors']} binary tensors at 1 bit per weight: "
            f"{r['binary_packed_bytes']:,} bytes instead of {r['binary_float32_bytes']:,}"
        )
    print(line + ")")
    return 0


def cmd_demo(args) -> int:
    from ..paper.demo import run_demo

    run_demo(out=args.out, epochs=args.epochs, progress=not args.quiet)
    return 0


def cmd_reproduce(args) -> int:
    from ..paper.experiments import reproduce, resolve_preset, summary

    if args.show:
        preset = resolve_preset(args.scale, args.overrides or [])
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
        overrides=args.overrides or [],
        progress=not args.quiet,
        command=command,
    )
    print("\n" + summary(result))
    return 0


def cmd_judge(args) -> int:
    from ..paper.judging import judge_recorded, summary

    result = judge_recorded(args.folders, out=args.out, progress=True)
    print("\n" + summary(result))
    return 0


def cmd_sweep(args) -> int:
    from ..sweeps import SweepConfig, run_sweep
    from ..distributed import distributed_env

    config = SweepConfig(**_given(args, SweepConfig))
    if any(isinstance(n, str) and ":" in n for n in (config.measure, config.data)):
        _cwd_importable()  # --measure, --data: the user's own modules, beside them
    r = run_sweep(config, progress=not args.quiet)
    if distributed_env()[0] != 0:
        return 0  # under torchrun, rank 0 reports
    print(f"sweep of {r['label']} on {r['data_description']} ({r['split']} split)")
    if r["on"] == "hidden" and "projected" in r["baseline_weights"]:
        print(
            "note: this network runs with projected weights; distorting its hidden weights tests "
            "weights it was not trained to run with (batch-norm statistics included). "
            "--on projected distorts the weights it runs with; --bn-reestimate N re-estimates "
            "the statistics."
        )
    if args.quiet:  # else the sweep printed it as it started
        print(r["coverage"]["summary"])
    _print_sweep(r)
    print(f"results: {config.out}/results.csv, results.json, sweep.json")
    return 0


def _print_sweep(r: dict) -> None:
    """The undistorted score, each spec's mean and the lowest effective bits of a sweep, in its
    measure's units and direction (``error 9.54%``, ``perplexity 52.3``)."""
    from ..results import is_percent, lowest_bits, score_format, spec_lines

    metric = r.get("metric", "error")
    percent = is_percent(metric, r.get("measure"))
    show = score_format(percent)
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
        f"undistorted {metric} {show(r['baseline_score'])} ({r['baseline_weights']} weights; "
        f"inputs {r.get('preprocessing') or 'as the dataset loader gives them'}); "
        f"distorted: {r.get('distorted_weights') or r['on']} weights (on {r['on']})" + bn
    )
    print("\n".join(spec_lines(r["rows"], percent=percent)))
    best, way = r["lowest_bits"], ">=" if r.get("higher_is_better") else "<="
    target = f"{metric} {way} {show(r['target_error'])}"
    if best:
        print(
            f"lowest effective bits with mean {target}: {best['effective_bits']:.2f} bits per "
            f"weight ({best['spec']}, mean {metric} {show(best['mean_score'])})"
        )
    elif snr := lowest_bits(r["rows"], r["target_error"], r.get("higher_is_better"), "snr_bits"):
        print(  # a device model, mult-gauss, a user's own: their bits are the weights' SNR
            f"no distortion with an effective-bits figure kept the mean {target}; lowest measured "
            f"bits (signal-to-noise of the weights as read) with it: {snr['effective_bits']:.2f} "
            f"bits per weight ({snr['spec']}, mean {metric} {show(snr['mean_score'])})"
        )
    else:
        print(f"no distortion with an effective-bits figure kept the mean {target}")


def _cwd_importable() -> None:
    """The current folder first on ``sys.path`` (as ``python -m`` has it), for a user's module
    named on the command line (see :func:`_factories_importable`)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def cmd_report(args) -> int:
    from ..reports import report

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
        from ..paper.claims import read_claims

        claims = read_claims(args.claims)
    r = report(args.results, args.out, at=at or None, title=args.title, claims=claims)
    print(f"report: {r['html']} (and {Path(r['md']).name}, {len(r['figures'])} figures)")
    return 0


def cmd_list(args) -> int:
    from ..config import TRAIN_DATASETS
    from ..models import list_models
    from ..transforms import entry, list_transforms

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
        print("datasets: " + ", ".join(TRAIN_DATASETS) + "  (text: --data-dir FILE or folder)")
    if args.what in ("measures", "all"):
        from ..measures import MEASURES

        print("measures:")
        for name, m in sorted(MEASURES.items()):
            print(f"  {name:<11} {m.description}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "demo": cmd_demo,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "reproduce": cmd_reproduce,
    "judge": cmd_judge,
    "list": cmd_list,
}


def _factories_importable(args) -> None:
    """Put the current folder first on ``sys.path`` when the command names a model factory.

    ``python -m robustweights`` has it there, the ``robustweights`` script does not: without
    this, ``--model-factory mymod:build`` run beside mymod.py failed unless PYTHONPATH named the
    folder. Only factories the user names on the command line (train's --model, --model-factory,
    reproduce's --set model=...) bring it; a checkpoint naming a factory is still refused unless
    the user names that factory again (models.check_factory_allowed).
    """
    named = [getattr(args, k, None) for k in ("model", "model_factory", "measure", "data")]
    for item in getattr(args, "overrides", None) or []:
        key, _, value = item.partition("=")
        if key.strip() in ("model", "imagenet_model"):
            named.append(value)
    if any(isinstance(n, str) and ":" in n for n in named):
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)


def _resume_hint(args) -> str:
    """How the interrupted or failed command goes on: what the user types next."""
    if args.command == "train" and getattr(args, "out", None):
        if not (Path(args.out) / "checkpoint.pt").is_file():
            return "no checkpoint was written yet: run the same command again"
        return f"`robustweights train --resume --out {args.out}` goes on from the last checkpoint"
    if args.command in ("sweep", "reproduce", "demo"):
        return "the same command goes on from the cells and rows already written"
    return "run the same command again"


def _os_error(e: OSError) -> str:
    """One line for a failure of the file system: which path, why."""
    where = f"{e.filename}: " if e.filename else ""
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    why = e.strerror or str(e)
    return f"{where}{why}{f' ({name})' if name else ''}"


def _said(e: Exception, parser, args) -> str:
    """A library message with the command's flags for the parameters it names (``out='runs/x'``
    says ``--out runs/x``): :func:`robustweights.cli.parser.flag_form`."""
    return flag_form(str(e), command_options(parser, args.command))


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: cleanly, files whole


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # (imports the library: seconds)
    except KeyboardInterrupt:
        print("robustweights: interrupted; nothing was written", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return _run(args, parser)
    finally:
        if main_thread:  # called in-process (a notebook, a test): the caller's handler back
            signal.signal(signal.SIGTERM, before)


def _run(args, parser) -> int:
    """The command, its mistakes and failures turned into one line and an exit status."""
    try:
        _factories_importable(args)
        return COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"robustweights {args.command}: error: {_said(e, parser, args)}", file=sys.stderr)
        return 2
    except Diverged as e:
        if args.debug:
            raise
        print(f"robustweights {args.command}: failed: {_said(e, parser, args)}", file=sys.stderr)
        return 1
    except OSError as e:
        if args.debug:
            raise
        print(
            f"robustweights {args.command}: error: {_os_error(e)}; files already written are "
            f"whole; once that is fixed, {_resume_hint(args)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"robustweights {args.command}: interrupted; files already written are whole; "
            f"{_resume_hint(args)}",
            file=sys.stderr,
        )
        return 130
