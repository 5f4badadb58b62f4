"""The early structure decision (docs/algorithm.md, "Early decision") and the BatchNorm
statistics it and evaluation rely on."""

from __future__ import annotations

import pytest
import torch
from test_method import SETTINGS, _tiny
from torch import nn

from layertune.batchnorm import frozen_batchnorm_stats, recalibrate
from layertune.config import load_trial
from layertune.decision import loss_budget, most_useful, nothing_to_rank
from layertune.gates import GateController
from layertune.optim import forget_direction
from layertune.train import Trial, run_trial

# An additive loss: section i buys COST[i] of loss; its removal costs that much.
COST = [0.5, 0.05, 0.3, 0.02]
FLOOR = 0.1  # the loss with every section on; with none: FLOOR + 0.87


def _loss_of(z: list[float]) -> float:
    return FLOOR + sum(c for c, zi in zip(COST, z, strict=True) if zi == 0.0)


def test_the_cheapest_sections_go_while_the_loss_stays_within_the_share() -> None:
    # A share of 0.5 allows 0.435 of the 0.87: 0.02 + 0.05 + 0.3 = 0.37 fits, + 0.5 does not.
    assert loss_budget(_loss_of, [1.0] * 4, 0.5) == [1.0, 0.0, 0.0, 0.0]
    # 0.4 allows 0.348: the third cheapest (0.3) would bring the rise to 0.37.
    assert loss_budget(_loss_of, [1.0] * 4, 0.4) == [1.0, 0.0, 1.0, 0.0]


def test_no_share_keeps_everything_and_a_full_share_keeps_the_most_useful() -> None:
    assert loss_budget(_loss_of, [1.0] * 4, 0.0) == [1.0] * 4
    # The budget is strict: giving up all of it (every section removed) does not fit.
    assert loss_budget(_loss_of, [1.0] * 4, 1.0) == [1.0, 0.0, 0.0, 0.0]


def test_removal_stops_at_the_first_section_that_does_not_fit() -> None:
    # Sections interact: removing 1 and 3 together costs far more than each alone. Ranked once
    # by the cost alone, 3 goes first, then 1 does not fit; 2 is not tried after it.
    def loss_of(z: list[float]) -> float:
        both = z[1] == 0.0 and z[3] == 0.0
        return _loss_of(z) + (1.0 if both else 0.0)

    assert loss_budget(loss_of, [1.0] * 4, 0.5) == [1.0, 1.0, 1.0, 0.0]


def test_removed_sections_stay_removed_and_count_in_neither_loss() -> None:
    seen: list[list[float]] = []

    def loss_of(z: list[float]) -> float:
        seen.append(list(z))
        return _loss_of(z)

    assert loss_budget(loss_of, [1.0, 1.0, 0.0, 1.0], 0.5)[2] == 0.0
    assert all(z[2] == 0.0 for z in seen)


def test_fixing_the_gates_removes_the_sections_at_zero_and_survives_a_checkpoint() -> None:
    gates = GateController(_tiny(depth=4), SETTINGS, theta_lr=0.1)
    removed = gates.fix([1.0, 0.0, 1.0, 0.0])
    assert removed and [s.pruned for s in gates.sections] == [False, True, False, True]
    assert gates.fixed and gates.theta.tolist() == [1.0, 0.0, 1.0, 0.0]
    again = GateController(_tiny(depth=4), SETTINGS, theta_lr=0.1)
    again.load_state_dict(gates.state_dict())
    assert again.fixed


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_recalibration_gives_the_plain_average_of_the_batches_and_keeps_the_momentum() -> None:
    net = _bn_net()
    batches = [(torch.randn(50, 3) * (i + 1) + i, torch.zeros(50)) for i in range(3)]
    with torch.no_grad():
        hidden = torch.cat([net[0](x) for x, _ in batches])
    assert recalibrate(net.eval(), batches) == 150
    bn = net[1]
    torch.testing.assert_close(bn.running_mean, hidden.mean(0))
    # equal batch sizes: the running variance is the mean of the batches' unbiased variances
    chunks = hidden.split(50)
    torch.testing.assert_close(bn.running_var, torch.stack([c.var(0) for c in chunks]).mean(0))
    assert bn.momentum == 0.1 and not net.training


def test_forwards_under_frozen_statistics_leave_them_alone() -> None:
    net = _bn_net().train()
    before = net[1].running_mean.clone()
    with frozen_batchnorm_stats(net), torch.no_grad():
        net(torch.randn(20, 3) + 5.0)
    torch.testing.assert_close(net[1].running_mean, before)


# --- in a trial ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decided():
    config = load_trial("trials/digits_mlp.yaml", {
        "epochs": 4, "method.decide_at": 2, "method.decide_tolerance": 0.9,
        "method.recalibrate_bn": True})
    return run_trial(config, lambda m, c: None)


def test_the_structure_is_decided_once_at_decide_at_and_never_changes(decided) -> None:
    history = decided.history
    assert [h["collapsed"] for h in history] == [0, 1, 1, 1]
    assert all(h["undecided_layers"] == 0 for h in history[1:])
    assert all(h["theta"] == history[1]["theta"] for h in history[1:])
    assert set(history[1]["theta"]) <= {0.0, 1.0}
    assert 0 < history[-1]["active_layers"] < history[-1]["total_layers"]
    assert set(decided.pruned_at.values()) == {2}
    assert history[-1]["decided_at_end"] == 0  # nothing left for the end-of-training rule


