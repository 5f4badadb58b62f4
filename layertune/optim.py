"""The weights' optimiser and learning-rate schedule of a trial, and what pruning does to them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .config import TrialConfig


def make_optimizer(model: nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    """Weight decay on kernels only; norms and biases are left alone, as usual."""
    o = config.optimizer
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    return torch.optim.AdamW(groups, lr=o.lr)


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrialConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate factor: linear warm-up, then constant, cosine or step decay."""
    o = config.optimizer
    total = config.epochs * steps_per_epoch
    warm = o.warmup_epochs * steps_per_epoch
    milestones = [e * steps_per_epoch for e in o.step_epochs]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))
        if o.schedule == "step":
            return 0.1 ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cool_down(schedule: torch.optim.lr_scheduler.LambdaLR, start: int, steps: int) -> None:
    """From step ``start`` on, the schedule's factor falls linearly to 0 over ``steps`` steps:
    the end of the schedule brought forward (a settled trial's cooldown, ``layertune.settle``).
    Budgeted training (Li et al., ICLR 2020) finds a linear fall to 0 the best end of a short
    budget; ending at the schedule's mid-way rate cost settled trials 1.4 points on average,
    a 2-epoch fall 0.7 (docs/algorithm.md, "Settled trials")."""
    def falling(factor: Callable[[int], float]) -> Callable[[int], float]:
        top = factor(start)
        return lambda step: factor(step) if step < start else \
            top * max(0.0, 1.0 - (step - start) / steps)

    schedule.lr_lambdas = [falling(f) for f in schedule.lr_lambdas]


def schedule_factor(optimizer: torch.optim.Optimizer, base_lr: float | None = None) -> float:
    """Where the learning-rate schedule stands (1 at the base rate); LambdaLR keeps the base
    rate in ``initial_lr``, an optimiser without a schedule has none (``base_lr`` then)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("initial_lr", base_lr or group["lr"])


def effective_step(optimizer: torch.optim.Optimizer) -> float:
    """The step a steady gradient effectively takes: ``lr / (1 - momentum)`` for SGD with
    momentum, ``lr`` for AdamW. The prior's weight step uses it so that data and prior keep
    the balance of the objective (docs/algorithm.md, departure 1)."""
    group = optimizer.param_groups[0]
    momentum = group.get("momentum", 0.0) if isinstance(optimizer, torch.optim.SGD) else 0.0
    return group["lr"] / (1.0 - momentum)


def forget_direction(optimizer: torch.optim.Optimizer) -> None:
    """Forget where the optimiser was heading: SGD's momentum buffers go, Adam's first moments
    are zeroed (their second moments, each weight's step scale, stay). Called when the early
    decision removes sections: the kept weights' momentum was gathered for the full network, a
    function that no longer exists, and carried into the compact network's first epochs at the
    schedule's full rate it cost reference (a) falls of up to 3.4 points (docs/algorithm.md,
    departure 7)."""
    for state in optimizer.state.values():
        state.pop("momentum_buffer", None)
        if "exp_avg" in state:
            state["exp_avg"].zero_()


def drop_parameters(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """Take pruned parameters (and their momentum) out of the optimiser."""
    gone = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in gone]
    for p in params:
        optimizer.state.pop(p, None)
