"""Early gate collapse: a Ray Tune scheduler that stops trials whose gates settle badly.

Ray hands a scheduler a flattened *copy* of each result, so a scheduler cannot write into the
result that Ray stores. Each scheduler here keeps its stop decisions in ``stops``;
``StopReasonCallback`` (a Tune callback, run after the scheduler and before Ray's loggers, which
the controller allows to edit the result in place) copies ``stopped_by`` and ``stop_reason`` into
the stored result. The searcher then sees them in the trial's last result and tells Optuna the
trial was pruned.
"""

from __future__ import annotations

import math
import pickle
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from .contract import ASHA, DEGENERATE, DOMINATED, STOP_REASON, STOPPED_BY
from .front import dominates

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController


class GateCollapseScheduler(FIFOScheduler):
    """Stops trials once their gates have collapsed to an unpromising depth.

    Every trial reports per epoch ``epoch``, ``val_accuracy``, ``active_layers`` and
    ``collapsed`` (1 when every gate is exactly 0 or 1). The rule, applied to each result of a
    trial against the results the other trials reported at the same epoch:

    * **Collapsed** trial (``collapsed == 1``): its final depth is known.

      - *Degenerate* collapse stops it: ``active_layers < min_layers``; or, from epoch
        ``grace_epochs`` on, ``val_accuracy <= chance_accuracy + chance_margin``.
      - *Dominated* collapse stops it, from epoch ``grace_epochs`` on: at the same epoch
        another trial reported ``val_accuracy >= its val_accuracy + margin`` with
        ``active_layers <=`` its own (Pareto dominance at equal budget; with ``margin == 0``
        one of the two must be strictly better). Whichever of the two reported that epoch
        first: a trial that ran ahead and is dominated by a result arriving after its own
        stops at its next result (unless that is its last), and its results after that epoch
        judge no other trial from then on. What it did before it was overtaken (stopping
        others, finishing) still depends on which trial ran ahead. Before ``grace_epochs``
        a collapsed trial's accuracy says little: right after an early decision it dips by
        an amount that does not rank the final networks (a 1-section cnn1d trial at 0.12 is
        beaten by a 0-section one at 0.16, and ends at 0.96 against 0.6; docs/results.md).
      - Otherwise it runs on (and is judged again at its next epoch).

    * **Undecided** trial (some gate strictly between 0 and 1): runs on until ``decide_by``
      epochs. From then on it is judged like ASHA, but on both objectives: at the rungs
      ``decide_by * reduction_factor**k`` it stops when at least ``n / reduction_factor`` of the
      ``n`` trials (collapsed or not) that reported at that rung before it dominate it (no
      lower ``val_accuracy``, no more ``active_layers``, one of them strictly). With equal
      depths this is ASHA's cut (keep the top ``1/reduction_factor`` by accuracy); a trial
      that is pruning, and so briefly less accurate, is not cut by deeper, more accurate ones.

    Every stop is recorded in ``stops[trial_id]`` as ``stopped_by`` (``degenerate``,
    ``dominated`` or ``asha``) and ``stop_reason`` (one line); ``StopReasonCallback`` writes
    both into the trial's result, and the sweep's searcher reports such trials to Optuna as
    pruned, so they never land on the Pareto front. A trial's last result (epoch ``max_t``, or
    its own ``epochs``), after which it ends on its own, is never turned into a stop.

    Args:
        min_layers: fewer active sections than this at collapse is degenerate (0: never; a
            network with no sections left is a point of the front like any other).
        chance_accuracy: the accuracy of guessing (``1 / classes``).
        chance_margin: accuracies up to ``chance_accuracy + chance_margin`` are near chance.
        grace_epochs: the first epoch at which a collapsed trial may be stopped for its
            accuracy (near chance or dominated).
        margin: the accuracy lead by which another trial dominates a collapsed one.
        decide_by: epochs an undecided trial runs before ASHA may judge it.
        reduction_factor: ASHA's rung spacing and cut (keeps the top ``1/reduction_factor``).
        max_t: the epochs a trial runs (a searched ``epochs`` in the trial's config wins): a
            result at that epoch ends the trial on its own and is never turned into a stop.
        time_attr, metric, layers_attr, collapsed_attr: the result keys the rule reads.
    """

    def __init__(
        self,
        *,
        min_layers: int = 0,
        chance_accuracy: float = 0.1,
        chance_margin: float = 0.05,
        grace_epochs: int = 2,
        margin: float = 0.01,
        decide_by: int = 5,
        reduction_factor: float = 3.0,
        max_t: int | None = None,
        time_attr: str = "epoch",
        metric: str = "val_accuracy",
        layers_attr: str = "active_layers",
        collapsed_attr: str = "collapsed",
    ) -> None:
        if decide_by < 1 or grace_epochs < 1:
            raise ValueError("decide_by and grace_epochs must be >= 1")
        if reduction_factor <= 1:
            raise ValueError("reduction_factor must be > 1")
        if margin < 0 or chance_margin < 0 or min_layers < 0:
            raise ValueError("margin, chance_margin and min_layers must be >= 0")
        super().__init__()
        self.min_layers = min_layers
        self.chance_accuracy = chance_accuracy
        self.chance_margin = chance_margin
        self.grace_epochs = grace_epochs
        self.margin = margin
        self.decide_by = decide_by
        self.reduction_factor = reduction_factor
        self.max_t = max_t
        self._time_attr = time_attr
        self._metric = metric
        self._layers_attr = layers_attr
        self._collapsed_attr = collapsed_attr
        # epoch -> trial_id -> (accuracy, active sections): the equal-budget table.
        self._by_epoch: dict[int, dict[str, tuple[float, float]]] = {}
        # rung epoch -> trial_id -> (accuracy, active sections) (ASHA part).
        self._rungs: dict[int, dict[str, tuple[float, float]]] = {}
        self._last_epoch: dict[str, int] = {}
        # epoch -> the trials whose result at that epoch was collapsed (judged for dominance)
        self._collapsed: dict[int, set[str]] = {}
        # trial_id -> the reason a later result dominated it: a stop at its next result
        self._dominated_later: dict[str, str] = {}
        self._ended: set[str] = set()
        self.stops: dict[str, dict[str, Any]] = {}

    # Tune passes the TuneConfig metric/mode here; the rule's metric is fixed by the
    # constructor (a multi-objective sweep has no single TuneConfig metric).
    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True

    def on_trial_result(
        self, tune_controller: TuneController, trial: Trial, result: dict
    ) -> str:
        trial_id = trial.trial_id
        if trial_id in self.stops:
            return TrialScheduler.STOP
        epoch = result.get(self._time_attr)
        if epoch is None or self._metric not in result or self._layers_attr not in result:
            return TrialScheduler.CONTINUE
        epoch = int(epoch)
        if self._last_epoch.get(trial_id) == epoch:
            return TrialScheduler.CONTINUE  # a repeated result (e.g. after a restore)
        config = trial.config if isinstance(trial.config, dict) else {}
        last = config.get("epochs", self.max_t)
        ends_now = bool(result.get("done")) or (last is not None and epoch >= int(last))
        overtaken = self._dominated_later.pop(trial_id, None)
        if overtaken and not ends_now and math.isfinite(float(result[self._metric])):
            # stopped as at the epoch it was dominated: this result judges nobody
            self.stops[trial_id] = {STOPPED_BY: DOMINATED, STOP_REASON: overtaken,
                                    "epoch": epoch}
            return TrialScheduler.STOP
        if ends_now:
            self._ended.add(trial_id)
        verdict = None if ends_now else self.judge(trial_id, result)
        self._record(trial_id, result)
        self._mark_dominated_by(trial_id, result)
        if verdict is None:
            return TrialScheduler.CONTINUE
        stopped_by, reason = verdict
        self.stops[trial_id] = {STOPPED_BY: stopped_by, STOP_REASON: reason, "epoch": epoch}
        return TrialScheduler.STOP

    def judge(self, trial_id: str, result: dict) -> tuple[str, str] | None:
        """The rule for one result: ``(stopped_by, reason)`` or ``None`` to continue."""
        epoch = int(result[self._time_attr])
        acc = float(result[self._metric])
        active = float(result[self._layers_attr])
        if not math.isfinite(acc):
            return None  # the trial itself fails on a NaN loss
        if int(result.get(self._collapsed_attr, 0)) == 1:
            if active < self.min_layers:
                return DEGENERATE, (
                    f"collapsed to {active:g} active sections < min_layers {self.min_layers}"
                )
            if epoch < self.grace_epochs:
                return None
            near = self.chance_accuracy + self.chance_margin
            if acc <= near:
                return DEGENERATE, (
                    f"collapsed with val_accuracy {acc:.4f} <= chance {self.chance_accuracy:g}"
                    f" + {self.chance_margin:g} at epoch {epoch}"
                )
            for other, (o_acc, o_active) in self._by_epoch.get(epoch, {}).items():
                if other != trial_id and self._dominates(o_acc, o_active, acc, active):
                    return DOMINATED, self._dominance_reason(other, epoch, o_acc, o_active,
                                                             acc, active)
            return None
        rung = self._rung(epoch)
        if rung is None or trial_id in self._rungs.get(rung, {}):
            return None
        recorded = [v for k, v in self._rungs.get(rung, {}).items() if k != trial_id]
        better = sum(dominates((-o_acc, o_active), (-acc, active)) for o_acc, o_active in recorded)
        if better and better >= len(recorded) / self.reduction_factor:
            return ASHA, (
                f"undecided ({int(result.get('undecided_layers', -1))} gates) at epoch {epoch}:"
                f" {better} of {len(recorded)} trials at this rung dominate val_accuracy "
                f"{acc:.4f} with {active:g} active sections"
            )
        return None

    def _dominates(self, o_acc: float, o_active: float, acc: float, active: float) -> bool:
        better = o_acc > acc or o_active < active
        return o_acc >= acc + self.margin and o_active <= active and better

    def _dominance_reason(self, other: str, epoch: int, o_acc: float, o_active: float,
                          acc: float, active: float) -> str:
        return (f"trial {other} at epoch {epoch}: val_accuracy {o_acc:.4f} >= {acc:.4f} + "
                f"{self.margin:g} with {o_active:g} <= {active:g} active sections")

    def _mark_dominated_by(self, trial_id: str, result: dict) -> None:
        """Marks the collapsed trials that reported this epoch before ``result`` and that it
        dominates: each stops at its next result."""
        epoch = int(result[self._time_attr])
        acc = float(result[self._metric])
        active = float(result[self._layers_attr])
        if epoch < self.grace_epochs or not math.isfinite(acc):
            return
        for other in self._collapsed.get(epoch, set()) - {trial_id}:
            if other in self.stops or other in self._ended or other in self._dominated_later:
                continue
            o_acc, o_active = self._by_epoch[epoch][other]
            if self._dominates(acc, active, o_acc, o_active):
                self._dominated_later[other] = self._dominance_reason(
                    trial_id, epoch, acc, active, o_acc, o_active
                ) + f" (reported after {other} had run ahead)"
                self._withdraw(other, after=epoch)

    def _withdraw(self, trial_id: str, after: int) -> None:
        """Takes a trial's results after epoch ``after`` out of the tables that judge others."""
        for epoch in range(after + 1, self._last_epoch.get(trial_id, after) + 1):
            self._by_epoch.get(epoch, {}).pop(trial_id, None)
            self._collapsed.get(epoch, set()).discard(trial_id)
            self._rungs.get(epoch, {}).pop(trial_id, None)

    def _rung(self, epoch: int) -> int | None:
        """``epoch`` if it is a rung, ``round(decide_by * reduction_factor**k)``, else None."""
        k = 0
        while (milestone := round(self.decide_by * self.reduction_factor**k)) < epoch:
            k += 1
        return epoch if milestone == epoch else None

    def _record(self, trial_id: str, result: dict) -> None:
        epoch = int(result[self._time_attr])
        acc = float(result[self._metric])
        if not math.isfinite(acc):
            return
        self._last_epoch[trial_id] = epoch
        active = float(result[self._layers_attr])
        self._by_epoch.setdefault(epoch, {})[trial_id] = (acc, active)
        collapsed = self._collapsed.setdefault(epoch, set())
        if int(result.get(self._collapsed_attr, 0)) == 1:
            collapsed.add(trial_id)
        else:
            collapsed.discard(trial_id)
        rung = self._rung(epoch)
        if rung is not None:
            self._rungs.setdefault(rung, {}).setdefault(trial_id, (acc, active))

    def on_trial_complete(
        self, tune_controller: TuneController, trial: Trial, result: dict
    ) -> None:
        self._dominated_later.pop(trial.trial_id, None)
        self._ended.add(trial.trial_id)
        if result and all(k in result for k in (self._metric, self._time_attr,
                                                self._layers_attr)):
            if self._last_epoch.get(trial.trial_id) != int(result[self._time_attr]):
                self._record(trial.trial_id, result)
                self._mark_dominated_by(trial.trial_id, result)

    def stop_record(self, trial_id: str) -> dict[str, Any] | None:
        return self.stops.get(trial_id)

    def debug_string(self) -> str:
        counts: dict[str, int] = {}
        for s in self.stops.values():
            counts[s[STOPPED_BY]] = counts.get(s[STOPPED_BY], 0) + 1
        return f"Using GateCollapse: stopped {counts or 'none'}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def __setstate__(self, state: dict) -> None:
        # a sweep started before these tables existed resumes from its pickled scheduler
        state.setdefault("_collapsed", {})
        state.setdefault("_dominated_later", {})
        state.setdefault("_ended", set())
        self.__dict__.update(state)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class RecordingASHA(AsyncHyperBandScheduler):
    """Ray's ASHA, keeping a ``stops`` record like ``GateCollapseScheduler`` (for comparison).

    Use ``stop_last_trials=False`` (the default here) so that a trial reaching ``max_t`` ends on
    its own instead of being "stopped".
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("stop_last_trials", False)
        super().__init__(**kwargs)
        self.stops: dict[str, dict[str, Any]] = {}

    def on_trial_result(
        self, tune_controller: TuneController, trial: Trial, result: dict
    ) -> str:
        if trial.trial_id in self.stops:
            return TrialScheduler.STOP
        if result.get("done"):
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            t = result.get(self._time_attr)
            self.stops[trial.trial_id] = {
                STOPPED_BY: ASHA,
                STOP_REASON: f"{self._metric} {result.get(self._metric)} below the ASHA cutoff "
                f"at {self._time_attr} {t}",
                "epoch": t,
            }
        return action

    def stop_record(self, trial_id: str) -> dict[str, Any] | None:
        return self.stops.get(trial_id)


class StopReasonCallback(Callback):
    """Writes the scheduler's ``stopped_by`` / ``stop_reason`` into the result Ray stores.

    Tune calls callbacks after the scheduler has decided and before it stores the result as the
    trial's last result (and before its own CSV/JSON loggers, which come after user callbacks),
    so the searcher's ``on_trial_complete`` and ``result.json`` both carry the reason.
    """

    def __init__(self, scheduler: TrialScheduler) -> None:
        self.scheduler = scheduler

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict,
                        **info) -> None:
        record = getattr(self.scheduler, "stop_record", lambda _: None)(trial.trial_id)
        if record is not None:
            result[STOPPED_BY] = record[STOPPED_BY]
            result[STOP_REASON] = record[STOP_REASON]
