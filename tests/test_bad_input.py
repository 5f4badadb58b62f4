"""Bad input to ``layertune sweep``: one line naming the input, exit code 2, nothing started,
nothing written, and an existing sweep's records untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna
import pytest
from sweep_files import assert_refused, digits_trial, prior_weight_space

TRIAL = digits_trial(epochs=2)
SPACE = prior_weight_space()

FILES = {
    "trial.yaml": TRIAL,
    "space.yaml": SPACE,
    "trial_syntax.yaml": "data: [unclosed\n",
    "trial_unknown_key.yaml": TRIAL + "optimzer: {lr: 0.1}\n",
    "trial_wrong_type.yaml": TRIAL.replace("epochs: 2", "epochs: many"),
    "trial_negative_scale.yaml": TRIAL + "method: {prior_scale: -1.0}\n",
    "trial_unknown_model.yaml": TRIAL.replace("name: mlp", "name: resnet7"),
    "trial_unknown_data.yaml": TRIAL.replace("name: digits", "name: svhn"),
    "space_syntax.yaml": "parameters: {a: [\n",
    "space_unknown_key.yaml": SPACE.replace("parameters:", "paramters:"),
    "space_low_above_high.yaml": SPACE.replace("low: 0.1, high: 1.0", "low: 1.0, high: 0.1"),
    "space_empty_range.yaml": SPACE.replace("low: 0.1, high: 1.0", "low: 0.5, high: 0.5"),
    "space_log_of_zero.yaml": SPACE.replace("low: 0.1", "low: 0.0"),
    "space_empty_choices.yaml": SPACE.replace(
        "{type: float, low: 0.1, high: 1.0, log: true}", "{type: categorical, choices: []}"),
    "space_unknown_sampler.yaml": SPACE.replace("name: random", "name: cmaes"),
    "space_unknown_metric.yaml": SPACE.replace("metric: val_accuracy", "metric: speed"),
    "space_unknown_parameter.yaml": SPACE.replace("method.prior_weight", "model.widht"),
    "space_bad_mode.yaml": SPACE.replace("mode: max", "mode: maximize"),
}

GOOD = ["trial.yaml", "--space", "space.yaml"]

CASES = {
    # trial YAML
    "trial yaml syntax": (["trial_syntax.yaml", "--space", "space.yaml"], ["trial_syntax.yaml"]),
    "trial unknown key": (["trial_unknown_key.yaml", "--space", "space.yaml"], ["optimzer"]),
    "trial wrong type": (["trial_wrong_type.yaml", "--space", "space.yaml"], ["epochs"]),
    "trial negative scale": (["trial_negative_scale.yaml", "--space", "space.yaml"],
                             ["method.prior_scale"]),
    "trial unknown model": (["trial_unknown_model.yaml", "--space", "space.yaml"],
                            ["model.name", "resnet7"]),
    "trial unknown data set": (["trial_unknown_data.yaml", "--space", "space.yaml"],
                               ["data.name", "svhn"]),
    "trial missing file": (["nope.yaml", "--space", "space.yaml"], ["nope.yaml"]),
    # search-space YAML
    "space yaml syntax": (["trial.yaml", "--space", "space_syntax.yaml"], ["space_syntax.yaml"]),
    "space unknown key": (["trial.yaml", "--space", "space_unknown_key.yaml"], ["paramters"]),
    "space low above high": (["trial.yaml", "--space", "space_low_above_high.yaml"],
                             ["method.prior_weight"]),
    "space empty range": (["trial.yaml", "--space", "space_empty_range.yaml"],
                          ["method.prior_weight"]),
    "space log of zero": (["trial.yaml", "--space", "space_log_of_zero.yaml"],
                          ["method.prior_weight"]),
    "space empty choices": (["trial.yaml", "--space", "space_empty_choices.yaml"],
                            ["method.prior_weight"]),
    "space unknown sampler": (["trial.yaml", "--space", "space_unknown_sampler.yaml"],
                              ["sampler", "cmaes"]),
    "space unknown metric": (["trial.yaml", "--space", "space_unknown_metric.yaml"], ["speed"]),
    "space unknown parameter": (["trial.yaml", "--space", "space_unknown_parameter.yaml"],
                                ["model.widht"]),
    "space bad mode": (["trial.yaml", "--space", "space_bad_mode.yaml"], ["maximize"]),
    "space missing file": (["trial.yaml", "--space", "nope.yaml"], ["nope.yaml"]),
    # command-line flags
    "unknown scheduler": ([*GOOD, "--scheduler", "hyperband"], ["--scheduler", "hyperband"]),
    "samples not a number": ([*GOOD, "--samples", "abc"], ["--samples"]),
    "no samples": ([*GOOD, "--samples", "0"], ["--samples"]),
    "negative cpus": ([*GOOD, "--cpus-per-trial", "-1"], ["--cpus-per-trial"]),
    "fractional gpus above one": ([*GOOD, "--gpus-per-trial", "1.5"], ["--gpus-per-trial"]),
    "name with a slash": ([*GOOD, "--name", "a/b"], ["--name"]),
    "negative max failures": ([*GOOD, "--max-failures", "-1"], ["--max-failures"]),
    "unreachable address": ([*GOOD, "--address", "127.0.0.1:1"], ["--address", "127.0.0.1:1"]),
    "storage under a file": ([*GOOD, "--storage", "trial.yaml/sweep"], ["--storage"]),
    "resume without a name": ([*GOOD, "--resume"], ["--resume", "--name"]),
    "resume of a sweep that does not exist": ([*GOOD, "--name", "ghost", "--resume"],
                                              ["--resume", "ghost"]),
    "existing name without resume": ([*GOOD, "--name", "existing"], ["existing", "--resume"]),
    "resume with another trial config": ([*GOOD, "--name", "existing", "--resume"],
                                         ["--resume", "differs"]),
}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Input files, and an existing sweep ``existing`` whose records must stay untouched."""
    root = tmp_path_factory.mktemp("bad")
    for name, text in FILES.items():
        (root / name).write_text(text)
    existing = root / "layertune-runs" / "existing"
    (existing / "tune").mkdir(parents=True)
    (existing / "tune" / "tuner.pkl").write_bytes(b"not read unless resumed")
    (existing / "sweep.json").write_text(json.dumps({"trial": {"epochs": 99}}))
    study = optuna.create_study(study_name="existing", directions=["maximize", "minimize"],
                                storage=f"sqlite:///{existing / 'optuna.db'}")
    study.add_trial(optuna.trial.create_trial(values=[0.9, 3.0]))
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, workdir, monkeypatch, capsys):
    argv, words = CASES[case]
    monkeypatch.chdir(workdir)
    before = snapshot(workdir)
    assert_refused(["sweep", *argv], words, capsys)
    assert snapshot(workdir) == before  # nothing written, the existing sweep untouched

