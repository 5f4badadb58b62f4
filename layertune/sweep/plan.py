"""A sweep's plan: its options checked, its input loaded, its folder resolved, before Ray starts.

Every problem is a one-line ``ConfigError`` naming the flag or file; nothing is written here.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import ConfigError, DataConfig, TrialConfig, load_trial
from ..space import SearchSpace, check_parameters, load_space
from ..tracking import is_server, resolve_uri
from ..workers import Workers, check_batch, worker_spec
from .storage import SweepStorage, is_remote

SCHEDULERS = ("gate-collapse", "asha", "fifo")
RECORD = "sweep.json"  # in the sweep folder: what fixes its trials (``SweepPlan.record``)
_CLASSES = {"mnist": 10, "mnist1d": 10, "digits": 10, "cifar10": 10, "cifar100": 100,
            "imagenet": 1000}


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """How to run a sweep, as given (``layertune sweep``'s flags, ``plan_sweep``'s keywords).

    Checked when made, in this order, each failure one line naming its flag. ``overrides``
    (dotted keys, as ``--set``) change the trial config before the search space applies.
    """

    samples: int = 16
    name: str | None = None
    storage: str | Path | None = None
    work_dir: str | Path | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    scheduler: str = "gate-collapse"
    seed: int | None = None
    tracking_uri: str | None = None
    overrides: dict[str, Any] | None = None
    resume: bool = False
    max_failures: int = 2
    workers_per_trial: int = 1
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None

    def __post_init__(self) -> None:
        if self.resume and not self.name:
            raise ConfigError("--resume: give the --name of the sweep to continue")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures {self.max_failures}: must be >= 0")
        if self.samples < 1:
            raise ConfigError(f"--samples {self.samples}: must be at least 1")
        if not self.cpus_per_trial > 0:
            raise ConfigError(f"--cpus-per-trial {self.cpus_per_trial}: must be > 0 "
                              "(e.g. 1 or 0.5)")
        gpus = self.gpus_per_trial
        if gpus < 0:
            raise ConfigError(f"--gpus-per-trial {gpus}: must be >= 0 (e.g. 0.25)")
        if gpus > 1 and gpus != int(gpus):
            raise ConfigError(f"--gpus-per-trial {gpus}: above 1 it must be whole")
        self.workers  # noqa: B018 (checks the worker flags)
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent {self.max_concurrent}: must be at least 1")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {self.scheduler}: allowed: {', '.join(SCHEDULERS)}")
        if self.storage is not None and "://" in str(self.storage) and \
                not is_remote(self.storage):
            raise ConfigError(f"--storage {self.storage}: allowed: a folder, s3://BUCKET/PREFIX "
                              "or gs://BUCKET/PREFIX")
        if self.work_dir is not None and not is_remote(self.storage):
            raise ConfigError(f"--work-dir {self.work_dir}: only with --storage s3://... or "
                              "gs://... (a local --storage is itself the working folder)")

    @property
    def workers(self) -> Workers | None:
        """A trial's Ray Train workers (``--workers-per-trial`` > 1), or None: one process."""
        return worker_spec(self.workers_per_trial, self.cpus_per_worker, self.gpus_per_worker,
                           cpus_per_trial=self.cpus_per_trial,
                           gpus_per_trial=self.gpus_per_trial, max_failures=self.max_failures)

    def sweep_name(self, trial_path: str | Path, space_path: str | Path) -> str:
        """``name``, by default TRIAL-SPACE-time; a name is also a folder name."""
        name = self.name
        if name is None:
            name = f"{Path(trial_path).stem}-{Path(space_path).stem}-" \
                   f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if not name or any(c in name for c in "/\\:") or name.startswith("."):
            raise ConfigError(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
        return name

    def sweep_folder(self, name: str) -> Path:
        """The local sweep folder, absolute: ``storage``, or with object storage ``work_dir``;
        by default ./layertune-runs/NAME. It (or the nearest folder above it that exists) must
        be a writable folder."""
        flag, given = ("--work-dir", self.work_dir) if is_remote(self.storage) else \
            ("--storage", self.storage)
        folder = Path(given) if given else Path("layertune-runs") / name
        folder = folder.expanduser().resolve()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{flag} {folder}: exists and is not a folder")
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {folder}: {existing} is not writable")
        return folder


@dataclass
class SweepPlan:
    """A sweep ready to run: its options, and what they resolved to (absolute paths)."""

    options: SweepOptions
    trial_path: Path
    space_path: Path
    trial: TrialConfig
    space: SearchSpace
    name: str
    folder: Path  # the driver's files (Optuna, MLflow, front); with local storage, everything
    storage: SweepStorage  # where Ray's files go: ``folder``, or object storage
    tracking_uri: str | None  # None: no MLflow record
    num_classes: int | None = None  # of a data factory's data (``check_factories``)
    py_modules: list[str] = field(default_factory=list)  # the user's code, sent to workers

    def record(self) -> dict[str, Any]:
        """What fixes a sweep's trials: kept in ``sweep.json``, checked on ``--resume``.

        With object storage also the working folder: the Optuna study and the MLflow record
        that Tune's saved state names are found there (docs/cluster.md)."""
        record = {"trial": self.trial.model_dump(mode="json"),
                  "space": self.space.model_dump(mode="json"), "samples": self.options.samples,
                  "scheduler": self.options.scheduler, "seed": self.options.seed}
        if self.storage.remote:
            record["work_dir"] = str(self.folder)
        return record


def plan_sweep(trial_path: str | Path, space_path: str | Path, **options: Any) -> SweepPlan:
    """Check the input (one-line ``ConfigError`` on anything wrong) and resolve paths.

    ``options`` are the keywords of ``SweepOptions``. A sweep folder that holds a sweep is only
    ever continued (``resume``), with the trial config and search space it started with. The
    trial's factories (``model.factory``, ``data.factory``) are called once here, on the CPU.
    """
    given = SweepOptions(**options)
    trial, space = _load_input(trial_path, space_path, given)
    name = given.sweep_name(trial_path, space_path)
    folder = given.sweep_folder(name)
    plan = SweepPlan(
        options=given, trial_path=Path(trial_path).resolve(),
        space_path=Path(space_path).resolve(), trial=trial, space=space, name=name,
        folder=folder, storage=SweepStorage.at(given.storage if is_remote(given.storage)
                                               else folder),
        tracking_uri=resolve_uri(given.tracking_uri, folder),
    )
    _check_artifact_store(plan)
    _check_resume(plan)
    from ..factory import check_factories, modules_to_ship  # torch: only now

    plan.num_classes = check_factories(trial, str(trial_path))  # the user's functions, once
    plan.py_modules = modules_to_ship(trial)
    return plan


def _load_input(trial_path: str | Path, space_path: str | Path,
                options: SweepOptions) -> tuple[TrialConfig, SearchSpace]:
    """The trial config (with ``overrides``) and the search space, checked against each other
    and against the GPUs asked for."""
    trial = load_trial(trial_path, options.overrides)
    space = load_space(space_path)
    check_parameters(space, trial, str(space_path))
    if options.scheduler != "fifo" and space.scheduler.settle_std > 0:
        # settling is the sweep's early stopping, like the scheduler's: FIFO runs every epoch
        trial = trial.model_copy(update={"settle": space.scheduler.settle()})
    if isinstance(trial.data, DataConfig) and trial.data.root:  # trials run in their own folder
        trial = trial.with_overrides({"data.root": str(Path(trial.data.root).resolve())},
                                     source=str(trial_path))
    workers = options.workers
    gpus, flag = (workers.gpus, "--gpus-per-worker") if workers else \
        (options.gpus_per_trial, "--gpus-per-trial")
    if trial.device.startswith("cuda") and gpus == 0:
        raise ConfigError(f"{trial_path}: device: {trial.device} needs {flag} > 0 "
                          "(or device: auto)")
    if workers:
        check_batch(trial, workers.count, str(trial_path))
    return trial, space


def _check_artifact_store(plan: SweepPlan) -> None:
    """With object storage a database record's artifacts go to the bucket (tracking/): MLflow
    needs the cloud's client library for that."""
    if not plan.storage.remote or plan.tracking_uri is None or is_server(plan.tracking_uri):
        return
    scheme = plan.storage.uri.split("://", 1)[0]
    module, package = ("boto3", "boto3") if scheme == "s3" else \
        ("google.cloud.storage", "google-cloud-storage")
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--storage {plan.storage.uri}: MLflow's artifacts go there and need "
                          f"{package} (pip install {package}), or use --tracking-uri "
                          "http://HOST:PORT (an MLflow server keeps its own)") from None


