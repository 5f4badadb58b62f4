"""The Tune Tuner of a sweep, new or restored, and the parts of it the driver talks to."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from ray import tune

from ..checkpoint_pruner import CheckpointPruner
from ..scheduler import GateCollapseScheduler, RecordingASHA, StopReasonCallback
from ..search import SweepSearch
from ..space import CollapseSettings, DefineByRun, covering_points, make_sampler, max_epochs
from ..tracking import SweepRecorder
from .cluster import max_concurrent
from .monitor import SweepMonitor
from .plan import SweepPlan, chance_accuracy
from .storage import DriverFilesSync
from .trainable import make_trainable, trial_dirname


@dataclass
class SweepTuner:
    """A Tuner and the callbacks and searcher it runs with, for the driver to talk to."""

    tuner: tune.Tuner
    monitor: SweepMonitor
    recorder: SweepRecorder | None  # None: no MLflow record
    searcher: SweepSearch | None


def decide_by(settings: CollapseSettings, epochs: int) -> int:
    """Default: a fifth of the epochs (at least the grace epochs); docs/results.md, sweep
    efficiency, has the replays that chose it."""
    if settings.decide_by is not None:
        return settings.decide_by
    return max(settings.grace_epochs, math.ceil(epochs / 5))


def make_scheduler(plan: SweepPlan) -> Any:
    """The early stopping of ``--scheduler``: gate collapse, plain ASHA on the same rungs, or
    none (FIFO)."""
    s = plan.space.scheduler
    epochs = max_epochs(plan.space, plan.trial)
    if plan.options.scheduler == "gate-collapse":
        return GateCollapseScheduler(
            min_layers=s.min_layers, chance_accuracy=chance_accuracy(plan),
            chance_margin=s.chance_margin, grace_epochs=s.grace_epochs, margin=s.margin,
            decide_by=decide_by(s, epochs), reduction_factor=s.reduction_factor, max_t=epochs,
        )
    if plan.options.scheduler == "asha":
        # The same rungs as gate collapse's ASHA part, applied to every trial.
        return RecordingASHA(time_attr="epoch", metric="val_accuracy", mode="max",
                             max_t=epochs, grace_period=min(decide_by(s, epochs), epochs),
                             reduction_factor=s.reduction_factor)
    return tune.schedulers.FIFOScheduler()


def new_tuner(plan: SweepPlan, storage: optuna.storages.RDBStorage, live: bool,
              interval: float | None) -> SweepTuner:
    """A Tuner for a new sweep: Optuna proposes, the scheduler stops, the callbacks record."""
    space, options = plan.space, plan.options
    seed = options.seed if options.seed is not None else space.sampler.seed
    searcher = SweepSearch(
        DefineByRun(space), metric=space.metrics, mode=space.modes,
        sampler=make_sampler(space.sampler, seed), study_name=plan.name, storage=storage,
        # queued in the study, so a resumed sweep goes on with those not yet asked
        points_to_evaluate=covering_points(space, options.samples, plan.trial),
    )
    scheduler = make_scheduler(plan)
    monitor = SweepMonitor(options.samples, plan.name, live=live, interval=interval)
    recorder = None
    if plan.tracking_uri is not None:
        recorder = SweepRecorder(
            plan.tracking_uri, plan.name, plan.folder,
            artifacts=plan.storage.join("mlflow-artifacts") if plan.storage.remote else None,
            objectives=list(zip(space.metrics, space.modes, strict=True)),
            chance=chance_accuracy(plan), parameters=list(space.parameters),
            files=[plan.trial_path, plan.space_path],
            trial_config=plan.trial.model_dump(mode="json"), params={
                "trial": plan.trial_path, "space": plan.space_path, "samples": options.samples,
                "scheduler": options.scheduler, "sampler": space.sampler.name, "seed": seed,
                "cpus_per_trial": options.cpus_per_trial,
                "gpus_per_trial": options.gpus_per_trial,
                "max_concurrent": options.max_concurrent, "max_failures": options.max_failures,
                "workers_per_trial": options.workers_per_trial,
                **({"cpus_per_worker": options.workers.cpus,
                    "gpus_per_worker": options.workers.gpus} if options.workers else {}),
            })
    tuner = tune.Tuner(
        make_trainable(plan),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=options.samples,
            max_concurrent_trials=max_concurrent(plan), trial_dirname_creator=trial_dirname,
            # a trial's worker process goes on to the next trial instead of a new process
            # importing torch again: 12 short digits trials took 21 s instead of 51 s (a trial
            # on Ray Train workers only drives them: nothing to reuse)
            reuse_actors=options.workers is None,
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=plan.storage.uri, verbose=0,
            callbacks=[StopReasonCallback(scheduler), monitor,
                       CheckpointPruner(plan.storage.path("tune"), filesystem=plan.storage.fs),
                       *([recorder] if recorder else []),
                       # last: the copy in the bucket holds what the callbacks above wrote
                       *([DriverFilesSync(plan.storage, plan.folder)]
                         if plan.storage.remote else [])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # the pruner deletes
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
        ),
    )
    return SweepTuner(tuner, monitor, recorder, searcher)


def restore_tuner(plan: SweepPlan, live: bool, interval: float | None) -> SweepTuner:
    """The Tuner of the sweep in ``plan.storage``, to go on with its unfinished trials."""
    tuner = tune.Tuner.restore(plan.storage.join("tune"), make_trainable(plan),
                               resume_unfinished=True)
    callbacks, searcher = _restored_parts(tuner)
    monitor = next(c for c in callbacks if isinstance(c, SweepMonitor))
    recorder = next((c for c in callbacks if isinstance(c, SweepRecorder)), None)
    monitor.live, monitor.interval = live, interval
    return SweepTuner(tuner, monitor, recorder,
                      searcher if isinstance(searcher, SweepSearch) else None)


def _restored_parts(tuner: tune.Tuner) -> tuple[list[tune.Callback], Any]:
    """The callbacks and the search algorithm a restored Tuner runs with.

    The only use of Tune's private parts: ``Tuner.restore`` unpickles the run config (the
    monitor and the MLflow recorder, with their state) and the searcher, and gives no public
    access to them. They are the objects Tune will call, so the driver must talk to them, not
    to new ones.
    """
    internal = tuner._local_tuner
    return internal.get_run_config().callbacks, internal._tune_config.search_alg
