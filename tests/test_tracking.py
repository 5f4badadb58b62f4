"""The MLflow record of a sweep, read back with ``MlflowClient``; front, export and ui commands.

One real sweep runs per module (Ray Tune + Optuna + gate collapse, 5 trials of a small MLP on
sklearn's digits, 2 at a time, into a real sqlite database). Its seed samples a trial with no
sections (stopped as degenerate at epoch 1), one whose learning rate makes the loss NaN
(failed) and three that finish. Everything MLflow says is checked against Ray's own
``result.json`` files and a brute-force Pareto computation. The resume path of the recorder
(a driver killed mid-sweep, Tune's pickled callback restored) runs on Ray's stub trials.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import ray
import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType
from optuna.trial import TrialState
from ray_record import ray_reports

from layertune.cli import main
from layertune.config import ConfigError
from layertune.data import load_data
from layertune.front import knee
from layertune.search import open_storage
from layertune.selection import load_sweep
from layertune.sweep import plan_sweep, run_sweep, summary
from layertune.tracking import SweepRecorder, gate_key, resolve_uri

OBJ = [("val_accuracy", "max"), ("active_layers", "min")]
SAMPLES, EPOCHS = 5, 3
TRIAL = f"""\
data: {{name: digits, batch_size: 128, val_fraction: 0.2}}
model: {{name: mlp, depth: 3, width: 16}}
optimizer: {{lr: 0.05}}
epochs: {EPOCHS}
seed: 0
"""
# Random sampler, seed 16: removed/0.1 (degenerate), learned/0.05, learned/0.1, fixed/0.05,
# removed/1e6 (NaN loss: failed). margin 1 and decide_by = epochs keep the others running.
SPACE = f"""\
parameters:
  method.gates: {{type: categorical, choices: [learned, fixed, removed]}}
  optimizer.lr: {{type: categorical, choices: [0.05, 0.1, 1000000.0]}}
objectives:
  - {{metric: val_accuracy, mode: max}}
  - {{metric: active_layers, mode: min}}
sampler: {{name: random, seed: 16}}
scheduler: {{min_layers: 1, margin: 1.0, decide_by: {EPOCHS}, chance_margin: 0.0}}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracked")
    (folder / "trial.yaml").write_text(TRIAL)
    (folder / "space.yaml").write_text(SPACE)
    # address="local": a Ray of our own even when another one runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plan = plan_sweep(folder / "trial.yaml", folder / "space.yaml", samples=SAMPLES,
                          name="tr", storage=folder / "run", max_concurrent=2,
                          cpus_per_trial=1, max_failures=0)
        result = run_sweep(plan, live=False)
        yield plan, result, MlflowClient(tracking_uri=plan.tracking_uri)
    finally:
        ray.shutdown()


def runs(client: MlflowClient) -> tuple[object, dict[str, object]]:
    """(the sweep run, Ray trial id -> trial run)."""
    exp = client.get_experiment_by_name("tr")
    every = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in every if r.data.tags.get("layertune.kind") == "sweep"]
    assert len(parents) == 1
    children = {r.data.tags["ray_trial_id"]: r for r in every if r is not parents[0]}
    assert len(children) == len(every) - 1  # no trial twice
    return parents[0], children


def brute_front(rows: list[dict]) -> set[str]:
    def worse(a: dict, b: dict) -> bool:  # b dominates a
        return (b["val_accuracy"] >= a["val_accuracy"] and b["active_layers"] <= a["active_layers"]
                and (b["val_accuracy"] > a["val_accuracy"]
                     or b["active_layers"] < a["active_layers"]))

    return {r["trial_id"] for r in rows if not any(worse(r, o) for o in rows)}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --- the record ---------------------------------------------------------------------------------