def _check_resume(plan: SweepPlan) -> None:
    """Never overwrite a sweep; resume only the one that is there, as it started. With object
    storage the bucket's copy of ``sweep.json`` is the record (a fresh driver has no other)."""
    storage = plan.storage
    record = storage.join(RECORD)
    exists = storage.exists(RECORD) or storage.exists("tune")
    resume = plan.options.resume
    if exists and not resume:
        raise ConfigError(f"--name {plan.name}: a sweep already exists in {storage.uri}; "
                          "continue it with --resume, or choose another --name or --storage")
    if not resume:
        return
    if not storage.exists("tune", "tuner.pkl") or not storage.exists(RECORD):
        raise ConfigError(f"--resume: no sweep {plan.name} to continue in {storage.uri} "
                          "(start it without --resume)")
    try:
        started = json.loads(storage.read_text(RECORD))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume: {record} is unreadable ({err})") from None
    for key, value in plan.record().items():
        if _as_now(key, started.get(key)) != value:
            what = {"trial": str(plan.trial_path), "space": str(plan.space_path),
                    "work_dir": f"--work-dir {plan.folder}"}.get(key, f"--{key}")
            raise ConfigError(f"--resume: {what} differs from what sweep {plan.name} started "
                              f"with ({key}, kept in {record}); resume with the same input")


def _as_now(key: str, value: Any) -> Any:
    """A recorded trial config or search space as this version writes it: a key added since
    the sweep started takes its default, so upgrading layertune does not block ``--resume``."""
    model = {"trial": TrialConfig, "space": SearchSpace}.get(key)
    if model is None or not isinstance(value, dict):
        return value
    try:
        return model.model_validate(value).model_dump(mode="json")
    except ValueError:
        return value


def chance_accuracy(plan: SweepPlan) -> float:
    """Accuracy of guessing: the search space's ``scheduler.chance_accuracy``, else one over
    the number of classes of the trial's data set."""
    given = plan.space.scheduler.chance_accuracy
    if given is not None:
        return given
    return 1.0 / plan.num_classes if plan.num_classes else trial_chance(plan.trial)


def trial_chance(trial: TrialConfig) -> float:
    """One over the number of classes of the trial's data set."""
    return 1.0 / _CLASSES.get(trial.data.name, trial.data.synthetic_classes)
