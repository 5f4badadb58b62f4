"""layertune.Pruner: the method inside the user's own loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layertune import Pruner, gate
from layertune.config import TrialConfig
from layertune.train import Trial


class _Residual(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def residual(self, x):
        return self.f(x)

    def forward(self, x):
        return x + self.residual(x)


def _task(seed: int = 0, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, :4].sum(1) > x[:, 4:].sum(1)).long()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), _Residual(), _Residual(), nn.Linear(16, 2))


def _user_step(net, opt, pruner, x, y) -> float:
    pruner.draw()
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    pruner.step(loss, x, y)
    return loss.item()


def test_the_documented_user_loop_is_trial_step():
    config = TrialConfig.model_validate({
        "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_samples": 256,
                 "batch_size": 32},
        "model": {"name": "mlp", "depth": 3, "width": 16},
        "method": {"theta_init": 0.7, "theta_lr": 0.5},
        "epochs": 2,
    })
    trial, mine = Trial(config), Trial(config)
    ours, theirs = [], []
    for x, y in trial.data.train:
        ours.append(float(trial.step(x, y)))
    for x, y in mine.data.train:
        theirs.append(_user_step(mine.model, mine.optimizer, mine.pruner, x, y))
        mine.scheduler.step()
    assert ours == theirs
    assert trial.pruner.theta == mine.pruner.theta
    assert trial.pruner.theta != [0.7] * 3  # the gates moved: the comparison says something


def test_a_pruned_block_leaves_the_users_optimizer_and_training_goes_on():
    net = _net()
    x, y = _task()
    gated = gate(net, x[:16])
    opt = torch.optim.SGD(gated.parameters(), lr=0.05, momentum=0.9)  # no schedule
    # prior_every 1: the rent reads the shrunken weights at the very next step; gate_every 1:
    # a gate step on each
    pruner = Pruner(gated, opt, num_train=len(y), prune_patience=2, prior_every=1,
                    gate_every=1)
    _user_step(gated, opt, pruner, x[:32], y[:32])  # momentum state for every parameter
    doomed = list(net[1].body.parameters())
    with torch.no_grad():  # tiny weights: the spike is preferred (R_1 > R_0)
        for p in doomed:
            p.mul_(1e-4)
    pruner.gates.theta[0] = 0.0
    removed: list[nn.Parameter] = []
    steps = 0
    while not removed and steps < 4:
        steps += 1
        pruner.draw()
        loss = F.cross_entropy(gated(x[:32]), y[:32])
        opt.zero_grad()
        loss.backward()
        pruner.after_backward(loss)
        opt.step()
        removed += pruner.update()
    # patience 2, and each step's gradient reaches the gate step one step later
    assert steps == 3 and {id(p) for p in removed} == {id(p) for p in doomed}
    assert net[1].pruned and pruner.keep() == [False, True]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in doomed}
    assert not {id(p) for p in opt.state} & {id(p) for p in doomed}
    before = [p.detach().clone() for p in net[2].parameters()]
    _user_step(gated, opt, pruner, x[:32], y[:32])
    assert any(not torch.equal(a, b) for a, b in zip(before, net[2].parameters(), strict=True))


def test_a_draw_is_held_for_gate_every_minibatches_with_one_gate_step_each():
    net = _net()
    x, y = _task()
    gated = gate(net, x[:16])
    opt = torch.optim.SGD(gated.parameters(), lr=0.05)
    pruner = Pruner(gated, opt, num_train=len(y), theta_init=0.5, theta_lr=0.5, gate_every=3)
    seen = []
    for i in range(7):
        seen.append(pruner.draw())
        assert [s.z for s in gated.sections] == seen[-1]  # on the network
        loss = F.cross_entropy(gated(x[i * 32:][:32]), y[i * 32:][:32])
        opt.zero_grad()
        loss.backward()
        pruner.step(loss)
    assert seen[0] == seen[1] == seen[2] and seen[3] == seen[4] == seen[5]
    # one draw per block of 3 from the gates' generator, and a gate step for each block
    # (the last one's still on its way to the host)
    replay = torch.Generator().manual_seed(0)
    for _ in range(3):
        torch.bernoulli(torch.full((2,), 0.5, dtype=torch.float64), generator=replay)
    assert torch.equal(pruner.gates.generator.get_state(), replay.get_state())
    assert pruner.gates.steps == 2 and pruner.theta != [0.5, 0.5]
    # reading theta (settle) keeps the held draw; end_draw (a trial's epoch end) ends it
    before = pruner.gates.generator.get_state()
    assert pruner.draw() == seen[6]
    assert torch.equal(pruner.gates.generator.get_state(), before)
    pruner.end_draw()
    pruner.draw()
    assert not torch.equal(pruner.gates.generator.get_state(), before)


def test_early_decision_from_the_user_api_removes_a_block_that_does_nothing():
    net = _net()
    x, y = _task()
    gated = gate(net, x[:16])
    opt = torch.optim.SGD(gated.parameters(), lr=0.1, momentum=0.9)
    # gates that barely move: the blocks train (a strong rent would switch them off first)
    pruner = Pruner(gated, opt, num_train=len(y), theta_lr=1e-4)
    for i in range(40):
        _user_step(gated, opt, pruner, x[i % 8 * 32:][:32], y[i % 8 * 32:][:32])
    with torch.no_grad():  # block 2's branch is now zero: removing it costs exactly nothing
        net[2].body.block.f[2].weight.zero_()
        net[2].body.block.f[2].bias.zero_()
    batches = [(x[:128], y[:128]), (x[128:], y[128:])]
    base, none = pruner.batch_loss(batches, [1, 1]), pruner.batch_loss(batches, [0, 0])
    assert none > base  # block 1 matters after training
    assert pruner.decide(batches, tolerance=0.5) == [1.0, 0.0]
    assert pruner.gates.fixed and net[2].pruned and pruner.keep() == [True, False]
    assert all(id(p) not in {id(q) for q in net[2].parameters()}
               for g in opt.param_groups for p in g["params"])
    # after the decision: every remaining block on, no probe; only the prior's slab acts
    assert pruner.draw() == [1.0, 0.0] and net[1].probe is None
    theta = list(pruner.theta)
    _user_step(gated, opt, pruner, x[:32], y[:32])
    assert pruner.theta == theta


def test_the_exact_estimator_runs_from_the_user_loop():
    net = _net()
    x, y = _task()
    gated = gate(net, x[:16])
    opt = torch.optim.SGD(gated.parameters(), lr=0.05)
    pruner = Pruner(gated, opt, num_train=len(y), estimator="exact", theta_init=0.9,
                    theta_lr=1.0)
    _user_step(gated, opt, pruner, x[:64], y[:64])
    assert pruner.theta != [0.9, 0.9]


def test_a_step_without_a_draw_is_an_error_not_a_silent_prior_step():
    net = _net()
    x, y = _task()
    gated = gate(net, x[:16])
    opt = torch.optim.SGD(gated.parameters(), lr=0.05)
    pruner = Pruner(gated, opt, num_train=len(y))
    loss = F.cross_entropy(gated(x[:8]), y[:8])
    loss.backward()
    with pytest.raises(RuntimeError, match="draw"):
        pruner.step(loss)
