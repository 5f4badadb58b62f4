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

import importlib
import sys
import types
from typing import Any

# Exported names and their modules, imported on first use: a Ray worker imports this package
# for the trainable alone and should not pay for MLflow, Optuna and the CLI (seconds a trial).
_EXPORTS = {
    "sweep": "api", "add_sweep_arguments": "cli", "sweep_command": "cli",
    "check_resources": "cluster", "multi_node_warnings": "cluster", "SweepMonitor": "monitor",
    "SCHEDULERS": "plan", "SweepOptions": "plan", "SweepPlan": "plan", "plan_sweep": "plan",
    "SweepResult": "result", "collect": "result", "summary": "result",
    "write_front": "result", "run_sweep": "run", "decide_by": "tuner",
    "make_scheduler": "tuner",
    # Tune's tuner.pkl of a sweep started before this was a package names this function
    # layertune.sweep._trial_dirname; --resume of such a sweep looks it up here.
    "_trial_dirname": "trainable",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    return getattr(module, "trial_dirname" if name == "_trial_dirname" else name)


class _CallableModule(types.ModuleType):
    """``layertune.sweep(...)`` is ``api.sweep(...)``: the package is also the function."""

    def __call__(self, *args, **kwargs):  # noqa: D102
        from .api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = sorted(name for name in _EXPORTS if not name.startswith("_"))