def test_one_parent_one_child_per_trial_none_running(sweep):
    plan, _, client = sweep
    parent, children = runs(client)
    assert set(children) == set(ray_reports(plan.folder)) and len(children) == SAMPLES
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id
               for r in children.values())
    assert parent.info.status == "FINISHED"
    assert "RUNNING" not in {r.info.status for r in children.values()}
    exp = client.get_experiment_by_name("tr")
    assert exp.artifact_location == (plan.folder / "mlflow-artifacts").as_uri()
    # Optuna trial numbers: the study's own mapping
    import optuna

    from layertune.search import open_storage

    study = optuna.load_study(study_name="tr", storage=open_storage(plan.folder))
    numbers = {t.user_attrs["ray_trial_id"]: str(t.number) for t in study.trials}
    assert {k: r.data.tags["optuna_trial"] for k, r in children.items()} == numbers


def test_every_report_is_one_step_with_every_gate(sweep):
    plan, _, client = sweep
    _, children = runs(client)
    reported = ray_reports(plan.folder)
    for tid, rows in reported.items():
        run_id = children[tid].info.run_id
        history = client.get_metric_history(run_id, "val_accuracy")
        assert [m.step for m in history] == [r["epoch"] for r in rows]
        assert [m.value for m in history] == [r["val_accuracy"] for r in rows]
        gates = sorted(k for k in children[tid].data.metrics if k.startswith("theta/"))
        if not rows:
            assert not gates
            continue
        assert gates == [gate_key(i, len(rows[0]["theta"])) for i in range(len(rows[0]["theta"]))]
        assert gates[0] == "theta/00"
        for i, key in enumerate(gates):
            values = [m.value for m in client.get_metric_history(run_id, key)]
            assert values == [r["theta"][i] for r in rows]
        # one timestamp per report: the report went as one batch
        stamps = {m.step: m.timestamp for m in history}
        for key in ("active_layers", gates[-1]):
            assert {m.step: m.timestamp for m in client.get_metric_history(run_id, key)} == stamps


def test_statuses_and_reasons(sweep):
    plan, _, client = sweep
    _, children = runs(client)
    seen = set()
    for tid, rows in ray_reports(plan.folder).items():
        tags, status = children[tid].data.tags, children[tid].info.status
        error = plan.folder / "tune" / f"trial_{tid}" / "error.txt"
        if error.exists():
            assert (tags["status"], status) == ("failed", "FAILED")
            assert "training loss is nan" in tags["error"]
        elif rows[-1].get("stopped_by"):
            assert (tags["status"], status) == ("stopped", "KILLED")
            assert tags["stopped_by"] == rows[-1]["stopped_by"] == "degenerate"
            assert tags["stop_reason"] == rows[-1]["stop_reason"] != ""
        else:
            assert (tags["status"], status) == ("finished", "FINISHED")
            assert rows[-1]["epoch"] == EPOCHS and "stopped_by" not in tags
        seen.add(tags["status"])
    assert seen == {"finished", "stopped", "failed"}  # the seed samples all three
    # Optuna agrees: the diverged trial FAIL (an error, not a stop), the sweep went on past it
    states = {t.user_attrs["ray_trial_id"]: (t.state, t.user_attrs.get("stopped_by"))
              for t in optuna.load_study(study_name="tr",
                                         storage=open_storage(plan.folder)).trials}
    for tid, child in children.items():
        assert states[tid] == {"failed": (TrialState.FAIL, "error"),
                               "stopped": (TrialState.PRUNED, "degenerate"),
                               "finished": (TrialState.COMPLETE, None)}[child.data.tags["status"]]


