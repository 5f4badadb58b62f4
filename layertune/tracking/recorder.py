"""``SweepRecorder``: the one writer of a sweep's MLflow record, a Ray Tune callback.

It routes Tune's callbacks to the sweep run (``SweepRun``) and the trial runs
(``TrialRuns``), and keeps in one place what holds for both: the record never stops the sweep
(a failed MLflow call is a warning and counts in ``errors``), the record is its own state (a
pickled recorder keeps only its settings; a resumed one finds its runs again) and nothing of
it stays RUNNING once the sweep ends.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from .rows import SWEEP_KIND, TRIAL_KIND
from .sweep_run import SweepRun, SweepSettings
from .trial_runs import TrialRuns


class SweepRecorder(tune.Callback):
    """The MLflow record of one sweep, written from the driver (see ``layertune.tracking``).

    ``prepare()`` creates the database and the experiment (call it before any trial starts:
    parallel first use of a fresh sqlite file races); ``start()`` opens the parent run (Tune's
    ``setup`` calls it too); trial runs follow Tune's callbacks; ``on_experiment_end`` writes
    the front and closes everything; ``close()`` is the safety net for a ``finally``.
    ``numbers`` maps a Ray trial id to its Optuna trial number (``SweepSearch.optuna_number``).
    ``kinds``: the ``KIND`` tags of the parent run and of its children (a sweep and its trials,
    or a baseline's group and its depths); ``reference``: the hypervolume reference, when it is
    known before the first report; ``artifacts``: where a database's artifacts go (default
    the folder's ``mlflow-artifacts``; a bucket's URI with object storage).
    """

    def __init__(self, uri: str, name: str, folder: str | Path, *,
                 objectives: Sequence[tuple[str, str]], chance: float,
                 parameters: Sequence[str] = (), files: Sequence[str | Path] = (),
                 trial_config: dict | None = None, params: dict[str, Any] | None = None,
                 command: str | None = None, kinds: tuple[str, str] = (SWEEP_KIND, TRIAL_KIND),
                 reference: Sequence[float] | None = None, artifacts: str | None = None) -> None:
        self.settings = SweepSettings(
            uri=uri, name=name, folder=Path(folder).resolve(),
            objectives=[(str(m), str(d)) for m, d in objectives], parameters=list(parameters),
            chance=float(chance), files=[Path(f).resolve() for f in files],
            trial_config=trial_config or {}, params=dict(params or {}),
            command=command or " ".join(shlex.quote(a) for a in sys.argv),
            kind=kinds[0], trial_kind=kinds[1],
            reference=[float(r) for r in reference] if reference is not None else None,
            artifacts=artifacts)
        self.numbers: Callable[[str], int | None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.sweep = SweepRun(self.settings)
        self.trials = TrialRuns(self.sweep, self._number)
        self.done = False  # the parent run has ended
        self.errors = 0  # failed MLflow calls (each printed as a warning)

    # Ray pickles the run config (callbacks included) into tuner.pkl: only the settings go in
    # (as a dict of them), the record is found again in MLflow by a resumed sweep.
    def __getstate__(self) -> dict:
        return dict(vars(self.settings))

    def __setstate__(self, state: dict) -> None:
        self.settings = SweepSettings(**state)
        self.numbers = None
        self._reset()

    @property
    def parent_id(self) -> str | None:
        """The sweep run's id; None until ``start()`` (then every callback is a no-op)."""
        return self.sweep.parent_id

    def _number(self, tid: str) -> int | None:
        return self.numbers(tid) if self.numbers else None

    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # the record must never stop the sweep
            self.errors += 1
            print(f"warning: MLflow record ({what}) failed: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)

    # -- opening -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create (or find) the database and the experiment; raises ConfigError if it can't."""
        self.sweep.prepare()

    def setup(self, **info: Any) -> None:
        self.start()

    def start(self) -> None:
        """Open the parent run: this sweep's earlier one (resume) or a new one.

        Resumed, the trial runs are found by their parent: ended ones count for the front,
        the others are open and take the reports that follow (those already logged skipped).
        """
        self.prepare()
        if self.parent_id is not None:
            return
        earlier = self.sweep.earlier()
        if earlier is None:
            self.sweep.create()
            return
        self.sweep.reopen(earlier)
        self.trials.load(self.sweep.trial_runs())

    # -- trials --------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.parent_id is not None:
            self._guard("trial start", self.trials.run, trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if self.parent_id is not None:
            self._guard("report", self._report, trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.parent_id is not None:
            self._guard("trial end", self._end_trial, trial, False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.parent_id is not None:
            self._guard("trial error", self._end_trial, trial, True)

    def _report(self, trial: Any, result: dict) -> None:
        step = self.trials.new_step(trial, result)
        if step is not None:
            self.sweep.set_reference(result)  # the sweep's first report fixes it
            self.trials.log_report(trial, step, result)

    def _end_trial(self, trial: Any, error: bool) -> None:
        self.trials.close(trial, error)
        self.sweep.log_progress(list(self.trials.rows.values()))

    # -- the end -------------------------------------------------------------------------------

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.finish({t.trial_id for t in trials})

    def finish(self, known: set[str] | None = None) -> None:
        """Close trials still open (as unfinished), write the front, end the parent run.

        ``known``: the trials Tune has. An open run whose trial Tune does not know started
        after the last experiment state a resumed sweep came back from; its Optuna trial went
        to a new trial, which has its own run, so this one is deleted (tagged ``lost``).
        """
        if self.parent_id is None or self.done:
            return
        for tid in sorted(self.trials.open - known) if known is not None else []:
            self._guard("lost trial", self.trials.delete_lost, tid)
        unfinished = sorted(self.trials.open)
        for tid in unfinished:
            self._guard("unfinished trial", self.trials.close_unfinished, tid)
        self._guard("front", self.sweep.log_front, list(self.trials.rows.values()))
        self.sweep.end("KILLED" if unfinished else "FINISHED")
        self.done = True

    def close(self) -> None:
        """Safety net (``finally``): nothing of this sweep stays RUNNING, whatever happened."""
        if self.parent_id is None or self.done:
            return
        try:
            self.finish()
        finally:
            if not self.done:
                for tid in sorted(self.trials.open):
                    self._guard("close", self.trials.kill, tid)
                self._guard("close", self.sweep.end, "KILLED")
                self.done = True

    def log_summary(self, values: dict[str, float]) -> None:
        """Extra numbers on the parent run (e.g. the sweep's wall time), step 0."""
        if self.parent_id is not None:
            self._guard("summary", self.sweep.log_summary, values)
