"""Does aihwkit's way of drifting a programmed pair explain the 1-year gap? (docs/results/pcm/)

    python benchmarks/pcm_reconverted.py                 # weights only: seconds
    python benchmarks/pcm_reconverted.py --network       # + the issue's CNN: about 8 minutes

``pcm`` (``docs/devices.md``, the design's model) programs both devices of a weight's pair and
then drifts and reads both. aihwkit (``PCMLikeNoiseModel.apply_drift_noise``, 1.1 and later)
does not drift the programmed pair itself: it converts the programmed *weights* back to a new
pair (one device per weight at ``|W_prog| g_max / max|W_prog|``, the other at 0) and drifts
and reads that pair, each device with the drift exponent drawn for the device of the same side
at programming. So the off device's programming noise drifts with the weight's own device, no
read noise reaches a device at 0, and the scale is set by the programmed weights' largest.

``pcm-reconverted`` below is that second reading written with this library's laws (same
programming noise, drift exponents, read noise and per-tile global compensation as ``pcm``);
this script compares the two on Gaussian and Laplace matrices (relative weight error and mean
shrinkage, 3 chips each) and, with ``--network``, sweeps the CNN of
``benchmarks/pcm_vs_aihwkit.py`` (its training, seed and full test set) with both, on the same
chips' seeds. The read noise of one chip at
every time comes from one generator seeded per time (as ``pcm`` does).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustweights as rw  # noqa: E402
from robustweights.conductances import matrix, per_element, tile_max, tile_sums  # noqa: E402
from robustweights.devices import DEVICE_PARAMS, T0, pcm_nu, pcm_prog, pcm_read  # noqa: E402
from robustweights.draws import derive_seed, normal  # noqa: E402

TIMES = (1.0, 3600.0, 86400.0, 2.6e6, 3.15e7)


def _drift_read(gp, nu, t, n_read):
    """Devices at ``gp`` (units of g_max) with exponents ``nu``, read at ``t`` with ``n_read``."""
    gd = gp * ((t + T0) / T0) ** (-nu)
    return (gd + gd.abs() * pcm_read(gp.clone(), t) * n_read).clamp(min=0)


@rw.register_transform(
    "pcm-reconverted",
    *(p for p in DEVICE_PARAMS if p.name in ("t", "compensation", "tile")),
    random=True,
)
def pcm_reconverted(w, g, H, t, compensation, tile):
    """``pcm`` with aihwkit's drift step: the programmed weights mapped to a new pair first."""
    m = matrix(w.detach())
    inv = per_element(1 / tile_max(m.abs(), tile), tile, m.shape)
    x = m * inv  # in [-1, 1]: targets of the pair are x+ and x- (units of g_max)
    targets = (x.clamp(min=0), (-x).clamp(min=0))
    prog = [(x_ + pcm_prog(x_.clone()) * normal(x_, g)).clamp(min=0) for x_ in targets]
    nus = [pcm_nu(x_, normal(x_, g)) for x_ in targets]
    wp = prog[0] - prog[1]  # the programmed weights, in units of max|W| of the tile
    rescale = per_element(1 / tile_max(wp.abs(), tile), tile, m.shape)
    pair = ((wp * rescale).clamp(min=0), (-wp * rescale).clamp(min=0))
    key = int(torch.randint(0, 2**62, (), generator=g))
    rg = torch.Generator().manual_seed(derive_seed("read", key, float(t)))
    wt = (
        _drift_read(pair[0], nus[0], t, normal(wp, rg))
        - _drift_read(pair[1], nus[1], t, normal(wp, rg))
    ) / rescale
    if compensation == "global":
        before, now = tile_sums(wp.abs(), tile), tile_sums(wt.abs(), tile)
        wt = wt * per_element(torch.where(now > 0, before / now.clamp(min=1e-30), 1), tile, m.shape)
    return (wt / inv).reshape(w.shape)


def weights_table() -> None:
    """Relative weight error and mean|W'|/mean|W| of both readings, mean of 3 chips."""
    torch.manual_seed(0)
    mats = {
        "Gaussian 256x256": torch.randn(256, 256),
        "Laplace 512x512": torch.distributions.Laplace(0.0, 1.0).sample((512, 512)),
    }
    print(
        "| matrix | compensation | t (s) | pcm: rel. error | reconverted "
        "| pcm: mean ratio | reconverted |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, w in mats.items():
        for comp in ("global", "none"):
            for t in TIMES:
                cols = []
                for kind in ("pcm", "pcm-reconverted"):
                    f = rw.transform(f"{kind}:t={t:g},compensation={comp},tile=0")
                    outs = [f(w, torch.Generator().manual_seed(k)) for k in range(3)]
                    err = statistics.fmean(
                        math.sqrt((o - w).square().mean() / w.square().mean()) for o in outs
                    )
                    ratio = statistics.fmean(float(o.abs().mean() / w.abs().mean()) for o in outs)
                    cols.append((err, ratio))
                print(
                    f"| {name} | {comp} | {t:g} | {cols[0][0]:.4f} | {cols[1][0]:.4f} "
                    f"| {cols[0][1]:.3f} | {cols[1][1]:.3f} |"
                )


def network_table(trials: int, seed: int) -> None:
    """The issue's CNN swept with ``pcm`` and ``pcm-reconverted`` (global compensation, the
    same network and test set), beside aihwkit's rise from the issue."""
    from pcm_vs_aihwkit import AIHWKIT_RISE, network, train

    from robustweights.data import load_data
    from robustweights.measures import measure_split

    start = time.perf_counter()
    data = load_data("fashion-mnist")
    torch.manual_seed(seed)
    model = network()
    train(model, data.train.x, data.train.y, seed)
    base = measure_split(model, data.test, "error")["error"]
    grid = ",".join(f"{t:g}" for t in TIMES)
    specs = [f"pcm:t={grid}", f"pcm-reconverted:t={grid}"]
    rows = rw.sweep(model, data, specs, trials=trials, seed=seed)
    print(
        f"undistorted {100 * base:.2f}%; {len(data.test)} test images; {trials} chips; "
        f"{time.perf_counter() - start:.0f} s"
    )
    print("| time | pcm: rise | std | pcm-reconverted: rise | std | aihwkit (issue 23): rise |")
    print("|---|---:|---:|---:|---:|---:|")
    for t in TIMES:
        cols = []
        for kind in ("pcm", "pcm-reconverted"):
            e = [100 * r["error"] for r in rows if r["value"] == t and r["distortion"] == kind]
            cols.append(f"{statistics.fmean(e) - 100 * base:+.2f} | {statistics.stdev(e):.2f}")
        ref = f"+{AIHWKIT_RISE[t]:.2f}" if t in AIHWKIT_RISE else "-"
        print(f"| {t:g} s | {cols[0]} | {cols[1]} | {ref} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", action="store_true", help="also sweep the issue's CNN")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"1 thread; commit {commit}; {time.strftime('%Y-%m-%d')}"
    )
    weights_table()
    if args.network:
        network_table(args.trials, args.seed)


if __name__ == "__main__":
    main()
