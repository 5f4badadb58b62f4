"""``layertune sweep``: Ray Tune runs the trials, Optuna proposes them, gate collapse stops them.

``run_sweep`` validates everything (trial YAML, search space, resources) before any trial
starts, runs ``train.run_trial`` once per sampled configuration through ``ray.tune.Tuner``, shows
a live table, and ends with the Pareto front of the finished trials. A sweep folder
(``./layertune-runs/NAME`` unless ``--storage``) holds, all with absolute paths:

    tune/          Ray Tune's experiment (results, checkpoints, errors)
    optuna.db      the Optuna study ``NAME`` (resumable; ``optuna-dashboard sqlite:///...``)
    mlflow.db      MLflow record (unless ``--tracking-uri``; ``none`` turns it off): a sweep
                   run, one nested run per trial, the front (see ``tracking``)
    mlflow-artifacts/  its artifacts (plots, result.json, each finished trial's compact network)
    front.json     the Pareto front, also front.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune

from .checkpoint_pruner import CheckpointPruner
from .config import ConfigError, TrialConfig, load_trial
from .front import format_table, pareto_front
from .scheduler import (
    STOP_REASON,
    STOPPED_BY,
    GateCollapseScheduler,
    RecordingASHA,
    StopReasonCallback,
)
from .search import SweepSearch, check_study, close_running, open_storage
from .space import CollapseSettings, DefineByRun, SearchSpace, check_parameters, load_space
from .space import make_sampler as _make_sampler
from .space import max_epochs as _max_epochs
from .tracking import SweepRecorder, default_uri, resolve_uri, sweep_folder

SCHEDULERS = ("gate-collapse", "asha", "fifo")
_CLASSES = {"mnist": 10, "mnist1d": 10, "digits": 10, "cifar10": 10, "cifar100": 100,
            "imagenet": 1000}


# --- the trainable (runs in a Ray worker) -----------------------------------------------------


def _train(config: dict, base: dict, threads: int, export: bool = True) -> None:
    """One Tune trial: the trial config with the searcher's dotted-key overrides applied.

    With ``export`` the last epoch's checkpoint also holds the compact network and the trial
    config (``export.save_bundle``): the driver's MLflow record copies it from there, which
    works across nodes because checkpoints are persisted to the sweep's storage.
    """
    import torch

    from .export import save_bundle
    from .train import run_trial

    torch.set_num_threads(threads)  # the trial's CPU share, not the whole node
    trial_config = TrialConfig.model_validate(base).with_overrides(config, source="sweep")

    from .train import TrialDiverged

    node = ray.get_runtime_context().get_node_id()  # several nodes may share one IP

    def report(metrics: dict, folder: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(folder) if folder else None
        tune.report({**metrics, "node_id": node}, checkpoint=checkpoint)

    # Tune retries every error from its last checkpoint (--max-failures), which is right for a
    # lost worker or node and pointless for a loss that went NaN: that one fails at once.
    diverged = Path(tune.get_context().get_trial_dir(), "diverged.txt")
    if diverged.exists():
        raise TrialDiverged(diverged.read_text())

    def bundle(model: Any, keep: list[bool], folder: str) -> None:
        save_bundle(model, keep, trial_config.model_dump(mode="json"), folder)

    last = bundle if export else None
    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is None:
            run_trial(trial_config, report, checkpoint=True, last_checkpoint=last)
            return
        with checkpoint.as_directory() as folder:  # Tune retried the trial: go on from there
            run_trial(trial_config, report, checkpoint=True, resume_from=folder,
                      last_checkpoint=last)
    except TrialDiverged as err:
        diverged.write_text(str(err))
        raise


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# --- live view --------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class SweepMonitor(tune.Callback):
    """Keeps one row per trial and prints the live table.

    On a terminal the table is redrawn in place every ``interval`` seconds; otherwise (a log
    file, CI) one line is printed per trial that ends and the whole table every ``interval``.
    """

    def __init__(self, total: int, name: str, live: bool = True, interval: float | None = None):
        self.total = total
        self.name = name
        self.live = live
        self.interval = interval
        self.rows: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[float, str, int]] = []  # (seconds, trial, epoch) per result
        self.start = time.monotonic()
        self._printed_at = 0.0
        self._drawn = 0
        self._dirty = False

    # Ray pickles its run config (this callback included) into tuner.pkl: keep that simple.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_drawn": 0}

    def setup(self, **info) -> None:
        self.start = self._printed_at = time.monotonic()

    def _row(self, trial: Any) -> dict[str, Any]:
        row = self.rows.get(trial.trial_id)
        if row is None:
            row = {"trial": trial.trial_id, "status": "pending", "epoch": 0,
                   "config": dict(trial.config), "started_s": time.monotonic() - self.start}
            self.rows[trial.trial_id] = row
        return row

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._row(trial)["status"] = "running"
        self._dirty = True

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info) -> None:
        row = self._row(trial)
        row["status"] = "running"
        row.update({k: v for k, v in result.items()
                    if isinstance(v, int | float | str) and k != "config"})
        self.events.append((time.monotonic() - self.start, trial.trial_id,
                            int(result.get("epoch", 0))))
        self._dirty = True

    def _ended(self, trial: Any, status: str) -> None:
        row = self._row(trial)
        last = trial.last_result or {}
        row.update({k: v for k, v in last.items() if isinstance(v, int | float | str)})
        row["ended_s"] = time.monotonic() - self.start
        if status == "error":
            row["status"] = "error"
            row[STOPPED_BY] = "error"
            row["error_file"] = str(Path(trial.local_path or "", "error.txt"))
        elif last.get(STOPPED_BY):
            row["status"] = "stopped"
        else:
            row["status"] = "done"
        self._dirty = True
        if self.live and not sys.stdout.isatty():
            self._print_line(row)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._ended(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._ended(trial, "error")

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        tty = sys.stdout.isatty()
        interval = self.interval if self.interval is not None else (2.0 if tty else 30.0)
        if self.live and self._dirty and now - self._printed_at >= interval:
            self.draw()

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.live and sys.stdout.isatty():
            self.draw()

    # -- text ------------------------------------------------------------------------------

    def progress(self) -> str:
        rows = self.rows.values()
        ended = [r for r in rows if r["status"] in ("done", "stopped", "error")]
        stopped = sum(r["status"] == "stopped" for r in rows)
        failed = sum(r["status"] == "error" for r in rows)
        running = sum(r["status"] == "running" for r in rows)
        return (f"sweep {self.name}: {len(ended)}/{self.total} trials ended ({stopped} stopped "
                f"early, {failed} failed), {running} running, elapsed "
                f"{_clock(time.monotonic() - self.start)}")

    def table(self) -> str:
        rows = []
        for r in self.rows.values():
            status = r["status"]
            if status == "stopped":
                status = f"stopped: {r.get(STOPPED_BY, '?')}"
            active = r.get("active_layers")
            rows.append({
                "trial": r["trial"], "status": status, "epoch": r.get("epoch", 0),
                "val_acc": r.get("val_accuracy"),
                "active": f"{active}/{r.get('total_layers', '?')}" if active is not None else "-",
                "undecided": r.get("undecided_layers"),
            })
        cols = ["trial", "status", "epoch", "val_acc", "active", "undecided"]
        return format_table(rows, cols)

    def draw(self) -> None:
        text = self.progress() + "\n" + self.table()
        out = sys.stdout
        if out.isatty() and self._drawn:
            out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the old table's first line
        out.write(text + "\n")
        out.flush()
        self._drawn = text.count("\n") + 1
        self._printed_at = time.monotonic()
        self._dirty = False

    def _print_line(self, r: dict) -> None:
        why = f" by {r.get(STOPPED_BY)} ({r.get(STOP_REASON, '')})" if r["status"] == "stopped" \
            else ""
        acc = r.get("val_accuracy")
        acc_text = f"{acc:.4f}" if isinstance(acc, float) else "-"
        print(f"[{_clock(r['ended_s'])}] trial {r['trial']} {r['status']}{why} at epoch "
              f"{r.get('epoch', 0)}: val_accuracy {acc_text}, active "
              f"{r.get('active_layers', '-')}/{r.get('total_layers', '?')}", flush=True)


# --- the sweep --------------------------------------------------------------------------------


@dataclass
class SweepResult:
    name: str
    folder: Path
    study_name: str
    storage_url: str
    tracking_uri: str | None
    objectives: list[tuple[str, str]]
    parameters: list[str]
    front: list[dict[str, Any]]
    finished: list[dict[str, Any]]  # COMPLETE Optuna trials of the study (front candidates)
    trials: list[dict[str, Any]] = field(default_factory=list)  # this run's Ray trials
    events: list[tuple[float, str, int]] = field(default_factory=list)  # (s, trial, epoch)
    wall_s: float = 0.0
    interrupted: bool = False  # Ctrl-C: the sweep can go on with --resume

    @property
    def trial_epochs(self) -> int:
        return int(sum(r.get("epoch", 0) or 0 for r in self.trials))


@dataclass
class SweepPlan:
    """Everything validated and resolved before Ray starts."""

    trial_path: Path
    space_path: Path
    trial: TrialConfig
    space: SearchSpace
    name: str
    folder: Path
    samples: int
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    scheduler: str
    seed: int | None
    address: str | None
    tracking_uri: str | None
    resume: bool = False
    max_failures: int = 2

    def record(self) -> dict[str, Any]:
        """What fixes a sweep's trials: kept in ``sweep.json``, checked on ``--resume``."""
        return {"trial": self.trial.model_dump(mode="json"),
                "space": self.space.model_dump(mode="json"), "samples": self.samples,
                "scheduler": self.scheduler, "seed": self.seed}


