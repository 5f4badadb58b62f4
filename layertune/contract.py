"""The trial contract: what a trial reports each epoch, how it ends, how a front is laid out.

``train`` writes these keys, the scheduler reads them, the searcher tells Optuna from them, the
MLflow record logs them and the front is drawn from them; every one of those imports the names
from here. docs/design.md has the table of report keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# --- one report (one epoch) -------------------------------------------------------------------

# The numbers of a report, in the order they are logged.
REPORT_NUMBERS = (
    "epoch", "val_accuracy", "val_loss", "train_loss", "active_layers", "total_layers",
    "undecided_layers", "collapsed", "flops", "params", "train_flops", "epoch_seconds",
)
# Numbers that are counts (MLflow keeps every metric as a float; these read back as ints).
COUNTS = ("epoch", "active_layers", "total_layers", "undecided_layers", "collapsed", "flops",
          "params")
THETA = "theta"  # a list: each gate's value in section order (pruned sections: 0)
DECIDED_AT_END = "decided_at_end"  # gates the end-of-training decision set (0 before the end)
REPORT_EXTRA = (THETA, DECIDED_AT_END)  # the rest of every report (theta is logged per gate)
# The numbers a search space may name as objectives.
OBJECTIVE_METRICS = (
    "val_accuracy", "val_loss", "train_loss", "active_layers", "undecided_layers", "flops",
    "params", "train_flops", "epoch_seconds",
)
# Kept on each Optuna trial (user attributes) for the front table and dashboards.
SEARCH_RECORDED = ("epoch", "val_accuracy", "active_layers", "total_layers", "undecided_layers",
                   "flops", "params", "train_flops")

# --- how a trial ends -------------------------------------------------------------------------

STOPPED_BY = "stopped_by"  # result key: who stopped the trial (one of the reasons below)
STOP_REASON = "stop_reason"  # result key: one line saying why
# stopped_by values: the scheduler's rules, then the sweep's own
DEGENERATE = "degenerate"
DOMINATED = "dominated"
ASHA = "asha"
ERROR = "error"  # the trial raised
NOT_STARTED = "not started"  # ended before its first report
UNFINISHED = "unfinished"  # the sweep ended (interrupted, driver killed) before the trial did
# Optuna user attribute of a proposal equal to an earlier trial's parameters: never run (the
# trial's seed is the same, so it would repeat that trial), pruned; the value is that trial's
# number
REPEAT_OF = "repeat_of"

# A trial's status in the MLflow record and in every table read back from it.
STATUS = "status"
RUNNING = "running"
FINISHED = "finished"
STOPPED = "stopped"
FAILED = "failed"
LOST = "lost"  # started after the last state a resumed sweep came back from; its run deleted
ENDED = (FINISHED, STOPPED, FAILED)

# --- the front ----------------------------------------------------------------------------------

GROUPS = ("front", "finished", "stopped", "failed")  # what a trial is in a front table or plot
_FRONT_EXTRA = ("epoch", "active_layers", "total_layers", "flops", "params")


def front_columns(objectives: Sequence[tuple[str, str]], parameters: Sequence[str]) -> list[str]:
    """Columns of every front table and ``front.csv``: ids, searched values, objectives, then
    the other numbers that place a network (depth, cost)."""
    metrics = [m for m, _ in objectives]
    extra = [c for c in _FRONT_EXTRA if c not in metrics]
    return ["trial", "ray_trial", *parameters, *metrics, *extra]


def front_order(objectives: Sequence[tuple[str, str]]) -> Any:
    """Sort key of a front: best first in the first objective, ties by the next ones."""
    return lambda r: tuple(-r[m] if d == "max" else r[m] for m, d in objectives)
