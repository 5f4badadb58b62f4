"""What Tune runs for each trial, in a Ray worker: ``train.run_trial`` on the sampled config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from ..comparison import SECTIONS
from ..config import TrialConfig
from ..workers import DRIVER_RESOURCES, Workers

if TYPE_CHECKING:
    from .baseline import BaselinePlan
    from .plan import SweepPlan


# The name ``_train`` is the trainable's name in Tune's saved experiment: a resumed sweep must
# hand Tune a trainable of the same name, so it stays as sweeps were started with it.
def _train(config: dict, base: dict, threads: int, export: bool = True,
           workers: Workers | None = None, storage: str | None = None) -> None:
    """One Tune trial: the trial config with the searcher's dotted-key overrides applied.

    With ``export`` the last epoch's checkpoint also holds the compact network and the trial
    config (``export.save_bundle``): the driver's MLflow record copies it from there, which
    works across nodes because checkpoints are persisted to the sweep's storage. ``workers``:
    the trial runs on Ray Train workers (``_train_on_workers``).
    """
    if workers is not None:
        _train_on_workers(config, base, workers, export, storage)
        return
    import torch

    from ..in_ray import run_in_ray

    torch.set_num_threads(threads)  # the trial's CPU share, not the whole node
    trial_config = TrialConfig.model_validate(base).with_overrides(config, source="sweep")

    node = ray.get_runtime_context().get_node_id()  # several nodes may share one IP

    def report(metrics: dict, folder: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(folder) if folder else None
        tune.report({**metrics, "node_id": node}, checkpoint=checkpoint)

    run_in_ray(trial_config, report, tune.get_checkpoint(), export=export,
               diverged=Path(tune.get_context().get_trial_dir(), "diverged.txt"))


def _train_on_workers(config: dict, base: dict, workers: Workers, export: bool,
                      storage: str | None = None) -> None:
    """A trial on Ray Train workers (docs/cluster.md): this Tune trial only drives a
    ``TorchTrainer``; rank 0's reports reach Tune through Ray's ``TuneReportCallback``, with
    the path of Ray Train's checkpoint (in ``trial_ID/train/``) as ``checkpoint_path``. A
    retried trial resumes Ray Train's run from that folder: under the sweep's storage
    (``storage``: its folder or bucket), not Tune's local trial folder, so a retry on another
    node or after a driver's ``--resume`` finds it."""
    from ray.train import TrainingFailedError
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train import TrialDiverged
    from ..workers import run_on_workers

    trial_config = TrialConfig.model_validate(base).with_overrides(config, source="sweep")
    folder = Path(tune.get_context().get_trial_dir())
    diverged = folder / "diverged.txt"
    if diverged.exists():
        raise TrialDiverged(diverged.read_text())
    run = f"{storage}/tune/trial_{tune.get_context().get_trial_id()}" if storage else folder
    try:
        run_on_workers(trial_config, workers, run, callbacks=[TuneReportCallback()],
                       export=export, diverged=diverged)
    except TrainingFailedError:
        if diverged.exists():  # one clear error rather than Ray Train's
            raise TrialDiverged(diverged.read_text()) from None
        raise


def _train_depth(config: dict, base: dict, threads: int, export: bool = True,
                 workers: Workers | None = None, storage: str | None = None) -> None:
    """One network of the from-scratch grid (``layertune baseline``): ``config["sections"]``
    picks the grid point of the trial config ``base`` (``baseline.depth_grid``)."""
    from ..baseline import depth_grid

    grid = {p.sections: p.config for p in depth_grid(TrialConfig.model_validate(base))}
    _train({}, grid[config[SECTIONS]].model_dump(mode="json"), threads, export, workers,
           storage)


def make_trainable(plan: SweepPlan | BaselinePlan, fn: Callable[..., None] = _train) -> Any:
    """``fn`` (``_train``, or ``_train_depth`` for a baseline) with the plan's trial config
    bound and one trial's resources attached; torch gets a thread per whole CPU (at least
    one), and the bundle is exported only for an MLflow record to copy. A trial on Ray Train
    workers holds no CPU itself; its workers ask for theirs when they start."""
    cpus, gpus = plan.options.cpus_per_trial, plan.options.gpus_per_trial
    workers = plan.options.workers
    return tune.with_resources(
        tune.with_parameters(fn, base=plan.trial.model_dump(mode="json"),
                             threads=max(1, int(cpus)), export=plan.tracking_uri is not None,
                             workers=workers,
                             storage=plan.storage.uri),
        DRIVER_RESOURCES if workers else {"cpu": cpus, "gpu": gpus},
    )


def trial_dirname(trial: Any) -> str:
    """A trial's folder in ``tune/``: ``trial_ID``."""
    return f"trial_{trial.trial_id}"
