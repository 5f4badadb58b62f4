"""Read a sweep back from MLflow, pick one network on its front, export it after a re-check.

``load_sweep`` works from any machine that reaches the tracking URI, during or after the sweep:
the front is recomputed from the trial runs (finished trials only). Picking:

* ``--trial ID``: any finished trial, by Optuna trial number, Ray trial id or MLflow run id;
* ``--knee``: the front's knee (``front.knee``: each objective scaled to [0, 1] over the
  front, the point nearest the utopia point where every objective is at its best);
* ``--min-accuracy X``: among front trials with ``val_accuracy >= X``, the best in the other
  objectives (compared in the order the search space lists them), ties to higher accuracy.

``export_network`` downloads the trial's compact network (``model/``), rebuilds it from its
state dict (``weights_only=True``), re-evaluates it on the validation split of the trial's own
config (same seed, same split) and writes it for a runtime (``formats``: torch.export by
default, ONNX or TorchScript) only if the accuracy is within ``tolerance`` points of the
recorded one.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, TrialConfig, first_line
from .contract import FINISHED, STATUS, STOPPED_BY
from .front import knee
from .tracking import (
    BASELINE_GROUP,
    KIND,
    MODEL_DIR,
    PARENT,
    group_trials,
    open_client,
    trial_row,
)


class ExportError(RuntimeError):
    """The chosen network cannot be exported as recorded (missing files, accuracy mismatch)."""


@dataclass
class SweepRecord:
    name: str
    uri: str
    parent: Any  # the sweep's MLflow run
    objectives: list[tuple[str, str]]
    parameters: list[str]
    trials: list[dict] = field(default_factory=list)

    @property
    def groups(self) -> dict[str, list[dict]]:
        return group_trials(self.trials, self.objectives)

    @property
    def front(self) -> list[dict]:
        return self.groups["front"]


def load_sweep(name: str, uri: str) -> SweepRecord:
    """The record of sweep ``name`` at ``uri``; ``ConfigError`` when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return _load_sweep(name, uri)
    except MlflowException as err:  # e.g. a database URI that does not answer
        first = first_line(err)
        raise ConfigError(f"--tracking-uri {uri}: {first}") from None


def _load_sweep(name: str, uri: str) -> SweepRecord:
    client = open_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise ConfigError(f"sweep {name}: not recorded in {uri} (sweeps there: "
                          f"{', '.join(names) or 'none'})")
    # a sweep, or a from-scratch baseline (its depths read back as trials)
    parents = list(client.search_runs([exp.experiment_id], f"tags.`{KIND}` = 'sweep'",
                                      max_results=50)) or \
        list(client.search_runs([exp.experiment_id], f"tags.`{KIND}` = '{BASELINE_GROUP}'",
                                max_results=50))
    if not parents:
        raise ConfigError(f"sweep {name}: its MLflow experiment in {uri} has no sweep run")
    parent = max(parents, key=lambda r: r.info.start_time or 0)
    params = parent.data.params
    objectives = [tuple(o.split(":", 1)) for o in params.get("objectives", "").split(",") if o]
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], f"tags.`{PARENT}` = '{parent.info.run_id}'",
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    trials = sorted((trial_row(r) for r in runs),
                    key=lambda r: (r["trial"] is None, r["trial"] or 0, r["ray_trial"] or ""))
    parameters = [p for p in params.get("parameters", "").split(",") if p]
    return SweepRecord(name=name, uri=uri, parent=parent, objectives=objectives,
                       parameters=parameters, trials=trials)


# --- picking ----------------------------------------------------------------------------------


def pick(record: SweepRecord, *, trial: str | None = None, use_knee: bool = False,
         min_accuracy: float | None = None) -> dict:
    """The row of the trial to export (see the module docstring); ``ConfigError`` if none."""
    if trial is not None:
        matches = [r for r in record.trials if trial in (str(r["trial"]), r["ray_trial"],
                                                         r["run_id"])]
        if not matches:
            known = ", ".join(str(r["trial"]) for r in record.trials[:20])
            raise ConfigError(f"--trial {trial}: no such trial in sweep {record.name} (Optuna "
                              f"numbers there: {known or 'none'}; Ray ids and run ids work too)")
        row = matches[0]
        if row[STATUS] != FINISHED:
            why = f" ({row.get('stopped_by')})" if row.get(STOPPED_BY) else ""
            raise ConfigError(f"--trial {trial}: that trial is {row[STATUS]}{why}; only finished "
                              "trials have a compact network")
        return row
    front = record.front
    if not front:
        raise ConfigError(f"sweep {record.name}: no finished trial, so no front to pick from")
    if use_knee:
        return front[knee(front, record.objectives)]
    if min_accuracy is None:
        raise ConfigError("choose one of --trial ID, --knee, --min-accuracy X")
    if not 0.0 <= min_accuracy <= 1.0:
        raise ConfigError(f"--min-accuracy {min_accuracy}: a fraction in [0, 1], e.g. 0.95")
    if "val_accuracy" not in [m for m, _ in record.objectives]:
        raise ConfigError(f"--min-accuracy: sweep {record.name} does not optimise val_accuracy "
                          f"(objectives: {record.objectives})")
    ok = [r for r in front if r["val_accuracy"] >= min_accuracy]
    if not ok:
        best = max(r["val_accuracy"] for r in front)
        raise ConfigError(f"--min-accuracy {min_accuracy}: no trial on the front reaches it "
                          f"(best val_accuracy there: {best:.4f})")
    others = [(m, d) for m, d in record.objectives if m != "val_accuracy"]
    return min(ok, key=lambda r: (*[r[m] if d == "min" else -r[m] for m, d in others],
                                  -r["val_accuracy"]))