def test_after_the_decision_a_step_costs_only_the_compact_network(decided) -> None:
    h = decided.history
    full_epoch = h[0]["train_flops"]
    compact_epoch = h[3]["train_flops"] - h[2]["train_flops"]
    assert compact_epoch == pytest.approx(full_epoch * h[3]["flops"] / h[0]["flops"], rel=0.02)


def test_a_decision_after_training_is_one_clear_line() -> None:
    from layertune.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_trial("trials/digits_mlp.yaml", {"epochs": 3, "method.decide_at": 3})
    message = str(err.value)
    assert "\n" not in message and "method.decide_at (3) must be below epochs (3)" in message
    assert message.startswith("trials/digits_mlp.yaml (with --set): method.decide_at")


def test_a_depth_target_keeps_the_sections_whose_removal_costs_most() -> None:
    assert most_useful(_loss_of, [1.0] * 4, 2) == [1.0, 0.0, 1.0, 0.0]
    assert most_useful(_loss_of, [1.0] * 4, 0) == [0.0] * 4
    assert most_useful(_loss_of, [1.0] * 4, 9) == [1.0] * 4  # more than there are: all stay
    assert most_useful(_loss_of, [1.0, 0.0, 1.0, 1.0], 1) == [1.0, 0.0, 0.0, 0.0]


def test_keeping_none_or_all_sections_is_decided_without_measuring_a_loss() -> None:
    def no_loss(z: list[float]) -> float:
        raise AssertionError("nothing to rank: no loss should be measured")

    assert most_useful(no_loss, [1.0, 0.0, 1.0], 0) == [0.0, 0.0, 0.0]
    assert most_useful(no_loss, [1.0, 0.0, 1.0], 2) == [1.0, 0.0, 1.0]
    assert nothing_to_rank([1.0, 0.0, 1.0], 2) and not nothing_to_rank([1.0, 0.0, 1.0], 1)
    assert not nothing_to_rank([1.0, 1.0], None)  # no depth target: the loss budget decides


@pytest.mark.parametrize(("sections", "same_as"), [(0, "removed"), (6, "fixed")])
def test_a_target_of_none_or_all_trains_that_network_from_the_first_step(sections, same_as):
    """Nothing to rank, so nothing to learn first: the trial costs what the gates-removed (or
    gates-fixed) network costs, epoch by epoch, and keeps ``sections`` from epoch 1."""
    base = {"epochs": 2, "method.decide_at": 1}
    target = run_trial(load_trial("trials/digits_mlp.yaml", {
        **base, "method.decide_sections": sections}), lambda m, c: None).history
    plain = run_trial(load_trial("trials/digits_mlp.yaml", {
        **base, "method.gates": same_as}), lambda m, c: None).history
    assert [h["active_layers"] for h in target] == [sections, sections]
    assert [h["train_flops"] for h in target] == [h["train_flops"] for h in plain]


@pytest.mark.parametrize("overrides", [
    {"method.decide_at": 0},  # no early decision: decide_sections plays no part
    {"method.decide_at": 1, "method.theta_init": 0.3},  # gates that round to 0 are not "none"
])
def test_only_an_early_decision_of_none_or_all_present_sections_is_taken_at_once(overrides):
    config = load_trial("trials/digits_mlp.yaml", {
        "epochs": 2, "method.decide_sections": 0, **overrides})
    trial = Trial(config)
    assert not trial.gates.fixed and not any(s.pruned for s in trial.model.sections)


def test_a_trial_with_a_depth_target_keeps_that_many_sections() -> None:
    config = load_trial("trials/digits_mlp.yaml", {
        "epochs": 2, "method.decide_at": 1, "method.decide_sections": 2})
    history = run_trial(config, lambda m, c: None).history
    assert [h["active_layers"] for h in history] == [2, 2]


def test_the_decision_forgets_the_momentum_gathered_for_the_full_network() -> None:
    trial = Trial(load_trial("trials/digits_mlp.yaml", {
        "epochs": 4, "method.decide_at": 2, "method.decide_tolerance": 0.9}))
    x, y = next(iter(trial.data.train))
    for _ in range(3):
        trial.step(x, y)
    assert trial.optimizer.state
    assert all("momentum_buffer" in s for s in trial.optimizer.state.values())
    trial.decide_structure()
    assert not any("momentum_buffer" in s for s in trial.optimizer.state.values())
    trial.step(x, y)  # the compact network gathers its own from its first step
    kept = [p for g in trial.optimizer.param_groups for p in g["params"]]
    assert all("momentum_buffer" in trial.optimizer.state[p] for p in kept)


def test_forgetting_the_direction_keeps_adams_step_scale() -> None:
    w = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([w], lr=0.1)
    for _ in range(3):
        w.grad = torch.tensor([1.0, -2.0, 3.0])
        optimizer.step()
    scale = optimizer.state[w]["exp_avg_sq"].clone()
    forget_direction(optimizer)
    assert torch.equal(optimizer.state[w]["exp_avg"], torch.zeros(3))
    assert torch.equal(optimizer.state[w]["exp_avg_sq"], scale)
