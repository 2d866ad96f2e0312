"""The gloo worker abort of tests/test_distributed.py, counted: run its two-process test many times.

Each run spawns the test's two workers (`_worker`: 2 gloo processes train a tiny MLP, check
the ranks agree after every step, destroy the process group) as the test does. Every worker's
standard error (fd 2: C++'s "terminate called ..." as well as Python's) goes to a file, with
faulthandler dumping every thread's Python stack there on SIGABRT. `--busy N` runs N busy loops
beside it (the abort was seen only in full-suite runs, on a loaded machine).

    python benchmarks/gloo_aborts.py --runs 40 --busy 2 --out /tmp/gloo
    python benchmarks/gloo_aborts.py --runs 40 --busy 2 --exit os --out /tmp/gloo-os

`--exit os` ends each worker with os._exit(0) after flushing (no interpreter teardown); the
default ends it as mp.spawn does (the function returns, the interpreter exits). Prints the
counts and writes them (with each failed worker's stderr) to OUT/aborts.json.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import torch.multiprocessing as mp

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10000))


def worker(rank, world, port, run_dir, projection, exit_how):
    """The test's worker, its fd 2 in a file and faulthandler on for every thread."""
    err = open(f"{run_dir}/stderr.{rank}", "w")
    os.dup2(err.fileno(), 2)
    sys.path.insert(0, str(TESTS))
    import test_distributed as td

    faulthandler.enable(file=err, all_threads=True)
    td.faulthandler = type("Kept", (), {"enable": staticmethod(lambda: None)})  # not to stderr
    td._worker(rank, world, port, f"{run_dir}/run", f"{run_dir}/result", projection)
    if exit_how == "os":
        sys.stdout.flush()
        err.flush()
        os._exit(0)


def one_run(i: int, root: Path, exit_how: str) -> dict | None:
    """One spawn of the two workers; None when both ended well, else what happened."""
    sys.path.insert(0, str(TESTS))
    from test_distributed import _free_port

    run_dir = root / f"run{i}"
    run_dir.mkdir(parents=True)
    projection = ["sign", "stoch-sign"][i % 2]
    try:
        mp.spawn(worker, args=(2, _free_port(), str(run_dir), projection, exit_how), nprocs=2)
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as e:
        return {
            "run": i,
            "error": " ".join(str(e).split())[:300],
            "stderr": {r: (run_dir / f"stderr.{r}").read_text()[-4000:] for r in (0, 1)},
        }
    shutil.rmtree(run_dir)
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes beside the runs")
    ap.add_argument("--exit", choices=["return", "os"], default="return", dest="exit_how")
    ap.add_argument("--out", default="/tmp/gloo-aborts")
    args = ap.parse_args(argv)
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    stop = multiprocessing.Event()
    busy = [multiprocessing.Process(target=_busy, args=(stop,)) for _ in range(args.busy)]
    for p in busy:
        p.start()
    failed, t0 = [], time.perf_counter()
    try:
        for i in range(args.runs):
            got = one_run(i, root, args.exit_how)
            if got:
                failed.append(got)
            print(f"run {i + 1}/{args.runs}: {'FAILED' if got else 'ok'}", flush=True)
    finally:
        stop.set()
        for p in busy:
            p.join()
    report = {
        "runs": args.runs,
        "busy": args.busy,
        "exit": args.exit_how,
        "failed": len(failed),
        "seconds": round(time.perf_counter() - t0, 1),
        "failures": failed,
    }
    (root / "aborts.json").write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"{len(failed)} of {args.runs} runs failed ({args.busy} busy loops, exit {args.exit_how})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
