"""``robustweights demo``: the paper's story, told honestly, on data shipped inside the package.

1. Train the small CNN three times on a Fashion-MNIST subset that ships with
   the package (no download, no dataset to install): float weights
   (``identity``) and the two BinaryConnect networks, ``sign`` (tested with
   its binary weights) and ``stoch-sign`` (tested with its hidden weights,
   its batch-norm statistics re-estimated for them at the end of training).
2. Test each with its hidden float weights and binarized, and explain the
   sign network's hidden-weight error: its batch-norm statistics belong to
   its binary weights, not to the much smaller hidden ones.
3. Sweep the weights each network runs with against additive noise under
   both references of docs/method.md 5a: relative to each layer's range
   (``scale=max``, the paper's most likely convention: the headline) and
   relative to each tensor's spread (``std``, beside it), 3 trials each.
4. Write a report and print the finding: a difference between networks is
   called a finding only when it exceeds the spread over trials.

About 90 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from .. import projected
from ..errors import UserError
from ..runs import check_writable, write_text
from ..checkpoints import load_config_data
from ..config import TrainConfig
from ..evaluation import reestimated_bn
from ..training import evaluate, train

MARKER = "demo.json"
KIND = "robustweights demo"  # demo.json's "kind": a folder holding it is a demo we may replace
EPOCHS = 8  # enough for the networks to settle on 5000 images; about 15 s each on 2 cores
# The BinaryConnect networks clip to BinaryConnect's per-layer Glorot bound H (with H = 1 the
# stochastic one draws nearly fair coins from weights near 0 and does not learn in 8 epochs: 54.8%
# error against 13.1%).
NETWORKS = (
    ("float", "identity", "1"),
    ("sign", "sign", "glorot"),
    ("stoch-sign", "stoch-sign", "glorot"),
)
HEADLINE = (
    "add-gauss:sigma=0.1,0.2,0.4,0.8,scale=max",
    0.4,
)  # noise relative to each layer's range
BESIDE = ("add-gauss:sigma=0.25,0.5,0.75,1.0", 1.0)  # noise relative to each tensor's std
TRIALS = 3
_OUTPUTS = (
    tuple(n for n, *_ in NETWORKS) + tuple(f"sweep-{n}" for n, *_ in NETWORKS) + ("report", MARKER)
)


def _is_demo(out: Path) -> bool:
    """Whether ``out/demo.json`` is a demo's marker: an unfinished demo's (written first) or a
    finished one's."""
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8, not JSON: not ours
        return False
    return isinstance(marker, dict) and (
        marker.get("kind") == KIND or isinstance(marker.get("networks"), dict)
    )


def _check_epochs(epochs) -> int:
    """``epochs`` or the demo's own; a 0 or a negative number is a mistake, not "the default"."""
    if epochs is None:
        return EPOCHS
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"epochs must be a positive whole number, not {epochs!r}")
    return epochs


def _prepare(out: Path, epochs: int) -> None:
    """Use ``out`` if it is new or holds an earlier demo, finished or interrupted (which is
    replaced); never touch anything else. Call it only once every setting is checked: it deletes the
    earlier demo's outputs. The marker is written first, marked unfinished, so that a demo
    interrupted from here on can be rerun on ``out`` (:func:`run_demo` has checked that ``out`` can
    be written)."""
    try:
        if out.exists() and any(out.iterdir()) and not _is_demo(out):
            raise UserError(f"{out} exists and is not a demo folder; pass out= with a new folder")
        write_text(
            out / MARKER,
            json.dumps({"kind": KIND, "finished": False, "epochs": epochs}, indent=2) + "\n",
        )
        for name in _OUTPUTS:
            p = out / name
            if name != MARKER:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(
            f"out={str(out)!r}: cannot replace the earlier demo there: {e.strerror or e}"
        ) from None


def _rises(rows: list[dict], baseline: float, scale: str, value: float) -> list[float]:
    """The error rise of every trial at one strength of one noise reference."""
    return [
        r["error"] - baseline
        for r in rows
        if r["distortion"] == "add-gauss"
        and (r.get("scale") or "std") == scale
        and r["value"] == value
    ]


