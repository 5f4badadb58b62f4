"""Settled trials: the rule, a trial that ends on it, and a sweep that asks for it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
import ray
import torch
from optuna.trial import TrialState
from ray_record import ray_reports
from sweep_files import digits_trial

from layertune.config import SettleConfig, load_trial
from layertune.optim import cool_down
from layertune.search import open_storage
from layertune.settle import settled, settled_at
from layertune.sweep import plan_sweep, run_sweep
from layertune.train import Trial, run_trial

RULE = SettleConfig(std=0.005, epochs=3, from_epoch=4)


def reports(*accuracies: float, collapsed: int = 1) -> list[dict]:
    return [{"epoch": e, "val_accuracy": a, "collapsed": collapsed}
            for e, a in enumerate(accuracies, start=1)]


def test_a_trial_settles_when_its_last_accuracies_spread_less_than_std():
    assert settled(reports(0.5, 0.90, 0.95, 0.951, 0.949), RULE)
    assert not settled(reports(0.5, 0.90, 0.93, 0.95, 0.97), RULE)  # still rising
    assert not settled(reports(0.5, 0.90, 0.95, 0.951, 0.93), RULE)  # one drop in the window


def test_only_the_last_epochs_count():
    assert settled(reports(0.1, 0.2, 0.9, 0.95, 0.95, 0.95), RULE)
    assert not settled(reports(0.95, 0.95), SettleConfig(std=0.005, epochs=3))


def test_no_trial_settles_before_from_epoch_or_with_std_zero():
    flat = reports(0.9, 0.9, 0.9, 0.9)
    assert not settled(flat[:3], RULE)
    assert settled(flat, RULE)
    assert not settled(flat, SettleConfig(std=0.0, epochs=3, from_epoch=4))


def test_a_structure_still_learning_never_settles():
    flat = reports(0.9, 0.9, 0.9, 0.9)
    flat[2]["collapsed"] = 0
    assert not settled(flat, RULE)


def test_settled_at_is_the_first_epoch_that_settled():
    assert settled_at(reports(0.5, 0.90, 0.95, 0.951, 0.949, 0.99, 0.96), RULE) == 5
    assert settled_at(reports(0.5, 0.90, 0.93, 0.95, 0.97), RULE) is None


def test_a_cooldown_falls_linearly_to_zero_from_where_the_schedule_stands():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 100)
    lrs = []
    for step in range(10):
        if step == 4:
            cool_down(schedule, start=4, steps=4)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([1.0, 0.99, 0.98, 0.97, 0.96])  # 0.96 where it stood
    assert lrs[5:] == pytest.approx([0.72, 0.48, 0.24, 0.0, 0.0])


DIGITS = "trials/digits_mlp.yaml"
ANY_SPREAD = {"method.decide_at": 1, "settle.std": 1.0, "settle.epochs": 2,
              "settle.from_epoch": 3}  # structure fixed after epoch 1: settles at epoch 3


def test_a_settled_trial_ends_there_and_its_last_checkpoint_is_the_last_report(tmp_path: Path):
    config = load_trial(DIGITS, {"epochs": 8, **ANY_SPREAD, "settle.cooldown": 0})
    lasts, folders = [], {}

    def report(metrics: dict, folder: str | None) -> None:
        folders[metrics["epoch"]] = shutil.copytree(folder, tmp_path / str(metrics["epoch"]))

    result = run_trial(config, report, checkpoint=True,
                       last_checkpoint=lambda model, keep, folder: lasts.append(folder))
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert len(lasts) == 1  # the compact network goes into epoch 3's checkpoint
    # resumed from that checkpoint (a retried trial), it has nothing left to train
    again = run_trial(config, lambda m, c: pytest.fail("reported after settling"),
                      resume_from=str(folders[3]))
    assert [h["epoch"] for h in again.history] == [1, 2, 3]


def test_a_settled_trial_cools_down_for_cooldown_epochs_and_ends_at_a_zero_rate(tmp_path):
    config = load_trial(DIGITS, {"epochs": 8, **ANY_SPREAD, "settle.cooldown": 2})
    folders = {}

    def report(metrics: dict, folder: str | None) -> None:
        folders[metrics["epoch"]] = shutil.copytree(folder, tmp_path / str(metrics["epoch"]))

    trial = Trial(config)
    result = run_trial(config, report, checkpoint=True, trial=trial)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]  # settled at 3
    assert trial.optimizer.param_groups[0]["lr"] == 0.0
    # resumed within its cooldown, it goes on with the same falling rate
    again = Trial(config)
    run_trial(config, lambda m, c: None, resume_from=str(folders[4]), trial=again)
    assert [h["epoch"] for h in again.history] == [1, 2, 3, 4, 5]
    assert again.optimizer.param_groups[0]["lr"] == 0.0


def test_without_settle_the_same_trial_runs_every_epoch():
    config = load_trial(DIGITS, {"epochs": 4, "method.decide_at": 1})
    assert [h["epoch"] for h in run_trial(config, lambda m, c: None).history] == [1, 2, 3, 4]


SPACE = """\
parameters:
  optimizer.lr: {type: float, low: 0.02, high: 0.1, log: true}
sampler: {name: random, seed: 0}
scheduler: {grace_epochs: 3, margin: 1.0, chance_margin: 0.0, settle_std: 1.0, settle_epochs: 2,
            settle_cooldown: 1}
"""


def _inputs(folder: Path) -> tuple[Path, Path]:
    (folder / "trial.yaml").write_text(digits_trial(epochs=8) + "method: {decide_at: 1}\n")
    (folder / "space.yaml").write_text(SPACE)
    return folder / "trial.yaml", folder / "space.yaml"


@pytest.mark.parametrize("scheduler", ["gate-collapse", "asha", "fifo"])
def test_settling_is_the_sweeps_early_stopping_fifo_runs_every_epoch(tmp_path, scheduler):
    plan = plan_sweep(*_inputs(tmp_path), name="p", scheduler=scheduler)
    # the space's settle_epochs, and its grace_epochs as the first epoch a trial may settle at
    asked = SettleConfig(std=1.0, epochs=2, from_epoch=3, cooldown=1)
    assert plan.trial.settle == (SettleConfig() if scheduler == "fifo" else asked)


def test_a_settled_trial_is_a_finished_trial_of_the_sweep(tmp_path):
    trial, space = _inputs(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plan = plan_sweep(trial, space, samples=2, name="s", storage=tmp_path / "run",
                          max_concurrent=2)
        result = run_sweep(plan, interval=5)
    finally:
        ray.shutdown()
    last = {tid: rows[-1] for tid, rows in ray_reports(plan.folder).items()}
    assert len(last) == 2
    # settled at epoch 3, one epoch to cool down
    assert all(r["epoch"] == 4 and not r.get("stopped_by") for r in last.values()), last
    assert {r["ray_trial"] for r in result.front} <= set(last)
    study = optuna.load_study(study_name="s", storage=open_storage(plan.folder))
    for t in study.trials:  # complete with the settled epoch's values, not pruned
        assert t.state == TrialState.COMPLETE
        r = last[t.user_attrs["ray_trial_id"]]
        assert t.values == [r["val_accuracy"], r["active_layers"]]
    with sqlite3.connect(plan.folder / "mlflow.db") as db:
        tags = dict(db.execute("select key, count(*) from tags where (key = 'status' and "
                               "value = 'finished') or (key = 'compact_model' and value like "
                               "'models:/%') group by key").fetchall())
    assert tags == {"status": 2, "compact_model": 2}