# --- re-checking and writing ------------------------------------------------------------------


def validation_accuracy(net: Any, config: TrialConfig, device: str = "cpu") -> float:
    """Accuracy of ``net`` on the validation split of ``config`` (its seed picks the split)."""
    import torch

    from .factory import trial_data

    dev = torch.device(device)
    torch.manual_seed(config.seed)  # as Trial does: a data factory's split may draw from it
    data = trial_data(config, dev)
    net = net.to(dev).eval()
    correct, count = 0, 0
    with torch.no_grad():
        for x, y in data.val:
            x, y = x.to(dev), y.to(dev)
            correct += int((net(x).argmax(1) == y).sum())
            count += y.numel()
    return correct / max(count, 1)


def _trial_config(record: SweepRecord, row: dict, folder: Path) -> TrialConfig:
    """The config the trial ran with: saved next to its network (else rebuilt from the
    sweep's resolved trial config and the trial's searched values)."""
    saved = folder / "trial_config.json"
    if saved.is_file():
        return TrialConfig.model_validate(json.loads(saved.read_text()))
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=record.uri)
    base = client.download_artifacts(record.parent.info.run_id, "config/trial.resolved.json",
                                     str(folder))
    config = TrialConfig.model_validate(json.loads(Path(base).read_text()))
    return config.with_overrides({k: row[k] for k in record.parameters if k in row},
                                 source=f"trial {row['trial']}")


def export_network(record: SweepRecord, row: dict, out: str | Path, *, device: str = "cpu",
                   tolerance_points: float = 0.1, fmt: str = "export") -> dict[str, Any]:
    """Re-evaluate ``row``'s compact network and write it as ``fmt`` (``formats``) to ``out``.

    Returns what was checked; raises ``ExportError`` (nothing written) when the network is
    missing or its validation accuracy is more than ``tolerance_points`` from the record.
    """
    import os

    from mlflow import MlflowClient

    from .export import MODEL_STEM, input_shape, load_compact, saved_input_dtype
    from .factory import FactoryError
    from .formats import write_network

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files

    recorded = row.get("val_accuracy")
    if not isinstance(recorded, int | float) or not math.isfinite(recorded):
        raise ExportError(f"trial {row['trial']}: no recorded val_accuracy to check against")
    client = MlflowClient(tracking_uri=record.uri)
    with tempfile.TemporaryDirectory(prefix="layertune-export-") as tmp:
        try:
            folder = Path(client.download_artifacts(row["run_id"], MODEL_DIR, tmp))
        except Exception as err:  # MLflow raises several kinds for a missing artifact
            raise ExportError(f"trial {row['trial']}: its compact network ({MODEL_DIR}/) cannot "
                              f"be downloaded from {record.uri}: {err}") from None
        if not (folder / f"{MODEL_STEM}.state.pt").is_file():
            raise ExportError(f"trial {row['trial']}: no compact network recorded in "
                              f"{MODEL_DIR}/ (run {row['run_id']})")
        config = _trial_config(record, row, folder)
        try:  # a factory's network and data: the user's module must import here too
            net = load_compact(folder / MODEL_STEM)  # state dict loaded with weights_only=True
            measured = validation_accuracy(net, config, device)
        except FactoryError as err:
            raise ExportError(f"trial {row['trial']}: {err}; run export where the trial's "
                              "factories import") from None
        in_shape = input_shape(folder / MODEL_STEM)
        dtype = saved_input_dtype(folder / MODEL_STEM)
    gap = abs(measured - recorded) * 100.0
    checked = {"trial": row["trial"], "ray_trial": row["ray_trial"], "run_id": row["run_id"],
               "recorded_val_accuracy": recorded, "val_accuracy": measured, "gap_points": gap}
    if gap > tolerance_points:
        raise ExportError(
            f"trial {row['trial']}: re-evaluated val_accuracy {measured:.4f} differs from the "
            f"recorded {recorded:.4f} by {gap:.2f} points (> {tolerance_points:g}); not written")
    out = write_network(net, in_shape, Path(out).expanduser().resolve(), fmt, dtype)
    return {**checked, "path": str(out)}
