"""Projection overhead: a training step with a projection against a float step of the same model.

    # cnn on 28x28 and bc-vgg 0.25 on 32x32
    python benchmarks/projection_overhead.py
    python benchmarks/projection_overhead.py --models cnn --projections sign stoch-mult:gamma=0.5
    # torch.compile against eager, per projection
    python benchmarks/projection_overhead.py --compile
    # 4 networks stepped together against one
    python benchmarks/projection_overhead.py --concurrent 4
    # as rows_at_once=4 (GPU)
    python benchmarks/projection_overhead.py --cuda-graph --concurrent 4 --threads
    # eager against the step as one CUDA graph (GPU)
    python benchmarks/projection_overhead.py --cuda-graph
    # inductor, then captured
    python benchmarks/projection_overhead.py --cuda-graph --compile --cudnn-benchmark
    # where an eager step's time goes (top kernels)
    python benchmarks/projection_overhead.py --profile

Each step is forward, backward, Adam step and the hidden-weight clip, on random
inputs of the model's natural size (the data does not change the cost). The
float step is the same model with `identity` (which skips the projection but
still clips, as training does). Steps of the variants are interleaved in rounds
so that drift of the machine hits all of them alike; the figure is the ratio of
median step times from one run. Prints the machine and torch version.

With ``--compile`` each variant also runs through ``torch.compile`` (the model's
forward and backward, as ``train --compile`` does; Adam and the clip stay
eager): it prints the compiled step against the eager one, the seconds the
first compiled step took (compilation), and how many steps pay that back.
Compilation is timed cold: the script gives inductor a fresh cache folder
unless ``TORCHINDUCTOR_CACHE_DIR`` is set.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import robustweights as rw  # noqa: E402
from robustweights.distributed import run_together  # noqa: E402
from robustweights.projected import clip_  # noqa: E402

os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-")
)  # cold compile times

SHAPES = {"mlp": (1, 28, 28), "cnn": (1, 28, 28), "bc-vgg": (3, 32, 32), "resnet18": (3, 32, 32)}


def make_step(
    model_name,
    width,
    projection,
    batch,
    device,
    mode="fwd+bwd",
    amp=False,
    compile=False,
    compile_mode=None,
    fused=False,
    sync=True,
    seed=0,
    cuda_graph=False,
):
    torch.manual_seed(seed)
    shape = SHAPES[model_name]
    model = rw.create_model(model_name, num_classes=10, in_shape=shape, width=width).to(device)
    fmt = torch.channels_last if amp else torch.contiguous_format  # the GPU fast path uses both
    model.to(memory_format=fmt)
    gen = torch.Generator(device=device).manual_seed(seed)
    rw.attach(model, projection, mode=mode, generator=gen)
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    if (
        cuda_graph
    ):  # the whole step (forward, backward, Adam, clip) as one CUDA graph: train --cuda-graph
        from robustweights.steps import GraphedStep, make_step as train_step

        opt = torch.optim.Adam(
            model.parameters(), lr=torch.tensor(1e-3, device=device), fused=True, capturable=True
        )
        net = (
            torch.compile(model, mode=compile_mode) if compile else model
        )  # inductor's kernels, then captured
        graphed = GraphedStep(
            train_step(
                model, net, opt, "ce", amp=amp, channels_last=amp, device=device, graphed=True
            ),
            model,
            opt,
            [gen],
        )

        def step():
            graphed(x, y)
            if sync:
                torch.cuda.synchronize()

        return step
    # fused: one kernel for the whole Adam update (CUDA; CPU from torch 2.4),
    # instead of one per tensor
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    # compile_mode "reduce-overhead" adds CUDA graphs (a batch-50 step is launch-bound);
    # ignored on CPU
    net = torch.compile(model, mode=compile_mode) if compile else model

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clip_(model)
        if sync and device.type == "cuda":
            torch.cuda.synchronize()

    return step


def timed_rounds(steps: dict, rounds: int, per_round: int) -> dict:
    """Seconds per step of each of ``steps`` in every round, after 3 warm-up steps each; the steps
    are interleaved round by round so that drift of the machine hits all of them alike."""
    times = {k: [] for k in steps}
    for s in steps.values():  # warm-up (a second compiled call may still specialise)
        for _ in range(3):
            s()
    for _ in range(rounds):
        for k, s in steps.items():
            t = time.perf_counter()
            for _ in range(per_round):
                s()
            times[k].append((time.perf_counter() - t) / per_round)
    return times


def bench(
    model_name,
    width,
    projections,
    batch,
    rounds,
    per_round,
    device,
    amp=False,
    compile_mode=None,
    fused=False,
):
    steps = {
        p: make_step(model_name, width, p, batch, device, amp=amp, fused=fused)
        for p in ["identity", *projections]
    }
    times = timed_rounds(steps, rounds, per_round)
    base = statistics.median(times["identity"])
    print(
        f"\n{model_name} width {width}, batch {batch}"
        f"{', bf16 autocast, channels-last' if amp else ''}: "
        f"float step {base * 1e3:.1f} ms = {batch / base:.0f} img/s (median of {rounds} rounds)"
    )
    for p in projections:
        m = statistics.median(times[p])
        print(f"  {p:<28} {m * 1e3:8.1f} ms = {batch / m:7.0f} img/s   ratio {m / base:.3f}")
    return {p: statistics.median(times[p]) / base for p in projections}


def bench_compile(
    model_name,
    width,
    projections,
    batch,
    rounds,
    per_round,
    device,
    amp=False,
    compile_mode=None,
    fused=False,
):
    variants = ["identity", *projections]
    first, times = {}, {}
    for p in variants:
        # One variant at a time, dynamo's caches cleared before each: compiled models of earlier
        # variants would otherwise count against the recompile limit of this one's frames.
        torch._dynamo.reset()
        eager = make_step(model_name, width, p, batch, device, amp=amp, fused=fused)
        compiled = make_step(
            model_name,
            width,
            p,
            batch,
            device,
            amp=amp,
            compile=True,
            compile_mode=compile_mode,
            fused=fused,
        )
        t = time.perf_counter()
        compiled()  # compiles forward and backward
        first[p] = time.perf_counter() - t
        times.update(timed_rounds({(p, False): eager, (p, True): compiled}, rounds, per_round))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n{model_name} width {width}, batch {batch}"
        f"{', bf16 autocast, channels-last' if amp else ''}: "
        f"eager against torch.compile mode={compile_mode or 'default'}"
        f"{', fused Adam' if fused else ''} (median of {rounds} rounds of {per_round} steps)"
    )
    print(
        f"  {'projection':<24} {'eager ms':>9} {'compiled ms':>12} {'ratio':>6} {'compile s':>10} "
        f"{'pays back after':>16}"
    )
    out = {}
    for p in variants:
        e, c = med[(p, False)], med[(p, True)]
        payback = f"{first[p] / (e - c):.0f} steps" if c < e else "never"
        print(
            f"  {p:<24} {e * 1e3:9.1f} {c * 1e3:12.1f} {c / e:6.3f} {first[p]:10.1f} {payback:>16}"
        )
        out[p] = {"eager_s": e, "compiled_s": c, "compile_s": first[p]}
    base = med[("identity", True)]
    print(
        "  compiled projection overhead: "
        + ", ".join(f"{p} {med[(p, True)] / base:.3f}" for p in projections)
    )
    return out


def bench_graph(
    model_name,
    width,
    projections,
    batch,
    rounds,
    per_round,
    device,
    amp=False,
    compile=False,
    compile_mode=None,
    **_,
):
    """Each projection's eager step (fused Adam) against the whole step replayed as one CUDA graph
    (with ``compile``: the model's forward and backward through torch.compile first, then
    captured)."""
    times = {}
    for p in ["identity", *projections]:
        torch._dynamo.reset()
        eager = make_step(model_name, width, p, batch, device, amp=amp, fused=True)
        graphed = make_step(
            model_name,
            width,
            p,
            batch,
            device,
            amp=amp,
            cuda_graph=True,
            compile=compile,
            compile_mode=compile_mode,
        )
        t = time.perf_counter()
        graphed()  # warm-up and capture
        capture = time.perf_counter() - t
        med = {
            k: statistics.median(v)
            for k, v in timed_rounds({"eager": eager, "graph": graphed}, rounds, per_round).items()
        }
        times[p] = (med["eager"], med["graph"], capture)
    print(
        f"\n{model_name} width {width}, batch {batch}"
        f"{', bf16 autocast, channels-last' if amp else ''}: "
        f"eager (fused Adam) against the whole step as one CUDA graph (train --cuda-graph"
        f"{', the model through torch.compile first' if compile else ''}"
        f"{', cudnn.benchmark' if torch.backends.cudnn.benchmark else ''}), "
        f"median of {rounds} rounds of {per_round} steps"
    )
    print(
        f"  {'projection':<24} {'eager ms':>9} {'eager img/s':>12} {'graph ms':>9} "
        f"{'graph img/s':>12} {'capture s':>10}"
    )
    for p, (e, g, c) in times.items():
        print(
            f"  {p:<24} {e * 1e3:9.2f} {batch / e:12.0f} {g * 1e3:9.2f} {batch / g:12.0f} {c:10.1f}"
        )
    return times


def bench_profile(
    model_name, width, projections, batch, device, amp=False, fused=False, steps=20, top=12
):
    """Where an eager step's time goes: torch.profiler over ``steps`` steps, the kernels (or CPU
    ops) that take the most time, and the device time a step against its wall time (launch-bound
    when much smaller)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    for p in ["identity", *projections]:
        step = make_step(model_name, width, p, batch, device, amp=amp, fused=fused, sync=False)
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with profile(
            activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        ) as prof:
            for _ in range(steps):
                step()
            if cuda:
                torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / steps
        events = prof.key_averages()
        if (
            cuda and events and hasattr(events[0], "self_device_time_total")
        ):  # the name in newer torch
            key = "self_device_time_total"
        own = [getattr(e, key) for e in events]
        print(
            f"\n{model_name} width {width}, batch {batch}, {p}: {sum(own) / steps / 1e3:.2f} ms of "
            f"{'kernels' if cuda else 'CPU ops'} a step, {wall * 1e3:.2f} ms a step "
            "with the profiler"
        )
        print(events.table(sort_by=key, row_limit=top, max_name_column_width=60))


