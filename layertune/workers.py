"""A trial on K Ray Train workers: ``layertune train --workers-per-trial K`` and sweep trials.

Ray's own pattern (docs/cluster.md): the trial's driver (``layertune train``, or a Tune trial)
runs a ``TorchTrainer``; each of its K workers runs ``worker_loop``: ``run_trial`` on a
``distributed.DistributedTrial`` over its share of the data. Every rank calls
``ray.train.report`` after each epoch (a barrier) with the same metrics; rank 0 alone adds the
checkpoint. Ray Train restarts a worker group that lost a worker from the last checkpoint
(``FailureConfig(max_failures)``), and a restarted driver resumes the run from its storage
folder (same ``storage_path`` and ``name``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError, TrialConfig

if TYPE_CHECKING:
    import ray.train

#: Ray Train's run folder inside the driver's storage (a sweep trial's folder)
RUN_NAME = "train"
#: what the driver of a trial on workers holds: no CPU (it only waits for Ray Train), and a
#: token of memory since Tune refuses a trial that asks for nothing
DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20}


@dataclass(frozen=True)
class Workers:
    """K workers of a trial and what each one holds."""

    count: int
    cpus: float = 1.0
    gpus: float = 0.0
    max_failures: int = 2

    def scaling(self) -> ray.train.ScalingConfig:
        import ray.train

        per_worker = {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}
        return ray.train.ScalingConfig(num_workers=self.count, use_gpu=self.gpus > 0,
                                       resources_per_worker=per_worker)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers-per-trial``, ``--cpus-per-worker``, ``--gpus-per-worker`` (train, sweep)."""
    parser.add_argument("--workers-per-trial", type=int, default=1, metavar="K",
                        help="data-parallel Ray Train workers per trial (default 1: the trial "
                        "is one process; docs/cluster.md)")
    parser.add_argument("--cpus-per-worker", type=float, metavar="C",
                        help="CPUs of each worker, with --workers-per-trial > 1 (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, metavar="G",
                        help="GPUs of each worker, with --workers-per-trial > 1 (default 0; "
                        "1 for one GPU each, NCCL)")


def worker_spec(count: int, cpus: float | None, gpus: float | None, *, cpus_per_trial: float,
                gpus_per_trial: float, max_failures: int) -> Workers | None:
    """The flags ``--workers-per-trial``, ``--cpus-per-worker``, ``--gpus-per-worker`` checked
    (one line naming the flag); None for one worker, the trial as one process as always."""
    if count < 1:
        raise ConfigError(f"--workers-per-trial {count}: must be at least 1")
    if count == 1:
        for flag, value, alone in (("--cpus-per-worker", cpus, "--cpus-per-trial"),
                                   ("--gpus-per-worker", gpus, "--gpus-per-trial")):
            if value is not None:
                raise ConfigError(f"{flag}: only with --workers-per-trial > 1 (a trial of one "
                                  f"process takes {alone})")
        return None
    for flag, value, default in (("--cpus-per-trial", cpus_per_trial, 1.0),
                                 ("--gpus-per-trial", gpus_per_trial, 0.0)):
        if value != default:
            raise ConfigError(f"{flag} {value:g}: with --workers-per-trial {count} give each "
                              "worker's share with --cpus-per-worker and --gpus-per-worker")
    cpus, gpus = 1.0 if cpus is None else cpus, 0.0 if gpus is None else gpus
    if not cpus > 0:
        raise ConfigError(f"--cpus-per-worker {cpus:g}: must be > 0 (e.g. 1 or 4)")
    if gpus < 0 or gpus != int(gpus):  # NCCL refuses two ranks on one device
        raise ConfigError(f"--gpus-per-worker {gpus:g}: whole GPUs (0, 1, 2, ...); each "
                          "worker needs devices of its own")
    return Workers(count, cpus, gpus, max_failures)


def check_batch(config: TrialConfig, world: int, source: str) -> None:
    """Each of ``world`` ranks needs at least one sample of every minibatch, and a streamed data
    set (``DistributedSampler``) a whole share. (A data factory's loaders are the user's.)"""
    b = getattr(config.data, "batch_size", None)
    if b is not None and (b < world or (config.data.name == "imagenet" and b % world)):
        need = "a multiple of" if config.data.name == "imagenet" else "at least"
        raise ConfigError(f"{source}: data.batch_size {b} is the global minibatch; with {world} "
                          f"workers per trial it must be {need} {world}")


def run_on_workers(
    config: TrialConfig,
    workers: Workers,
    storage: str | Path,
    *,
    callbacks: Sequence[Any] = (),
    export: bool = False,
    diverged: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> ray.train.Result:
    """Run ``config`` on ``workers`` with Ray Train; the run's checkpoints live in
    ``storage/train`` (the last one kept). ``export``: rank 0 puts the compact network into the
    last checkpoint (``export.save_bundle``); ``diverged``: a file a worker writes when the loss
    diverges, so that retries fail at once; ``on_epoch(metrics)`` and ``on_result(TrialResult)``
    run on rank 0 (``layertune train`` prints and writes its output folder with them)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    loop_config = {
        "trial": config.model_dump(mode="json"), "threads": max(1, int(workers.cpus)),
        "export": export, "diverged": str(diverged) if diverged else None,
        "on_epoch": on_epoch, "on_result": on_result,
    }
    trainer = TorchTrainer(
        worker_loop, train_loop_config=loop_config, scaling_config=workers.scaling(),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=str(storage), callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=workers.max_failures),
            # Ray Train writes its run snapshot before deleting an older checkpoint
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    return trainer.fit()


def worker_loop(loop_config: dict) -> None:
    """One Ray Train worker: its rank's share of the trial, resumed from Ray Train's last
    checkpoint when there is one."""
    import ray
    import ray.train
    import torch

    from .distributed import DistributedTrial
    from .in_ray import run_in_ray

    torch.set_num_threads(loop_config["threads"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    diverged = Path(loop_config["diverged"]) if loop_config["diverged"] else None
    config = TrialConfig.model_validate(loop_config["trial"])
    if config.device != "cpu":  # the device Ray Train gave this worker (cpu when no GPU)
        config = config.with_overrides({"device": str(ray.train.torch.get_device())},
                                       source="ray train")
    trial = DistributedTrial(config)
    node = ray.get_runtime_context().get_node_id()
    on_epoch = loop_config["on_epoch"] if rank == 0 else None

    def report(metrics: dict, folder: str | None) -> None:
        if on_epoch is not None:
            on_epoch(metrics)
        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report({**metrics, "node_id": node}, checkpoint=checkpoint)

    result = run_in_ray(config, report, ray.train.get_checkpoint(), save=rank == 0,
                        export=rank == 0 and loop_config["export"], diverged=diverged,
                        trial=trial)
    if rank == 0 and loop_config["on_result"] is not None:
        loop_config["on_result"](result)
