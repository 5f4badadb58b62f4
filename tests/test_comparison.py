"""A sweep's front against its from-scratch baseline: the file found beside the sweep, both
hypervolumes at one reference, each front point dominated or not, and the sweep's record."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from layertune.comparison import BASELINE_FILE, find_baseline, load_baseline, versus
from layertune.front import hypervolume
from layertune.tracking import SweepRecorder

OBJ = [("val_accuracy", "max"), ("active_layers", "min")]
CONFIG = {"model": {"name": "mlp", "depth": 3}, "epochs": 2, "seed": 0}


def write_baseline(folder: Path, accuracies: list[float], config: dict = CONFIG,
                   created: str = "2026-01-01T00:00:00+00:00") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"sections": d, "active_layers": d, "val_accuracy": a, "run_id": f"run{d}"}
            for d, a in enumerate(accuracies)]
    path = folder / BASELINE_FILE
    path.write_text(json.dumps({"name": folder.name, "config": config, "rows": rows,
                                "created": created}))
    return path


def test_each_front_point_is_marked_and_both_hypervolumes_share_the_reference(tmp_path):
    base = load_baseline(write_baseline(tmp_path / "b", [0.5, 0.9, 0.96, 0.95]))
    front = [{"val_accuracy": 0.97, "active_layers": 3},  # better than every baseline point
             {"val_accuracy": 0.95, "active_layers": 2},  # the baseline has 0.96 at 2
             {"val_accuracy": 0.9, "active_layers": 1}]  # equal to the baseline's: not beaten
    got = versus(front, base, OBJ, [0.1, 4.0])
    assert got.dominated == [False, True, False]
    # by hand: boxes from the reference (0.1, 4) to each front point, stacked by depth
    assert got.hypervolume == pytest.approx((0.97 - 0.1) * 1 + (0.95 - 0.1) * 1 + 0.8 * 1)
    assert got.baseline_hypervolume == pytest.approx(0.4 * 1 + 0.8 * 1 + 0.86 * 2)
    assert got.baseline_hypervolume == pytest.approx(hypervolume(base.rows, OBJ, [0.1, 4.0]))
    assert [r["sections"] for r in got.baseline_front] == [2, 1, 0]  # depth 3 is dominated
    assert "1 of 3 sweep front points dominated" in got.line()
    # a sweep optimising a metric the grid did not record has no comparison
    assert versus(front, base, [("val_accuracy", "max"), ("flops", "min")], [0.1, 1e9]) is None


def test_a_sweep_finds_the_newest_baseline_of_its_own_trial_config_beside_it(tmp_path):
    sweep = tmp_path / "runs" / "my-sweep"
    sweep.mkdir(parents=True)
    assert find_baseline(sweep, CONFIG) is None
    write_baseline(tmp_path / "runs" / "old", [0.5, 0.6, 0.7, 0.8])
    write_baseline(tmp_path / "runs" / "new", [0.5, 0.6, 0.7, 0.9],
                   created="2026-02-01T00:00:00+00:00")
    write_baseline(tmp_path / "runs" / "other", [0.9] * 4, config={**CONFIG, "epochs": 5},
                   created="2026-03-01T00:00:00+00:00")
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / BASELINE_FILE).write_text("{not json")
    write_baseline(tmp_path / "elsewhere" / "b", [0.9] * 4, created="2026-04-01T00:00:00+00:00")
    found = find_baseline(sweep, CONFIG)
    assert found is not None and found.name == "new"
    assert find_baseline(sweep, {**CONFIG, "epochs": 5}).name == "other"
    assert find_baseline(sweep, {**CONFIG, "seed": 1}) is None


def _stub(tid: str, config: dict) -> object:
    from ray.tune.experiment import Trial

    return Trial("__fake", trial_id=tid, config=config, stub=True)


def test_the_sweeps_record_shows_its_baseline_at_its_end(tmp_path):
    """Without Ray: the recorder, driven as Tune drives it, finds the baseline beside the
    sweep folder and logs its front, both hypervolumes and the marks."""
    folder = tmp_path / "runs" / "s"
    base = write_baseline(tmp_path / "runs" / "base", [0.5, 0.9, 0.92, 0.93])
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    recorder = SweepRecorder(uri, "s", folder, objectives=OBJ, chance=0.1,
                             parameters=["method.prior_weight"], trial_config=CONFIG)
    recorder.prepare()
    recorder.start()
    trials = [_stub("a", {"method.prior_weight": 0.1}), _stub("b", {"method.prior_weight": 1.0})]
    for trial, (acc, depth) in zip(trials, [(0.95, 3), (0.85, 1)], strict=True):
        result = {"epoch": 2, "val_accuracy": acc, "active_layers": depth, "total_layers": 3,
                  "theta": [1.0] * depth + [0.0] * (3 - depth), "training_iteration": 2}
        recorder.on_trial_start(iteration=0, trials=trials, trial=trial)
        recorder.on_trial_result(iteration=0, trials=trials, trial=trial, result=result)
        trial.run_metadata.last_result = result
        recorder.on_trial_complete(iteration=0, trials=trials, trial=trial)
    recorder.on_experiment_end(trials=trials)
    assert recorder.errors == 0
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(recorder.parent_id)
    assert parent.data.tags["layertune.baseline"] == load_baseline(base).stamp
    assert parent.data.metrics["front_dominated_by_baseline"] == 1  # b: 0.85 < 0.9 at 1
    assert parent.data.metrics["baseline_hypervolume"] == pytest.approx(
        hypervolume(load_baseline(base).rows, OBJ, [0.1, 4.0]))
    names = {a.path for a in client.list_artifacts(recorder.parent_id, "pareto")}
    assert {"pareto/front.png", "pareto/front.html", "pareto/baseline_front.csv"} <= names
    front = client.download_artifacts(recorder.parent_id, "pareto/front.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(Path(front).read_text())))
    assert {r["ray_trial"]: r["dominated_by_baseline"] for r in rows} == {"a": "False",
                                                                          "b": "True"}
    html = client.download_artifacts(recorder.parent_id, "pareto/front.html", str(tmp_path))
    assert "from-scratch baseline" in Path(html).read_text()