@torch.no_grad()
def _mean_abs(tensors) -> float:
    return float(torch.cat([t.detach().abs().flatten() for t in tensors]).mean())


def compare(rises: dict[str, list[float]]) -> list[str]:
    """Findings: network A degrades less than B only when A's worst trial rises less than B's best
    one."""
    out = []
    for a, ra in rises.items():
        for b, rb in rises.items():
            if a != b and max(ra) < min(rb):
                out.append(
                    f"{a} degrades less than {b} (by "
                    f"{100 * (sum(rb) / len(rb) - sum(ra) / len(ra)):.1f} points; every trial)"
                )
    return out


def run_demo(out: str = "runs/demo", epochs: int | None = None, progress: bool = True) -> dict:
    """Train, test, sweep, report and compare; returns the numbers it printed."""
    from ..reports import report

    out_path = Path(out)
    base, configs = _configs(out_path, epochs)
    check_writable(out_path)
    t0 = time.perf_counter()
    data = load_config_data(TrainConfig(**base))  # every network trains and tests on it: load once
    _prepare(out_path, base["epochs"])
    nets = {
        name: _train_and_test(name, projection, configs[name], data, progress)
        for name, projection, _ in NETWORKS
    }
    sweeps = _sweep_networks(out_path, progress)
    if progress:
        print("[3/3] writing the report ...", flush=True)
    rep = report(
        [out_path / f"sweep-{n}" for n, *_ in NETWORKS],
        out_path / "report",
        title="robustweights demo: float vs BinaryConnect CNNs",
    )
    seconds = time.perf_counter() - t0

    conventions = {"max": HEADLINE[1], "std": BESIDE[1]}
    rises = {
        scale: {n: _rises(sw["rows"], sw["baseline_error"], scale, v) for n, sw in sweeps.items()}
        for scale, v in conventions.items()
    }
    findings = {scale: compare(r) for scale, r in rises.items()}
    summary = {
        "dataset": data.description,
        "model": "cnn",
        "epochs": base["epochs"],
        "seconds": seconds,
        "networks": nets,
        "rises": rises,
        "findings": findings,
        "report": str(rep["html"]),
    }
    write_text(
        out_path / MARKER, json.dumps({"kind": KIND, "finished": True, **summary}, indent=2) + "\n"
    )
    _print(summary, sweeps, data.description, base["epochs"], rep["html"], out_path)
    return summary


def _configs(out_path: Path, epochs: int | None) -> tuple[dict, dict[str, TrainConfig]]:
    """The settings the networks share and each network's checked configuration. Everything that
    can be wrong is found before _prepare deletes an earlier demo: the settings, the folder, the
    data."""
    base = dict(
        model="cnn",
        dataset="demo",
        epochs=_check_epochs(epochs),
        batch_size=50,
        lr=2e-3,
        schedule="cosine",
        seed=0,
    )
    configs = {
        name: TrainConfig(
            **base, projection=projection, clip=clip, out=str(out_path / name)
        ).validate()
        for name, projection, clip in NETWORKS
    }
    return base, configs


def _train_and_test(name: str, projection: str, config: TrainConfig, data, progress: bool) -> dict:
    """Train one network and test it as it runs, with its hidden float weights and binarized."""
    if progress:
        print(
            f"[1/3] training the {name} network ({projection}, {config.epochs} epochs) ...",
            flush=True,
        )
    result = train(config, progress=progress, data=data)
    model = result.model
    runs = evaluate(model, config, data=data)
    hidden = evaluate(model, config, weights="hidden", data=data)
    binarize = "sign:scale=clip" if projection != "identity" else "sign"
    with projected.distort(model, binarize):
        binary = evaluate(model, config, weights="hidden", data=data)
    net = {
        "projection": projection,
        "error": runs["error"],
        "weights": runs["weights"],
        "hidden_error": hidden["error"],
        "binary_error": binary["error"],
        "binarized_with": binarize,
        "mean_abs_hidden": _mean_abs([s.hidden for s in projected.sites(model)]),
        "mean_abs_binary": _mean_abs([s.project(s.hidden) for s in projected.sites(model)]),
    }
    if projection == "sign":  # why its hidden weights fail: statistics of other weights
        device = next(model.parameters()).device
        with (
            projected.use_weights(model, "hidden"),
            reestimated_bn(model, data.train, 20, 250, device),
        ):
            net["hidden_error_bn_reestimated"] = evaluate(
                model, config, weights="hidden", data=data
            )["error"]
    return net


