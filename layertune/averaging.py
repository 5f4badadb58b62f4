"""The weights a trial evaluates and delivers: an exponential average of the trained ones
(docs/algorithm.md, "Averaged weights")."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class WeightAverage:
    """After the t-th update, ``average <- average + (1 - d_t) * (trained - average)`` with
    ``d_t = min(decay, (1 + t) / (10 + t))``: the first updates weigh more, so the average
    does not hold on to the weights it started from (the warm-up of timm's ``ModelEmaV3``).

    The average lives in its own copy of the network (``network``), made when the average
    starts; the trained network's structure must not change after that (``Trial`` starts it
    once the gates are fixed). Parameters and floating-point buffers (BatchNorm running
    statistics) are averaged, as in timm; a trial with ``recalibrate_bn`` recomputes the
    statistics on the copy before each evaluation. One ``_foreach_lerp_`` per update, no
    wait for the device (``torch.optim.swa_utils.AveragedModel`` reads its update count
    from a device tensor each step).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.network = copy.deepcopy(model).requires_grad_(False)
        self._trained = _averaged_tensors(model)
        self._average = _averaged_tensors(self.network)

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the trained network's weights as they are now."""
        self.updates += 1
        t = self.updates
        decay = min(self.decay, (1 + t) / (10 + t))
        torch._foreach_lerp_(self._average, self._trained, 1.0 - decay)

    def state_dict(self) -> dict:
        return {"network": self.network.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        self.updates = int(state["updates"])


def _averaged_tensors(model: nn.Module) -> list[Tensor]:
    return [t.detach() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
