"""Training under torch.distributed: 2 CPU processes with gloo, as `torchrun --nproc-per-node 2`
runs them."""

import contextlib
import faulthandler
import json
import os
import signal
import socket
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.optim.optimizer import register_optimizer_step_pre_hook

import robustweights as rw
from conftest import one_error_line, run_main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat_params(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def _same_on_all_ranks(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _capture_stderr(path: str):
    """This process's fd 2 (C++'s messages as well as Python's) and faulthandler's stacks of every
    thread on a fatal signal, into ``path``: a worker that aborts leaves where it was."""
    f = open(path, "w", buffering=1)
    os.dup2(f.fileno(), 2)
    faulthandler.enable(file=f, all_threads=True)
    return f


def _captured(run_dir: Path) -> str:
    """The tail of each worker's captured fd 2, for the message of a failed try."""
    parts = []
    for p in sorted(run_dir.glob("worker*.stderr")):
        text = p.read_text(errors="replace").strip()
        parts.append(f"[{p.name}] {text[-1500:] or '(empty)'}")
    return " | ".join(parts) or "(no worker output captured)"


def _worker(rank, world, port, out, result_file, projection):
    _capture_stderr(f"{Path(out).parent}/worker{rank}.stderr")
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # ours, so train() leaves it open for the checks below
    checks = {"steps": 0, "mismatch": 0}

    def before_step(optimizer, args, kwargs):
        # Before each step the weights are those after the previous step and its clip.
        params = [p for g in optimizer.param_groups for p in g["params"]]
        checks["steps"] += 1
        checks["mismatch"] += not _same_on_all_ranks(_flat_params(params))

    handle = register_optimizer_step_pre_hook(before_step)
    config = rw.TrainConfig(
        model="mlp",
        width=0.25,
        dataset="demo",
        device="cpu",
        train_subset=400,
        test_subset=200,
        projection=projection,
        epochs=2,
        batch_size=50,
        lr=3e-3,
        seed=0,
        out=out,
    )
    result = rw.train(config, progress=False)
    handle.remove()
    final_same = _same_on_all_ranks(_flat_params(result.model.parameters()))
    clipped = all(s.hidden.abs().max().item() <= 1.0 for s in rw.sites(result.model))
    with open(f"{result_file}.{rank}", "w") as f:
        json.dump(
            {
                **checks,
                "final_same": final_same,
                "clipped": clipped,
                "checkpoint": result.checkpoint,
                "test_error": result.test_error,
            },
            f,
        )
    dist.barrier()  # neither rank closes its connections while the other still uses them
    dist.destroy_process_group()


def _aborting_worker(rank, run_dir):
    _capture_stderr(f"{run_dir}/worker{rank}.stderr")
    print("before the abort", file=sys.stderr, flush=True)
    os.abort()  # as "terminate called without an active exception" ends a process: SIGABRT


def test_a_worker_that_aborts_leaves_its_stack_in_the_failed_trys_message(tmp_path):
    """The capture the gloo test relies on: an aborting worker's fd 2 and its stack reach us."""
    with pytest.raises(mp.ProcessExitedException, match="SIGABRT"):
        mp.spawn(_aborting_worker, args=(str(tmp_path),), nprocs=1, join=True)
    said = _captured(tmp_path)
    assert "[worker0.stderr] before the abort" in said and "Fatal Python error: Aborted" in said
    assert "in _aborting_worker" in said  # faulthandler's stack names the function


@pytest.mark.parametrize(
    "projection", ["sign", "stoch-sign"]
)  # stoch-sign: per-rank random generators
def test_two_gloo_processes_keep_hidden_weights_bitwise_identical_after_every_step(
    tmp_path, projection
):
    for attempt in (1, 2):
        # A gloo worker of this test has died about once in ten full-suite runs (twice seen as
        # SIGABRT, "terminate called without an active exception"; never in isolation). One more try
        # in fresh folders: the checks below are deterministic, so a real fault fails both. Not
        # reproduced outside the suite: benchmarks/gloo_aborts.py ran these workers 30 + 30 times
        # (each worker's fd 2 and faulthandler's stacks to a file) on a machine at load 7-19, 0
        # aborts (docs/results/faults). Suspected: gloo threads outliving the interpreter at exit
        # (PyTorch PR #179291, closed unmerged); unconfirmed. Each worker's fd 2 and faulthandler's
        # stacks go to a file: a failed try's warning carries them.
        run_dir = tmp_path / f"try{attempt}"
        out, result_file = str(run_dir / "run"), str(run_dir / "result")
        run_dir.mkdir()
        try:
            mp.spawn(
                _worker, args=(2, _free_port(), out, result_file, projection), nprocs=2, join=True
            )
            break
        except (mp.ProcessExitedException, mp.ProcessRaisedException) as e:
            if attempt == 2:
                raise
            warnings.warn(  # the workers' own fd 2 and stacks: the cause, when it happens again
                f"a gloo worker failed, trying once more: {' '.join(str(e).split())[:300]}; "
                f"its output: {_captured(run_dir)}"
            )
    tmp_path = run_dir
    r = [json.loads(open(f"{result_file}.{i}").read()) for i in range(2)]
    steps = 2 * (400 // 2) // (50 // 2)  # 2 epochs, 200 examples per rank, 25 per rank and step
    assert r[0]["steps"] == r[1]["steps"] == steps
    assert r[0]["mismatch"] == r[1]["mismatch"] == 0
    assert r[0]["final_same"] and r[1]["final_same"] and r[0]["clipped"]
    # rank 0 alone writes the run folder
    assert r[0]["checkpoint"] and r[1]["checkpoint"] is None
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [1, 2]
    model, config = rw.load(tmp_path / "run")
    assert rw.evaluate(model, config)["error"] == pytest.approx(r[0]["test_error"])
    if (
        projection == "sign"
    ):  # (this tiny stoch-sign net learns nothing in 16 steps, in one process too)
        assert r[0]["test_error"] < 0.6  # chance: 0.9


class _Killed(Exception):
    pass


def _train_worker(rank, world, port, result_file, configs, resume, kill_after):
    """Train ``configs[rank]`` (ranks may differ: another machine's paths), killed after epoch
    ``kill_after`` if given; write the error, if any."""
    import datetime

    faulthandler.enable()
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", timeout=datetime.timedelta(seconds=60)
    )  # a rank left waiting fails, not hangs

    def kill(epoch, metrics):
        if epoch == kill_after:
            raise _Killed

    try:
        rw.train(rw.TrainConfig(**configs[rank]), resume=resume, progress=False, callback=kill)
        error = None
    except rw.UserError as e:
        error = str(e)
    except _Killed:
        error = None
    with open(f"{result_file}.{rank}", "w") as f:
        json.dump({"error": error}, f)
    dist.destroy_process_group()


def _spawn_train(tmp_path, configs, resume=False, kill_after=None):
    result_file = str(tmp_path / "result")
    mp.spawn(
        _train_worker,
        args=(2, _free_port(), result_file, configs, resume, kill_after),
        nprocs=2,
        join=True,
    )
    return [json.loads(open(f"{result_file}.{i}").read())["error"] for i in range(2)]


def test_resume_needs_the_run_folder_on_rank_0_only_and_ends_as_an_uninterrupted_run(tmp_path):
    base = dict(
        model="mlp",
        width=0.25,
        dataset="demo",
        device="cpu",
        train_subset=400,
        test_subset=200,
        projection="sign",
        batch_size=50,
        lr=3e-3,
        seed=0,
    )

    # Rank 1 is on "another machine": its --out path does not exist there.
    def two(out, epochs, i):
        return [
            dict(base, epochs=epochs, out=str(tmp_path / out)),
            dict(base, epochs=epochs, out=str(tmp_path / f"elsewhere{i}")),
        ]

    assert _spawn_train(tmp_path, two("straight", 2, 0)) == [None, None]
    assert _spawn_train(tmp_path, two("cut", 2, 1), kill_after=1) == [
        None,
        None,
    ]  # killed after epoch 1
    assert _spawn_train(tmp_path, two("cut", 2, 2), resume=True) == [None, None]
    assert not list(tmp_path.glob("elsewhere*"))
    straight, _ = rw.load(tmp_path / "straight")
    resumed, _ = rw.load(tmp_path / "cut")
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k

    def untimed(run):
        return [
            {k: v for k, v in json.loads(x).items() if k not in ("seconds", "images_per_second")}
            for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]

    assert untimed("cut") == untimed("straight") and len(untimed("cut")) == 2


def test_a_resumed_run_with_a_validation_split_ends_on_every_rank(tmp_path):
    """Rank 1 never reads the run folder, so when no epoch of the resumed session was the best it
    had no best.pt network and raised 'the network of the best validation epoch was not kept' (rank
    0 then died on a closed connection). Each rank also chose its best epoch from its own validation
    errors."""
    base = dict(
        model="cnn",
        width=0.25,
        dataset="demo",
        device="cpu",
        train_subset=400,
        test_subset=200,
        val_size=100,
        projection="sign",
        batch_size=50,
        lr=3e-3,
        seed=0,
        epochs=2,
    )
    two = [dict(base, out=str(tmp_path / "run")), dict(base, out=str(tmp_path / "elsewhere"))]
    assert _spawn_train(tmp_path, two) == [None, None]
    before = (tmp_path / "run" / "best.pt").read_bytes()
    assert _spawn_train(tmp_path, two, resume=True) == [
        None,
        None,
    ]  # finished: nothing to train, best.pt kept
    assert (tmp_path / "run" / "best.pt").read_bytes() == before


def _cli_worker(rank, world, port, argvs, result_file):
    """``robustweights ARGV`` as torchrun starts it on rank ``rank`` (the command line joins the
    group)."""
    from robustweights.cli import main

    faulthandler.enable()
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    code = main(argvs[rank])
    with open(f"{result_file}.{rank}", "w") as f:
        json.dump({"code": code}, f)


def test_train_resume_on_the_command_line_needs_the_run_folder_on_rank_0_only(tmp_path, capsys):
    """`train --resume --out RUN` read RUN's checkpoint on every rank before joining the group: on a
    machine without RUN that rank stopped with 'no checkpoint', and the others waited for it
    (usage.md promises that resuming works without shared storage; its test went through rw.train,
    not the command line)."""
    tiny = [
        "--device",
        "cpu",
        "--model",
        "mlp",
        "--width",
        "0.25",
        "--dataset",
        "demo",
        "--train-subset",
        "400",
        "--test-subset",
        "200",
        "--batch-size",
        "50",
        "--projection",
        "sign",
        "--quiet",
    ]
    code, _, err = run_main(capsys, "train", *tiny, "--epochs", "1", "--out", str(tmp_path / "run"))
    assert code == 0, err
    argvs = [
        ["train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "2", "--quiet"],
        ["train", "--resume", "--out", str(tmp_path / "elsewhere"), "--epochs", "2", "--quiet"],
    ]
    mp.spawn(
        _cli_worker, args=(2, _free_port(), argvs, str(tmp_path / "code")), nprocs=2, join=True
    )
    assert [json.loads(open(f"{tmp_path / 'code'}.{i}").read())["code"] for i in range(2)] == [0, 0]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "elsewhere").exists()


def test_a_mistake_on_one_rank_stops_every_rank_with_its_line(tmp_path):
    base = dict(
        model="mlp",
        width=0.25,
        dataset="demo",
        device="cpu",
        train_subset=400,
        test_subset=200,
        epochs=1,
        batch_size=50,
        seed=0,
        out=str(tmp_path / "run"),
    )
    missing = tmp_path / "no-such-folder"
    errors = _spawn_train(
        tmp_path, [base, dict(base, dataset="fashion-mnist", data_dir=str(missing))]
    )
    assert errors[1] and str(missing) in errors[1]
    assert errors[0] == f"(on rank 1) {errors[1]}"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # Rank 0 reads the run folder for everyone: a resume without a run stops both ranks too.
    errors = _spawn_train(tmp_path, [dict(base, out=str(tmp_path / "none")), base], resume=True)
    assert "nothing to resume" in errors[0] and errors[1] == f"(on rank 0) {errors[0]}"


def _tiny_checkpoint(tmp_path):
    """A one-epoch MLP on the demo data, the checkpoint the sweep tests start from."""
    ckpt = tmp_path / "train"
    rw.train(
        rw.TrainConfig(
            model="mlp",
            width=0.25,
            dataset="demo",
            device="cpu",
            train_subset=400,
            test_subset=200,
            epochs=1,
            batch_size=50,
            seed=0,
            out=str(ckpt),
        ),
        progress=False,
    )
    return ckpt


def _sweep_killed_after_3_cells(monkeypatch, config):
    """A one-process sweep of ``config`` killed after its baseline and 3 cells."""
    import importlib

    sweeps = importlib.import_module("robustweights.sweeps")
    calls = {"n": 0}
    real = sweeps.measure_split

    def killed(*a, **k):
        calls["n"] += 1
        if calls["n"] > 4:  # the baseline, then 3 cells
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sweeps, "measure_split", killed)
    with pytest.raises(KeyboardInterrupt):
        rw.run_sweep(config, progress=False)
    monkeypatch.setattr(sweeps, "measure_split", real)


@contextlib.contextmanager
def _one_thread():
    """The single-process reference at the workers' thread count (1): on some CPUs (seen on an
    AVX-512 Xeon) a reduction's last digits depend on how many threads split it, and the
    comparison is of the distribution, not of PyTorch's threading."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sweep_worker(rank, world, port, config_dict):
    faulthandler.enable()
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    if isinstance(config_dict, list):  # one per rank: ranks on "other machines" see other paths
        config_dict = config_dict[rank]
    rw.run_sweep(rw.SweepConfig(**config_dict), progress=False)


def test_two_process_sweep_writes_the_single_process_table_and_resumes(tmp_path, monkeypatch):
    ckpt = _tiny_checkpoint(tmp_path)
    grids = ["add-gauss:sigma=0.5,1", "power:beta=0,0.5", "bitflip:p=0.1"]
    base = dict(
        checkpoint=str(ckpt), device="cpu", distortions=grids, trials=2, test_subset=200, seed=3
    )
    with _one_thread():
        rw.run_sweep(rw.SweepConfig(**base, out=str(tmp_path / "one")), progress=False)
    mp.spawn(
        _sweep_worker,
        args=(2, _free_port(), {**base, "out": str(tmp_path / "two")}),
        nprocs=2,
        join=True,
    )
    for name in ("results.json", "results.csv"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    prov = json.loads((tmp_path / "two" / "sweep.json").read_text())
    assert prov["processes"] == 2
    assert prov["cells_by_rank"] == [4, 4]  # 8 cells (2 x 2 noise, 2 power, 2 bitflip), divided
    assert not list((tmp_path / "two").glob("results.rank*"))

    # A single-process sweep killed after 3 cells, resumed by 2 processes: the same table again.
    _sweep_killed_after_3_cells(monkeypatch, rw.SweepConfig(**base, out=str(tmp_path / "cut")))
    assert len(json.loads((tmp_path / "cut" / "results.json").read_text())) == 3
    mp.spawn(
        _sweep_worker,
        args=(2, _free_port(), {**base, "out": str(tmp_path / "cut")}),
        nprocs=2,
        join=True,
    )
    assert (tmp_path / "cut" / "results.json").read_text() == (
        tmp_path / "one" / "results.json"
    ).read_text()
    assert json.loads((tmp_path / "cut" / "sweep.json").read_text())["cells_by_rank"] == [
        3,
        2,
    ]  # 5 left after 3


def test_two_process_sweep_resumes_when_only_rank_0_sees_the_out_folder(tmp_path, monkeypatch):
    ckpt = _tiny_checkpoint(tmp_path)
    base = dict(
        checkpoint=str(ckpt),
        device="cpu",
        distortions=["add-gauss:sigma=0.5,1", "power:beta=0,0.5"],
        trials=2,
        test_subset=200,
        seed=3,
    )
    rw.run_sweep(rw.SweepConfig(**base, out=str(tmp_path / "one")), progress=False)
    _sweep_killed_after_3_cells(monkeypatch, rw.SweepConfig(**base, out=str(tmp_path / "cut")))
    configs = [{**base, "out": str(tmp_path / "cut")}, {**base, "out": str(tmp_path / "elsewhere")}]
    mp.spawn(_sweep_worker, args=(2, _free_port(), configs), nprocs=2, join=True)
    assert (tmp_path / "cut" / "results.json").read_text() == (
        tmp_path / "one" / "results.json"
    ).read_text()
    assert json.loads((tmp_path / "cut" / "sweep.json").read_text())["cells_by_rank"] == [
        2,
        1,
    ]  # 3 of 6 left
    assert not list(
        tmp_path.glob("*/results.rank*")
    )  # the partial rows, deleted on both "machines"


def _failing_sweep_worker(rank, world, port, configs, result_file):
    try:
        _sweep_worker(rank, world, port, configs)
        error = None
    except rw.UserError as e:
        error = str(e)
    with open(f"{result_file}.{rank}", "w") as f:
        json.dump({"error": error}, f)


def test_a_checkpoint_missing_on_one_rank_stops_the_sweep_on_every_rank(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path)
    base = dict(
        distortions=["add-gauss:sigma=0.5"],
        device="cpu",
        trials=1,
        test_subset=200,
        out=str(tmp_path / "sweep"),
    )
    configs = [
        {**base, "checkpoint": str(ckpt)},
        {**base, "checkpoint": str(tmp_path / "not-copied-here")},
    ]
    result_file = str(tmp_path / "result")
    mp.spawn(
        _failing_sweep_worker, args=(2, _free_port(), configs, result_file), nprocs=2, join=True
    )
    errors = [json.loads(open(f"{result_file}.{i}").read())["error"] for i in range(2)]
    assert "not-copied-here" in errors[1] and errors[0] == f"(on rank 1) {errors[1]}"
    assert not (tmp_path / "sweep" / "results.json").exists()


def test_resume_reads_the_rows_ranks_left_in_partial_files(tmp_path, monkeypatch):
    """A distributed sweep killed mid-way leaves results.rankN.jsonl; a restart computes only the
    rest."""
    import importlib
    import shutil

    sweeps = importlib.import_module("robustweights.sweeps")
    ckpt = _tiny_checkpoint(tmp_path)
    base = dict(
        checkpoint=str(ckpt),
        device="cpu",
        distortions=["add-gauss:sigma=0.5,1", "power:beta=0,0.5"],
        trials=2,
        test_subset=200,
        seed=3,
    )
    rw.run_sweep(rw.SweepConfig(**base, out=str(tmp_path / "full")), progress=False)
    rows = json.loads((tmp_path / "full" / "results.json").read_text())
    # What two ranks would have left after finishing 2
    # and 1 of their cells (ranks take every other cell).
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(tmp_path / "full" / "sweep.json", killed / "sweep.json")
    (killed / "results.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[0:4:2]))
    (killed / "results.rank1.jsonl").write_text(json.dumps(rows[1]) + "\n" + '{"cut by the kil')
    calls = {"n": 0}
    real = sweeps.measure_split

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(sweeps, "measure_split", counting)
    rw.run_sweep(rw.SweepConfig(**base, out=str(killed)), progress=False)
    assert calls["n"] == 1 + len(rows) - 3  # the baseline, then only the cells no rank finished
    assert (killed / "results.json").read_text() == (tmp_path / "full" / "results.json").read_text()
    assert not list(killed.glob("results.rank*"))


def _launchers(tmp_path, nodes, argv, timeout=120):
    """Run ``torchrun --nnodes NODES --nproc-per-node 1 --rdzv-backend c10d ... -m robustweights
    ARGV`` once per node, all on this machine (the README's several-machines command with 127.0.0.1
    as the endpoint)."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which(
        "torchrun"
    )
    cmd = [
        torchrun,
        "--nnodes",
        str(nodes),
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--rdzv-id",
        "test",
        "--local-addr",
        "127.0.0.1",
        "-m",
        "robustweights",
        *argv,
    ]
    # Loopback only: by default torchrun and gloo find this machine by its hostname, which a sandbox
    # (the GPU machines lent to this project) may not resolve to a reachable address.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
        )
        for _ in range(nodes)
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    except (
        subprocess.TimeoutExpired
    ):  # (about 12 s here): a stuck rendezvous fails with what the launchers said
        for p in procs:
            p.kill()
        said = "\n---\n".join(p.communicate()[0][-3000:] for p in procs)
        pytest.fail(
            f"torchrun launchers still running after {timeout} s "
            f"(hostname {socket.gethostname()!r}):\n{said}"
        )
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    return outs


