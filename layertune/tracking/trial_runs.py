"""One child run per trial: opened when the trial starts, a batch per report, closed at its end.

A trial run (tags ``mlflow.parentRunId``, ``ray_trial_id``, ``optuna_trial``) holds the
searched values as params and each report at step = epoch. Its ``status`` tag ends as
``finished``, ``stopped`` (with ``stopped_by``, ``stop_reason``) or ``failed`` (with
``error``), and it gets ``result.json``, ``gates.png`` and, when finished, the compact network:
its weights, architecture and trial config under ``model/`` and the network itself as an MLflow
model (tag ``compact_model``: its ``models:/`` URI). A run closed before its trial ended (the
sweep stopped first) is reopened should the trial run again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..contract import (
    ENDED,
    ERROR,
    FAILED,
    FINISHED,
    LOST,
    NOT_STARTED,
    REPORT_NUMBERS,
    RUNNING,
    STATUS,
    STOP_REASON,
    STOPPED,
    STOPPED_BY,
    THETA,
    UNFINISHED,
)
from ..export import MLFLOW_MODEL
from .artifacts import MODEL_DIR, copy_model, log_model, plot_gates
from .rows import (
    ERROR_TAG,
    KIND,
    METRICS_PER_BATCH,
    OPTUNA_TRIAL,
    PARENT,
    RAY_TRIAL,
    SWEEP,
    TAG_MAX,
    flat_config,
    log_params,
    report_metrics,
    reports_from_history,
    trial_row,
)
from .sweep_run import SweepRun

_RUN_STATUS = {FINISHED: "FINISHED", STOPPED: "KILLED", FAILED: "FAILED"}  # MLflow's words


class TrialRuns:
    """The trial runs of one sweep run, by Ray trial id.

    ``run(trial)`` is the one way to a trial's run: made on first sight, reopened when it had
    been closed. ``rows`` holds the ended trials as ``trial_row`` rows; ``open`` the trials
    whose run is (or should be) RUNNING.

    Args:
        sweep: the parent run (its client, experiment and id are read when needed).
        number: the Optuna trial number of a Ray trial id, None if not known (yet).
    """

    def __init__(self, sweep: SweepRun, number: Callable[[str], int | None]) -> None:
        self.sweep = sweep
        self.number = number
        self.runs: dict[str, str] = {}  # Ray trial id -> run id
        self.open: set[str] = set()
        self.rows: dict[str, dict] = {}
        self.last_epoch: dict[str, int] = {}  # the last step logged per trial
        self.history: dict[str, list[dict]] = {}  # reports per trial (gate plot, result.json)
        self.from_store: set[str] = set()  # trials whose history is in MLflow, not in history

    def load(self, runs: list) -> None:
        """The trial runs of a resumed sweep: ended ones become rows, the rest stay open."""
        for run in runs:
            tid = run.data.tags.get(RAY_TRIAL)
            if not tid:
                continue
            self.runs[tid] = run.info.run_id
            self.last_epoch[tid] = int(run.data.metrics.get("epoch", 0))
            self.from_store.add(tid)
            if run.data.tags.get(STATUS) in ENDED:
                self.rows[tid] = trial_row(run)
            else:
                self.open.add(tid)

    def run(self, trial: Any) -> str:
        """The trial's run id: made on first sight, reopened if it had been closed."""
        tid = trial.trial_id
        run_id = self.runs.get(tid)
        if run_id is None:
            run_id = self._create(trial)
        elif tid not in self.open:  # ended (or closed as unfinished) and running again
            self._reopen(tid, run_id)
        return run_id

    def _create(self, trial: Any) -> str:
        tid, sweep = trial.trial_id, self.sweep
        number = self.number(tid)
        tags = {PARENT: sweep.parent_id, KIND: sweep.settings.trial_kind,
                SWEEP: sweep.settings.name, RAY_TRIAL: tid, STATUS: RUNNING}
        if number is not None:
            tags[OPTUNA_TRIAL] = str(number)
        run_id = sweep.client.create_run(sweep.experiment_id, run_name=tid,
                                         tags=tags).info.run_id
        log_params(sweep.client, run_id, flat_config(dict(trial.config or {})))
        self.runs[tid] = run_id
        self.last_epoch[tid] = 0
        self.history[tid] = []
        self.open.add(tid)
        return run_id

    def _reopen(self, tid: str, run_id: str) -> None:
        from mlflow.entities import RunTag

        c = self.sweep.client
        c.update_run(run_id, status="RUNNING")
        c.log_batch(run_id, tags=[RunTag(STATUS, RUNNING)])
        for key in (STOPPED_BY, STOP_REASON, ERROR_TAG):
            try:
                c.delete_tag(run_id, key)
            except Exception:  # the tag was not there
                pass
        self.rows.pop(tid, None)
        self.from_store.add(tid)
        self.open.add(tid)

    def new_step(self, trial: Any, result: dict) -> int | None:
        """The step of a report to log (the trial's run opened), or None: the report has no
        epoch, or its epoch was logged before a restore (the trial went on from an earlier
        checkpoint)."""
        epoch = result.get("epoch")
        if not isinstance(epoch, int | float):
            return None
        self.run(trial)
        step = int(epoch)
        return step if step > self.last_epoch.get(trial.trial_id, 0) else None

    def log_report(self, trial: Any, step: int, result: dict) -> None:
        """One report as one ``log_batch`` (one timestamp) at ``step``."""
        tid = trial.trial_id
        metrics = report_metrics(result, step, int(time.time() * 1000))
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.sweep.client.log_batch(self.runs[tid], metrics=metrics[i:i + METRICS_PER_BATCH])
        self.last_epoch[tid] = step
        kept = {k: result[k] for k in REPORT_NUMBERS if isinstance(result.get(k), int | float)}
        self.history.setdefault(tid, []).append({**kept, THETA: list(result.get(THETA) or [])})

    def close(self, trial: Any, error: bool) -> None:
        """Final status and tags, artifacts, the run terminated; the trial becomes a row."""
        from mlflow.entities import RunTag

        tid, c = trial.trial_id, self.sweep.client
        run_id = self.run(trial)
        last = dict(trial.last_result or {})
        text = _error_text(trial) if error else None
        status, tags = _final_tags(last, text)
        number = self.number(tid)
        if number is not None:
            tags[OPTUNA_TRIAL] = str(number)
        history = self._history(tid)
        with tempfile.TemporaryDirectory(prefix="layertune-mlflow-") as tmp:
            folder = Path(tmp)
            if status == FINISHED:
                tags["compact_model"] = self._log_model(trial, run_id, folder / MODEL_DIR, last)
            if text is not None:
                (folder / "error.txt").write_text(text)
            (folder / "result.json").write_text(json.dumps({
                "ray_trial_id": tid, "optuna_trial": number, STATUS: status,
                **{k: tags[k] for k in (STOPPED_BY, STOP_REASON, ERROR_TAG) if k in tags},
                "config": dict(trial.config or {}),
                "final": {k: v for k, v in last.items() if k in REPORT_NUMBERS or k == THETA},
                "history": history,
            }, indent=1, default=str))
            plot_gates(history, str(folder / "gates.png"),
                       f"trial {number if number is not None else tid}: {status}"
                       + (f" ({tags[STOPPED_BY]})" if STOPPED_BY in tags else ""))
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            c.log_artifacts(run_id, tmp)
        c.set_terminated(run_id, _RUN_STATUS[status])
        self.open.discard(tid)
        self.rows[tid] = trial_row(c.get_run(run_id))

    def _log_model(self, trial: Any, run_id: str, dest: Path, last: dict) -> str:
        """The export bundle copied into ``dest`` (logged with the run's other files) and the
        network logged as the run's MLflow model; its URI, or ``missing``."""
        if not copy_model(trial.checkpoint or _train_checkpoint(trial), dest):
            return "missing"
        step = int(last.get("epoch") or 0)
        uri = log_model(self.sweep.client, self.sweep.experiment_id, run_id, dest / MLFLOW_MODEL,
                        step)
        shutil.rmtree(dest / MLFLOW_MODEL)  # logged as the model, not again as run files
        return uri

    def _history(self, tid: str) -> list[dict]:
        """The trial's reports: from memory, or from MLflow after a restore."""
        if tid not in self.from_store:
            return self.history.get(tid, [])
        c, run_id = self.sweep.client, self.runs[tid]
        by_step: dict[int, dict] = {}
        for key in c.get_run(run_id).data.metrics:
            for m in c.get_metric_history(run_id, key):
                by_step.setdefault(m.step, {})[key] = m.value
        return reports_from_history(by_step)

    def close_unfinished(self, tid: str) -> None:
        """A trial the sweep ended before: ``failed`` with ``stopped_by=unfinished``, a row."""
        from mlflow.entities import RunTag

        c, run_id = self.sweep.client, self.runs[tid]
        c.log_batch(run_id, tags=[
            RunTag(STATUS, FAILED), RunTag(STOPPED_BY, UNFINISHED),
            RunTag(ERROR_TAG, "the sweep ended (interrupted, or its driver was killed) before "
                              "this trial did; resuming the sweep reopens this run")])
        c.set_terminated(run_id, "KILLED")
        self.open.discard(tid)
        self.rows[tid] = trial_row(c.get_run(run_id))

    def delete_lost(self, tid: str) -> None:
        """A trial a resumed Tune does not know: its run tagged ``lost`` and deleted."""
        from mlflow.entities import RunTag

        c, run_id = self.sweep.client, self.runs.pop(tid)
        c.log_batch(run_id, tags=[
            RunTag(STATUS, LOST),
            RunTag(ERROR_TAG, "started after the last experiment state the sweep resumed from; "
                              "its Optuna trial was run again as another trial")])
        c.set_terminated(run_id, "KILLED")
        c.delete_run(run_id)
        self.open.discard(tid)

    def kill(self, tid: str) -> None:
        """The trial's run KILLED, nothing else (the last resort of ``SweepRecorder.close``)."""
        self.sweep.client.set_terminated(self.runs[tid], "KILLED")


