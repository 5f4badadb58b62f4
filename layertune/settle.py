"""Settled trials: a trial ends before its last epoch once its accuracy has stopped moving.

The rule (docs/algorithm.md, "Settled trials"), applied after each epoch's report: with
``settle.std > 0``, a trial whose last ``settle.epochs`` reports, each with the structure fixed
(``collapsed``), have validation accuracies whose population standard deviation is below
``settle.std``, and whose last report is at epoch ``settle.from_epoch`` or later, has settled:
the trial then trains ``settle.cooldown`` more epochs with its learning rate falling linearly to
0 (``optim.cool_down``: the end of its schedule, brought forward) and ends, as if that were its
final epoch (the compact network is exported from it, a sweep counts the trial finished). It is
Ray Tune's ``TrialPlateauStopper`` rule (``np.std`` of the last ``num_results``) restricted to a
fixed structure, run by the trial itself so that the epoch it ends on is known before its
checkpoint is written.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .config import SettleConfig


def settled(history: Sequence[dict], rule: SettleConfig) -> bool:
    """Whether the trial whose reports are ``history`` (oldest first) settles at the last one."""
    if rule.std <= 0.0 or len(history) < rule.epochs:
        return False
    last = history[-rule.epochs:]
    if int(last[-1]["epoch"]) < rule.from_epoch or not all(r.get("collapsed") for r in last):
        return False
    return statistics.pstdev(float(r["val_accuracy"]) for r in last) < rule.std


def settled_at(history: Sequence[dict], rule: SettleConfig) -> int | None:
    """The epoch at which the trial whose reports are ``history`` settled, if it has."""
    for n in range(rule.epochs, len(history) + 1):
        if settled(history[:n], rule):
            return int(history[n - 1]["epoch"])
    return None
