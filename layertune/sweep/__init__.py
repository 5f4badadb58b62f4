"""``layertune sweep``: Ray Tune runs the trials, Optuna proposes them, gate collapse stops them.

``plan_sweep`` checks everything it can before Ray starts (trial YAML, search space, flags),
``run_sweep`` checks the cluster's resources, runs ``train.run_trial`` once per sampled
configuration through ``ray.tune.Tuner``, shows a live table and ends with the Pareto front of
the finished trials. A sweep folder (``./layertune-runs/NAME`` unless ``--storage``) holds, all
with absolute paths:

    sweep.json     what fixes the sweep's trials, checked on ``--resume``
    tune/          Ray Tune's experiment (results, checkpoints, errors)
    optuna.db      the Optuna study ``NAME`` (resumable; ``optuna-dashboard sqlite:///...``)
    mlflow.db      MLflow record (unless ``--tracking-uri``; ``none`` turns it off): a sweep
                   run, one nested run per trial, the front (see ``tracking``)
    mlflow-artifacts/  its artifacts (plots, result.json, each finished trial's compact network)
    front.json     the Pareto front, also front.csv

One module per step: ``plan`` (options and input), ``cluster`` (Ray), ``trainable`` (a trial
in a worker), ``tuner`` (the Tuner, new or restored), ``monitor`` (the live table), ``run``,
``result`` (the front) and ``cli``.
"""

import sys
import types

from .api import sweep
from .cli import add_sweep_arguments, sweep_command
from .cluster import check_resources, multi_node_warnings
from .monitor import SweepMonitor
from .plan import SCHEDULERS, SweepOptions, SweepPlan, plan_sweep
from .result import SweepResult, collect, summary, write_front
from .run import run_sweep

# Tune's tuner.pkl of a sweep started before this was a package names this function
# layertune.sweep._trial_dirname; --resume of such a sweep looks it up here.
from .trainable import trial_dirname as _trial_dirname  # noqa: F401
from .tuner import decide_by, make_scheduler


class _CallableModule(types.ModuleType):
    """``layertune.sweep(...)`` is ``api.sweep(...)``: the package is also the function."""

    def __call__(self, *args, **kwargs):  # noqa: D102
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "SCHEDULERS",
    "SweepMonitor",
    "SweepOptions",
    "SweepPlan",
    "SweepResult",
    "add_sweep_arguments",
    "check_resources",
    "collect",
    "decide_by",
    "make_scheduler",
    "multi_node_warnings",
    "plan_sweep",
    "run_sweep",
    "summary",
    "sweep",
    "sweep_command",
    "write_front",
]