def _final_tags(last: dict, error: str | None) -> tuple[str, dict[str, str]]:
    """The status a trial ended with and its tags, from its last report and its error text."""
    tags = {}
    if error is not None:
        status = FAILED
        tags[ERROR_TAG] = error[-TAG_MAX:]
        tags[STOPPED_BY] = ERROR  # as in Optuna's user attributes and the live table
    elif last.get(STOPPED_BY) or not last:
        status = STOPPED
        tags[STOPPED_BY] = str(last.get(STOPPED_BY) or NOT_STARTED)
        tags[STOP_REASON] = str(last.get(STOP_REASON, ""))[:TAG_MAX]
    else:
        status = FINISHED
    tags[STATUS] = status
    return status, tags


def _error_text(trial: Any) -> str:
    """The traceback Ray kept of a failed trial (its ``error_file``)."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    return text.strip() or "the trial failed (Ray wrote no error file)"


def _train_checkpoint(trial: Any) -> Any:
    """The last checkpoint of a trial on Ray Train workers: Tune holds none, Ray's
    ``TuneReportCallback`` reports its path (``layertune.workers``)."""
    from ray.tune import Checkpoint
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    path = (trial.last_result or {}).get(CHECKPOINT_PATH_KEY)
    if not path:
        return None
    # a path in the sweep's file system (in a bucket it has no scheme): the trial's own
    storage = getattr(trial, "storage", None)
    return Checkpoint(path, filesystem=getattr(storage, "storage_filesystem", None))
