"""BatchNorm statistics for forwards that are not training steps (docs/algorithm.md, "Early
decision": the losses the decision compares, and the statistics evaluation reads)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Extra forwards in train mode (batch statistics) that leave running statistics alone."""
    norms = _norms(model)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> int:
    """Replace the running statistics by their plain average over ``batches``, for the network
    as its gates are set now. Returns the number of samples seen.

    Running averages collected during training mix many earlier networks (weights that moved,
    gates that were sampled, sections since removed); mid-training they can put the evaluated
    loss 27x off the batch-statistics one (docs/algorithm.md).
    """
    norms = _norms(model)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x, _ in batches:
            model(x)
            seen += len(x)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return seen
