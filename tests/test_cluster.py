"""A real Ray cluster of two nodes on this machine: trials run on both, and survive losing one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray_record import ray_reports
from sweep_files import digits_trial, prior_weight_space

from layertune.search import open_storage
from layertune.sweep import multi_node_warnings, plan_sweep, run_sweep

SAMPLES, EPOCHS = 4, 80  # long enough to be seen midway (see ray_record)
TRIAL = digits_trial(EPOCHS)
SPACE = prior_weight_space()


def results(storage: Path) -> dict[str, list[dict]]:
    return {k: rows for k, rows in ray_reports(storage).items() if rows}



def test_trials_run_on_both_nodes_and_move_when_one_is_lost(cluster, tmp_path, capsys):
    c, worker = cluster
    (tmp_path / "trial.yaml").write_text(TRIAL)
    (tmp_path / "space.yaml").write_text(SPACE)
    storage = tmp_path / "sweep"
    plan = plan_sweep(tmp_path / "trial.yaml", tmp_path / "space.yaml", samples=SAMPLES,
                      name="c", storage=storage, address=c.address, max_concurrent=2,
                      scheduler="fifo")
    lost = {}

    def remove_the_worker_node_mid_trial() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for trial_id, rows in results(storage).items():
                if rows[-1]["node_id"] == worker.node_id and 2 <= rows[-1]["epoch"] < EPOCHS - 5:
                    lost.update(trial=trial_id, epoch=rows[-1]["epoch"])
                    c.remove_node(worker, allow_graceful=False)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=remove_the_worker_node_mid_trial, daemon=True)
    killer.start()
    result = run_sweep(plan, live=False)
    killer.join(timeout=1)

    warning = capsys.readouterr().err
    assert "the Ray cluster has 2 nodes" in warning and "shared storage" in warning
    assert lost, "no trial ran on the worker node"
    rows = results(storage)
    assert len(rows) == SAMPLES and not result.interrupted
    assert all(r[-1]["epoch"] == EPOCHS for r in rows.values())
    nodes = {r["node_id"] for trial in rows.values() for r in trial}
    assert worker.node_id in nodes and len(nodes) == 2  # both nodes ran trials
    moved = rows[lost["trial"]]
    assert moved[-1]["node_id"] != worker.node_id  # finished on the node that was left
    assert [r["epoch"] for r in moved].count(1) == 1  # from its checkpoint, not from scratch
    study = optuna.load_study(study_name="c", storage=open_storage(storage))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * SAMPLES


def test_warnings_only_for_several_nodes(tmp_path):
    (tmp_path / "trial.yaml").write_text(TRIAL)
    (tmp_path / "space.yaml").write_text(SPACE)
    plan = plan_sweep(tmp_path / "trial.yaml", tmp_path / "space.yaml", name="w",
                      storage=tmp_path / "w")
    assert multi_node_warnings(plan, nodes=1) == []
    assert len(multi_node_warnings(plan, nodes=3)) == 2  # storage and the sqlite record
    served = plan_sweep(tmp_path / "trial.yaml", tmp_path / "space.yaml", name="w",
                        storage=tmp_path / "w", tracking_uri="http://mlflow.internal:5000")
    assert len(multi_node_warnings(served, nodes=3)) == 1
