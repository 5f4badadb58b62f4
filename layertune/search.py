"""Optuna through Ray Tune's ``OptunaSearch``: multi-objective, persistent, honest about stops.

Ray's ``OptunaSearch`` tells Optuna a trial stopped by a scheduler is COMPLETE with its partial
values, and leaves an Optuna trial RUNNING when an objective is missing or NaN. ``SweepSearch``
tells Optuna instead:

* PRUNED for a trial whose last result carries ``stopped_by`` (or that never ran), so stopped
  trials never reach the Pareto front (``study.best_trials``);
* FAIL for an errored trial or one whose objectives are missing or not finite;
* COMPLETE with the objective values of the last result otherwise.

A proposal whose parameters equal an earlier trial's is not run: every trial runs with the
trial config's seed, so it would repeat that trial exactly (NSGA-II's crossover copies a parent
now and then). It is told PRUNED with ``repeat_of`` and the sampler is asked again.

The study lives in an sqlite file (``optuna.db``) so that it can be resumed (same storage and
``study_name``) and opened with ``optuna-dashboard sqlite:///.../optuna.db``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from .config import ConfigError
from .contract import (
    ERROR,
    NOT_STARTED,
    REPEAT_OF,
    SEARCH_RECORDED,
    STOP_REASON,
    STOPPED_BY,
    UNFINISHED,
)

logger = logging.getLogger(__name__)

# repeats pruned in one sweep; after that they run (a small discrete space that has no new
# configuration left would otherwise fill the study with them)
MAX_REPEATS = 20

def open_storage(folder: str | Path) -> optuna.storages.RDBStorage:
    """An sqlite RDB storage in ``folder/optuna.db`` (absolute path)."""
    path = Path(folder).resolve() / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def check_study(storage: optuna.storages.BaseStorage, study_name: str, modes: list[str]) -> int:
    """Trials already in the study ``study_name`` (0 if new).

    A resumed study must have the same objective directions.
    """
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    have = ["max" if d == optuna.study.StudyDirection.MAXIMIZE else "min"
            for d in storage.get_study_directions(study_id)]
    if have != list(modes):
        raise ConfigError(
            f"--name {study_name}: the Optuna study there has objectives {have}; the search "
            f"space asks for {list(modes)} (choose another --name or --storage)"
        )
    return len(storage.get_all_trials(study_id, deepcopy=False))


def close_running(storage: optuna.storages.BaseStorage, study_name: str,
                  reason: str = UNFINISHED) -> int:
    """Tell FAIL for every trial of the study still RUNNING; how many there were.

    Called once a sweep has ended (not when it was interrupted: a resumed sweep goes on with
    them). One sweep per study at a time, so a RUNNING trial then will never report.
    """
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    closed = 0
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, STOPPED_BY, reason)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        closed += 1
    return closed


class SweepSearch(OptunaSearch):
    """``OptunaSearch`` that reports stopped trials as PRUNED and broken ones as FAIL.

    After ``Tuner.restore`` it also adopts the study's orphans: trials Optuna handed out after
    Tune's last snapshot of the searcher, which a killed driver never told Tune about. They are
    proposed again (same parameters) before anything new is asked, so a resumed sweep loses
    and duplicates no trial.
    """

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        known = {t._trial_id for t in self._ot_trials.values()}
        self._orphans = [t._trial_id for t in self._ot_study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING,)) if t._trial_id not in known]

    def suggest(self, trial_id: str) -> dict | None:
        orphans = getattr(self, "_orphans", [])
        if trial_id not in self._ot_trials and orphans:
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphans.pop(0))
        if trial_id in self._ot_trials:  # handed out before: as it was
            return super().suggest(trial_id)
        while True:
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            twin = self._twin(ot_trial)
            repeats = getattr(self, "_repeats", 0)
            if twin is None or repeats >= MAX_REPEATS:
                return config
            ot_trial.set_user_attr(REPEAT_OF, twin)
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            del self._ot_trials[trial_id]
            self._repeats = repeats + 1

    def _twin(self, ot_trial: optuna.Trial) -> int | None:
        """The number of an earlier trial with the same parameters (None if there is none)."""
        params = ot_trial.params
        for t in self._ot_study.get_trials(deepcopy=False):
            if (t.number != ot_trial.number and t.state != TrialState.WAITING
                    and REPEAT_OF not in t.user_attrs and t.params == params):
                return t.number
        return None

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        self._completed_trials.add(trial_id)
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            return  # told before a driver crash that Tune's last snapshot did not see
        state, values = self._outcome(result, error)
        attrs = {"ray_trial_id": trial_id}
        if result:
            attrs.update({k: result[k] for k in SEARCH_RECORDED if k in result})
            for key in (STOPPED_BY, STOP_REASON):
                if result.get(key):
                    attrs[key] = result[key]
        if error:
            attrs[STOPPED_BY] = ERROR
        elif result is None:
            attrs[STOPPED_BY] = NOT_STARTED
        for key, value in attrs.items():
            ot_trial.set_user_attr(key, value)
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:  # never let bookkeeping stop the sweep
            logger.warning("Optuna tell failed for trial %s: %s", trial_id, exc)
            try:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - already recorded: nothing more to do
                pass

    def _outcome(self, result: dict | None, error: bool) -> tuple[TrialState, Any]:
        if error:
            return TrialState.FAIL, None
        if not result or result.get(STOPPED_BY):
            return TrialState.PRUNED, None
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]
        if any(not isinstance(v, int | float) or not math.isfinite(v) for v in values):
            return TrialState.FAIL, None
        values = [float(v) for v in values]
        return TrialState.COMPLETE, values if isinstance(self.metric, list) else values[0]

    def optuna_number(self, trial_id: str) -> int | None:
        """The Optuna trial number of Ray trial ``trial_id`` (None if this searcher never asked)."""
        ot_trial = self._ot_trials.get(trial_id)
        return None if ot_trial is None else ot_trial.number

    @property
    def study(self) -> optuna.Study:
        return self._ot_study