def test_torchrun_across_two_nodes_trains_and_sweeps_like_one_process(tmp_path, capsys):
    """Two torchrun launchers meeting at a c10d rendezvous, as two machines would: the commands
    users type."""

    train = [
        "train",
        "--device",
        "cpu",
        "--model",
        "mlp",
        "--width",
        "0.25",
        "--dataset",
        "demo",
        "--train-subset",
        "400",
        "--test-subset",
        "200",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--lr",
        "3e-3",
        "--projection",
        "sign",
        "--quiet",
    ]
    _launchers(tmp_path, 2, [*train, "--out", "two"])
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    code, _, _ = run_main(capsys, *train, "--out", str(tmp_path / "one"))
    assert code == 0
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    # The same global batches, gradients averaged over
    # the two halves: the same training up to rounding.
    assert abs(rows[-1]["test_error"] - one[-1]["test_error"]) <= 0.05
    assert rows[-1]["test_error"] < 0.6  # chance: 0.9

    sweep = [
        "sweep",
        str(tmp_path / "one"),
        "--device",
        "cpu",
        "--distortion",
        "add-gauss:sigma=0.5,1",
        "--distortion",
        "quant:bits=1..2",
        "--trials",
        "2",
        "--test-subset",
        "200",
        "--seed",
        "5",
        "--quiet",
    ]
    _launchers(tmp_path, 2, [*sweep, "--out", str(tmp_path / "sweep-two")])
    with _one_thread():  # the launchers' OMP_NUM_THREADS=1
        code, _, _ = run_main(capsys, *sweep, "--out", str(tmp_path / "sweep-one"))
    assert code == 0
    for name in ("results.json", "results.csv"):
        assert (tmp_path / "sweep-two" / name).read_text() == (
            tmp_path / "sweep-one" / name
        ).read_text()
    assert json.loads((tmp_path / "sweep-two" / "sweep.json").read_text())["processes"] == 2


