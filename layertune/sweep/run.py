"""Running a planned sweep: Ray up, the Tuner fitted, the front collected and written."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import optuna
from optuna.trial import TrialState

from ..contract import REPEAT_OF
from ..search import check_study, close_running, open_storage
from ..space import covered_values, covering_points, trial_values
from .cluster import ray_for, resources_text
from .plan import RECORD, SweepPlan
from .result import SweepResult, collect, write_front
from .tuner import SweepTuner, new_tuner, restore_tuner


def run_sweep(plan: SweepPlan, *, live: bool = True, interval: float | None = None,
              keep_ray: bool = False) -> SweepResult:
    """Run the sweep of ``plan`` (from ``plan_sweep``) and return its front and trials.

    Resources are checked before anything is written; Ray is shut down at the end if this call
    started it, unless ``keep_ray``.
    """
    _quiet()
    with ray_for(plan, keep=keep_ray):
        plan.folder.mkdir(parents=True, exist_ok=True)
        if plan.storage.remote and plan.options.resume and not (plan.folder / RECORD).exists():
            fetched = plan.storage.download(plan.folder)  # a fresh driver machine
            print(f"copied {', '.join(fetched)} from {plan.storage.uri} into {plan.folder}",
                  flush=True)
        storage = open_storage(plan.folder)
        check_study(storage, plan.name, plan.space.modes)
        if not plan.options.resume:
            (plan.folder / RECORD).write_text(json.dumps(plan.record(), indent=1))
        if plan.storage.remote:
            plan.storage.upload(plan.folder)
        return _run(plan, storage, live, interval)


def _quiet() -> None:
    """Silence what Ray, Optuna and MLflow print that the live table replaces or that is noise."""
    # Each epoch's checkpoint forces a snapshot of Tune's experiment state (cheap here: a few
    # KB), which Tune warns about every few seconds; the warning is noise for this tool.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's new output engine prints its own banner even when silent; the live view replaces it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow.store.db.utils", "alembic", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run(plan: SweepPlan, storage: optuna.storages.RDBStorage, live: bool,
         interval: float | None) -> SweepResult:
    sweep = restore_tuner(plan, live, interval) if plan.options.resume else \
        new_tuner(plan, storage, live, interval)
    recorder = sweep.recorder
    if recorder is not None:  # database, experiment and sweep run exist before any trial starts
        if sweep.searcher is not None:
            recorder.numbers = sweep.searcher.optuna_number
        recorder.prepare()
        recorder.start()
    if live:
        _print_banner(plan)
    # Tune saves its experiment state every >= 10 s by default; every second, a resume repeats
    # at most a second of work and CheckpointPruner frees old checkpoints soon after.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    t0 = time.monotonic()
    try:
        sweep.tuner.fit()
    finally:
        if recorder is not None:  # Tune's experiment end closed the record; this is the net
            recorder.close()
    wall = time.monotonic() - t0
    return _finish(plan, storage, sweep, wall, live)


def _print_banner(plan: SweepPlan) -> None:
    o = plan.options
    print(f"layertune sweep {plan.name}: {o.samples} trials of {plan.trial_path.name} "
          f"over {plan.space_path.name}, scheduler {o.scheduler}, "
          f"{o.cpus_per_trial:g} CPU + {o.gpus_per_trial:g} GPU per trial; "
          f"Ray has {resources_text()}"
          + (f"; resuming from {plan.storage.uri}" if o.resume else "")
          + (f"; Ray's files in {plan.storage.uri}, the driver's in {plan.folder}"
             if plan.storage.remote else "") + covering_text(plan), flush=True)


def covering_text(plan: SweepPlan) -> str:
    """The banner's note on the values ``cover: true`` queues first (empty if none)."""
    every = covering_points(plan.space)
    if not every:
        return ""
    keys = ", ".join(every[0])
    covered = covering_points(plan.space, plan.options.samples)
    others = ", ".join(f"{k} {v}" for k, v in trial_values(plan.space, plan.trial).items())
    at = f" at the trial config's {others}" if others else ""
    if len(covered) == len(every):
        return f"; the first {len(covered)} trials cover every value of {keys}{at}"
    values = covered_values(plan.space, plan.options.samples)
    if len(values) == 1:
        taken = " ".join(str(v) for v in values.popitem()[1])
        return (f"; the first {len(covered)} trials cover {len(covered)} of the {len(every)} "
                f"values, evenly spaced ({keys} {taken}; --samples {len(every)} covers them "
                f"all){at}")
    return (f"; the trials cover only {len(covered)} of the {len(every)} combinations of {keys}"
            f" (cover: true; --samples {len(every)} covers them all){at}")


def _finish(plan: SweepPlan, storage: optuna.storages.RDBStorage, sweep: SweepTuner,
            wall: float, live: bool) -> SweepResult:
    """After ``fit``: the front written, and the sweep closed in Optuna unless it was cut short
    (then ``--resume`` goes on with it)."""
    ended = sum(REPEAT_OF not in t.user_attrs for t in optuna.load_study(
        study_name=plan.name, storage=storage).get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    interrupted = ended < plan.options.samples
    if not interrupted:
        close_running(storage, plan.name)  # nothing of this sweep stays RUNNING in Optuna
    monitor = sweep.monitor
    if live and not sys.stdout.isatty():
        monitor.draw()
    result = collect(plan, storage, list(monitor.rows.values()), wall)
    result.events = list(monitor.events)
    result.interrupted = interrupted
    write_front(result)
    if sweep.recorder is not None:
        sweep.recorder.log_summary({"trials_this_run": len(result.trials),
                                    "trial_epochs_this_run": result.trial_epochs,
                                    "wall_s": wall})
    if plan.storage.remote:
        plan.storage.upload(plan.folder)
    return result
