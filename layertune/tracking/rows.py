"""What one report and one trial look like in MLflow, and how they read back as rows.

A report is one ``log_batch`` at step = epoch: the contract's ``REPORT_NUMBERS`` and each gate
as ``theta/NN``. A trial is one run whose tags say what it is (``KIND``, ``RAY_TRIAL``,
``OPTUNA_TRIAL``, ``STATUS``); read back, it is one row: ids, status, searched values (params)
and the latest value of each number. The report keys are ``layertune.contract``'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..contract import (
    COUNTS,
    FAILED,
    FINISHED,
    REPORT_NUMBERS,
    RUNNING,
    STATUS,
    STOPPED,
    STOPPED_BY,
    THETA,
    front_order,
)
from ..contract import front_columns as contract_front_columns
from ..front import pareto_front

# Tags of a run.
KIND = "layertune.kind"  # what a run is, one of the four below
SWEEP_KIND = "sweep"  # a sweep's parent run
TRIAL_KIND = "trial"  # a sweep trial's run (its child)
BASELINE_GROUP = "baseline-group"  # a from-scratch baseline's parent run (layertune baseline)
BASELINE_KIND = "baseline"  # one depth of the baseline (its child)
SWEEP = "layertune.sweep"
PARENT = "mlflow.parentRunId"
RAY_TRIAL = "ray_trial_id"
OPTUNA_TRIAL = "optuna_trial"
ERROR_TAG = "error"  # why a trial failed (its stopped_by is contract.ERROR, also "error")

# MLflow's limits.
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
PARAM_MAX = 6000  # characters of a param value
TAG_MAX = 7900  # characters of a tag value (MLflow allows 8000)


def gate_key(index: int, count: int) -> str:
    """``theta/NN``: zero-padded to two digits (three from 100 gates on), so keys sort."""
    return f"{THETA}/{index:0{max(2, len(str(count - 1)))}d}"


def report_metrics(result: dict, step: int, stamp_ms: int) -> list[Any]:
    """The MLflow metrics of one report: the contract's numbers and each gate (finite only)."""
    from mlflow.entities import Metric

    out = [Metric(k, float(result[k]), stamp_ms, step) for k in REPORT_NUMBERS
           if isinstance(result.get(k), int | float) and math.isfinite(result[k])]
    theta = result.get(THETA) or []
    out += [Metric(gate_key(i, len(theta)), float(t), stamp_ms, step)
            for i, t in enumerate(theta) if math.isfinite(t)]
    return out


def reports_from_history(by_step: dict[int, dict[str, float]]) -> list[dict]:
    """Reports back from MLflow's metric history (step -> key -> value), ``report_metrics``
    undone: ``epoch`` is the step, the ``theta/NN`` gates become one ``theta`` list."""
    out = []
    for step in sorted(by_step):
        values = by_step[step]
        gates = sorted(k for k in values if k.startswith(f"{THETA}/"))
        row = {k: v for k, v in values.items() if not k.startswith(f"{THETA}/")}
        row["epoch"] = step
        row[THETA] = [values[k] for k in gates]
        out.append(row)
    return out


def log_params(client: Any, run_id: str, values: dict[str, Any]) -> None:
    """``values`` as params of the run: strings cut to ``PARAM_MAX``, in batches MLflow takes."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:PARAM_MAX]) for k, v in values.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH])


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``a/b/c`` keys (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(text: str) -> Any:
    """An MLflow param (always a string) back as the number or bool it was."""
    try:
        v = json.loads(text)
    except ValueError:
        return text
    return v if isinstance(v, int | float | bool) else text


def trial_row(run: Any) -> dict[str, Any]:
    """One trial as a row (front tables, selection): ids, status, params, latest metrics."""
    tags = run.data.tags
    number = tags.get(OPTUNA_TRIAL, "")
    row: dict[str, Any] = {
        "trial": int(number) if number.isdigit() else None,
        "ray_trial": tags.get(RAY_TRIAL), "run_id": run.info.run_id,
        STATUS: tags.get(STATUS, RUNNING), STOPPED_BY: tags.get(STOPPED_BY),
    }
    row.update({k: _value(v) for k, v in run.data.params.items()})
    # MLflow keeps every metric as a float; the counts read back as ints
    row.update({k: int(v) if k in COUNTS and float(v).is_integer() else v
                for k, v in run.data.metrics.items() if not k.startswith(f"{THETA}/")})
    return row


def front_columns(objectives: Sequence[tuple[str, str]], parameters: Sequence[str]) -> list[str]:
    """The contract's front columns, then ``run_id`` (``front.csv``, ``layertune front``)."""
    return [*contract_front_columns(objectives, parameters), "run_id"]


def group_trials(rows: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> dict[str, list]:
    """Rows by ``GROUPS``: the front of the finished trials, the dominated rest, stopped,
    failed (also a finished trial without finite objective values); running trials are in none.
    """
    finished = [r for r in rows if r[STATUS] == FINISHED and all(
        isinstance(r.get(m), int | float) and math.isfinite(r[m]) for m, _ in objectives)]
    on_front = set(pareto_front(finished, objectives))
    front = [r for i, r in enumerate(finished) if i in on_front]
    front.sort(key=front_order(objectives))
    return {
        "front": front,
        "finished": [r for i, r in enumerate(finished) if i not in on_front],
        "stopped": [r for r in rows if r[STATUS] == STOPPED],
        "failed": [r for r in rows if r[STATUS] == FAILED
                   or (r[STATUS] == FINISHED and r not in finished)],
    }


def reference_point(objectives: Sequence[tuple[str, str]], first: dict,
                    chance: float) -> list[float]:
    """The hypervolume reference, fixed from the sweep's first report.

    ``val_accuracy`` (max): chance accuracy; ``active_layers``/``undecided_layers`` (min): the
    sections gated at start plus one (so a trial keeping every section still counts); any other
    metric to maximise: 0; to minimise: twice its first reported value.
    """
    ref = []
    for metric, mode in objectives:
        if metric == "val_accuracy" and mode == "max":
            ref.append(float(chance))
        elif metric in ("active_layers", "undecided_layers") and mode == "min":
            ref.append(float(first.get("total_layers", 0)) + 1.0)
        elif mode == "max":
            ref.append(0.0)
        else:
            ref.append(2.0 * abs(float(first.get(metric, 0.0))) or 1.0)
    return ref