def test_trial_artifacts(sweep, tmp_path):
    from matplotlib.image import imread

    _, _, client = sweep
    _, children = runs(client)
    for tid, run in children.items():
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        finished = run.data.tags["status"] == "finished"
        assert {"result.json", "gates.png"} <= names
        assert ("model" in names) == finished
        got = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / tid)))
        record = json.loads((got / "result.json").read_text())
        assert record["status"] == run.data.tags["status"] and record["ray_trial_id"] == tid
        assert len(record["history"]) == len(client.get_metric_history(run.info.run_id,
                                                                         "val_accuracy"))
        image = imread(got / "gates.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[2] in (3, 4)
        if finished:
            files = {p.name for p in (got / "model").iterdir()}
            assert files == {"model.state.pt", "model.json", "trial_config.json"}
            config = json.loads((got / "model" / "trial_config.json").read_text())
            assert config["method"]["gates"] == run.data.params["method.gates"]
            check_logged_model(client, run, got / "model" / "model", tmp_path / f"{tid}-model")
        else:
            assert "compact_model" not in run.data.tags


def check_logged_model(client, run, stem: Path, dest: Path) -> None:
    """The trial's compact network is the run's MLflow model (``mlflow.pytorch``, pt2 inside):
    a READY LoggedModel with the run as its source and output, a tensor signature with a dynamic
    batch, an input example, and the outputs of the network rebuilt from the state dict."""
    import mlflow.pyfunc
    import mlflow.pytorch
    import numpy as np
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from layertune.export import load_compact

    run_id = run.info.run_id
    models = [m for m in client.search_logged_models([run.info.experiment_id])
              if m.source_run_id == run_id]
    assert len(models) == 1
    model = models[0]
    assert model.status.to_proto() == model.status.READY.to_proto()
    assert run.data.tags["compact_model"] == f"models:/{model.model_id}"
    outputs = client.get_run(run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(model.model_id, EPOCHS)]
    local = Path(download_artifacts(artifact_uri=model.artifact_location, dst_path=str(dest)))
    meta = Model.load(str(local))
    assert meta.model_id == model.model_id and meta.run_id == run_id
    assert meta.signature.inputs.inputs[0].shape == (-1, 1, 8, 8)
    assert meta.signature.outputs.inputs[0].shape == (-1, 10)
    assert meta.saved_input_example_info is not None
    assert (local / "data" / "model.pt2").is_file() and "pytorch" in meta.flavors
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = load_compact(stem)(x)
        assert torch.allclose(mlflow.pytorch.load_model(str(local))(x), want, atol=1e-5)
    pyfunc = mlflow.pyfunc.load_model(str(local))  # what `mlflow models predict/serve` load
    assert np.allclose(pyfunc.predict(x.numpy()), want.numpy(), atol=1e-5)


def test_parent_run_has_config_versions_and_the_front(sweep, tmp_path):
    from matplotlib.image import imread

    from layertune.front import hypervolume

    plan, _, client = sweep
    parent, children = runs(client)
    params, tags = parent.data.params, parent.data.tags
    for pkg in ("layertune", "torch", "ray", "optuna", "mlflow"):
        assert params[f"version.{pkg}"] not in ("", "unknown")
    assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run from a git checkout
    assert params["objectives"] == "val_accuracy:max,active_layers:min"
    assert params["command"] and params["samples"] == str(SAMPLES)
    ref = [float(params["hv_reference.val_accuracy"]), float(params["hv_reference.active_layers"])]
    assert ref == [0.1, 4.0]  # chance on 10 classes; 3 sections + 1
    root = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path)))
    assert (root / "config" / "trial.yaml").read_text() == TRIAL
    assert (root / "config" / "space.yaml").read_text() == SPACE
    # hypervolume after each trial ended, the last one that of the final front
    hv = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert sorted(m.step for m in hv) == list(range(1, SAMPLES + 1))
    last = ray_reports(plan.folder)
    finished = [{**rows[-1]} for tid, rows in last.items()
                if children[tid].data.tags["status"] == "finished"]
    front = [r for r in finished if r["trial_id"] in brute_front(finished)]
    assert max(hv, key=lambda m: m.step).value == pytest.approx(hypervolume(front, OBJ, ref))
    with open(root / "pareto" / "front.csv") as f:
        assert {r["ray_trial"] for r in csv.DictReader(f)} == brute_front(finished)
    # an MLflow table (log_table's split JSON; client.load_table would ask the default URI)
    table = json.loads((root / "pareto" / "trials_table.json").read_text())
    assert json.loads(parent.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "pareto/trials_table.json", "type": "table"}]
    col = {c: i for i, c in enumerate(table["columns"])}
    groups = {r[col["ray_trial"]]: r[col["group"]] for r in table["data"]}
    assert len(groups) == SAMPLES
    for tid, group in groups.items():
        status = children[tid].data.tags["status"]
        assert group == ("front" if tid in brute_front(finished) else
                         "finished" if status == "finished" else status)
    assert imread(root / "pareto" / "front.png").shape[0] > 100
    html = (root / "pareto" / "front.html").read_text()
    assert len(html) < 100_000 and "cdn.plot.ly" in html and "stopped early" in html