def _sweep_networks(out_path: Path, progress: bool) -> dict:
    """Sweep every trained network with both noise references: ``{name: sweep}``."""
    from ..sweeps import SweepConfig, run_sweep

    sweeps = {}
    for name, *_ in NETWORKS:
        if progress:
            print(
                f"[2/3] sweeping the {name} network: {HEADLINE[0]} and {BESIDE[0]} "
                f"({TRIALS} trials) ...",
                flush=True,
            )
        sweeps[name] = run_sweep(
            SweepConfig(
                checkpoint=str(out_path / name),
                distortions=[HEADLINE[0], BESIDE[0]],
                trials=TRIALS,
                seed=0,
                on="projected",
                out=str(out_path / f"sweep-{name}"),
            ),
            progress=False,
        )
    return sweeps


def _print(summary, sweeps, description, epochs, html, out_path) -> None:
    nets, rises, findings = summary["networks"], summary["rises"], summary["findings"]
    print(
        f"\nrobustweights demo: small CNN on the {description}, {epochs} "
        f"epoch{'s' * (epochs != 1)} each, {summary['seconds']:.0f} s\n"
    )
    print(f"{'network':<24}{'as it runs':>18}{'hidden float weights':>24}{'binarized':>12}")
    for name, r in nets.items():
        runs = f"{r['error']:.2%} ({r['weights']})"
        label = f"{name} ({r['projection']})"
        print(f"{label:<24}{runs:>18}{r['hidden_error']:>24.2%}{r['binary_error']:>12.2%}")
    s = nets["sign"]
    print(
        f"\nThe sign network's hidden weights give {s['hidden_error']:.2%} error: its batch-norm "
        "statistics were gathered with its binary weights (+-H, mean |W| = "
        f"{s['mean_abs_binary']:.3f}), while its hidden weights average |W| = "
        f"{s['mean_abs_hidden']:.3f}, so every layer's output is smaller than the statistics "
        "expect. Re-estimated for the hidden weights, the statistics give "
        f"{s['hidden_error_bn_reestimated']:.2%}: the hidden weights are fine, the statistics "
        "belong to another network."
    )
    for scale, title in (
        (
            "max",
            f"Headline (the paper's most likely convention): additive noise relative to each "
            f"layer's range, sigma {HEADLINE[1]:g} x max|W|",
        ),
        (
            "std",
            f"Beside it: noise relative to each tensor's spread, sigma {BESIDE[1]:g} x std(W) "
            f"(0.5 nominal bits per weight)",
        ),
    ):
        print(f"\n{title}; error rise in points over {TRIALS} trials (min-max):")
        for name, rs in rises[scale].items():
            mean = sum(rs) / len(rs)
            print(
                f"  {name:<11} {sweeps[name]['baseline_error']:.2%} -> "
                f"{sweeps[name]['baseline_error'] + mean:.2%}  ({100 * mean:+.1f}, "
                f"{100 * min(rs):+.1f} to {100 * max(rs):+.1f})"
            )
        found = findings[scale]
        print(
            "  finding: "
            + (
                "; ".join(found)
                if found
                else "no network degrades less than another beyond the spread over trials"
            )
        )
    print(
        "\nOne seed, 1,000 test images: a difference inside the spread over trials is not called "
        "a finding."
    )
    print(f"report: {html}\nruns, sweeps and checkpoints: {out_path}/")
