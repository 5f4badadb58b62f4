"""Averaged weights (docs/algorithm.md, "Averaged weights"): the rule, and a trial that
evaluates, checkpoints and delivers the average from the step its structure is fixed on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from layertune.averaging import WeightAverage
from layertune.config import load_trial
from layertune.train import Trial, run_trial
from layertune.trial_state import load_state


def test_each_update_moves_the_average_by_one_minus_the_warmed_up_decay() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = WeightAverage(net, decay=0.6)
    expected = [t.detach().clone() for t in net.state_dict().values() if t.is_floating_point()]
    for t in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(8, 3))  # new running statistics: floating buffers are averaged too
        average.update()
        d = min(0.6, (1 + t) / (10 + t))  # 0.18, 0.25, 0.31, 0.36, then 0.6 from t = 5 on
        live = [v for v in net.state_dict().values() if v.is_floating_point()]
        expected = [e + (1 - d) * (w - e) for e, w in zip(expected, live, strict=True)]
    got = [v for v in average.network.state_dict().values() if v.is_floating_point()]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e)
    # the batch count is not a weight: it is the copy's own, never moved
    assert average.network[1].num_batches_tracked == 0 < net[1].num_batches_tracked
    assert not any(p.requires_grad for p in average.network.parameters())


def test_a_decay_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(nn.Linear(2, 2), decay=1.0)


@pytest.fixture(scope="module")
def decided_with_average():
    config = load_trial("trials/digits_mlp.yaml", {
        "epochs": 3, "method.decide_at": 1, "method.decide_sections": 2,
        "method.ema_decay": 0.9, "method.recalibrate_bn": True})
    trial = Trial(config)
    assert trial.average is None and trial.evaluated is trial.model  # gates still learn
    trial.train_epoch()  # the decision
    return trial


def test_the_average_starts_at_the_decision_with_the_compact_network(decided_with_average):
    trial = decided_with_average
    assert trial.gates.fixed and trial.average is not None and trial.average.updates == 0
    assert [s.pruned for s in trial.evaluated.sections] == [s.pruned for s in trial.model.sections]
    assert trial.evaluated is not trial.model


def test_evaluation_reads_the_averaged_weights_not_the_trained_ones(decided_with_average):
    trial = decided_with_average
    trial.train_epoch()
    assert trial.average.updates == len(trial.data.train)
    _, accuracy = trial.evaluate(trial.data.val)
    assert accuracy > 0.8
    with torch.no_grad():  # wreck the trained weights: what is evaluated does not change
        for p in trial.model.parameters():
            p.zero_()
    assert trial.evaluate(trial.data.val)[1] == accuracy


def test_without_a_decay_the_trial_evaluates_the_trained_network() -> None:
    trial = Trial(load_trial("trials/digits_mlp.yaml", {"epochs": 1, "method.gates": "fixed"}))
    assert trial.average is None and trial.evaluated is trial.model


def test_a_checkpoint_carries_the_average_on(tmp_path: Path) -> None:
    config = load_trial("trials/digits_mlp.yaml", {
        "epochs": 3, "method.gates": "fixed", "method.ema_decay": 0.95})
    trial = Trial(config)
    saved: dict = {}

    def report(metrics: dict, folder: str | None) -> None:
        if metrics["epoch"] == 2:
            shutil.copytree(folder, tmp_path / "ckpt")
            saved.update({k: v.clone() for k, v in trial.average.network.state_dict().items()})

    run_trial(config, report, checkpoint=True, trial=trial)
    resumed = Trial(config)
    load_state(resumed, tmp_path / "ckpt")
    assert resumed.average.updates == 2 * len(trial.data.train)  # not a fresh average
    for name, value in resumed.average.network.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    # what the trial delivers is the average
    assert run_trial(config, lambda m, c: None, trial=resumed).model is resumed.average.network