def test_front_is_the_brute_force_front_of_finished_trials(sweep):
    plan, result, _ = sweep
    last = {tid: rows[-1] for tid, rows in ray_reports(plan.folder).items() if rows}
    errors = {tid for tid in last if (plan.folder / "tune" / f"trial_{tid}" / "error.txt")
              .exists()}
    finished = [r for tid, r in last.items() if not r.get("stopped_by") and tid not in errors]
    expected = brute_front(finished)
    record = load_sweep("tr", plan.tracking_uri)
    assert {r["ray_trial"] for r in record.front} == expected
    assert {r["ray_trial"] for r in result.front} == expected  # Optuna's view agrees
    for row in record.front:
        assert row["val_accuracy"] == last[row["ray_trial"]]["val_accuracy"]
        assert row["active_layers"] == last[row["ray_trial"]]["active_layers"]
    assert "layertune front tr" in summary(result)


# --- commands ---------------------------------------------------------------------------------


def test_front_command_formats(sweep, capsys):
    plan, _, _ = sweep
    expected = {r["ray_trial"] for r in load_sweep("tr", plan.tracking_uri).front}
    base = ["front", "tr", "--storage", str(plan.folder)]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep tr: Pareto front (val_accuracy max, active_layers min) of 3 "
                          "finished trials (1 stopped early, 1 failed)")
    assert all(t in out for t in expected)
    assert main([*base, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["ray_trial"] for r in rows} == expected
    assert list(rows[0])[:4] == ["trial", "ray_trial", "method.gates", "optimizer.lr"]
    assert main([*base, "--format", "json", "--tracking-uri", plan.tracking_uri]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["ray_trial"] for r in data["front"]} == expected
    assert data["trials"] == {"front": len(expected), "finished": 3 - len(expected),
                              "stopped": 1, "failed": 1}


@pytest.mark.parametrize(("argv", "words"), [
    (["front", "nope", "--storage", "{run}"], ["sweep nope", "sweeps there: tr"]),
    (["front", "tr"], ["sweep tr", "layertune-runs/tr/mlflow.db"]),
    (["front", "tr", "--storage", "{run}", "--format", "xml"], ["--format", "table"]),
    (["front", "tr", "--tracking-uri", "ftp://x"], ["--tracking-uri ftp://x", "allowed"]),
    (["front", "tr", "--tracking-uri", "sqlite:///{run}/none.db"], ["no MLflow database"]),
    (["export", "tr", "--storage", "{run}", "--trial", "99", "-o", "m.pt2"], ["--trial 99"]),
    (["export", "tr", "--storage", "{run}", "--trial", "0", "-o", "m.pt2"],
     ["--trial 0", "stopped (degenerate)"]),
    (["export", "tr", "--storage", "{run}", "--min-accuracy", "1.5", "-o", "m.pt2"],
     ["--min-accuracy 1.5", "[0, 1]"]),
    (["export", "tr", "--storage", "{run}", "--min-accuracy", "0.999", "-o", "m.pt2"],
     ["no trial on the front reaches it"]),
    (["export", "tr", "--storage", "{run}", "-o", "m.pt2"], ["--trial --knee --min-accuracy"]),
    (["export", "tr", "--storage", "{run}", "--knee", "-o", "m.pt2", "--device", "tpu"],
     ["--device tpu"]),
    (["export", "tr", "--storage", "{run}", "--knee", "-o", "m.pt2", "--format", "tflite"],
     ["--format tflite", "export, onnx, torchscript"]),
    (["export", "tr", "--storage", "{run}", "--knee", "-o", "m.pt"],
     ["-o m.pt", "writes a .pt2 file", "m.pt2", "--format torchscript"]),
    (["export", "tr", "--storage", "{run}", "--knee", "-o", "m.pt2", "--format", "onnx"],
     ["-o m.pt2", "m.onnx"]),
    (["ui", "--port", "0", "--storage", "{run}"], ["--port 0"]),
    (["ui", "nope", "--storage", "{root}"], ["sweep nope", "sweeps in"]),
])
def test_bad_input_is_one_line_and_exit_2(sweep, capsys, monkeypatch, tmp_path, argv, words):
    plan, _, _ = sweep
    monkeypatch.chdir(tmp_path)
    argv = [a.format(run=plan.folder, root=plan.folder.parent) for a in argv]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    err = one_error_line(capsys)
    for w in words:
        assert w in err, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("m.")]
    assert not (tmp_path / "layertune-runs").exists()  # reading never creates a database


