"""Faults, for real: an interrupted driver, a killed trial worker (a diverging trial is
test_tracking's sweep; a killed driver, test_object_storage's).

Each test runs ``layertune sweep`` as its own process (with its own local Ray), breaks it, and
then checks that every trial is accounted for exactly once in Ray's results, the Optuna study
and MLflow.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray_record import ray_reports
from sweep_files import digits_trial, prior_weight_space
from sweep_process import finish, kill_group, start, wait_for

from layertune.search import open_storage

TRIAL = digits_trial("EPOCHS")
SPACE = prior_weight_space(seed=1, more="optimizer.lr: LR")

LR = "{type: float, low: 0.02, high: 0.1, log: true}"


def write_inputs(folder: Path, epochs: int, lr: str = LR) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    trial, space = folder / "trial.yaml", folder / "space.yaml"
    trial.write_text(TRIAL.replace("EPOCHS", str(epochs)))
    space.write_text(SPACE.replace("LR", lr))
    return trial, space


def sweep_args(trial: Path, space: Path, storage: Path, samples: int) -> list[str]:
    # FIFO: every trial runs to its end, so the accounting below does not depend on timing.
    return [sys.executable, "-m", "layertune.cli", "sweep", str(trial), "--space", str(space),
            "--samples", str(samples), "--name", "f", "--storage", str(storage),
            "--max-concurrent", "2", "--scheduler", "fifo"]


def results(storage: Path) -> dict[str, list[dict]]:
    """Trials that have reported; an epoch here takes ~0.1 s and Ray copies reports into the
    sweep folder about once a second, so the trials below run for several seconds to be seen
    midway."""
    return {k: rows for k, rows in ray_reports(storage).items() if rows}


def assert_accounted_once(storage: Path, samples: int, epochs: int) -> dict[str, list[dict]]:
    """Ray, Optuna and MLflow each hold every trial once, and nothing is left RUNNING."""
    ray_rows = results(storage)
    assert len(ray_rows) == samples
    assert all(rows[-1]["epoch"] == epochs for rows in ray_rows.values())
    study = optuna.load_study(study_name="f", storage=open_storage(storage))
    assert len(study.trials) == samples
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["ray_trial_id"] for t in study.trials} == set(ray_rows)
    assert_mlflow_once(storage, set(ray_rows))
    return ray_rows


def assert_mlflow_once(storage: Path, trial_ids: set[str]) -> None:
    # a trial that started after the last saved experiment state is run again under another
    # id after a resume; its own run is deleted ("lost"), so only active runs count
    active = "run_uuid in (select run_uuid from runs where lifecycle_stage = 'active')"
    with sqlite3.connect(storage / "mlflow.db") as db:
        runs = db.execute(f"select run_uuid, status from runs where {active}").fetchall()
        parents = db.execute("select value from tags where key = 'mlflow.parentRunId' "
                             f"and {active}").fetchall()
        ray_ids = [v for (v,) in db.execute(
            f"select value from tags where key = 'ray_trial_id' and {active}").fetchall()]
        unexplained = db.execute(
            "select count(*) from runs where lifecycle_stage = 'deleted' and run_uuid not in "
            "(select run_uuid from tags where key = 'status' and value = 'lost')").fetchone()[0]
    assert unexplained == 0
    assert not [r for r in runs if r[1] == "RUNNING"]
    assert len({p for (p,) in parents}) == 1  # one sweep run
    assert sorted(ray_ids) == sorted(trial_ids)  # one child run per trial, none twice
    assert len(runs) == len(trial_ids) + 1


def epochs_of(rows: list[dict]) -> list[int]:
    return [r["epoch"] for r in rows]


# SIGINT here; a SIGKILLed driver, whose saved state lags (nothing is written on the way
# out), is test_object_storage's killed driver, resumed from the bucket alone.
@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["SIGINT"])
def test_a_stopped_driver_resumes_with_nothing_lost_or_run_twice(tmp_path: Path, sig) -> None:
    epochs, samples = 45, 5
    trial, space = write_inputs(tmp_path, epochs)
    storage = tmp_path / "sweep"
    args = sweep_args(trial, space, storage, samples)
    log = tmp_path / "first.log"
    proc = start(args, log)

    def one_done_one_midway() -> bool:
        rows = results(storage)
        done = [r for r in rows.values() if r[-1]["epoch"] == epochs]
        midway = [r for r in rows.values() if 2 <= r[-1]["epoch"] < epochs - 2]
        return bool(done) and bool(midway)

    wait_for(one_done_one_midway, proc, log)
    before = results(storage)
    os.kill(proc.pid, sig)
    if sig == signal.SIGINT:
        assert finish(proc, log) == 130
        assert "--resume" in log.read_text()
    kill_group(proc)

    again = tmp_path / "resume.log"
    rc = finish(start([*args, "--resume"], again), again)
    assert rc == 0, again.read_text()[-3000:]
    after = assert_accounted_once(storage, samples, epochs)
    for trial_id, rows in before.items():
        seen = epochs_of(after[trial_id])
        if rows[-1]["epoch"] == epochs:  # finished before the stop: not run again
            assert seen == epochs_of(rows)
        else:  # went on from a checkpoint, not from epoch 1
            assert seen.count(1) == 1 and seen[-1] == epochs
    done = subprocess.run(args, capture_output=True, text=True)  # never started over
    assert done.returncode == 2 and "--resume" in done.stderr


def test_a_killed_worker_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    epochs, samples = 70, 2
    trial, space = write_inputs(tmp_path, epochs)
    storage = tmp_path / "sweep"
    log = tmp_path / "sweep.log"
    proc = start(sweep_args(trial, space, storage, samples), log)
    wait_for(lambda: any(3 <= r[-1]["epoch"] < epochs - 5 for r in results(storage).values()),
             proc, log)
    victim, rows = next((k, r) for k, r in results(storage).items()
                        if 3 <= r[-1]["epoch"] < epochs - 5)
    os.kill(rows[-1]["pid"], signal.SIGKILL)
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    after = assert_accounted_once(storage, samples, epochs)
    seen = epochs_of(after[victim])
    assert seen.count(1) == 1 and seen[-1] == epochs  # resumed, not restarted
    assert "Failure # 1" in (storage / "tune" / f"trial_{victim}" / "error.txt").read_text()