def bench_concurrent(
    model_name,
    width,
    projections,
    batch,
    rounds,
    per_round,
    device,
    copies,
    amp=False,
    compile=False,
    compile_mode=None,
    fused=False,
    cuda_graph=False,
    threads=False,
):
    """Aggregate training images/s of ``copies`` independent networks (rows) stepped together in one
    process, each on its own CUDA stream, against one network alone: whether a batch-50 row leaves
    the GPU idle enough that several rows at once pay (part 8). On a CPU the copies simply take
    turns."""
    cuda = device.type == "cuda"
    out = {}
    for p in ["identity", *projections]:
        torch._dynamo.reset()
        steps = [
            make_step(
                model_name,
                width,
                p,
                batch,
                device,
                amp=amp,
                compile=compile,
                compile_mode=compile_mode,
                fused=fused,
                sync=False,
                seed=i,
                cuda_graph=cuda_graph,
            )
            for i in range(copies)
        ]
        # (with threads, run_together gives each its stream)
        streams = (
            [torch.cuda.Stream(device) for _ in steps] if cuda and not threads else [None] * copies
        )

        def together(n=copies):
            if threads:  # as reproduce's rows_at_once trains them: a thread and a CUDA stream each
                run_together(
                    [lambda stop, s=s: [s() for _ in range(per_round)] for s in steps[:n]],
                    n,
                    device,
                )
                return
            for st, s in zip(streams[:n], steps[:n]):
                if cuda:
                    st.wait_stream(torch.cuda.current_stream(device))
                    with torch.cuda.stream(st):
                        s()
                else:
                    s()
            if cuda:
                for st in streams[:n]:
                    torch.cuda.current_stream(device).wait_stream(st)
                torch.cuda.synchronize(device)

        # with threads each call of `together` makes per_round steps of every copy (timed as one)
        times = timed_rounds(
            {"one": lambda: together(1), "all": together}, rounds, 1 if threads else per_round
        )
        if threads:
            times = {k: [t / per_round for t in v] for k, v in times.items()}
        one, both = statistics.median(times["one"]), statistics.median(times["all"])
        out[p] = {"one_img_s": batch / one, "all_img_s": copies * batch / both}
    how = (" in threads (run_together)" if threads else "") + (
        ", each step one CUDA graph"
        if cuda_graph
        else f", torch.compile mode={compile_mode or 'default'}"
        if compile
        else ", eager"
    )
    print(
        f"\n{model_name} width {width}, batch {batch}"
        f"{', bf16 autocast, channels-last' if amp else ''}{how}"
        f"{', fused Adam' if fused else ''}: {copies} networks stepped together "
        f"({'one CUDA stream each' if cuda else 'taking turns: no streams on a CPU'}), "
        f"median of {rounds} rounds"
    )
    print(f"  {'projection':<24} {'one img/s':>10} {f'{copies} together img/s':>20} {'gain':>6}")
    for p, r in out.items():
        print(
            f"  {p:<24} {r['one_img_s']:10.0f} {r['all_img_s']:20.0f} "
            f"{r['all_img_s'] / r['one_img_s']:6.2f}"
        )
    return out


