"""Old trial checkpoints deleted only once the saved experiment state no longer needs them.

Ray's ``CheckpointConfig(num_to_keep=1)`` deletes a trial's previous checkpoint as soon as the
next one registers, but the experiment state that ``Tuner.restore`` reads is saved every few
seconds: a driver killed in between leaves a state pointing at a deleted checkpoint, and that
trial cannot resume ("Could not recover from checkpoint as it does not exist on storage
anymore", seen in tests/test_faults.py). So Ray keeps every checkpoint and this callback prunes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ray.tune import Callback
from ray.tune.experiment import Trial


class CheckpointPruner(Callback):
    """Deletes the trial checkpoints that no saved experiment state can name.

    While a trial runs: the experiment state on storage was written at time ``S`` (its file's
    mtime) and names, for each trial, a checkpoint that existed then. Every checkpoint older
    than the newest one written before ``S - margin_s`` is unreachable and is deleted; that one
    and all newer ones stay. ``margin_s`` covers the delay between a checkpoint being written
    and the driver registering it.

    Once a trial has ended and the saved state records it as ended (so a resume will not
    restore it), only its last checkpoint stays: it holds the trial's final network.
    """

    def __init__(self, experiment_dir: Path, margin_s: float = 10.0) -> None:
        self.experiment_dir = Path(experiment_dir)
        self.margin_s = margin_s
        self.ended: dict[str, Path] = {}  # trial id -> folder, ended but not yet cut
        self._read: tuple[float, set[str]] = (0.0, set())  # state mtime -> ended trial ids

    def _newest_state(self) -> Path | None:
        states = list(self.experiment_dir.glob("experiment_state-*.json"))
        return max(states, key=lambda p: p.stat().st_mtime) if states else None

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint,
                      **info) -> None:
        state = self._newest_state()
        if state is None:
            return
        saved = state.stat().st_mtime - self.margin_s
        written = checkpoints(Path(checkpoint.path).parent)
        named = [i for i, p in enumerate(written) if p.stat().st_mtime < saved]
        for old in written[:named[-1]] if named else []:
            shutil.rmtree(old, ignore_errors=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info) -> None:
        self.ended[trial.trial_id] = Path(trial.path)

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        if not self.ended:
            return
        for trial_id in self._ended_in_saved_state() & set(self.ended):
            keep_last(self.ended.pop(trial_id))

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        self.on_step_end(0, trials)  # Tune saves the final state just before this call

    def _ended_in_saved_state(self) -> set[str]:
        """Trial ids the newest saved state records as TERMINATED (read once per save)."""
        state = self._newest_state()
        if state is None:
            return set()
        mtime = state.stat().st_mtime
        if mtime != self._read[0]:
            self._read = (mtime, terminated_trials(state))
        return self._read[1]


def terminated_trials(state: Path) -> set[str]:
    """Ids of the trials an ``experiment_state-*.json`` of Ray 2.60 records as TERMINATED.

    A file being written, or laid out otherwise, gives none: nothing is deleted on a guess.
    """
    try:
        ended = set()
        for entry in json.loads(state.read_text())["trial_data"]:
            trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
            if trial["status"] == "TERMINATED":
                ended.add(trial["trial_id"])
        return ended
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return set()


def checkpoints(folder: Path) -> list[Path]:
    """A trial's checkpoint folders, oldest first (by index)."""
    return sorted(p for p in folder.glob("checkpoint_*") if p.is_dir())


def keep_last(folder: Path) -> None:
    for old in checkpoints(folder)[:-1]:
        shutil.rmtree(old, ignore_errors=True)