def plan_sweep(
    trial_path: str | Path,
    space_path: str | Path,
    *,
    samples: int = 16,
    name: str | None = None,
    storage: str | Path | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_concurrent: int | None = None,
    scheduler: str = "gate-collapse",
    seed: int | None = None,
    tracking_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    max_failures: int = 2,
) -> SweepPlan:
    """Validate the input (one-line ``ConfigError`` on anything wrong) and resolve paths.

    ``overrides`` (dotted keys, as ``--set``) change the trial config before the search space
    is applied. A sweep folder that holds a sweep is only ever continued (``resume``), with
    the trial config and search space it started with; nothing is written here.
    """
    if resume and not name:
        raise ConfigError("--resume: give the --name of the sweep to continue")
    if max_failures < 0:
        raise ConfigError(f"--max-failures {max_failures}: must be >= 0")
    if samples < 1:
        raise ConfigError(f"--samples {samples}: must be at least 1")
    if not cpus_per_trial > 0:
        raise ConfigError(f"--cpus-per-trial {cpus_per_trial}: must be > 0 (e.g. 1 or 0.5)")
    if gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial}: must be >= 0 (e.g. 0.25)")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial}: above 1 it must be whole")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent {max_concurrent}: must be at least 1")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler {scheduler}: allowed: {', '.join(SCHEDULERS)}")
    trial = load_trial(trial_path, overrides)
    space = load_space(space_path)
    check_parameters(space, trial, str(space_path))
    if trial.data.root:  # trials run in their own working directory
        trial = trial.with_overrides({"data.root": str(Path(trial.data.root).resolve())},
                                     source=str(trial_path))
    if trial.device.startswith("cuda") and gpus_per_trial == 0:
        raise ConfigError(f"{trial_path}: device: {trial.device} needs --gpus-per-trial > 0 "
                          "(or device: auto)")
    if name is None:
        name = f"{Path(trial_path).stem}-{Path(space_path).stem}-" \
               f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise ConfigError(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    folder = Path(storage) if storage else Path("layertune-runs") / name
    folder = folder.expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--storage {folder}: exists and is not a folder")
    _check_writable(folder)
    plan = SweepPlan(
        trial_path=Path(trial_path).resolve(), space_path=Path(space_path).resolve(),
        trial=trial, space=space, name=name, folder=folder, samples=samples,
        cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
        max_concurrent=max_concurrent, scheduler=scheduler, seed=seed, address=address,
        tracking_uri=resolve_uri(tracking_uri, folder), resume=resume,
        max_failures=max_failures,
    )
    _check_resume(plan)
    return plan


RECORD = "sweep.json"


def _check_writable(folder: Path) -> None:
    """The sweep folder, or its nearest existing parent, must be writable (nothing created)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--storage {folder}: {existing} is not writable")


def _check_resume(plan: SweepPlan) -> None:
    """Never overwrite a sweep; resume only the one that is there, as it started."""
    record = plan.folder / RECORD
    exists = record.exists() or (plan.folder / "tune").exists()
    if exists and not plan.resume:
        raise ConfigError(f"--name {plan.name}: a sweep already exists in {plan.folder}; "
                          "continue it with --resume, or choose another --name or --storage")
    if not plan.resume:
        return
    if not (plan.folder / "tune" / "tuner.pkl").exists() or not record.exists():
        raise ConfigError(f"--resume: no sweep {plan.name} to continue in {plan.folder} "
                          "(start it without --resume)")
    try:
        started = json.loads(record.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume: {record} is unreadable ({err})") from None
    for key, value in plan.record().items():
        if started.get(key) != value:
            what = {"trial": str(plan.trial_path), "space": str(plan.space_path)}.get(
                key, f"--{key}")
            raise ConfigError(f"--resume: {what} differs from what sweep {plan.name} started "
                              f"with ({key}, kept in {record}); resume with the same input")


def chance_accuracy(trial: TrialConfig) -> float:
    classes = _CLASSES.get(trial.data.name, trial.data.synthetic_classes)
    return 1.0 / classes


def decide_by(settings: CollapseSettings, epochs: int) -> int:
    """Default: a fifth of the epochs (at least the grace epochs); docs/results.md, sweep
    efficiency, has the replays that chose it."""
    if settings.decide_by is not None:
        return settings.decide_by
    return max(settings.grace_epochs, math.ceil(epochs / 5))


def make_scheduler(plan: SweepPlan) -> Any:
    s = plan.space.scheduler
    epochs = _max_epochs(plan.space, plan.trial)
    if plan.scheduler == "gate-collapse":
        return GateCollapseScheduler(
            min_layers=s.min_layers,
            chance_accuracy=s.chance_accuracy if s.chance_accuracy is not None
            else chance_accuracy(plan.trial),
            chance_margin=s.chance_margin, grace_epochs=s.grace_epochs, margin=s.margin,
            decide_by=decide_by(s, epochs), reduction_factor=s.reduction_factor, max_t=epochs,
        )
    if plan.scheduler == "asha":
        # The same rungs as gate collapse's ASHA part, applied to every trial.
        return RecordingASHA(time_attr="epoch", metric="val_accuracy", mode="max",
                             max_t=epochs, grace_period=min(decide_by(s, epochs), epochs),
                             reduction_factor=s.reduction_factor)
    return tune.schedulers.FIFOScheduler()


def _start_ray(plan: SweepPlan) -> bool:
    """Start or join Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    address = plan.address or os.environ.get("RAY_ADDRESS")
    _check_reachable(address)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if not address:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=plan.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # Ray picks up its auth token for "auto" only; a host:port needs RAY_AUTH_MODE=token
        # set before Python starts (Ray reads it at import).
        hint = "" if not address or address == "auto" else (
            "; for a cluster with token authentication (Ray's default) set RAY_AUTH_MODE=token "
            "and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN, or use --address auto on "
            "one of its nodes")
        raise ConfigError(f"--address {address or 'local'}: cannot start or join Ray "
                          f"({first}){hint}") from None
    return True


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A host:port nobody answers at: say so now (``ray.init`` retries it for minutes)."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: use host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"--address {address}: nothing answers at {host}:{port} "
                          f"({err.strerror or err}); is the cluster up (ray start --head)?") \
            from None


