"""``layertune baseline`` for real: the grid as a Ray Tune run recorded in MLflow, reused on a
second call, and ``layertune front`` of a sweep of the same trial showing it.

One small run shared by every test: an MLP of 2 sections on sklearn's digits, 1 epoch; a sweep
of 2 trials, then the baseline (3 depths), ``front``, and the baseline again.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient
from sweep_files import prior_weight_space

from layertune.cli import main
from layertune.comparison import BASELINE_FILE, load_baseline, versus
from layertune.front import dominates
from layertune.sweep import plan_sweep, run_sweep
from layertune.tracking.view import VIEW_ID, VIEW_TAG

TRIAL = """\
data: {name: digits, batch_size: 64, val_fraction: 0.2}
model: {name: mlp, depth: 2, width: 16}
optimizer: {lr: 0.05}
epochs: 1
seed: 0
"""
OBJ = [("val_accuracy", "max"), ("active_layers", "min")]


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    (root / "trial.yaml").write_text(TRIAL)
    (root / "space.yaml").write_text(prior_weight_space())
    runs = root / "runs"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plan = plan_sweep(root / "trial.yaml", root / "space.yaml", samples=2, name="s",
                          storage=runs / "s", max_concurrent=2)
        run_sweep(plan, live=False)  # before the baseline: `front` adds it to its plots
        base = ["baseline", str(root / "trial.yaml"), "--storage", str(runs / "base")]
        first = cli(*base)
        baseline_json = (runs / "base" / BASELINE_FILE).read_text()
        front = cli("front", "s", "--storage", str(runs / "s"))
        front_json = cli("front", "s", "--storage", str(runs / "s"), "--format", "json")
        again = cli(*base)
        yield {"runs": runs, "first": first, "front": front, "front_json": front_json,
               "again": again, "baseline_json": baseline_json}
    finally:
        ray.shutdown()


def _baseline_runs(runs: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'base' / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name != "Default"]
    return client, list(client.search_runs([exp.experiment_id]))


def test_every_depth_is_an_mlflow_run_tagged_baseline_in_one_group(record):
    code, out = record["first"]
    assert code == 0, out
    client, every = _baseline_runs(record["runs"])
    groups = [r for r in every if r.data.tags["layertune.kind"] == "baseline-group"]
    depths = [r for r in every if r.data.tags["layertune.kind"] == "baseline"]
    assert len(groups) == 1 and len(depths) == 3 == len(every) - 1
    (group,) = groups
    assert {r.data.tags["mlflow.parentRunId"] for r in depths} == {group.info.run_id}
    for run in depths:  # a network of `sections` sections, trained for the trial's epoch
        assert run.data.tags["status"] == "finished"
        assert run.data.metrics["active_layers"] == int(run.data.params["sections"])
        assert run.data.metrics["epoch"] == 1 and 0.1 < run.data.metrics["val_accuracy"] <= 1
    assert sorted(int(r.data.params["sections"]) for r in depths) == [0, 1, 2]
    # the file holds what MLflow holds
    baseline = load_baseline(record["runs"] / "base" / BASELINE_FILE)
    by_run = {r.info.run_id: r for r in depths}
    assert [r["sections"] for r in baseline.rows] == [0, 1, 2]
    for row in baseline.rows:
        assert by_run[row["run_id"]].data.metrics["val_accuracy"] == row["val_accuracy"]
    assert "reference [0.1, 3.0]" in out and str(baseline.path) in out


def test_a_second_call_reuses_it_and_trains_nothing(record):
    code, out = record["again"]
    assert code == 0
    assert "reused from" in out and "--recompute" in out
    assert "layertune baseline" not in out.splitlines()[0]  # no training banner
    _, every = _baseline_runs(record["runs"])
    assert len(every) == 4  # the group and 3 depths, as after the first call
    assert (record["runs"] / "base" / BASELINE_FILE).read_text() == record["baseline_json"]


def test_front_shows_both_hypervolumes_and_marks_each_front_point(record):
    code, out = record["front"]
    assert code == 0, out
    assert "dominated_by_baseline" in out.splitlines()[1]
    assert "from-scratch baseline" in out and "hypervolume at reference [0.1, 3.0]: sweep" in out
    assert "now show it" in out  # the sweep ended before the baseline: its plots redrawn
    code, text = record["front_json"]
    data = json.loads(text)
    baseline = load_baseline(record["runs"] / "base" / BASELINE_FILE)
    ours = data["baseline"]
    assert ours["file"] == str(baseline.path) and ours["reference"] == [0.1, 3.0]
    expected = versus(data["front"], baseline, OBJ, [0.1, 3.0])
    assert ours["hypervolume"] == pytest.approx(expected.hypervolume)
    assert ours["baseline_hypervolume"] == pytest.approx(expected.baseline_hypervolume)
    for row in data["front"]:  # each mark, checked point by point
        beaten = any(dominates([-b["val_accuracy"], b["active_layers"]],
                               [-row["val_accuracy"], row["active_layers"]])
                     for b in baseline.rows)
        assert row["dominated_by_baseline"] is beaten
    # the sweep run's artifacts now show this baseline
    client = MlflowClient(tracking_uri=f"sqlite:///{record['runs'] / 's' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`layertune.kind` = 'sweep'")
    assert parent.data.tags["layertune.baseline"] == baseline.stamp
    assert "pareto/baseline_front.csv" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}


def test_ui_opens_the_baselines_depth_runs(record):
    code, out = cli("ui", "--storage", str(record["runs"]), "--dry-run")
    assert code == 0
    pages = {line.split(": ", 1)[0].strip(): line for line in out.splitlines()
             if "#/experiments/" in line}
    assert len(pages) == 2 and all(f"viewStateShareKey={VIEW_ID}" in p for p in pages.values())
    for folder, kind in (("base", "baseline"), ("s", "trial")):  # each view shows its own runs
        client = MlflowClient(tracking_uri=f"sqlite:///{record['runs'] / folder / 'mlflow.db'}")
        (exp,) = [e for e in client.search_experiments() if e.name in pages]
        view = json.loads(json.loads(exp.tags[VIEW_TAG])["state"])
        assert view["searchFilter"] == f"tags.`layertune.kind` = '{kind}'"