def test_more_processes_than_gpus_on_a_machine_is_one_line(monkeypatch, capsys):
    """`torchrun --nproc-per-node 2` on a one-GPU machine: process 1 asked for cuda:1, which does
    not exist (a traceback from deep inside torch, seen on an H200 machine); now one line saying
    what to do."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, out, err = run_main(
        capsys, "train", "--model", "mlp", "--dataset", "demo", "--epochs", "1"
    )
    assert code == 2 and "no GPU of its own" in one_error_line(err) and "--nproc-per-node 1" in err


def test_run_together_keeps_order_raises_the_first_failure_and_stops_on_ctrl_c():
    """Several trainings at once in one process (reproduce's rows_at_once): results in the jobs'
    order; a failing job stops the queue and its error is raised; Ctrl-C asks the running jobs to
    stop and is raised after them."""
    import _thread
    import time

    from robustweights.distributed import Stopped, run_together

    assert run_together(
        [lambda stop, i=i: (time.sleep(0.01 * (3 - i)), i)[1] for i in range(4)], 3
    ) == [0, 1, 2, 3]

    started = []

    def job(i):
        def run(stop):
            started.append(i)
            if i == 1:
                raise rw.UserError("row 1 went wrong")
            time.sleep(0.05)
            return i

        return run

    with pytest.raises(rw.UserError, match="row 1 went wrong"):
        run_together([job(i) for i in range(6)], 2)
    assert sorted(started) == [0, 1, 2] or sorted(started) == [
        0,
        1,
    ]  # no new job starts after a failure

    ended = []

    def endless(i):
        def run(stop):
            if i == 0:
                time.sleep(0.1)
                _thread.interrupt_main()  # as Ctrl-C in the calling thread
            try:
                for _ in range(3000):  # 30 s at most: a lost interrupt fails, it does not hang
                    time.sleep(0.01)
                    stop()
            except Stopped:
                ended.append(i)
                raise
            raise AssertionError("the interrupt never reached the running jobs")

        return run

    # Ctrl-C raises KeyboardInterrupt whatever handler an earlier test left (torchrun's agent
    # installs its own): without it the interrupt was swallowed and this test waited forever
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_together([endless(i) for i in range(4)], 2)
    finally:
        signal.signal(signal.SIGINT, before)
    assert sorted(ended) == [
        0,
        1,
    ]  # both running jobs stopped at their next check; the queued ones never ran