def test_export_knee_matches_the_record(sweep, capsys, tmp_path):
    plan, _, _ = sweep
    record = load_sweep("tr", plan.tracking_uri)
    row = record.front[knee(record.front, OBJ)]
    out = tmp_path / "knee.pt2"
    assert main(["export", "tr", "--storage", str(plan.folder), "--knee", "-o", str(out)]) == 0
    assert f"trial {row['trial']} (Ray {row['ray_trial']}" in capsys.readouterr().out
    net = torch.export.load(str(out)).module()  # what was written (the default), checked again
    config = plan.trial.with_overrides({k: row[k] for k in record.parameters}, source="test")
    data = load_data(config.data, config.seed, torch.device("cpu"))  # no .eval() on a program
    with torch.no_grad():
        correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in data.val)
    accuracy = correct / sum(len(y) for _, y in data.val)
    assert abs(accuracy - row["val_accuracy"]) * 100 <= 0.1


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_the_format_asked_for(sweep, capsys, tmp_path, fmt):
    from layertune.formats import FORMATS, load_network

    plan, _, _ = sweep
    out = tmp_path / f"knee{FORMATS[fmt]}"
    assert main(["export", "tr", "--storage", str(plan.folder), "--knee", "-o", str(out),
                 "--format", fmt]) == 0
    assert f"wrote {out} ({fmt})" in capsys.readouterr().out
    x = torch.randn(9, 1, 8, 8)
    reference = torch.export.load(str(_export_default(plan, tmp_path))).module()
    with torch.no_grad():
        assert torch.allclose(load_network(out)(x), reference(x), atol=1e-5)


def _export_default(plan, tmp_path: Path) -> Path:
    out = tmp_path / "default.pt2"
    assert main(["export", "tr", "--storage", str(plan.folder), "--knee", "-o", str(out)]) == 0
    return out


def test_export_fails_when_the_record_disagrees(sweep, capsys, tmp_path):
    plan, _, _ = sweep
    db = tmp_path / "copy.db"
    shutil.copy(plan.folder / "mlflow.db", db)  # artifacts stay where they are (absolute)
    uri = f"sqlite:///{db}"
    row = next(r for r in load_sweep("tr", uri).front)
    MlflowClient(tracking_uri=uri).log_metric(row["run_id"], "val_accuracy",
                                              row["val_accuracy"] - 0.05, step=1000)
    out = tmp_path / "bad.pt2"
    argv = ["export", "tr", "--tracking-uri", uri, "--trial", str(row["trial"]), "-o", str(out)]
    assert main(argv) == 1
    err = one_error_line(capsys)
    assert "differs from the recorded" in err and "not written" in err
    assert not out.exists()


