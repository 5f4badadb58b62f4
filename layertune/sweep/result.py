"""What a sweep leaves: the Pareto front of its finished trials, on disk and as a summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..contract import SEARCH_RECORDED, front_columns, front_order
from ..front import format_table, pareto_front, write_csv
from ..tracking import default_uri, sweep_folder
from .monitor import ERRORED, STOPPED, clock
from .plan import SweepPlan


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: the front over every finished trial of the study (a resumed
    sweep's earlier runs included) and the trials of this run."""

    name: str
    folder: Path
    study_name: str
    storage_url: str
    tracking_uri: str | None
    objectives: list[tuple[str, str]]
    parameters: list[str]
    front: list[dict[str, Any]]
    finished: list[dict[str, Any]]  # COMPLETE Optuna trials of the study (front candidates)
    trials: list[dict[str, Any]] = field(default_factory=list)  # this run's live-table rows
    events: list[tuple[float, str, int]] = field(default_factory=list)  # (s, trial, epoch)
    wall_s: float = 0.0
    interrupted: bool = False  # Ctrl-C: the sweep can go on with --resume
    ray_results: str = ""  # Tune's experiment: the folder's tune/, or in object storage

    @property
    def trial_epochs(self) -> int:
        return int(sum(r.get("epoch", 0) or 0 for r in self.trials))

    @property
    def columns(self) -> list[str]:
        """The front's columns, as in every front table (``contract.front_columns``)."""
        return front_columns(self.objectives, self.parameters)


def collect(plan: SweepPlan, storage: optuna.storages.BaseStorage, trials: list[dict],
            wall: float) -> SweepResult:
    """The front over every COMPLETE trial of the study (this run and earlier ones).

    A row: the trial's ids, searched values, objective values (Optuna's) and the other numbers
    its last report left on the Optuna trial (``contract.SEARCH_RECORDED``).
    """
    study = optuna.load_study(study_name=plan.name, storage=storage)
    metrics = plan.space.metrics
    objectives = list(zip(metrics, plan.space.modes, strict=True))
    finished = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        row = {"trial": t.number, "ray_trial": t.user_attrs.get("ray_trial_id")}
        row.update(t.params)
        row.update({k: t.user_attrs[k] for k in SEARCH_RECORDED
                    if k not in metrics and k in t.user_attrs})
        row.update(dict(zip(metrics, t.values, strict=True)))
        finished.append(row)
    front = [finished[i] for i in pareto_front(finished, objectives)]
    front.sort(key=front_order(objectives))
    return SweepResult(
        name=plan.name, folder=plan.folder, study_name=plan.name,
        storage_url=str(storage.url), tracking_uri=plan.tracking_uri, objectives=objectives,
        parameters=list(plan.space.parameters), front=front, finished=finished, trials=trials,
        wall_s=wall, ray_results=plan.storage.join("tune"),
    )


def write_front(result: SweepResult) -> None:
    """``front.json`` (objectives and rows) and ``front.csv`` in the sweep folder."""
    (result.folder / "front.json").write_text(json.dumps(
        {"objectives": result.objectives, "front": result.front}, indent=2))
    write_csv(result.front, result.columns, result.folder / "front.csv")


def summary(result: SweepResult) -> str:
    """The end of ``layertune sweep``: the front, and where everything is recorded."""
    objectives = ", ".join(f"{m} {d}" for m, d in result.objectives)
    ended = result.trials
    stopped = sum(r["status"] == STOPPED for r in ended)
    failed = sum(r["status"] == ERRORED for r in ended)
    lines = [
        "",
        f"Pareto front ({objectives}) of {len(result.finished)} finished trials "
        f"({stopped} stopped early, {failed} failed this run; {result.trial_epochs} "
        f"trial-epochs in {clock(result.wall_s)}):",
        format_table(result.front, result.columns) if result.front
        else "(empty: no trial finished)",
        "",
        "recorded in:",
        f"  front         {result.folder / 'front.json'} (and front.csv)",
        f"  Optuna study  {result.study_name} in {result.storage_url}",
        f"                (optuna-dashboard {result.storage_url})",
        f"  Ray results   {result.ray_results or result.folder / 'tune'}",
        f"  MLflow        {result.tracking_uri} (experiment {result.name})" if
        result.tracking_uri else "  MLflow        off (--tracking-uri none)",
    ]
    if result.tracking_uri:  # how to read it back (the commands' defaults where they apply)
        where = "" if result.tracking_uri == default_uri(sweep_folder(result.name)) else \
            f" --tracking-uri {result.tracking_uri}"
        lines += [f"                layertune front {result.name}{where}",
                  f"                layertune export {result.name}{where} --knee -o model.pt2"]
        if result.tracking_uri == default_uri(result.folder):
            lines += [f"                layertune ui {result.name} --storage {result.folder}"]
    errors = [r for r in ended if r["status"] == ERRORED]
    if errors:
        lines.append("failed trials:")
        lines += [f"  {r['trial']}: {r.get('error_file', '')}" for r in errors]
    return "\n".join(lines)