def check_resources(plan: SweepPlan, nodes: list[dict] | None = None) -> None:
    """A trial asking for more than any node has would stay PENDING forever: refuse it.

    ``nodes``: the alive nodes' resource dicts (default: asked of the running Ray).
    """
    if nodes is None:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if plan.gpus_per_trial > 0 and sum(n.get("GPU", 0) for n in nodes) == 0:
        raise ConfigError(f"--gpus-per-trial {plan.gpus_per_trial:g}: the Ray cluster has no "
                          "GPU; use --gpus-per-trial 0 or join a cluster with GPUs (--address)")
    need = {"CPU": plan.cpus_per_trial, "GPU": plan.gpus_per_trial}
    if not any(all(n.get(k, 0) >= v for k, v in need.items() if v > 0) for n in nodes):
        cpu = max((n.get("CPU", 0) for n in nodes), default=0)
        gpu = max((n.get("GPU", 0) for n in nodes), default=0)
        raise ConfigError(
            f"--cpus-per-trial {plan.cpus_per_trial:g} --gpus-per-trial "
            f"{plan.gpus_per_trial:g}: no Ray node has that much (largest: {cpu:g} CPU, "
            f"{gpu:g} GPU)"
        )


def multi_node_warnings(plan: SweepPlan, nodes: int | None = None) -> list[str]:
    """What a cluster of several nodes needs that this sweep may not have.

    Trials checkpoint into the sweep folder from whichever node runs them, and a trial retried
    on another node reads its checkpoint back from there; the MLflow record is written by this
    driver, but a sqlite file next to it is only readable on this machine.
    """
    if nodes is None:
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes < 2:
        return []
    lines = [f"the Ray cluster has {nodes} nodes: the sweep folder {plan.folder} must be "
             "shared storage every node mounts at that path (NFS or similar); on a node-local "
             "disk, trials on other nodes cannot save or restore checkpoints"]
    uri = plan.tracking_uri  # None: tracking is off
    if uri is not None and (uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        lines.append(f"the MLflow record ({plan.tracking_uri or 'sqlite in the sweep folder'})"
                     " is node-local: use an MLflow server (--tracking-uri http://HOST:5000) "
                     "to browse it from other machines")
    return lines


def run_sweep(plan: SweepPlan, *, live: bool = True, interval: float | None = None,
              keep_ray: bool = False) -> SweepResult:
    """Run the sweep of ``plan`` (from ``plan_sweep``) and return its front and trials."""
    # Each epoch's checkpoint forces a snapshot of Tune's experiment state (cheap here: a few
    # KB), which Tune warns about every few seconds; the warning is noise for this tool.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's new output engine prints its own banner even when silent; the live view replaces it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow.store.db.utils", "alembic", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    started = _start_ray(plan)
    try:
        check_resources(plan)
        for line in multi_node_warnings(plan):
            print(f"warning: {line}", file=sys.stderr, flush=True)
        plan.folder.mkdir(parents=True, exist_ok=True)
        storage = open_storage(plan.folder)
        check_study(storage, plan.name, plan.space.modes)
        if not plan.resume:
            (plan.folder / RECORD).write_text(json.dumps(plan.record(), indent=1))
        return _run(plan, storage, live, interval)
    finally:
        if started and not keep_ray:
            ray.shutdown()


def _run(plan: SweepPlan, storage: optuna.storages.RDBStorage, live: bool,
         interval: float | None) -> SweepResult:
    threads = max(1, int(plan.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(_train, base=plan.trial.model_dump(mode="json"), threads=threads,
                             export=plan.tracking_uri is not None),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial},
    )
    if plan.resume:
        tuner = tune.Tuner.restore(str(plan.folder / "tune"), trainable,
                                   resume_unfinished=True)
        # The callbacks come back from Tune's pickle; they are the ones to talk to.
        callbacks = tuner._local_tuner.get_run_config().callbacks
        monitor = next(c for c in callbacks if isinstance(c, SweepMonitor))
        recorder = next((c for c in callbacks if isinstance(c, SweepRecorder)), None)
        monitor.live, monitor.interval = live, interval
    else:
        tuner, monitor, recorder = _new_tuner(plan, storage, trainable, live, interval)
    if recorder is not None:  # database, experiment and sweep run exist before any trial starts
        searcher = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
        searcher = getattr(searcher, "search_alg", None)  # also the restored one on --resume
        if isinstance(searcher, SweepSearch):
            recorder.numbers = searcher.optuna_number
        recorder.prepare()
        recorder.start()
    if live:
        print(f"layertune sweep {plan.name}: {plan.samples} trials of {plan.trial_path.name} "
              f"over {plan.space_path.name}, scheduler {plan.scheduler}, "
              f"{plan.cpus_per_trial:g} CPU + {plan.gpus_per_trial:g} GPU per trial; "
              f"Ray has {_resources_text()}"
              + (f"; resuming from {plan.folder}" if plan.resume else ""), flush=True)
    # Tune saves its experiment state every >= 10 s by default; every second, a resume repeats
    # at most a second of work and CheckpointPruner frees old checkpoints soon after.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    t0 = time.monotonic()
    try:
        tuner.fit()
    finally:
        if recorder is not None:  # Tune's experiment end closed the record; this is the net
            recorder.close()
    wall = time.monotonic() - t0
    ended = len(optuna.load_study(study_name=plan.name, storage=storage).get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    interrupted = ended < plan.samples
    if not interrupted:
        close_running(storage, plan.name)  # nothing of this sweep stays RUNNING in Optuna
    if live and not sys.stdout.isatty():
        monitor.draw()
    result = collect(plan, storage, list(monitor.rows.values()), wall)
    result.events = list(monitor.events)
    result.interrupted = interrupted
    write_front(result)
    if recorder is not None:
        recorder.log_summary({"trials_this_run": len(result.trials),
                              "trial_epochs_this_run": result.trial_epochs, "wall_s": wall})
    return result


def _new_tuner(plan: SweepPlan, storage: optuna.storages.RDBStorage, trainable: Any,
               live: bool, interval: float | None
               ) -> tuple[Any, SweepMonitor, SweepRecorder | None]:
    space = plan.space
    seed = plan.seed if plan.seed is not None else space.sampler.seed
    searcher = SweepSearch(
        DefineByRun(space), metric=space.metrics, mode=space.modes,
        sampler=_make_sampler(space.sampler, seed), study_name=plan.name, storage=storage,
    )
    scheduler = make_scheduler(plan)
    monitor = SweepMonitor(plan.samples, plan.name, live=live, interval=interval)
    recorder = None
    if plan.tracking_uri is not None:
        chance = space.scheduler.chance_accuracy
        recorder = SweepRecorder(
            plan.tracking_uri, plan.name, plan.folder,
            objectives=list(zip(space.metrics, space.modes, strict=True)),
            chance=chance if chance is not None else chance_accuracy(plan.trial),
            parameters=list(space.parameters), files=[plan.trial_path, plan.space_path],
            trial_config=plan.trial.model_dump(mode="json"), params={
                "trial": plan.trial_path, "space": plan.space_path, "samples": plan.samples,
                "scheduler": plan.scheduler, "sampler": space.sampler.name, "seed": seed,
                "cpus_per_trial": plan.cpus_per_trial, "gpus_per_trial": plan.gpus_per_trial,
                "max_concurrent": plan.max_concurrent, "max_failures": plan.max_failures,
            })
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=plan.samples,
            max_concurrent_trials=plan.max_concurrent, trial_dirname_creator=_trial_dirname,
            # a trial's worker process goes on to the next trial instead of a new process
            # importing torch again: 12 short digits trials took 21 s instead of 51 s
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(plan.folder), verbose=0,
            callbacks=[StopReasonCallback(scheduler), monitor,
                       CheckpointPruner(plan.folder / "tune"), *([recorder] if recorder else [])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # the pruner deletes
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        ),
    )
    return tuner, monitor, recorder


def _resources_text() -> str:
    r = ray.cluster_resources()
    return f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU"


def collect(plan: SweepPlan, storage: optuna.storages.BaseStorage, trials: list[dict],
            wall: float) -> SweepResult:
    """The front over every COMPLETE trial of the study (this run and earlier ones)."""
    study = optuna.load_study(study_name=plan.name, storage=storage)
    objectives = list(zip(plan.space.metrics, plan.space.modes, strict=True))
    finished = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        row = {"trial": t.number, "ray_trial": t.user_attrs.get("ray_trial_id")}
        row.update(t.params)
        row.update({k: v for k, v in t.user_attrs.items() if k in ("flops", "epoch", "params")})
        row.update(dict(zip(plan.space.metrics, t.values, strict=True)))
        finished.append(row)
    front = [finished[i] for i in pareto_front(finished, objectives)]
    front.sort(key=lambda r: tuple(-r[m] if d == "max" else r[m] for m, d in objectives))
    return SweepResult(
        name=plan.name, folder=plan.folder, study_name=plan.name,
        storage_url=str(storage.url), tracking_uri=plan.tracking_uri, objectives=objectives,
        parameters=list(plan.space.parameters), front=front, finished=finished, trials=trials,
        wall_s=wall,
    )


def front_columns(result: SweepResult) -> list[str]:
    metrics = [m for m, _ in result.objectives]
    extra = [c for c in ("flops",) if c not in metrics]
    return ["trial", "ray_trial", *result.parameters, *metrics, *extra]


def write_front(result: SweepResult) -> None:
    cols = front_columns(result)
    (result.folder / "front.json").write_text(json.dumps(
        {"objectives": result.objectives, "front": result.front}, indent=2))
    with open(result.folder / "front.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.front)


def summary(result: SweepResult) -> str:
    objectives = ", ".join(f"{m} {d}" for m, d in result.objectives)
    ended = result.trials
    stopped = sum(r["status"] == "stopped" for r in ended)
    failed = sum(r["status"] == "error" for r in ended)
    lines = [
        "",
        f"Pareto front ({objectives}) of {len(result.finished)} finished trials "
        f"({stopped} stopped early, {failed} failed this run; {result.trial_epochs} "
        f"trial-epochs in {_clock(result.wall_s)}):",
        format_table(result.front, front_columns(result)) if result.front
        else "(empty: no trial finished)",
        "",
        "recorded in:",
        f"  front         {result.folder / 'front.json'} (and front.csv)",
        f"  Optuna study  {result.study_name} in {result.storage_url}",
        f"                (optuna-dashboard {result.storage_url})",
        f"  Ray results   {result.folder / 'tune'}",
        f"  MLflow        {result.tracking_uri} (experiment {result.name})" if
        result.tracking_uri else "  MLflow        off (--tracking-uri none)",
    ]
    if result.tracking_uri:  # how to read it back (the commands' defaults where they apply)
        where = "" if result.tracking_uri == default_uri(sweep_folder(result.name)) else \
            f" --tracking-uri {result.tracking_uri}"
        lines += [f"                layertune front {result.name}{where}",
                  f"                layertune export {result.name}{where} --knee -o model.pt"]
        if result.tracking_uri == default_uri(result.folder):
            lines += [f"                layertune ui {result.name} --storage {result.folder}"]
    errors = [r for r in ended if r["status"] == "error"]
    if errors:
        lines.append("failed trials:")
        lines += [f"  {r['trial']}: {r.get('error_file', '')}" for r in errors]
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``layertune sweep`` (the CLI wires them to ``sweep_command``)."""
    parser.add_argument("trial", help="trial YAML (see trials/)")
    parser.add_argument("--space", required=True, help="search-space YAML (see search_spaces/)")
    parser.add_argument("--samples", type=int, default=16, help="trials to run (default 16)")
    parser.add_argument("--name", help="sweep and Optuna study name (default TRIAL-SPACE-time)")
    parser.add_argument("--storage", help="sweep folder (default ./layertune-runs/NAME)")
    parser.add_argument("--address", help="Ray cluster to join ('auto', or host:port; default: "
                        "RAY_ADDRESS, else a local Ray sized to this machine)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C",
                        help="CPUs per trial, fractions allowed (default 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="G",
                        help="GPUs per trial, fractions allowed (default 0)")
    parser.add_argument("--max-concurrent", type=int, metavar="K",
                        help="trials at a time (default: as many as resources allow)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="gate-collapse",
                        help="early stopping (default gate-collapse)")
    parser.add_argument("--seed", type=int, help="sampler seed (overrides the search space)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI: an MLflow server "
                        "(http://host:port) or a database (default sqlite:///<sweep folder>/"
                        "mlflow.db); 'none' records nothing")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep --name after its driver stopped (Ctrl-C, a "
                        "crash): finished trials stay, running ones go on from their checkpoint")
    parser.add_argument("--max-failures", type=int, default=2, metavar="F",
                        help="retries of a trial whose worker or node died, from its last "
                        "checkpoint (default 2)")


def sweep_command(args: argparse.Namespace) -> int:
    """``layertune sweep``: 0 when trials finished, 1 when none did, 2 on bad input."""
    try:
        plan = plan_sweep(
            args.trial, args.space, samples=args.samples, name=args.name,
            storage=args.storage, address=args.address, cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
            scheduler=args.scheduler, seed=args.seed, tracking_uri=args.tracking_uri,
            resume=args.resume, max_failures=args.max_failures,
        )
        result = run_sweep(plan)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.interrupted:
        print(f"\nsweep {plan.name} interrupted; everything so far is kept in {plan.folder}."
              f"\ncontinue it with: layertune sweep {plan.trial_path} --space "
              f"{plan.space_path} --name {plan.name} --storage {plan.folder} --resume",
              flush=True)
        return 130
    print(summary(result), flush=True)
    return 0 if result.front else 1
