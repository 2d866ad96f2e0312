"""Horizontal fusion's speed: K networks stepped as one fused network against K separate networks.

    python benchmarks/fusion_speed.py                          # bc-vgg, batch 50, K = 1, 2, 4, 8
    python benchmarks/fusion_speed.py --width 0.25 --steps 5   # the cpu preset's network
    python benchmarks/fusion_speed.py --no-graph               # on a GPU: eager steps both sides

Each step is a real training step (forward, backward, Adam, each network's clip; the projection
--projection, default sign) on random inputs of the model's size (the data does not change the
cost). K separate networks take one step each in turn (robustweights.steps.make_step); the fused
network takes one step of all K (robustweights.fused_training.make_fused_step). On CUDA both
sides run as CUDA graphs (robustweights.steps.GraphedStep, as `train --cuda-graph`) unless
--no-graph. Rounds of the two sides are interleaved so that drift of the machine hits both; the
figures are images per second summed over the K networks (median round), the fused rate against
the K separate ones and against one network alone (the issue's target: 2.5 at K = 4 on a GPU).

Without CUDA it runs on the CPU and says so: those ratios are a CPU's, not a GPU's (a CPU is bound
by arithmetic, which fusion does not reduce; a GPU at batch 50 by kernel launches, which it does).
Prints the machine, torch version and the command.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import robustweights as rw  # noqa: E402
from robustweights import fusion  # noqa: E402
from robustweights.fused_training import make_fused_step  # noqa: E402
from robustweights.steps import GraphedStep, make_step  # noqa: E402

SHAPES = {"mlp": (1, 28, 28), "cnn": (1, 28, 28), "bc-vgg": (3, 32, 32), "resnet18": (3, 32, 32)}


def _networks(args, k: int, device) -> list:
    """``k`` networks of ``args.model``, each its own seed and generator, on ``device``."""
    out = []
    for i in range(k):
        torch.manual_seed(i)
        m = rw.create_model(
            args.model, num_classes=10, in_shape=SHAPES[args.model], width=args.width
        )
        m.to(device)
        g = torch.Generator(device=device).manual_seed(100 + i)
        rw.attach(m, args.projection, clip="glorot", generator=g)
        out.append((m, g))
    return out


def _optimizer(params, device, graphed: bool):
    extra = {"fused": True} if device.type == "cuda" else {}
    lr = torch.tensor(1e-3, device=device) if graphed else 1e-3
    return torch.optim.Adam(params, lr=lr, capturable=graphed, **extra)


def separate_steps(args, k: int, device, graphed: bool):
    """One call: a step of each of ``k`` separate networks, in turn."""
    steps, batches = [], []
    for m, g in _networks(args, k, device):
        opt = _optimizer(m.parameters(), device, graphed)
        step = make_step(
            m, m, opt, "ce", amp=False, channels_last=False, device=device, graphed=graphed
        )
        steps.append(GraphedStep(step, m, opt, [g]) if graphed else step)
        batches.append(_batch(args, device))

    def run():
        for step, (x, y) in zip(steps, batches):
            step(x, y)

    return run


def fused_step(args, k: int, device, graphed: bool):
    """One call: a step of the ``k`` networks fused into one."""
    nets = _networks(args, k, device)
    fused = fusion.fuse([m for m, _ in nets])
    opt = _optimizer(fused.parameters(), device, graphed)
    step = make_fused_step(
        fused, opt, "ce", amp=False, channels_last=False, device=device, graphed=graphed
    )
    if graphed:
        step = GraphedStep(step, fused, opt, [g for _, g in nets])
    xs, ys = zip(*(_batch(args, device) for _ in range(k)))
    x, y = torch.cat(xs, 1), torch.stack(ys, 1)
    return lambda: step(x, y)


def _batch(args, device):
    x = torch.randn(args.batch, *SHAPES[args.model], device=device)
    return x, torch.randint(0, 10, (args.batch,), device=device)


def _timed(fn, device, calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls


def measure(args, k: int, device, graphed: bool) -> tuple[float, float]:
    """Images per second summed over ``k`` networks: separate, fused (median of interleaved
    rounds)."""
    sides = {"separate": separate_steps(args, k, device, graphed)}
    sides["fused"] = fused_step(args, k, device, graphed)
    for fn in sides.values():  # warm-up (and on CUDA the capture)
        _timed(fn, device, args.warmup)
    times = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            times[name].append(_timed(fn, device, args.steps))
    rate = {n: k * args.batch / statistics.median(t) for n, t in times.items()}
    return rate["separate"], rate["fused"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bc-vgg", choices=sorted(SHAPES))
    p.add_argument("--width", type=float, default=None, help="default 1 on CUDA, 0.25 on a CPU")
    p.add_argument("--projection", default="sign")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=20, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-graph", action="store_true", help="on CUDA: eager steps, no CUDA graphs")
    args = p.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.width is None:
        args.width = 1.0 if device.type == "cuda" else 0.25
    graphed = device.type == "cuda" and not args.no_graph
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.machine()} {what or platform.platform()}; torch {torch.__version__}")
    print(
        f"device: {device}"
        + ("" if device.type == "cuda" else " (CPU ratios, not GPU numbers)")
        + f"; {args.model} width {args.width:g}, {args.projection}, batch {args.batch}, Adam; "
        + ("CUDA graphs both sides" if graphed else "eager steps both sides")
    )
    print(
        f"{'K':>3} {'separate img/s':>15} {'fused img/s':>12} {'fused/separate':>15} "
        f"{'fused/one network':>18}"
    )
    one = None
    for k in args.k:
        sep, fus = measure(args, k, device, graphed)
        one = one if one is not None else (sep if k == 1 else measure(args, 1, device, graphed)[0])
        print(f"{k:>3} {sep:>15.0f} {fus:>12.0f} {fus / sep:>15.2f} {fus / one:>18.2f}", flush=True)


if __name__ == "__main__":
    main()
