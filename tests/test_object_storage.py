"""Sweeps on object storage: a real S3 API (moto's server) on 127.0.0.1, a real Ray cluster.

Ray's files (checkpoints, experiment state) live only in the bucket; the driver's own files
(Optuna, MLflow, front) in its working folder and, copied, in the bucket. Credentials come from
the standard environment variables the fixture sets, as a user's would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import optuna
import pyarrow.fs as pafs
import pytest
from optuna.trial import TrialState
from ray_record import ray_reports
from sweep_files import digits_trial, prior_weight_space
from sweep_process import finish, kill_group, start, wait_for

from layertune.config import ConfigError
from layertune.search import open_storage
from layertune.sweep import plan_sweep, run_sweep
from layertune.sweep.storage import DRIVER_FILES, SweepStorage

SPACE = prior_weight_space()
SECRET = "s3cret-never-written"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """An S3 server on 127.0.0.1 with a bucket ``sweeps``; the standard AWS variables point
    at it (inherited by Ray's nodes and by drivers started as processes)."""
    server, endpoint = _moto_server()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket="sweeps")
        yield "s3://sweeps"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _moto_server(tries: int = 3) -> tuple[subprocess.Popen, str]:
    """moto's S3 server on a free port of 127.0.0.1, and its endpoint; another port if the
    one picked was taken before the server bound it."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                   "-p", str(port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return server, f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.2)
        server.kill()
        server.wait()
    pytest.fail("moto's S3 server did not start")


def files_in(storage: SweepStorage, *parts: str) -> list[str]:
    """Paths under ``parts``, relative to the storage root."""
    infos = storage.fs.get_file_info(pafs.FileSelector(storage.path(*parts), recursive=True,
                                                       allow_not_found=True))
    return sorted(f.path[len(storage.root) + 1:] for f in infos if f.type == pafs.FileType.File)


def assert_one_checkpoint_per_trial(storage: SweepStorage, trials: set[str]) -> None:
    kept = {t: {p.split("/")[2] for p in files_in(storage, "tune", f"trial_{t}")
                if p.split("/")[2].startswith("checkpoint_")} for t in trials}
    assert all(len(k) == 1 for k in kept.values()), kept  # the pruner works in the bucket


def test_bad_object_storage_is_one_line_before_ray_starts(s3, tmp_path):
    trial, space = tmp_path / "trial.yaml", tmp_path / "space.yaml"
    trial.write_text(digits_trial(2))
    space.write_text(SPACE)
    done = subprocess.run([sys.executable, "-m", "layertune.cli", "sweep", str(trial), "--space",
                           str(space), "--name", "b", "--storage", "s3://no-such-bucket/x"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --storage s3://no-such-bucket/x: no bucket 'no-such-bucket' there (create it "
        "first; use s3://BUCKET/PREFIX or gs://BUCKET/PREFIX)"]
    with pytest.raises(ConfigError, match="allowed: a folder, s3://BUCKET/PREFIX"):
        plan_sweep(trial, space, name="b", storage="hdfs://host/x")
    with pytest.raises(ConfigError, match="--work-dir .*: only with --storage s3://"):
        plan_sweep(trial, space, name="b", storage=tmp_path / "local", work_dir=tmp_path / "w")
    assert not (tmp_path / "local").exists() and not (tmp_path / "w").exists()


def test_a_resume_must_use_the_working_folder_the_sweep_started_with(s3, tmp_path):
    (tmp_path / "trial.yaml").write_text(digits_trial(2))
    (tmp_path / "space.yaml").write_text(SPACE)
    inputs = (tmp_path / "trial.yaml", tmp_path / "space.yaml")
    started = plan_sweep(*inputs, name="r", storage=f"{s3}/r", work_dir=tmp_path / "a")
    with started.storage.fs.open_output_stream(started.storage.path("sweep.json")) as f:
        f.write(json.dumps(started.record()).encode())
    with started.storage.fs.open_output_stream(started.storage.path("tune", "tuner.pkl")) as f:
        f.write(b"a sweep was started here")
    with pytest.raises(ConfigError, match="a sweep already exists in s3://sweeps/r"):
        plan_sweep(*inputs, name="r", storage=f"{s3}/r", work_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=f"--work-dir {tmp_path / 'b'} differs"):
        plan_sweep(*inputs, name="r", storage=f"{s3}/r", work_dir=tmp_path / "b", resume=True)
    assert plan_sweep(*inputs, name="r", storage=f"{s3}/r", work_dir=tmp_path / "a",
                      resume=True).folder == tmp_path / "a"


EPOCHS, SAMPLES = 40, 2



def test_a_sweep_in_a_bucket_moves_a_trial_off_a_lost_node(s3, cluster, tmp_path, capsys):
    c, worker = cluster  # started after the fixture s3: the nodes see its variables
    (tmp_path / "trial.yaml").write_text(digits_trial(EPOCHS))
    (tmp_path / "space.yaml").write_text(SPACE)
    work = tmp_path / "driver"
    plan = plan_sweep(tmp_path / "trial.yaml", tmp_path / "space.yaml", samples=SAMPLES,
                      name="s", storage=f"{s3}/team/s", work_dir=work, address=c.address,
                      max_concurrent=2, scheduler="fifo")
    storage = plan.storage
    lost = {}

    def remove_the_worker_node_mid_trial() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for trial_id, rows in ray_reports(storage).items():
                if rows and rows[-1]["node_id"] == worker.node_id and \
                        2 <= rows[-1]["epoch"] < EPOCHS - 10:
                    lost.update(trial=trial_id, epoch=rows[-1]["epoch"])
                    c.remove_node(worker, allow_graceful=False)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=remove_the_worker_node_mid_trial, daemon=True)
    killer.start()
    result = run_sweep(plan, live=False)
    killer.join(timeout=1)

    assert "shared storage" not in capsys.readouterr().err  # no shared folder is needed
    assert lost, "no trial ran on the worker node"
    rows = ray_reports(storage)
    assert len(rows) == SAMPLES and not result.interrupted
    assert all(r[-1]["epoch"] == EPOCHS for r in rows.values())
    moved = rows[lost["trial"]]
    assert moved[-1]["node_id"] != worker.node_id  # finished on the node that was left
    # from its checkpoint in the bucket: the surviving node's first epoch is past the first.
    # (Not the count of epoch-1 rows in Ray's result.json: once in many runs Ray read that
    # file back while the lost node's upload of it was still empty, and began a new one.)
    after_move = [r["epoch"] for r in moved if r["node_id"] != worker.node_id]
    assert after_move and after_move[0] > 1
    assert_one_checkpoint_per_trial(storage, set(rows))
    # Ray's files are only in the bucket; the driver's are in its folder and in the bucket
    assert not (work / "tune").exists()
    assert {"sweep.json", "optuna.db", "mlflow.db", "front.json", "front.csv"} <= {
        p.name for p in work.iterdir()}
    assert set(DRIVER_FILES) <= set(files_in(storage))
    assert any(p.endswith("MLmodel") for p in files_in(storage, "mlflow-artifacts"))
    study = optuna.load_study(study_name="s", storage=open_storage(work))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * SAMPLES
    assert result.ray_results == f"{s3}/team/s/tune"


def test_a_killed_driver_resumes_from_the_bucket_alone(s3, tmp_path):
    epochs, samples = 30, 3
    (tmp_path / "trial.yaml").write_text(digits_trial(epochs))
    (tmp_path / "space.yaml").write_text(SPACE)
    work = tmp_path / "driver"
    args = [sys.executable, "-m", "layertune.cli", "sweep", str(tmp_path / "trial.yaml"),
            "--space", str(tmp_path / "space.yaml"), "--samples", str(samples), "--name", "k",
            "--storage", f"{s3}/k", "--work-dir", str(work), "--max-concurrent", "2",
            "--scheduler", "fifo"]
    storage = SweepStorage.at(f"{s3}/k")
    log = tmp_path / "first.log"
    proc = start(args, log)

    def one_done_one_midway() -> bool:
        rows = ray_reports(storage) if storage.exists("tune") else {}
        done = [r for r in rows.values() if r and r[-1]["epoch"] == epochs]
        midway = [r for r in rows.values() if r and 2 <= r[-1]["epoch"] < epochs - 5]
        return bool(done) and bool(midway)

    wait_for(one_done_one_midway, proc, log)
    before = ray_reports(storage)
    os.kill(proc.pid, signal.SIGKILL)
    kill_group(proc)
    shutil.rmtree(work)  # a fresh driver machine: nothing but the bucket

    again = tmp_path / "resume.log"
    rc = finish(start([*args, "--resume"], again), again)
    text = again.read_text()
    assert rc == 0, text[-3000:]
    assert f"from {s3}/k into {work}" in text  # the driver's files came from the bucket
    after = ray_reports(storage)
    study = optuna.load_study(study_name="k", storage=open_storage(work))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * samples
    finished = {t.user_attrs["ray_trial_id"] for t in study.trials}
    assert all(after[t][-1]["epoch"] == epochs for t in finished)
    # a trial started after the last state the bucket holds ran again under a new id; its
    # folder stays, and only the trials Optuna completed have MLflow runs
    assert len(set(after) - finished) <= 2  # at most the two that were running
    for trial_id, rows in before.items():
        seen = [r["epoch"] for r in after[trial_id]]
        if trial_id in finished and rows:  # went on from its checkpoint, never from epoch 1
            assert seen.count(1) == 1 and seen[-1] == epochs
        if trial_id in finished and rows and rows[-1]["epoch"] == epochs:
            # finished before the kill: the state in the bucket lags its results by an upload,
            # so at most the last epoch runs again (from the last checkpoint)
            assert len(seen) <= len(rows) + 1
    with sqlite3.connect(work / "mlflow.db") as db:
        ray_ids = [v for (v,) in db.execute(
            "select value from tags where key = 'ray_trial_id' and run_uuid in "
            "(select run_uuid from runs where lifecycle_stage = 'active')").fetchall()]
    assert sorted(ray_ids) == sorted(finished)  # one MLflow run per trial, none twice
    assert json.loads(storage.read_text("front.json"))["front"]
    assert_one_checkpoint_per_trial(storage, finished)
    written = [storage.fs.open_input_stream(storage.path(p)).read() for p in files_in(storage)]
    written += [p.read_bytes() for p in work.rglob("*") if p.is_file()]
    assert not [w for w in written if SECRET.encode() in w]  # no credential stored anywhere
