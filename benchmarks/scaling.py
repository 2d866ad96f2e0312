"""Training throughput with 1 and N processes (torchrun), same preset, same machine.

    python benchmarks/scaling.py  # cnn on Fashion-MNIST, 1 epoch, 1 and 2 processes
    python benchmarks/scaling.py --procs 1 2 4 --epochs 2 --dataset demo

Each setting runs `robustweights train` as a subprocess (`torchrun
--nproc-per-node N -m robustweights train ...` for N > 1) into a fresh
folder and reads images per second (all processes together) and the test
error from its metrics.jsonl. CPU threads are split evenly between the
processes (OMP_NUM_THREADS), so that N processes use the same cores as one.
Prints the machine and torch version; one run per setting, so expect noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run(procs: int, args, out: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // procs)
    cmd = [
        "-m",
        "robustweights",
        "train",
        "--model",
        args.model,
        "--dataset",
        args.dataset,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--projection",
        args.projection,
        "--out",
        str(out),
        "--quiet",
    ]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), *cmd]
    else:
        cmd = [sys.executable, *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "procs": procs,
        "threads_each": threads,
        "images_per_second": rows[-1]["images_per_second"],
        "test_error": rows[-1]["test_error"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--projection", default="sign")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, GPU: "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}; "
        f"torch {torch.__version__}"
    )
    print(
        f"{args.model} on {args.dataset}, {args.projection}, {args.epochs} epoch(s), "
        f"global batch {args.batch_size}"
    )
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            r = run(n, args, Path(tmp) / f"p{n}")
            base = base or r["images_per_second"]
            print(
                f"  {n} process(es) x {r['threads_each']} thread(s): "
                f"{r['images_per_second']:8.0f} img/s "
                f"(x{r['images_per_second'] / base:.2f}), "
                f"test error after the last epoch {r['test_error']:.2%}"
            )


if __name__ == "__main__":
    main()
