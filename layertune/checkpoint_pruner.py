"""Old trial checkpoints deleted only once the saved experiment state no longer needs them.

Ray's ``CheckpointConfig(num_to_keep=1)`` deletes a trial's previous checkpoint as soon as the
next one registers, but the experiment state that ``Tuner.restore`` reads is saved every few
seconds: a driver killed in between leaves a state pointing at a deleted checkpoint, and that
trial cannot resume ("Could not recover from checkpoint as it does not exist on storage
anymore", seen in tests/test_faults.py). So Ray keeps every checkpoint and this callback prunes.
"""

from __future__ import annotations

import json
import posixpath
import sys
from pathlib import Path

import pyarrow.fs as pafs
from ray.tune import Callback
from ray.tune.experiment import Trial

from .contract import STOPPED_BY


class CheckpointPruner(Callback):
    """Deletes the trial checkpoints that no saved experiment state can name.

    While a trial runs: the experiment state on storage was written at time ``S`` (its file's
    mtime) and names, for each trial, a checkpoint that existed then. Every checkpoint older
    than the newest one written before ``S - margin_s`` is unreachable and is deleted; that one
    and all newer ones stay. ``margin_s`` covers the delay between a checkpoint being written
    and the driver registering it.

    Once a trial has ended and the saved state records it as ended (so a resume will not
    restore it), only its last checkpoint stays: it holds the trial's final network.

    ``experiment`` is a path in ``filesystem`` (default: the local disk), so the rule is the
    same in an object-storage bucket, where a checkpoint's time is that of its newest file.
    """

    def __init__(self, experiment: str | Path, margin_s: float = 10.0,
                 filesystem: pafs.FileSystem | None = None) -> None:
        self.fs = filesystem or pafs.LocalFileSystem()
        self.experiment = str(Path(experiment).resolve()) if filesystem is None \
            else str(experiment)
        self.margin_s = margin_s
        self.ended: dict[str, str] = {}  # trial id -> folder, ended but not yet cut
        # (mtime, size) of the state read last -> the trial ids it records as ended
        self._read: tuple[tuple[float, int], set[str]] = ((0.0, 0), set())

    def _newest_state(self) -> tuple[str, float, int] | None:
        """The newest ``experiment_state-*.json``: its path, mtime (s) and size."""
        states = [(f.path, f.mtime.timestamp(), f.size) for f in _listing(self.fs, self.experiment)
                  if f.base_name.startswith("experiment_state-") and f.base_name.endswith(".json")
                  and f.mtime is not None]
        return max(states, key=lambda s: s[1]) if states else None

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint,
                      **info) -> None:
        state = self._newest_state()
        if state is None:
            return
        saved = state[1] - self.margin_s
        written = checkpoints(self.fs, posixpath.dirname(checkpoint.path.rstrip("/")))
        named = [i for i, (_, mtime) in enumerate(written) if mtime < saved]
        for old, _ in written[:named[-1]] if named else []:
            _delete(self.fs, old)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info) -> None:
        self.ended[trial.trial_id] = trial.path

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        if not self.ended:
            return
        for trial_id in self._ended_in_saved_state() & set(self.ended):
            keep_last(self.fs, self.ended.pop(trial_id))

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        # Tune saved the final state just before this call, with every checkpoint registered:
        # it names no checkpoint but the last of a trial that has ended for good. Such a trial
        # keeps only its last one now: its last result is ``done`` or a scheduler stopped it
        # (the state may still call it running: it ended as the loop stopped), or the state
        # records it as ended (it ended before a resume: this callback never heard of it, and
        # Ray's saved copy of its last result lacks ``done``). Trials Tune stops only because
        # the experiment was interrupted are left alone (a resume goes on from the checkpoint
        # the state names), and nothing is cut while an error unwinds Tune's loop (no final
        # state was saved).
        if sys.exc_info()[0] is not None:
            return
        self._read = ((0.0, 0), set())  # the final state may share the last one's second
        recorded = self._ended_in_saved_state()
        for trial in trials:
            last = trial.last_result or {}
            if trial.status == "TERMINATED" and trial.path and (
                    last.get("done") or last.get(STOPPED_BY) or trial.trial_id in recorded):
                keep_last(self.fs, trial.path)
        self.ended.clear()

    def _ended_in_saved_state(self) -> set[str]:
        """Trial ids the newest saved state records as TERMINATED (read once per save: a new
        time or size)."""
        state = self._newest_state()
        if state is None:
            return set()
        path, mtime, size = state
        if (mtime, size) != self._read[0]:
            try:
                with self.fs.open_input_stream(path) as f:
                    text = f.read().decode()
            except OSError:
                return set()
            self._read = ((mtime, size), terminated_trials(text))
        return self._read[1]

    def __setstate__(self, state: dict) -> None:
        # a sweep started before object storage was supported pickled a local Path
        if "experiment_dir" in state:
            state["experiment"] = str(state.pop("experiment_dir"))
            state["fs"] = pafs.LocalFileSystem()
            state["ended"] = {k: str(v) for k, v in state["ended"].items()}
        self.__dict__.update(state)


def terminated_trials(state: str) -> set[str]:
    """Ids of the trials an ``experiment_state-*.json`` of Ray 2.60 (its text) records as
    TERMINATED.

    A file being written, or laid out otherwise, gives none: nothing is deleted on a guess.
    """
    try:
        ended = set()
        for entry in json.loads(state)["trial_data"]:
            trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
            if trial["status"] == "TERMINATED":
                ended.add(trial["trial_id"])
        return ended
    except (ValueError, KeyError, TypeError, IndexError):
        return set()


def checkpoints(fs: pafs.FileSystem, folder: str) -> list[tuple[str, float]]:
    """A trial's checkpoint folders, oldest first (by index), each with the time it was
    written: its newest file's mtime (a bucket keeps none for folders), else its own."""
    written: dict[str, float] = {}
    for f in _listing(fs, folder, recursive=True):
        relative = f.path[len(folder.rstrip("/")) + 1:]
        top = relative.split("/", 1)[0]
        if top.startswith("checkpoint_") and (f.type == pafs.FileType.File or "/" not in
                                              relative):
            mtime = f.mtime.timestamp() if f.mtime is not None else float("-inf")
            written[top] = max(written.get(top, float("-inf")), mtime)
    return [(posixpath.join(folder, name), written[name]) for name in sorted(written)]


def keep_last(fs: pafs.FileSystem, folder: str) -> None:
    for old, _ in checkpoints(fs, folder)[:-1]:
        _delete(fs, old)


def _listing(fs: pafs.FileSystem, folder: str, recursive: bool = False) -> list[pafs.FileInfo]:
    try:
        return fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True,
                                                  recursive=recursive))
    except OSError:
        return []


def _delete(fs: pafs.FileSystem, folder: str) -> None:
    try:
        fs.delete_dir(folder)
    except OSError:
        pass  # gone already, or the storage refused: the next call tries again