def test_ui_serves_the_sweep_on_localhost(sweep, capsys, tmp_path):
    plan, _, _ = sweep
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["ui", "--storage", str(plan.folder.parent), "--port", str(port),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"sweep run: http://127.0.0.1:{port}" in out and "--host 127.0.0.1" in out
    log = tmp_path / "ui.log"
    proc = subprocess.Popen([sys.executable, "-m", "layertune.cli", "ui", "tr", "--storage",
                             str(plan.folder), "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?"
                                            "experiment_name=tr", timeout=2) as r:
                    answer = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI did not answer in 120 s")
        assert answer["experiment"]["name"] == "tr"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    with socket.socket() as s:  # the server went with it
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_tracking_uri_rules(tmp_path):
    assert resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert resolve_uri("none", tmp_path) is None
    assert resolve_uri("http://h:5000/", tmp_path) == "http://h:5000"
    assert resolve_uri("x.db", tmp_path) == f"sqlite:///{Path('x.db').resolve()}"
    assert resolve_uri("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"
    for bad in ("./mlruns", "file:///tmp/mlruns", "sqlite://", "http://"):
        with pytest.raises(ConfigError, match="--tracking-uri"):
            resolve_uri(bad, tmp_path)


def test_knee_is_nearest_the_utopia_point():
    rows = [{"val_accuracy": 0.99, "active_layers": 8}, {"val_accuracy": 0.97, "active_layers": 3},
            {"val_accuracy": 0.90, "active_layers": 1}, {"val_accuracy": 0.5, "active_layers": 0}]
    # scaled: (1, 0), (.959, .625), (.816, .875), (0, 1): distances 1, .376, .221, 1
    assert knee(rows, OBJ) == 2
    assert knee(rows[:1], OBJ) == 0
    assert knee([rows[0], rows[0]], OBJ) == 0  # ties: the first


# --- resuming: the recorder keeps no state of its own ----------------------------------------


def stub(tid: str, config: dict) -> object:
    from ray.tune.experiment import Trial

    return Trial("__fake", trial_id=tid, config=config, stub=True)


def report(epoch: int, acc: float) -> dict:
    return {"epoch": epoch, "val_accuracy": acc, "active_layers": 2, "total_layers": 3,
            "val_loss": 1.0, "theta": [1.0, 0.5 / epoch, 0.0], "training_iteration": epoch}


def started(tmp_path: Path, name: str, *trials) -> tuple[str, SweepRecorder]:
    """A recorder of sweep ``name`` in sqlite, with ``trials`` started."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recorder = SweepRecorder(uri, name, tmp_path, objectives=OBJ, chance=0.1,
                             parameters=["optimizer.lr"])
    recorder.prepare()
    recorder.start()
    for t in trials:
        recorder.on_trial_start(iteration=0, trials=list(trials), trial=t)
    return uri, recorder


def test_a_resumed_record_reopens_its_runs_and_duplicates_nothing(tmp_path):
    a, b = stub("a", {"optimizer.lr": 0.1}), stub("b", {"optimizer.lr": 0.2})
    uri, first = started(tmp_path, "r", a, b)
    for epoch in (1, 2):
        first.on_trial_result(iteration=0, trials=[a, b], trial=a, result=report(epoch, 0.5))
    first.on_trial_result(iteration=0, trials=[a, b], trial=b, result=report(1, 0.4))
    # the driver is killed here: runs stay RUNNING; Tune restores its pickled callback
    second = pickle.loads(pickle.dumps(first))
    assert second.parent_id is None and second.errors == 0
    second.setup()
    assert second.parent_id == first.parent_id  # the same sweep run, reopened
    for epoch in (2, 3):  # epoch 2 again: the trial went on from its epoch-1 checkpoint
        second.on_trial_result(iteration=0, trials=[a], trial=a, result=report(epoch, 0.6))
    a.run_metadata.last_result = report(3, 0.6)
    second.on_trial_complete(iteration=0, trials=[a], trial=a)
    second.on_experiment_end(trials=[a, b])  # b did not run again: closed as unfinished
    assert second.errors == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("r")
    every = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(every) == ["a", "b", "r"]
    steps = [(m.step, m.value) for m in client.get_metric_history(every["a"].info.run_id,
                                                                   "val_accuracy")]
    assert steps == [(1, 0.5), (2, 0.5), (3, 0.6)]
    got = Path(client.download_artifacts(every["a"].info.run_id, "result.json", str(tmp_path)))
    assert [h["epoch"] for h in json.loads(got.read_text())["history"]] == [1, 2, 3]
    assert every["a"].info.status == "FINISHED"
    assert every["b"].data.tags["status"] == "failed"
    assert every["b"].data.tags["stopped_by"] == "unfinished"
    assert every["r"].info.status == "KILLED" and every["r"].data.tags["layertune.resumes"] == "1"
    # resumed again, b goes on: its run is reopened, finished, and the sweep run ends FINISHED
    third = pickle.loads(pickle.dumps(first))
    third.setup()
    third.on_trial_result(iteration=0, trials=[b], trial=b, result=report(2, 0.45))
    b.run_metadata.last_result = report(2, 0.45)
    third.on_trial_complete(iteration=0, trials=[b], trial=b)
    third.close()
    assert third.errors == 0
    every = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(every) == ["a", "b", "r"]
    assert {r.info.status for r in every.values()} == {"FINISHED"}
    assert every["b"].data.tags["status"] == "finished"
    assert "stopped_by" not in every["b"].data.tags
    assert [m.step for m in client.get_metric_history(every["b"].info.run_id,
                                                      "val_accuracy")] == [1, 2]
    table = client.download_artifacts(every["r"].info.run_id, "pareto/trials_table.json",
                                      str(tmp_path))
    assert len(json.loads(Path(table).read_text())["data"]) == 2  # replaced, not appended
    hv = client.get_metric_history(every["r"].info.run_id, "hypervolume")
    assert max(hv, key=lambda m: (m.step, m.timestamp)).value == pytest.approx(
        (0.6 - 0.1) * (4 - 2))  # a dominates b: one box, reference (0.1, 3 + 1)
    assert math.isfinite(hv[0].value)


def test_a_trial_the_resumed_sweep_does_not_know_is_deleted_as_lost(tmp_path):
    a, lost = stub("a", {"optimizer.lr": 0.1}), stub("lost", {"optimizer.lr": 0.2})
    uri, first = started(tmp_path, "g", a, lost)
    first.on_trial_result(iteration=0, trials=[a, lost], trial=lost, result=report(1, 0.4))
    # killed before Tune saved a state that names "lost": the resumed Tune knows only "a"
    second = pickle.loads(pickle.dumps(first))
    second.setup()
    second.on_trial_result(iteration=0, trials=[a], trial=a, result=report(1, 0.5))
    a.run_metadata.last_result = report(1, 0.5)
    second.on_trial_complete(iteration=0, trials=[a], trial=a)
    second.on_experiment_end(trials=[a])
    assert second.errors == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("g")
    active = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(active) == ["a", "g"]
    assert active["g"].info.status == "FINISHED"  # nothing left unfinished
    deleted = client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [(r.info.run_name, r.data.tags["status"]) for r in deleted] == [("lost", "lost")]


def test_tracking_off_records_nothing(sweep, tmp_path):
    plan, _, _ = sweep
    off = plan_sweep(plan.trial_path, plan.space_path, samples=1, name="off",
                     storage=tmp_path / "off", tracking_uri="none", cpus_per_trial=1,
                     overrides={"epochs": 1})
    assert off.tracking_uri is None
    result = run_sweep(off, live=False, keep_ray=True)
    assert len(result.trials) == 1
    assert not (tmp_path / "off" / "mlflow.db").exists()
    assert "MLflow        off" in summary(result)