def main():
    # killed by `timeout` (SIGTERM) on a GPU lease: print where every thread stood
    # (a hang shows its place)
    faulthandler.register(signal.SIGTERM, chain=True)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "bc-vgg"])
    ap.add_argument(
        "--projections", nargs="+", default=["sign", "stoch-sign", "stoch-mult:gamma=0.5"]
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--width", type=float, default=None, help="override the model's benchmark width"
    )
    ap.add_argument(
        "--batch", type=int, default=None, help="override the model's benchmark batch size"
    )
    ap.add_argument("--amp", action="store_true", help="bf16 autocast and channels-last (CUDA)")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="time each variant eager and through torch.compile, with its compile time",
    )
    ap.add_argument(
        "--compile-mode",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)",
    )
    ap.add_argument(
        "--fused", action="store_true", help="fused Adam (one kernel for the whole update)"
    )
    ap.add_argument(
        "--cuda-graph",
        action="store_true",
        help="eager against the whole step captured as one CUDA graph "
        "(train --cuda-graph; GPU only)",
    )
    ap.add_argument(
        "--concurrent",
        type=int,
        default=0,
        metavar="N",
        help="images/s of N networks stepped together (one CUDA stream each) against one alone",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="where an eager step's time goes "
        "(torch.profiler: the top kernels, device time a step)",
    )
    ap.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="torch.backends.cudnn.benchmark = True "
        "(cuDNN times its algorithms for each conv shape)",
    )
    ap.add_argument(
        "--threads",
        action="store_true",
        help="with --concurrent: each network in its own thread, "
        "as reproduce's rows_at_once trains rows",
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.cuda_graph and device.type != "cuda":
        sys.exit("--cuda-graph needs a CUDA device (a CUDA graph is a GPU's)")
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"machine: {name}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    configs = {"cnn": (1.0, 100), "bc-vgg": (0.25, 50), "mlp": (1.0, 100), "resnet18": (0.25, 50)}
    for m in args.models:
        width, batch = configs[m]
        if args.concurrent:
            bench_concurrent(
                m,
                args.width or width,
                args.projections,
                args.batch or batch,
                args.rounds,
                args.per_round,
                device,
                args.concurrent,
                amp=args.amp,
                compile=args.compile,
                compile_mode=args.compile_mode,
                fused=args.fused,
                cuda_graph=args.cuda_graph,
                threads=args.threads,
            )
            continue
        if args.profile:
            bench_profile(
                m,
                args.width or width,
                args.projections,
                args.batch or batch,
                device,
                amp=args.amp,
                fused=args.fused,
            )
            continue
        if args.cuda_graph:
            bench_graph(
                m,
                args.width or width,
                args.projections,
                args.batch or batch,
                args.rounds,
                args.per_round,
                device,
                amp=args.amp,
                compile=args.compile,
                compile_mode=args.compile_mode,
            )
            continue
        run = bench_compile if args.compile else bench
        run(
            m,
            args.width or width,
            args.projections,
            args.batch or batch,
            args.rounds,
            args.per_round,
            device,
            amp=args.amp,
            compile_mode=args.compile_mode,
            fused=args.fused,
        )


if __name__ == "__main__":
    main()
