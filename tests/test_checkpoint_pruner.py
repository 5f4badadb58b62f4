"""CheckpointPruner: a checkpoint goes only once no saved experiment state can name it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

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


def ended_trial(folder: Path, trial_id: str) -> SimpleNamespace:
    """What the pruner reads of a Ray trial that ended: its id and its folder."""
    return SimpleNamespace(trial_id=trial_id, path=str(folder))


def save_state(tmp_path: Path, statuses: dict[str, str]) -> None:
    """An experiment state as Ray 2.60 writes it, reduced to the trials' ids and statuses."""
    rows = [[json.dumps({"trial_id": t, "status": s}), "{}"] for t, s in statuses.items()]
    (tmp_path / "experiment_state-x.json").write_text(json.dumps({"trial_data": rows}))


def test_an_ended_trial_keeps_only_its_last_checkpoint_once_the_state_records_its_end(tmp_path):
    folders = make(tmp_path, [100, 60, 20, 15])
    pruner = CheckpointPruner(tmp_path, margin_s=30)
    pruner.on_trial_complete(iteration=0, trials=[], trial=ended_trial(folders[0].parent, "a"))
    save_state(tmp_path, {"a": "RUNNING"})  # saved before it ended: it may be restored
    pruner.on_step_end(iteration=1, trials=[])
    assert all(f.exists() for f in folders)
    save_state(tmp_path, {"a": "TERMINATED"})
    os.utime(tmp_path / "experiment_state-x.json", (T + 1, T + 1))
    pruner.on_step_end(iteration=2, trials=[])
    assert sorted(p.name for p in folders[0].parent.iterdir()) == [folders[-1].name]
    assert pruner.ended == {}


def test_an_unreadable_state_deletes_nothing(tmp_path):
    folders = make(tmp_path, [100, 60, 20])
    (tmp_path / "experiment_state-x.json").write_text('{"trial_data": [["{\\"trial_id')
    pruner = CheckpointPruner(tmp_path, margin_s=30)
    pruner.on_trial_complete(iteration=0, trials=[], trial=ended_trial(folders[0].parent, "a"))
    pruner.on_step_end(iteration=1, trials=[])
    assert all(f.exists() for f in folders)


def test_at_the_end_every_trial_ended_for_good_keeps_its_last_whatever_the_state_says(
        tmp_path):
    # Tune's final state is saved before its last trial is marked ended, and a resumed sweep's
    # pruner never heard of the trials that ended before the stop; both are cut at the end.
    # (Ray restores such a trial's last result without ``done``: the state's word is enough).
    # A trial Tune stopped because the sweep was interrupted is not: a resume goes on with it.
    save_state(tmp_path, {"a": "RUNNING", "b": "RUNNING", "c": "RUNNING", "d": "TERMINATED"})
    trials = []
    for name, last in {"a": {"done": True}, "b": {"stopped_by": "dominated"}, "c": {},
                       "d": {}}.items():
        for i, age in enumerate([100, 60, 20]):
            folder = tmp_path / f"trial_{name}" / f"checkpoint_{i:06d}"
            folder.mkdir(parents=True)
            os.utime(folder, (T - age, T - age))
        trials.append(SimpleNamespace(trial_id=name, path=str(tmp_path / f"trial_{name}"),
                                      status="TERMINATED", last_result=last))
    CheckpointPruner(tmp_path, margin_s=30).on_experiment_end(trials=trials)
    kept = {t: sorted(p.name for p in (tmp_path / f"trial_{t}").iterdir()) for t in "abcd"}
    assert kept == {"a": ["checkpoint_000002"], "b": ["checkpoint_000002"],
                    "c": ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"],
                    "d": ["checkpoint_000002"]}


def test_nothing_is_cut_at_an_end_forced_by_an_error(tmp_path):
    folders = make(tmp_path, [100, 60, 20, 15])
    ended = SimpleNamespace(trial_id="a", path=str(folders[0].parent), status="TERMINATED",
                            last_result={"done": True})
    try:
        raise RuntimeError("Tune's loop failed: it saves no final state")
    except RuntimeError:
        CheckpointPruner(tmp_path, margin_s=30).on_experiment_end(trials=[ended])
    assert all(f.exists() for f in folders)
