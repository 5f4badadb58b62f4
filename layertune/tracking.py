"""The driver-side MLflow record of a sweep: one writer, a Ray Tune callback (``SweepRecorder``).

Each sweep is one MLflow experiment named after it (for a database URI its artifacts go to
``SWEEP_FOLDER/mlflow-artifacts``, an absolute ``file://`` location; an MLflow server keeps its
own). The default tracking URI is ``sqlite:///SWEEP_FOLDER/mlflow.db``. In it:

* one **parent run** per sweep (tag ``layertune.kind=sweep``): params ``objectives``,
  ``parameters`` (the searched keys), the plan, ``command``, ``version.{layertune,torch,ray,
  optuna,mlflow}``, ``git_commit`` (also tag ``mlflow.source.git.commit``); the trial and space
  YAML and the resolved trial config under ``config/``. As trials end it logs ``hypervolume``
  of the current front (step = trials ended so far; reference point in params
  ``hv_reference.METRIC``), ``front_size`` and ``trials_{finished,stopped,failed}``; at the end
  ``pareto/front.csv``, ``pareto/trials.csv``, the MLflow table ``pareto/trials_table.json``,
  ``pareto/front.png`` (matplotlib) and ``pareto/front.html`` (plotly, plotly.js from its CDN);
* one **child run** per trial (tag ``mlflow.parentRunId``), made when the trial starts: the
  searched values as params; each report as one ``log_batch`` at step = epoch (the contract's
  numbers and each gate as ``theta/NN``); tags ``ray_trial_id``, ``optuna_trial`` and
  ``status``: ``finished``, ``stopped`` (with ``stopped_by``, ``stop_reason``) or ``failed``
  (with ``error``); at the end ``result.json``, ``gates.png`` and, for finished trials, the
  compact network under ``model/`` (the trial writes it into its last checkpoint, see
  ``export.save_bundle``; the driver copies it from ``trial.checkpoint``).

The record is its own state. A resumed sweep (same name again, or ``Tuner.restore``) finds the
parent and the trial runs by their tags, reopens them and skips reports already logged, so no
run is duplicated; whatever is still RUNNING when the sweep ends (Ctrl-C, a killed driver's
leftovers) is closed as ``failed`` with ``stopped_by=unfinished``, and reopened should the
trial run again.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray import tune

from .config import ConfigError
from .export import BUNDLE_FILES
from .front import GROUPS, hypervolume, pareto_front, plot_front_html, plot_front_png
from .scheduler import STOP_REASON, STOPPED_BY

logger = logging.getLogger(__name__)

KIND = "layertune.kind"  # "sweep" (parent) or "trial" (child)
SWEEP = "layertune.sweep"
PARENT = "mlflow.parentRunId"
STATUS = "status"  # running | finished | stopped | failed | lost
RAY_TRIAL = "ray_trial_id"
OPTUNA_TRIAL = "optuna_trial"
ERROR = "error"
ENDED = ("finished", "stopped", "failed")
UNFINISHED = "unfinished"  # stopped_by of a trial the sweep ended before
MODEL_DIR = "model"  # artifact folder of a finished trial's export bundle
# Numbers of the trial contract logged with every report (theta goes as theta/NN).
LOGGED = ("epoch", "val_accuracy", "val_loss", "train_loss", "active_layers", "total_layers",
          "undecided_layers", "collapsed", "flops", "params", "train_flops", "epoch_seconds")
_COUNTS = ("epoch", "active_layers", "total_layers", "undecided_layers", "collapsed", "flops",
           "params")  # MLflow keeps every metric as a float; these read back as ints
_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
_BATCH = 1000  # MLflow's limit of metrics per log_batch
_TAG_MAX = 7900  # MLflow allows 8000 characters per tag value, 6000 per param
_STATUS_OF_RUN = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


# --- where a sweep's record lives --------------------------------------------------------------


def sweep_folder(name: str, storage: str | Path | None = None) -> Path:
    """The sweep folder: ``storage`` or ``./layertune-runs/NAME`` (as ``layertune sweep``)."""
    return (Path(storage) if storage else Path("layertune-runs") / name).expanduser().resolve()


def default_uri(folder: str | Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    return urlparse(uri).scheme.lower() in ("http", "https")


def resolve_uri(uri: str | None, folder: str | Path) -> str | None:
    """``--tracking-uri`` made absolute; None when tracking is off (``none``).

    Default: ``sqlite:///FOLDER/mlflow.db``. Allowed: ``none``, an MLflow server
    (``http(s)://host:port``), ``sqlite:///FILE`` (a relative file is made absolute), a path
    ending in ``.db`` (an sqlite file), or a ``postgresql``/``mysql``/``mssql`` URI. MLflow 3
    refuses the ``./mlruns`` file store, so file paths are refused here.
    """
    if uri is None:
        return default_uri(folder)
    text = uri.strip()
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if text.lower() == "none":
        return None
    if scheme in ("http", "https") and parsed.netloc:
        return text.rstrip("/")
    if scheme == "sqlite" and text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return f"sqlite:///{Path(text[len('sqlite:///'):]).expanduser().resolve()}"
    if scheme.split("+")[0] in _DATABASES[1:] and parsed.netloc:
        return text
    if not scheme and text.endswith(".db"):
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    raise ConfigError(
        f"--tracking-uri {uri}: allowed: none (no tracking), http(s)://HOST:PORT (an MLflow "
        "server), sqlite:///FILE.db or FILE.db, postgresql://, mysql:// or mssql:// URIs "
        "(MLflow 3 has no file store)"
    )


def open_client(uri: str, *, create: bool = False) -> Any:
    """An ``MlflowClient`` for ``uri``; with ``create`` False an sqlite file must already exist.

    A server URI must answer ``/health`` (a dead server would otherwise cost minutes of MLflow
    retries); the error is one ``ConfigError`` line.
    """
    for name in ("mlflow.store.db.utils", "alembic", "mlflow.store.sql"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if uri.startswith("sqlite:///") and not create:
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ConfigError(f"--tracking-uri {uri}: no MLflow database at {path}")
    if is_server(uri):
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=10):
                pass
        except (OSError, ValueError) as err:
            raise ConfigError(f"--tracking-uri {uri}: no MLflow server answers ({err})") from None
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def environment() -> dict[str, str]:
    """Versions of the packages a result depends on, and the git commit of this code."""
    out = {}
    for pkg in ("layertune", "torch", "ray", "optuna", "mlflow"):
        try:
            out[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[f"version.{pkg}"] = "unknown"
    here = str(Path(__file__).resolve().parent)
    commit = _git(here, "rev-parse", "HEAD")
    if commit:
        out["git_commit"] = commit
        out["git_dirty"] = str(bool(_git(here, "status", "--porcelain", "--untracked-files=no")))
    return out


def _git(folder: str, *args: str) -> str:
    try:
        r = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


# --- what one report and one trial look like in MLflow ----------------------------------------


def gate_key(index: int, count: int) -> str:
    """``theta/NN``: zero-padded to two digits (three from 100 gates on), so keys sort."""
    return f"theta/{index:0{max(2, len(str(count - 1)))}d}"


def report_metrics(result: dict, step: int, stamp_ms: int) -> list[Any]:
    """The MLflow metrics of one report: the contract's numbers and each gate."""
    from mlflow.entities import Metric

    out = [Metric(k, float(result[k]), stamp_ms, step) for k in LOGGED
           if isinstance(result.get(k), int | float) and math.isfinite(result[k])]
    theta = result.get("theta") or []
    out += [Metric(gate_key(i, len(theta)), float(t), stamp_ms, step)
            for i, t in enumerate(theta) if math.isfinite(t)]
    return out


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(text: str) -> Any:
    """An MLflow param (always a string) back as the number or bool it was."""
    try:
        v = json.loads(text)
    except ValueError:
        return text
    return v if isinstance(v, int | float | bool) else text


def trial_row(run: Any) -> dict[str, Any]:
    """One trial as a row (front tables, selection): ids, status, params, latest metrics."""
    tags = run.data.tags
    number = tags.get(OPTUNA_TRIAL, "")
    row: dict[str, Any] = {
        "trial": int(number) if number.isdigit() else None,
        "ray_trial": tags.get(RAY_TRIAL), "run_id": run.info.run_id,
        STATUS: tags.get(STATUS, "running"), STOPPED_BY: tags.get(STOPPED_BY),
    }
    row.update({k: _value(v) for k, v in run.data.params.items()})
    row.update({k: int(v) if k in _COUNTS and float(v).is_integer() else v
                for k, v in run.data.metrics.items() if not k.startswith("theta/")})
    return row


def group_trials(rows: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> dict[str, list]:
    """Rows by ``GROUPS``: the front of the finished trials, the dominated rest, stopped,
    failed (also a finished trial without finite objective values); running trials are in none.
    """
    finished = [r for r in rows if r[STATUS] == "finished" and all(
        isinstance(r.get(m), int | float) and math.isfinite(r[m]) for m, _ in objectives)]
    on_front = set(pareto_front(finished, objectives))
    front = [r for i, r in enumerate(finished) if i in on_front]
    front.sort(key=lambda r: tuple(-r[m] if d == "max" else r[m] for m, d in objectives))
    return {
        "front": front,
        "finished": [r for i, r in enumerate(finished) if i not in on_front],
        "stopped": [r for r in rows if r[STATUS] == "stopped"],
        "failed": [r for r in rows if r[STATUS] == "failed"
                   or (r[STATUS] == "finished" and r not in finished)],
    }


def reference_point(objectives: Sequence[tuple[str, str]], first: dict,
                    chance: float) -> list[float]:
    """The hypervolume reference, fixed from the sweep's first report.

    ``val_accuracy`` (max): chance accuracy; ``active_layers``/``undecided_layers`` (min): the
    sections gated at start plus one (so a trial keeping every section still counts); any other
    metric to maximise: 0; to minimise: twice its first reported value.
    """
    ref = []
    for metric, mode in objectives:
        if metric == "val_accuracy" and mode == "max":
            ref.append(float(chance))
        elif metric in ("active_layers", "undecided_layers") and mode == "min":
            ref.append(float(first.get("total_layers", 0)) + 1.0)
        elif mode == "max":
            ref.append(0.0)
        else:
            ref.append(2.0 * abs(float(first.get(metric, 0.0))) or 1.0)
    return ref


def plot_gates(history: Sequence[dict], path: str, title: str) -> None:
    """The gate trajectory: each section's theta against the epoch (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    count = max((len(h.get("theta") or []) for h in history), default=0)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for k in range(count):
            ax.plot(epochs, [h["theta"][k] if k < len(h.get("theta") or []) else math.nan
                             for h in history], marker="." if len(epochs) < 30 else None,
                    lw=1.2, label=gate_key(k, count))
        if not count:
            ax.text(0.5, 0.5, "no gate values reported", ha="center", transform=ax.transAxes)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("theta (probability the section is kept)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if 0 < count <= 16:
            ax.legend(fontsize=7, ncol=2, loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def front_columns(objectives: Sequence[tuple[str, str]], parameters: Sequence[str]) -> list[str]:
    metrics = [m for m, _ in objectives]
    extra = [c for c in ("epoch", "active_layers", "total_layers", "flops", "params")
             if c not in metrics]
    return ["trial", "ray_trial", *parameters, *metrics, *extra, "run_id"]


# --- the recorder -----------------------------------------------------------------------------


class SweepRecorder(tune.Callback):
    """The MLflow record of one sweep, written from the driver (see the module docstring).

    ``prepare()`` creates the database and the experiment (call it before any trial starts:
    parallel first use of a fresh sqlite file races); ``start()`` opens the parent run (Tune's
    ``setup`` calls it too); trial runs follow Tune's callbacks; ``on_experiment_end`` writes
    the front and closes everything; ``close()`` is the safety net for a ``finally``.
    ``numbers`` maps a Ray trial id to its Optuna trial number (``SweepSearch.optuna_number``).
    """

    _KEPT = ("uri", "name", "folder", "objectives", "parameters", "chance", "files",
             "trial_config", "params", "command")

    def __init__(self, uri: str, name: str, folder: str | Path, *,
                 objectives: Sequence[tuple[str, str]], chance: float,
                 parameters: Sequence[str] = (), files: Sequence[str | Path] = (),
                 trial_config: dict | None = None, params: dict[str, Any] | None = None,
                 command: str | None = None) -> None:
        self.uri = uri
        self.name = name
        self.folder = Path(folder).resolve()
        self.objectives = [(str(m), str(d)) for m, d in objectives]
        self.parameters = list(parameters)
        self.chance = float(chance)
        self.files = [Path(f).resolve() for f in files]
        self.trial_config = trial_config or {}
        self.params = dict(params or {})
        self.command = command or " ".join(shlex.quote(a) for a in sys.argv)
        self.numbers: Callable[[str], int | None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._client: Any = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # Ray trial id -> child run id
        self.open: set[str] = set()  # trials whose run is (or should be) RUNNING
        self.last_epoch: dict[str, int] = {}  # last epoch logged per trial
        self.history: dict[str, list[dict]] = {}  # reports per trial (for the gate plot)
        self.from_store: set[str] = set()  # trials whose history is in MLflow, not in memory
        self.rows: dict[str, dict] = {}  # ended trials
        self.reference: list[float] | None = None
        self.done = False
        self.errors = 0

    # Ray pickles the run config (callbacks included) into tuner.pkl: keep the settings only.
    def __getstate__(self) -> dict:
        return {k: self.__dict__[k] for k in self._KEPT}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.numbers = None
        self._reset()

    # -- opening -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create (or find) the database and the experiment; raises ConfigError if it can't."""
        if self._client is not None:
            return
        from mlflow.exceptions import MlflowException

        client = open_client(self.uri, create=True)
        try:
            exp = client.get_experiment_by_name(self.name)
            if exp is None:
                location = None if is_server(self.uri) else \
                    (self.folder / "mlflow-artifacts").as_uri()
                self.experiment_id = client.create_experiment(
                    self.name, artifact_location=location, tags={KIND: "sweep"})
            elif exp.lifecycle_stage == "deleted":
                raise ConfigError(f"--name {self.name}: its MLflow experiment in {self.uri} is "
                                  "deleted (restore it in the MLflow UI, or use another --name)")
            else:
                self.experiment_id = exp.experiment_id
        except MlflowException as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"--tracking-uri {self.uri}: {first}") from None
        self._client = client

    def setup(self, **info: Any) -> None:
        self.start()

    def start(self) -> None:
        """Open the parent run: this sweep's earlier one (resume) or a new one."""
        self.prepare()
        if self.parent_id is not None:
            return
        from mlflow.entities import Param, RunTag

        c = self._client
        parents = self._search(f"tags.`{KIND}` = 'sweep'")
        if parents:
            parent = max(parents, key=lambda r: r.info.start_time or 0)
            self.parent_id = parent.info.run_id
            resumes = int(parent.data.tags.get("layertune.resumes", "0")) + 1
            c.update_run(self.parent_id, status="RUNNING")
            c.log_batch(self.parent_id, tags=[
                RunTag("layertune.resumes", str(resumes)),
                RunTag(f"layertune.resume.{resumes}", json.dumps(
                    {"command": self.command, **self.params}, default=str)[:_TAG_MAX])])
            ref = [parent.data.params.get(f"hv_reference.{m}") for m, _ in self.objectives]
            self.reference = [float(r) for r in ref] if all(ref) else None
            self._load_trials()
            return
        env = environment()
        tags = {KIND: "sweep", SWEEP: self.name, "layertune.command": self.command[:_TAG_MAX]}
        if env.get("git_commit"):
            tags["mlflow.source.git.commit"] = env["git_commit"]
        run = c.create_run(self.experiment_id, run_name=self.name, tags=tags)
        self.parent_id = run.info.run_id
        params = {"objectives": ",".join(f"{m}:{d}" for m, d in self.objectives),
                  "parameters": ",".join(self.parameters), "command": self.command,
                  **self.params, **env}
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            c.log_batch(self.parent_id, params=items[i:i + 100])
        for f in self.files:
            c.log_artifact(self.parent_id, str(f), "config")
        if self.trial_config:
            c.log_dict(self.parent_id, self.trial_config, "config/trial.resolved.json")

    def _search(self, query: str) -> list:
        out, token = [], None
        while True:
            page = self._client.search_runs([self.experiment_id], filter_string=query,
                                            max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    def _load_trials(self) -> None:
        """The trial runs of a resumed sweep: ended ones become rows, the rest stay open."""
        for run in self._search(f"tags.`{PARENT}` = '{self.parent_id}'"):
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

    # -- trials ------------------------------------------------------------------------------

    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # the record must never stop the sweep
            self.errors += 1
            print(f"warning: MLflow record ({what}) failed: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)

    def _child(self, trial: Any) -> str:
        """The trial's run: made on first sight, reopened if it had been closed."""
        from mlflow.entities import Param, RunTag

        tid = trial.trial_id
        run_id = self.runs.get(tid)
        c = self._client
        if run_id is None:
            number = self.numbers(tid) if self.numbers else None
            tags = {PARENT: self.parent_id, KIND: "trial", SWEEP: self.name, RAY_TRIAL: tid,
                    STATUS: "running"}
            if number is not None:
                tags[OPTUNA_TRIAL] = str(number)
            run_id = c.create_run(self.experiment_id, run_name=tid, tags=tags).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in _flat(dict(trial.config or {})).items()]
            for i in range(0, len(params), 100):
                c.log_batch(run_id, params=params[i:i + 100])
            self.runs[tid] = run_id
            self.last_epoch[tid] = 0
            self.history[tid] = []
            self.open.add(tid)
        elif tid not in self.open:  # ended (or closed as unfinished) and running again
            c.update_run(run_id, status="RUNNING")
            c.log_batch(run_id, tags=[RunTag(STATUS, "running")])
            for key in (STOPPED_BY, STOP_REASON, ERROR):
                try:
                    c.delete_tag(run_id, key)
                except Exception:  # the tag was not there
                    pass
            self.rows.pop(tid, None)
            self.from_store.add(tid)
            self.open.add(tid)
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.parent_id is not None:
            self._guard("trial start", self._child, trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if self.parent_id is not None:
            self._guard("report", self.log_report, trial, result)

    def log_report(self, trial: Any, result: dict) -> None:
        """One report: one ``log_batch`` at step = epoch (a report logged before is skipped)."""
        epoch = result.get("epoch")
        if not isinstance(epoch, int | float):
            return
        step, tid = int(epoch), trial.trial_id
        run_id = self._child(trial)
        if step <= self.last_epoch.get(tid, 0):
            return  # logged before a restore: the trial went on from an earlier checkpoint
        if self.reference is None:
            self._set_reference(result)
        metrics = report_metrics(result, step, int(time.time() * 1000))
        for i in range(0, len(metrics), _BATCH):
            self._client.log_batch(run_id, metrics=metrics[i:i + _BATCH])
        self.last_epoch[tid] = step
        kept = {k: result[k] for k in LOGGED if isinstance(result.get(k), int | float)}
        self.history.setdefault(tid, []).append({**kept, "theta": list(result.get("theta")
                                                                          or [])})

    def _set_reference(self, result: dict) -> None:
        from mlflow.entities import Param

        self.reference = reference_point(self.objectives, result, self.chance)
        self._client.log_batch(self.parent_id, params=[
            Param(f"hv_reference.{m}", repr(r)) for (m, _), r in
            zip(self.objectives, self.reference, strict=True)])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.parent_id is not None:
            self._guard("trial end", self.close_trial, trial, False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.parent_id is not None:
            self._guard("trial error", self.close_trial, trial, True)

    def close_trial(self, trial: Any, error: bool) -> None:
        """Final status and tags, artifacts, the run terminated; then the parent's metrics."""
        from mlflow.entities import RunTag

        tid = trial.trial_id
        run_id = self._child(trial)
        last = dict(trial.last_result or {})
        tags = {}
        if error:
            status = "failed"
            text = _error_text(trial)
            tags[ERROR] = text[-_TAG_MAX:]
            tags[STOPPED_BY] = "error"  # as in Optuna's user attributes and the live table
        elif last.get(STOPPED_BY) or not last:
            status = "stopped"
            tags[STOPPED_BY] = str(last.get(STOPPED_BY) or "not started")
            tags[STOP_REASON] = str(last.get(STOP_REASON, ""))[:_TAG_MAX]
        else:
            status = "finished"
        tags[STATUS] = status
        number = self.numbers(tid) if self.numbers else None
        if number is not None:
            tags[OPTUNA_TRIAL] = str(number)
        c = self._client
        history = self._history(tid)
        with tempfile.TemporaryDirectory(prefix="layertune-mlflow-") as tmp:
            folder = Path(tmp)
            if status == "finished":
                tags["compact_model"] = f"{MODEL_DIR}/model.pt" if \
                    self._copy_model(trial, folder / MODEL_DIR) else "missing"
            if error:
                (folder / "error.txt").write_text(text)
            (folder / "result.json").write_text(json.dumps({
                "ray_trial_id": tid, "optuna_trial": number, STATUS: status,
                **{k: tags.get(k) for k in (STOPPED_BY, STOP_REASON, ERROR) if k in tags},
                "config": dict(trial.config or {}),
                "final": {k: v for k, v in last.items() if k in LOGGED or k == "theta"},
                "history": history,
            }, indent=1, default=str))
            plot_gates(history, str(folder / "gates.png"),
                       f"trial {number if number is not None else tid}: {status}"
                       + (f" ({tags[STOPPED_BY]})" if STOPPED_BY in tags else ""))
            c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            c.log_artifacts(run_id, tmp)
        c.set_terminated(run_id, _STATUS_OF_RUN[status])
        self.open.discard(tid)
        self.rows[tid] = trial_row(c.get_run(run_id))
        self._log_progress()

    def _history(self, tid: str) -> list[dict]:
        """The trial's reports: from memory, or from MLflow after a restore."""
        run_id = self.runs[tid]
        if tid not in self.from_store:
            return self.history.get(tid, [])
        keys = [k for k in self._client.get_run(run_id).data.metrics]
        by_step: dict[int, dict] = {}
        for key in keys:
            for m in self._client.get_metric_history(run_id, key):
                by_step.setdefault(m.step, {})[key] = m.value
        out = []
        for step in sorted(by_step):
            values = by_step[step]
            gates = sorted(k for k in values if k.startswith("theta/"))
            row = {k: v for k, v in values.items() if not k.startswith("theta/")}
            row["epoch"] = step
            row["theta"] = [values[k] for k in gates]
            out.append(row)
        return out

    def _copy_model(self, trial: Any, dest: Path) -> bool:
        """The export bundle from the trial's last checkpoint (persisted storage) into dest."""
        import shutil

        checkpoint = trial.checkpoint
        if checkpoint is None:
            return False
        with checkpoint.as_directory() as folder:
            files = [Path(folder, f) for f in BUNDLE_FILES]
            if not all(f.is_file() for f in files):
                return False
            dest.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, dest / f.name)
        return True

    def _log_progress(self) -> None:
        """The parent's front figures at step = trials ended so far."""
        from mlflow.entities import Metric

        rows = list(self.rows.values())
        groups = group_trials(rows, self.objectives)
        hv = hypervolume(groups["front"], self.objectives, self.reference) \
            if self.reference else 0.0
        stamp, step = int(time.time() * 1000), len(rows)
        values = {"hypervolume": hv, "front_size": len(groups["front"]),
                  "trials_finished": len(groups["front"]) + len(groups["finished"]),
                  "trials_stopped": len(groups["stopped"]),
                  "trials_failed": len(groups["failed"])}
        self._client.log_batch(self.parent_id, metrics=[
            Metric(k, float(v), stamp, step) for k, v in values.items()])

    # -- the end -----------------------------------------------------------------------------

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.finish({t.trial_id for t in trials})

    def finish(self, known: set[str] | None = None) -> None:
        """Close trials still open (as unfinished), write the front, end the parent run.

        ``known``: the trials Tune has. An open run whose trial Tune does not know started
        after the last experiment state a resumed sweep came back from; its Optuna trial went
        to a new trial, which has its own run, so this one is deleted (tagged ``lost``).
        """
        if self.parent_id is None or self.done:
            return
        for tid in sorted(self.open - known) if known is not None else []:
            self._guard("lost trial", self._delete_lost, tid)
        unfinished = sorted(self.open)
        for tid in unfinished:
            self._guard("unfinished trial", self._close_unfinished, tid)
        self._guard("front", self._write_front)
        self._client.set_terminated(self.parent_id, "KILLED" if unfinished else "FINISHED")
        self.done = True

    def close(self) -> None:
        """Safety net (``finally``): nothing of this sweep stays RUNNING, whatever happened."""
        if self.parent_id is None or self.done:
            return
        try:
            self.finish()
        finally:
            if not self.done:
                for tid in sorted(self.open):
                    self._guard("close", self._client.set_terminated, self.runs[tid], "KILLED")
                self._guard("close", self._client.set_terminated, self.parent_id, "KILLED")
                self.done = True

    def _delete_lost(self, tid: str) -> None:
        from mlflow.entities import RunTag

        run_id = self.runs.pop(tid)
        self._client.log_batch(run_id, tags=[
            RunTag(STATUS, "lost"),
            RunTag(ERROR, "started after the last experiment state the sweep resumed from; "
                          "its Optuna trial was run again as another trial")])
        self._client.set_terminated(run_id, "KILLED")
        self._client.delete_run(run_id)
        self.open.discard(tid)

    def _close_unfinished(self, tid: str) -> None:
        from mlflow.entities import RunTag

        run_id = self.runs[tid]
        self._client.log_batch(run_id, tags=[
            RunTag(STATUS, "failed"), RunTag(STOPPED_BY, UNFINISHED),
            RunTag(ERROR, "the sweep ended (interrupted, or its driver was killed) before this "
                          "trial did; resuming the sweep reopens this run")])
        self._client.set_terminated(run_id, "KILLED")
        self.open.discard(tid)
        self.rows[tid] = trial_row(self._client.get_run(run_id))

    def log_summary(self, values: dict[str, float]) -> None:
        """Extra numbers on the parent run (e.g. the sweep's wall time), step 0."""
        from mlflow.entities import Metric

        if self.parent_id is None:
            return
        stamp = int(time.time() * 1000)
        self._guard("summary", self._client.log_batch, self.parent_id, [
            Metric(k, float(v), stamp, 0) for k, v in values.items()
            if isinstance(v, int | float) and math.isfinite(v)])

    def _write_front(self) -> None:
        rows = sorted(self.rows.values(), key=lambda r: (r["trial"] is None, r["trial"] or 0,
                                                        r["ray_trial"] or ""))
        groups = group_trials(rows, self.objectives)
        cols = front_columns(self.objectives, self.parameters)
        table = [{**r, "group": g} for g in GROUPS for r in groups[g]]
        every = ["group", STATUS, STOPPED_BY, *cols]
        title = f"sweep {self.name}: {len(groups['front'])} on the front of " \
                f"{len(groups['front']) + len(groups['finished'])} finished trials"
        with tempfile.TemporaryDirectory(prefix="layertune-front-") as tmp:
            write_csv(groups["front"], cols, Path(tmp, "front.csv"))
            write_csv(table, every, Path(tmp, "trials.csv"))
            plot_front_png(groups, self.objectives, str(Path(tmp, "front.png")), title)
            plot_front_html(groups, self.objectives, str(Path(tmp, "front.html")), title,
                            hover=[*self.parameters, "run_id"])
            self._client.log_artifacts(self.parent_id, tmp, "pareto")
        data = {c: [r.get(c) for r in table] for c in every}
        self._replace_table(data, "pareto/trials_table.json")

    def _replace_table(self, data: dict, path: str) -> None:
        """``log_table`` appends to an existing table: a resumed sweep replaces it instead."""
        names = [f.path for f in self._client.list_artifacts(self.parent_id, "pareto")]
        if path in names:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            uri = self._client.get_run(self.parent_id).info.artifact_uri
            get_artifact_repository(uri).delete_artifacts(path)
        self._client.log_table(self.parent_id, data=data, artifact_file=path)


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    return text.strip() or "the trial failed (Ray wrote no error file)"


# --- the UI ----------------------------------------------------------------------------------


def find_sweeps(root: str | Path) -> dict[str, Path]:
    """Sweep folders under ``root`` (or ``root`` itself) that hold an ``mlflow.db``: name->db.

    The name is the folder's (``./layertune-runs/NAME``); for ``root`` itself, the sweeps
    recorded in its database.
    """
    root = Path(root).expanduser().resolve()
    if (root / "mlflow.db").is_file():
        return {",".join(recorded_sweeps(root / "mlflow.db")) or root.name: root / "mlflow.db"}
    if not root.is_dir():
        return {}
    return {p.name: p / "mlflow.db" for p in sorted(root.iterdir())
            if (p / "mlflow.db").is_file()}


def recorded_sweeps(db: str | Path) -> list[str]:
    """Names of the sweeps (experiments) in an MLflow sqlite file, read without MLflow."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute("select name from experiments where lifecycle_stage = 'active' "
                               "and name != 'Default' order by experiment_id").fetchall()
    except sqlite3.Error:
        return []
    return [r[0] for r in rows]


def server_command(uri: str, port: int) -> list[str]:
    """``mlflow server`` over one database, bound to 127.0.0.1 (artifacts: file locations)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
