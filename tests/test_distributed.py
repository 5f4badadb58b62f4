"""Data-parallel trials (docs/algorithm.md, "Several workers"): two gloo processes on the CPU
hold the same gates, draws, removals and weights; sharding gives each rank its share of every
minibatch; bad worker settings are one line before anything starts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from layertune.config import TrialConfig
from layertune.data import TensorLoader
from layertune.distributed import DistributedTrial, ShardedLoader, step_seed
from layertune.train import run_trial

REPO = Path(__file__).resolve().parent.parent

# strong enough a prior that sections are removed in epoch 3 (at different steps) while one
# stays, and theta_init < 1 so that the draws vary from step to step
CONFIG = {"data": {"name": "digits", "batch_size": 64, "val_fraction": 0.2},
          "model": {"name": "mlp", "depth": 4, "width": 16}, "optimizer": {"lr": 0.05},
          "method": {"prior_weight": 9.0, "theta_lr": 2.0, "prune_patience": 5,
                     "theta_init": 0.9, "prior_every": 1},  # removals at several steps
          "epochs": 3, "seed": 0, "device": "cpu"}


def _rank(rank: int, world: int, port: int, out: str, raw: dict = CONFIG) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        config = TrialConfig.model_validate(raw)
        trial = DistributedTrial(config)
        draws: list[list[float]] = []
        draw = trial.pruner.draw
        trial.pruner.draw = lambda: draws.append(draw()) or draws[-1]
        reports: list[dict] = []
        result = run_trial(config, lambda m, _: reports.append(m), trial=trial)
        torch.save({"draws": draws, "theta": trial.gates.theta, "keep": result.keep,
                    "pruned_at": trial.gates.pruned_at_step, "reports": reports,
                    "weights": trial.model.state_dict(), "batches": len(trial.data.train),
                    "evaluated": trial.evaluated.state_dict()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn_two_ranks(out: Path, raw: dict = CONFIG) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, str(out), raw), nprocs=2)


def test_two_ranks_hold_the_same_gates_draws_removals_and_weights(tmp_path: Path) -> None:
    _spawn_two_ranks(tmp_path)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    steps = 3 * a["batches"]
    assert len(a["draws"]) == steps and a["draws"] == b["draws"]
    assert len({tuple(z) for z in a["draws"]}) > 1  # the draws do vary
    assert torch.equal(a["theta"], b["theta"])
    assert a["keep"] == b["keep"] and 0 < sum(a["keep"]) < 4  # removed, but not all
    assert a["pruned_at"] == b["pruned_at"] and len(set(a["pruned_at"].values())) > 1
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    def same(r: dict) -> dict:  # evaluation is all-reduced: one report for all but the clock
        return {k: v for k, v in r.items() if k != "epoch_seconds"}

    assert [same(r) for r in a["reports"]] == [same(r) for r in b["reports"]]


def test_two_ranks_evaluate_the_same_averaged_weights(tmp_path: Path) -> None:
    fixed = {**CONFIG, "method": {"gates": "fixed", "ema_decay": 0.9}}
    _spawn_two_ranks(tmp_path, fixed)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a["evaluated"][k], b["evaluated"][k]) for k in a["evaluated"])
    assert not torch.equal(a["evaluated"]["layers.3.body.0.weight"],
                           a["weights"]["layers.3.body.0.weight"])  # the average, not the weights
    assert [r["val_accuracy"] for r in a["reports"]] == [r["val_accuracy"] for r in b["reports"]]


def test_each_rank_takes_its_share_of_every_minibatch() -> None:
    def loader() -> TensorLoader:  # each rank's own, seeded alike
        return TensorLoader(torch.arange(10.0).unsqueeze(1), torch.arange(10), 4, shuffle=True,
                            seed=3)

    whole = [yb.tolist() for _, yb in loader()]
    shards = [ShardedLoader(loader(), r, 3) for r in range(3)]
    parts = [[yb.tolist() for _, yb in s] for s in shards]
    # batches of 4, 4, 2: the last (2 < 3 ranks) is skipped by all, the others cut 2 + 1 + 1
    assert all(len(s) == 2 for s in shards) and [len(p) for p in parts] == [2, 2, 2]
    assert [sum((p[i] for p in parts), []) for i in range(2)] == whole[:2]
    assert [s.seen for s in shards] == [4, 2, 2]


def test_a_streamed_data_set_is_split_by_distributed_sampler() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from layertune.data import DataBundle
    from layertune.distributed import shard_bundle

    def loader(shuffle: bool) -> DataLoader:  # as ImageNet's: streamed, the global batch
        return DataLoader(TensorDataset(torch.arange(12.0), torch.arange(12)), batch_size=4,
                          shuffle=shuffle)

    bundle = DataBundle(loader(True), loader(False), None, (1,), 12, 12)
    ranks = [shard_bundle(bundle, r, 2, seed=0) for r in (0, 1)]
    train = [[y.tolist() for _, y in b.train] for b in ranks]
    assert all(len(t) == 3 and all(len(y) == 2 for y in t) for t in train)  # 4 = 2 x 2
    assert sorted(sum(train[0] + train[1], [])) == list(range(12))  # disjoint, all of it
    assert ranks[0].test is None and ranks[0].num_train == 12


def test_the_gate_seed_depends_on_trial_seed_and_step_only() -> None:
    assert step_seed(0, 5) == step_seed(0, 5) != step_seed(0, 6) != step_seed(1, 5)
    assert 0 <= step_seed(2**40, 2**40) < 2**63


@pytest.mark.parametrize(("args", "message"), [
    (["--workers-per-trial", "0"], "--workers-per-trial 0: must be at least 1"),
    (["--workers-per-trial", "2", "--gpus-per-worker", "0.5"], "--gpus-per-worker 0.5: whole"),
    (["--cpus-per-worker", "2"], "--cpus-per-worker: only with --workers-per-trial > 1"),
    (["--workers-per-trial", "128"], "data.batch_size 64 is the global minibatch"),
    (["--workers-per-trial", "2", "--cpus-per-trial", "4"], "--cpus-per-worker"),  # sweep only
])
def test_bad_worker_settings_are_one_line_before_ray_starts(
        tmp_path: Path, capsys, args: list[str], message: str) -> None:
    import ray

    from layertune.cli import main

    trial, space = tmp_path / "t.yaml", tmp_path / "s.yaml"
    trial.write_text("data: {name: digits, batch_size: 64}\nmodel: {name: mlp, depth: 2}\n"
                     "epochs: 1\n")
    space.write_text((Path(__file__).parent.parent / "search_spaces" / "prior_weight.yaml")
                     .read_text())
    commands = [["sweep", str(trial), "--space", str(space), "--storage", str(tmp_path / "w")]]
    if "--cpus-per-trial" not in args:
        commands.append(["train", str(trial), "--out", str(tmp_path / "o")])
    for command in commands:
        assert main([*command, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not ray.is_initialized() and not (tmp_path / "w").exists()


def test_a_trials_workers_must_fit_the_cluster_together() -> None:
    from layertune.config import ConfigError
    from layertune.sweep import plan_sweep
    from layertune.sweep.cluster import check_resources, max_concurrent

    plan = plan_sweep(REPO / "trials" / "mnist1d_cnn.yaml", REPO / "search_spaces" / "cnn1d.yaml",
                      name="k", workers_per_trial=4, gpus_per_worker=1, cpus_per_worker=8)
    nodes = [{"CPU": 32, "GPU": 2}, {"CPU": 16, "GPU": 2}, {"CPU": 64, "GPU": 4}]
    check_resources(plan, nodes)  # 2 + 2 + 4 workers: across nodes
    assert max_concurrent(plan, nodes) == 2  # trials whose workers fit at once
    with pytest.raises(ConfigError, match="holds 3 such workers"):
        check_resources(plan, [{"CPU": 16, "GPU": 4}, {"CPU": 8, "GPU": 1}])  # CPUs too few


# --- on Ray Train: two gloo workers per trial --------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the tests below (never another session's cluster on this machine)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_workers_with_half_batches_match_one_process_on_reference_a(
        local_ray, tmp_path: Path) -> None:
    """Reference (a) (trials/mnist1d_cnn.yaml) cut to 4 epochs of its 20 (the structure is
    decided at epoch 2, as in the full run): 2 workers of 50 samples per step against one
    process of 100. (At 3 epochs the two were 0.9 point apart, at 4 epochs 0.06.)"""
    import json

    from layertune.cli import main
    from layertune.config import load_trial

    overrides = {"epochs": 4, "device": "cpu"}
    one = run_trial(load_trial(REPO / "trials" / "mnist1d_cnn.yaml", overrides),
                    lambda m, _: None)
    out = tmp_path / "two"
    assert main(["train", str(REPO / "trials" / "mnist1d_cnn.yaml"), "--set", "epochs=4",
                 "--set", "device=cpu", "--workers-per-trial", "2", "--out", str(out)]) == 0
    two = json.loads((out / "result.json").read_text())
    assert [t >= 0.5 for t in two["final"]["theta"]] == one.keep
    assert 0 < sum(one.keep) < len(one.keep)  # the decision removed sections
    assert abs(two["final"]["val_accuracy"] - one.final["val_accuracy"]) <= 0.005
    assert len(two["history"]) == 4 and (out / "model.pt2").is_file()


def _descendants(name: str) -> list[int]:
    """Processes under this one (its local Ray's workers) whose command line holds ``name``;
    other sessions on the machine may run Ray Train as well."""
    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or name not in (proc / "cmdline").read_text():
                continue
            pid = int(proc.name)
            while pid > 1 and pid != os.getpid():
                pid = parent(pid)
        except OSError:  # ended meanwhile
            continue
        if pid == os.getpid():
            found.append(int(proc.name))
    return found


def test_a_sweep_trial_on_two_workers_survives_a_killed_worker(
        local_ray, tmp_path: Path) -> None:
    """A trial of ``layertune sweep --workers-per-trial 2``: rank 0 is killed after a
    checkpoint; Ray Train restarts the workers from it, Tune sees rank 0's reports with the
    contract's keys once per epoch, and the MLflow record logs the network from Ray Train's
    last checkpoint."""
    import json
    import signal
    import sqlite3
    import threading
    import time

    from layertune.contract import REPORT_NUMBERS, THETA
    from layertune.sweep import plan_sweep, run_sweep

    epochs = 8
    trial, space = tmp_path / "t.yaml", tmp_path / "s.yaml"
    trial.write_text("data: {name: digits, batch_size: 64, val_fraction: 0.2}\n"
                     "model: {name: mlp, depth: 3, width: 16}\noptimizer: {lr: 0.05}\n"
                     f"epochs: {epochs}\nseed: 0\ndevice: cpu\n")
    space.write_text((REPO / "search_spaces" / "prior_weight.yaml").read_text())
    plan = plan_sweep(trial, space, samples=1, name="w", storage=tmp_path / "sweep",
                      scheduler="fifo", workers_per_trial=2, cpus_per_worker=1.0)
    done: list = []
    thread = threading.Thread(target=lambda: done.append(run_sweep(plan, live=False)))
    thread.start()
    snapshots = tmp_path / "sweep" / "tune"
    deadline = time.monotonic() + 300
    while not list(snapshots.glob("trial_*/train/checkpoint_*")):
        assert thread.is_alive() and time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    workers = _descendants("RayTrainWorker")
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive() and done and done[0].front
    (result,) = snapshots.glob("trial_*/result.json")
    reports = [json.loads(line) for line in result.read_text().splitlines()]
    seen = [r["epoch"] for r in reports]
    assert seen.count(1) == 1 and seen[-1] == epochs  # resumed, not restarted
    assert len(seen) < epochs + 3  # at most the epochs since the checkpoint again
    assert all(set(REPORT_NUMBERS) | {THETA} <= r.keys() for r in reports)
    with sqlite3.connect(tmp_path / "sweep" / "mlflow.db") as db:
        model = db.execute("select value from tags where key = 'compact_model'").fetchall()
    assert len(model) == 1 and model[0][0].startswith(("models:/", "runs:/"))
