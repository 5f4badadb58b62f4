"""Old trial checkpoints deleted only once the saved experiment state no longer needs them.

Ray's ``CheckpointConfig(num_to_keep=1)`` deletes a trial's previous checkpoint as soon as the
next one registers, but the experiment state that ``Tuner.restore`` reads is saved every few
seconds: a driver killed in between leaves a state pointing at a deleted checkpoint, and that
trial cannot resume ("Could not recover from checkpoint as it does not exist on storage
anymore", seen in tests/test_faults.py). So Ray keeps every checkpoint and this callback prunes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ray.tune import Callback
from ray.tune.experiment import Trial


class CheckpointPruner(Callback):
    """After each checkpoint of a trial, deletes its checkpoints that no saved state can name.

    The experiment state on storage was written at time ``S`` (its file's mtime). It names, for
    each trial, a checkpoint that existed then. Every checkpoint older than the newest one
    written before ``S - margin_s`` is therefore unreachable and is deleted; that one and all
    newer ones stay. ``margin_s`` covers the delay between a checkpoint being written and the
    driver registering it.
    """

    def __init__(self, experiment_dir: Path, margin_s: float = 10.0) -> None:
        self.experiment_dir = Path(experiment_dir)
        self.margin_s = margin_s

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint,
                      **info) -> None:
        states = list(self.experiment_dir.glob("experiment_state-*.json"))
        if not states:
            return
        saved = max(p.stat().st_mtime for p in states) - self.margin_s
        folder = Path(checkpoint.path).parent
        written = sorted(p for p in folder.glob("checkpoint_*") if p.is_dir())  # by index
        named = [i for i, p in enumerate(written) if p.stat().st_mtime < saved]
        for old in written[:named[-1]] if named else []:
            shutil.rmtree(old, ignore_errors=True)
