"""``layertune baseline TRIAL``: the from-scratch grid trained as one Ray Tune run.

Every network of ``baseline.depth_grid`` (each depth with its gates fixed, the trial's epochs;
ResNets: every equal depth per stage) is one trial of a Tune grid search over ``sections``,
with a sweep's resources (``--cpus-per-trial``, ``--gpus-per-trial``, ``--max-concurrent``,
``--address``) and MLflow record (``--tracking-uri``, the same ``SweepRecorder``): a group run
tagged ``layertune.kind = baseline-group`` and one nested run per depth tagged
``layertune.kind = baseline``. Its result, ``baseline.json`` in the baseline's folder
(``./layertune-runs/baseline-TRIAL-DIGEST`` by default; DIGEST names the resolved trial
config), is what sweeps of the same trial config beside it are compared with
(``layertune.comparison``).

A baseline already in its folder is reused, and says so; ``--recompute`` trains it again (its
earlier MLflow runs are deleted, MLflow's soft delete). An interrupted baseline writes no
``baseline.json``; the next call trains it from the start.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray import tune

from ..baseline import GridPoint, depth_grid, max_depth
from ..checkpoint_pruner import CheckpointPruner
from ..comparison import BASELINE_FILE, SECTIONS, Baseline, config_digest, load_baseline
from ..config import ConfigError, FactoryConfig, TrialConfig, load_trial
from ..front import format_table, hypervolume
from ..tracking import BASELINE_GROUP, BASELINE_KIND, SweepRecorder, resolve_uri
from .cluster import ray_for, resources_text
from .monitor import SweepMonitor
from .plan import RECORD, SweepOptions, trial_chance
from .run import _quiet
from .storage import SweepStorage
from .trainable import _train_depth, make_trainable, trial_dirname

OBJECTIVES = [("val_accuracy", "max"), ("active_layers", "min")]
# A depth's row in baseline.json: its last report's numbers
NUMBERS = ("val_accuracy", "val_loss", "active_layers", "total_layers", "flops", "params",
           "train_flops", "epoch")


@dataclass(frozen=True)
class BaselinePlan:
    """A baseline ready to train (or to reuse): input loaded, paths resolved, nothing started."""

    options: SweepOptions  # the sweep's flags that apply: resources, tracking, name, storage
    trial_path: Path
    trial: TrialConfig
    grid: list[GridPoint]
    name: str
    folder: Path
    tracking_uri: str | None
    existing: Baseline | None  # the baseline already in its folder: reused
    # for ``start_ray``: the grid exists for built-in models only, no user code to ship
    py_modules: list[str] = field(default_factory=list)

    @property
    def storage(self) -> SweepStorage:
        """Where Ray's files go (``multi_node_warnings``): the local folder."""
        return SweepStorage.at(self.folder)

    @property
    def reference(self) -> list[float]:
        """Hypervolume reference: chance accuracy, one section more than the full network."""
        return [trial_chance(self.trial), max_depth(self.trial) + 1.0]


