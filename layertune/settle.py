"""Settled trials: a trial ends before its last epoch once its accuracy has stopped moving.

The rule (docs/algorithm.md, "Settled trials"), applied after each epoch's report: with
``settle.std > 0``, a trial whose last ``settle.epochs`` reports, each with the structure fixed
(``collapsed``), have validation accuracies whose population standard deviation is below
``settle.std``, and whose last report is at epoch ``settle.from_epoch`` or later, has settled:
that report is its last, as if it were the trial's final epoch (the compact network is exported
from it, a sweep counts the trial finished). It is Ray Tune's ``TrialPlateauStopper`` rule
(``np.std`` of the last ``num_results``) restricted to a fixed structure, run by the trial
itself so that the epoch it ends on is known before its checkpoint is written.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .config import SettleConfig


def settled(history: Sequence[dict], rule: SettleConfig) -> bool:
    """Whether the trial whose reports are ``history`` (oldest first) ends at the last one."""
    if rule.std <= 0.0 or len(history) < rule.epochs:
        return False
    last = history[-rule.epochs:]
    if int(last[-1]["epoch"]) < rule.from_epoch or not all(r.get("collapsed") for r in last):
        return False
    return statistics.pstdev(float(r["val_accuracy"]) for r in last) < rule.std
