"""Time to accuracy: train the part-1 target settings and record accuracy and wall time per epoch.

    # Fashion-MNIST, small CNN
    python benchmarks/time_to_accuracy.py fmnist-float fmnist-sign
    # CIFAR-10, bc-vgg width 0.25
    python benchmarks/time_to_accuracy.py cifar-sign
    python benchmarks/time_to_accuracy.py fmnist-sign --out docs/results/part1
    # writes fmnist-sign-compiled.json
    python benchmarks/time_to_accuracy.py fmnist-sign --compile --out DIR

Each preset is a TrainConfig; the script prints, per epoch, the test accuracy
and the wall time since the start of training (data loading and the
per-epoch test passes excluded), then the first epoch and time at which the target accuracy
was reached (with --compile, the first epoch's time includes compiling the
training step). With --out it writes ``<preset>.json`` holding the configuration,
the per-epoch metrics, the machine, torch version, git commit and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import robustweights as rw  # noqa: E402

FMNIST = dict(
    model="cnn", dataset="fashion-mnist", epochs=6, batch_size=100, lr=2e-3, schedule="cosine"
)
CIFAR = dict(
    model="bc-vgg",
    width=0.25,
    dataset="cifar10",
    epochs=20,
    batch_size=50,
    lr=3e-3,
    schedule="exp",
    lr_end=3e-5,
    preprocess="gcn-zca",
)
PRESETS = {
    "fmnist-float": (dict(FMNIST, projection="identity"), 0.92),
    "fmnist-sign": (dict(FMNIST, projection="sign"), 0.90),
    "cifar-sign": (dict(CIFAR, projection="sign"), 0.80),
    "cifar-float": (dict(CIFAR, projection="identity"), 0.80),
}


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({os.cpu_count()} CPUs)"
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    return f"{cpu}, {os.cpu_count()} CPU cores, no GPU"


def commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def run(name: str, out: Path | None, overrides: dict) -> dict:
    kw, target = PRESETS[name]
    config = rw.TrainConfig(**{**kw, **overrides})
    reached = {}
    train_seconds = 0.0

    def on_epoch(epoch, m):
        nonlocal train_seconds
        acc = 1 - m["test_error"]
        train_seconds += m[
            "seconds"
        ]  # training time of the epoch (data loading and test passes excluded)
        wall = train_seconds
        print(f"{name}: epoch {epoch}: test accuracy {acc:.2%} at {wall:.0f} s", flush=True)
        if acc >= target and not reached:
            reached.update(epoch=epoch, seconds=wall)

    t0 = time.perf_counter()
    result = rw.train(config, progress=False, callback=on_epoch)
    wall = time.perf_counter() - t0
    report = {
        "preset": name,
        "target_accuracy": target,
        "reached": reached or None,
        "final_test_accuracy": 1 - result.test_error,
        "train_seconds": result.seconds,
        # the whole call: data loading, test passes and any compilation included
        "wall_seconds": wall,
        "config": dataclasses.asdict(config),
        "history": result.history,
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/time_to_accuracy.py " + " ".join(sys.argv[1:]),
    }
    verdict = (
        f"reached {target:.0%} at epoch {reached['epoch']} after {reached['seconds']:.0f} s"
        if reached
        else f"did not reach {target:.0%}"
    )
    print(
        f"{name}: final test accuracy {1 - result.test_error:.2%} "
        f"after {result.seconds:.0f} s of training "
        f"({config.epochs} epochs, {wall:.0f} s in all); {verdict}; machine: {report['machine']}",
        flush=True,
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}{'-compiled' if config.compile else ''}.json").write_text(
            json.dumps(report, indent=2) + "\n"
        )
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="+", choices=sorted(PRESETS))
    ap.add_argument("--out", type=Path, default=None, help="folder for one JSON file per preset")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training steps")
    args = ap.parse_args()
    overrides = {
        k: v for k, v in dict(epochs=args.epochs, device=args.device).items() if v is not None
    }
    if args.amp:
        overrides["amp"] = True
    if args.channels_last:
        overrides["channels_last"] = True
    if args.compile:
        overrides["compile"] = True
    for name in args.presets:
        run(name, args.out, overrides)


if __name__ == "__main__":
    main()