def plan_baseline(trial_path: str | Path, *, recompute: bool = False,
                  **options: Any) -> BaselinePlan:
    """Check the input before Ray starts (one-line ``ConfigError``); ``options`` are
    ``SweepOptions`` keywords (``overrides`` as ``--set``)."""
    given = SweepOptions(**options)
    if given.storage and "://" in str(given.storage):
        raise ConfigError(f"--storage {given.storage}: a local folder (sweeps look for their "
                          "baseline in the folders beside their own)")
    if given.workers is not None:
        raise ConfigError(f"--workers-per-trial {given.workers_per_trial}: a baseline trains "
                          "each depth in one process (use --cpus-per-trial / --gpus-per-trial)")
    trial = load_trial(trial_path, given.overrides)
    if getattr(trial.data, "root", None):  # trials run in their own folder (as in a sweep)
        trial = trial.with_overrides({"data.root": str(Path(trial.data.root).resolve())},
                                     source=str(trial_path))
    if trial.device.startswith("cuda") and given.gpus_per_trial == 0:
        raise ConfigError(f"{trial_path}: device: {trial.device} needs --gpus-per-trial > 0 "
                          "(or device: auto)")
    try:
        grid = depth_grid(trial)
    except ValueError as err:
        raise ConfigError(f"{trial_path}: {err}") from None
    if isinstance(trial.data, FactoryConfig):
        raise ConfigError(f"{trial_path}: data.factory: a baseline trains on a built-in data "
                          "set (its chance accuracy sets the hypervolume reference)")
    config = trial.model_dump(mode="json")
    given = replace(given, samples=len(grid), scheduler="fifo",
                    name=given.name or f"baseline-{Path(trial_path).stem}-{config_digest(config)}")
    name = given.sweep_name(trial_path, "")
    folder = given.sweep_folder(name)
    if (folder / RECORD).exists():
        raise ConfigError(f"--name {name}: {folder} holds a sweep; choose another --name or "
                          "--storage for the baseline")
    existing = None
    if (folder / BASELINE_FILE).exists() and not recompute:
        try:
            existing = load_baseline(folder / BASELINE_FILE)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{folder / BASELINE_FILE}: unreadable ({err}); --recompute "
                              "replaces it") from None
        if existing.config != config:
            keys = _differing(existing.config, config)
            raise ConfigError(f"--name {name}: {folder / BASELINE_FILE} is the baseline of "
                              f"another trial config ({', '.join(keys[:4])} differ); choose "
                              "another --name, or --recompute to replace it")
    return BaselinePlan(options=given, trial_path=Path(trial_path).resolve(), trial=trial,
                        grid=grid, name=name, folder=folder,
                        tracking_uri=resolve_uri(given.tracking_uri, folder), existing=existing)


