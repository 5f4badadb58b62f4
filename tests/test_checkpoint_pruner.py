"""CheckpointPruner: a checkpoint goes only once the saved experiment state cannot name it."""

from __future__ import annotations

import os
from pathlib import Path

from ray.tune import Checkpoint

from layertune.checkpoint_pruner import CheckpointPruner

T = 1_800_000_000.0  # when the experiment state was saved


def make(tmp_path: Path, ages: list[float], state: bool = True) -> list[Path]:
    """Checkpoints written ``ages`` seconds before (negative: after) the state was saved."""
    if state:
        saved = tmp_path / "experiment_state-x.json"
        saved.write_text("{}")
        os.utime(saved, (T, T))
    folders = []
    for i, age in enumerate(ages):
        folder = tmp_path / "trial_a" / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        os.utime(folder, (T - age, T - age))
        folders.append(folder)
    return folders


def prune(tmp_path: Path, folders: list[Path]) -> list[str]:
    CheckpointPruner(tmp_path, margin_s=30).on_checkpoint(
        iteration=0, trials=[], trial=None, checkpoint=Checkpoint.from_directory(folders[-1]))
    return sorted(p.name for p in (tmp_path / "trial_a").iterdir())


def test_keeps_the_newest_checkpoint_the_state_may_name_and_all_later_ones(tmp_path):
    folders = make(tmp_path, [100, 60, 20, -5])
    # written before T - 30: 0 and 1; the state may name 1, so only 0 goes
    assert prune(tmp_path, folders) == [f.name for f in folders[1:]]


def test_keeps_everything_while_no_state_is_old_enough(tmp_path):
    folders = make(tmp_path, [20, 10, -5])
    assert prune(tmp_path, folders) == [f.name for f in folders]


def test_keeps_everything_before_any_state_is_saved(tmp_path):
    folders = make(tmp_path, [100, 60, 20], state=False)
    assert prune(tmp_path, folders) == [f.name for f in folders]
