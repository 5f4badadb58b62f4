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
  compact network: state dict, architecture and trial config under ``model/``, and the network
  as an MLflow model (``mlflow.pytorch``, pt2, signature and input example; tag
  ``compact_model`` holds its ``models:/`` URI). The trial writes both into its last checkpoint
  (``export.save_bundle``); the driver copies them from ``trial.checkpoint``.

The record is its own state. A resumed sweep (same name again, or ``Tuner.restore``) finds the
parent and the trial runs by their tags, reopens them and skips reports already logged, so no
run is duplicated; whatever is still RUNNING when the sweep ends (Ctrl-C, a killed driver's
leftovers) is closed as ``failed`` with ``stopped_by=unfinished``, and reopened should the
trial run again. docs/cluster.md says which tracking URI a cluster needs.

Modules: ``uri`` (where the record lives), ``environment`` (versions, git commit), ``rows``
(a report and a trial in MLflow), ``artifacts`` (plots, CSV, the model), ``sweep_run`` and
``trial_runs`` (the runs), ``recorder`` (the Tune callback), ``ui`` (``layertune ui``).
"""

from ..contract import ENDED, GROUPS, STATUS, STOP_REASON, STOPPED_BY, UNFINISHED
from .artifacts import MODEL_DIR, plot_gates
from .environment import environment
from .recorder import SweepRecorder
from .rows import (
    BASELINE_GROUP,
    BASELINE_KIND,
    ERROR_TAG,
    KIND,
    OPTUNA_TRIAL,
    PARENT,
    RAY_TRIAL,
    SWEEP,
    front_columns,
    gate_key,
    group_trials,
    reference_point,
    report_metrics,
    trial_row,
)
from .sweep_run import front_versus_baseline
from .ui import find_sweeps, recorded_sweeps, server_command
from .uri import default_uri, is_server, open_client, resolve_uri, sweep_folder

__all__ = [
    "BASELINE_GROUP", "BASELINE_KIND", "ENDED", "ERROR_TAG", "GROUPS", "KIND", "MODEL_DIR",
    "OPTUNA_TRIAL", "PARENT", "RAY_TRIAL", "STATUS", "STOPPED_BY", "STOP_REASON", "SWEEP",
    "UNFINISHED",
    "SweepRecorder", "default_uri", "environment", "find_sweeps", "front_columns",
    "front_versus_baseline", "gate_key",
    "group_trials", "is_server", "open_client", "plot_gates", "recorded_sweeps",
    "reference_point", "report_metrics", "resolve_uri", "server_command", "sweep_folder",
    "trial_row",
]