def run_baseline(plan: BaselinePlan, *, live: bool = True) -> Baseline | None:
    """The plan's baseline: reused when there is one (a line says so), else trained and
    written; None when interrupted before every depth ended."""
    if plan.existing is not None:
        b = plan.existing
        print(f"baseline {plan.name}: reused from {b.path} (trained {b.created}, "
              f"{len(b.rows)} depths); --recompute trains it again", flush=True)
        return b
    _quiet()
    with ray_for(plan):
        plan.folder.mkdir(parents=True, exist_ok=True)
        # an earlier interrupted (or, with --recompute, finished) run of this baseline
        shutil.rmtree(plan.folder / "tune", ignore_errors=True)
        (plan.folder / BASELINE_FILE).unlink(missing_ok=True)
        rows = _fit(plan, live)
    if rows is None:
        return None
    path = plan.folder / BASELINE_FILE
    finished = [r for r in rows if r["status"] == "finished"]
    path.write_text(json.dumps({
        "name": plan.name, "trial": str(plan.trial_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epochs": plan.trial.epochs, "objectives": OBJECTIVES, "reference": plan.reference,
        "hypervolume": hypervolume(finished, OBJECTIVES, plan.reference),
        "tracking_uri": plan.tracking_uri, "config": plan.trial.model_dump(mode="json"),
        "rows": finished, "failed": [r[SECTIONS] for r in rows if r["status"] != "finished"],
    }, indent=1))
    return load_baseline(path)


def _fit(plan: BaselinePlan, live: bool) -> list[dict] | None:
    """Tune's grid search over the depths; one row per depth, or None if interrupted."""
    recorder = _recorder(plan)
    monitor = SweepMonitor(len(plan.grid), plan.name, live=live)
    tuner = tune.Tuner(
        make_trainable(plan, _train_depth),
        param_space={SECTIONS: tune.grid_search([p.sections for p in plan.grid])},
        tune_config=tune.TuneConfig(max_concurrent_trials=plan.options.max_concurrent,
                                    trial_dirname_creator=trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(plan.folder), verbose=0,
            callbacks=[monitor, CheckpointPruner(plan.folder / "tune"),
                       *([recorder] if recorder else [])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # the pruner deletes
            failure_config=tune.FailureConfig(max_failures=plan.options.max_failures)),
    )
    if live:
        o = plan.options
        print(f"layertune baseline {plan.name}: {len(plan.grid)} depths of "
              f"{plan.trial_path.name} ({', '.join(str(p.sections) for p in plan.grid)} "
              f"sections), {plan.trial.epochs} epochs each, gates fixed; "
              f"{o.cpus_per_trial:g} CPU + {o.gpus_per_trial:g} GPU per trial; Ray has "
              f"{resources_text()}", flush=True)
    try:
        results = tuner.fit()
    finally:
        if recorder is not None:
            recorder.close()
    if live and not sys.stdout.isatty():
        monitor.draw()
    runs = recorder.trials.runs if recorder is not None else {}
    rows = []
    for result in results:
        m = dict(result.metrics or {})
        row = {SECTIONS: int(result.config[SECTIONS]),
               **{k: m[k] for k in NUMBERS if isinstance(m.get(k), int | float)},
               "wall_s": round(float(m.get("time_total_s", 0.0)), 1),
               "ray_trial": m.get("trial_id"), "run_id": runs.get(m.get("trial_id"))}
        done = row.get("epoch") == plan.trial.epochs and all(
            math.isfinite(row.get(k, math.nan)) for k, _ in OBJECTIVES)
        if result.error is None and not done:
            return None  # interrupted: this depth neither finished nor failed
        rows.append({**row, "status": "finished" if done else "failed"})
    return sorted(rows, key=lambda r: r[SECTIONS])


def _recorder(plan: BaselinePlan) -> SweepRecorder | None:
    """The MLflow record (None with ``--tracking-uri none``): a new group run, the one of an
    earlier run of this baseline deleted first."""
    if plan.tracking_uri is None:
        return None
    o = plan.options
    recorder = SweepRecorder(
        plan.tracking_uri, plan.name, plan.folder, objectives=OBJECTIVES,
        chance=plan.reference[0], parameters=[SECTIONS], files=[plan.trial_path],
        trial_config=plan.trial.model_dump(mode="json"), kinds=(BASELINE_GROUP, BASELINE_KIND),
        reference=plan.reference, params={
            "trial": plan.trial_path, "epochs": plan.trial.epochs,
            "depths": ",".join(str(p.sections) for p in plan.grid),
            "cpus_per_trial": o.cpus_per_trial, "gpus_per_trial": o.gpus_per_trial,
            "max_concurrent": o.max_concurrent, "max_failures": o.max_failures})
    recorder.prepare()
    deleted = recorder.sweep.delete_earlier()
    if deleted:
        print(f"baseline {plan.name}: {deleted} MLflow runs of its earlier run deleted "
              f"({plan.tracking_uri})", flush=True)
    recorder.start()
    return recorder


def summary(plan: BaselinePlan, baseline: Baseline) -> str:
    """The end of ``layertune baseline``: each depth, the front's hypervolume, where it is kept,
    and the sweeps beside it that it applies to."""
    cols = [SECTIONS, "val_accuracy", "flops", "train_flops", "run_id"]
    front = baseline.front(OBJECTIVES)
    lines = ["", f"from-scratch baseline {baseline.name}: {len(baseline.rows)} depths "
             f"({plan.trial.epochs} epochs each); front hypervolume "
             f"{hypervolume(front, OBJECTIVES, plan.reference):.4g} at reference "
             f"{plan.reference}", format_table(baseline.rows, cols), "", "recorded in:",
             f"  baseline      {baseline.path}",
             f"  MLflow        {plan.tracking_uri} (experiment {plan.name})" if
             plan.tracking_uri else "  MLflow        off (--tracking-uri none)"]
    sweeps = _sweeps_beside(plan)
    if sweeps:
        lines.append("sweeps of this trial config beside it (their front against it):")
        lines += [f"  layertune front {name} --storage {folder}" for name, folder in sweeps]
    return "\n".join(lines)


def _sweeps_beside(plan: BaselinePlan) -> list[tuple[str, Path]]:
    """Sweep folders next to the baseline's whose ``sweep.json`` has its trial config."""
    config = plan.trial.model_dump(mode="json")
    out = []
    for record in sorted(plan.folder.parent.glob(f"*/{RECORD}")):
        try:
            if json.loads(record.read_text()).get("trial") == config:
                out.append((record.parent.name, record.parent))
        except (OSError, ValueError):
            continue
    return out


def _differing(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested configs."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out
