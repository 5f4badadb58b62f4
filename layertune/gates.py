"""Gate probabilities, their gradient estimators, projected SGD and the pruning rule.

docs/algorithm.md, "Gate gradient and update" and "Pruning rule". ``theta`` lives on the host
(it decides which sections run, which is Python control flow); the gate gradient, the prior's
rent and its step on the weights are computed on the weights' device. Nothing in a step waits
for the device: ``z / theta`` and ``theta`` go there without waiting, and the gradient comes
back through ``transfer.Handoff``, read one step later (the one-step lag of the gate step).
The host arithmetic of the gate step and the pruning rule is plain Python on floats: a dozen
numbers, where each numpy call cost 10-60 us inside the training loop (its code is cold there
after the step's kernels), two to five times the same call timed alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batchnorm import frozen_batchnorm_stats
from .prior import PriorSettings, SectionPrior
from .sections import GatedNetwork, homogeneous_parameters, set_gates
from .transfer import to_device


@dataclass
class GateDraw:
    """One minibatch's gates: ``z`` (set on the network), the probe whose gradient collects
    dL/dz (None when it comes from the weights' gradients, or for the exact estimator) and the
    importance weights ``z / theta`` on the device (None: exact estimator)."""

    z: list[float]
    probe: Tensor | None
    weight: Tensor | None = None


@dataclass
class GateGradient:
    """dJ/dtheta of one step: its data part and the prior's rent. On the weights' device as
    ``gradient`` returns it; ``step`` and ``prune`` read it on the host (``Pruner`` hands it
    over one step later)."""

    data: Tensor
    rent: Tensor

    def packed(self) -> Tensor:
        """Data part and rent in one tensor (one copy to the host)."""
        return torch.stack([self.data, self.rent])

    @classmethod
    def unpacked(cls, host: Tensor) -> GateGradient:
        return cls(host[0], host[1])

    def total(self) -> list[float]:
        """Data part plus rent per section, in float64 (on the host)."""
        # A diverged loss gives NaN here: keep theta a probability; the epoch's loss check
        # then stops the trial with a clear error.
        totals = (d + r for d, r in zip(self.data.numpy().tolist(), self.rent.numpy().tolist(),
                                        strict=True))
        return [g if math.isfinite(g) else 0.0 for g in totals]


def euler_dz(params: list[Tensor], grads: list[Tensor], owner_map: Tensor) -> Tensor:
    """``sum_p <p, dL/dp>`` per section: ``owner_map`` (parameters x sections) sums each
    parameter's inner product into its section."""
    products = torch._foreach_mul(params, grads)
    return torch.stack([t.sum() for t in products]) @ owner_map


class GateController:
    """Owns ``theta`` of a ``GatedNetwork`` and turns each training step into a gate step.

    One step, in the order ``Pruner.step`` (and so ``Trial.step``) calls it::

        draw = gates.sample()                       # z ~ Bernoulli(theta), set on the network
        loss.backward()
        data = gates.data_gradient(draw, loss, x, y)  # E[L | z=1] - E[L | z=0], estimated
        optimizer.step()
        gates.shrink_weights(lr)                    # the prior's step on the weights
        grad = gates.gradient(data)                 # + (lambda/N)(R_1 - R_0), on the device
        # on the host, with the gradient as it comes back (Pruner: the previous step's)
        gates.step(grad, schedule)                  # theta <- clip(theta - eta * g_avg, 0, 1)
        removed = gates.prune(grad)                 # parameters of the sections removed

    ``g_avg`` is an exponential average of the gradient with factor ``averaging`` (0: plain
    projected SGD). ``prune`` removes sections that have held ``theta == 0`` and ``R_1 > R_0``
    for ``patience`` steps and returns their parameters so the caller can take them out of the
    optimiser.

    The prior's weight step and the ``Q`` its rent comes from are refreshed every
    ``prior_every`` steps, as one step of ``prior_every`` times the step size; the rent between
    is the last one (docs/algorithm.md, departure 10).

    A draw may be held for ``gate_every`` minibatches (``Pruner``); each gate step then stands
    for that many: its step size and the pruning rule's streak count ``gate_every`` each
    (docs/algorithm.md, departure 11).

    ``fix(z)`` ends all of this (docs/algorithm.md, "Early decision"): theta takes the decided
    vertices, the sections at 0 are removed at once, and from then on the gates are ``fixed``:
    no draws, no gate steps, only the prior's step on the kept weights (``shrink_weights``).
    """

    def __init__(
        self,
        model: GatedNetwork,
        settings: PriorSettings,
        *,
        theta_lr: float,
        averaging: float = 0.0,
        theta_init: float = 1.0,
        estimator: str = "first_order",
        patience: int = 50,
        generator: torch.Generator | None = None,
        dz_from_weights: bool = False,
        prior_every: int = 1,
        gate_every: int = 1,
    ) -> None:
        if estimator not in ("first_order", "exact"):
            raise ValueError(f"estimator must be first_order or exact, not {estimator!r}")
        self.model = model
        self.sections = model.sections
        self.prior = SectionPrior(self.sections, settings)
        self.theta_lr = theta_lr
        self.averaging = averaging
        self.estimator = estimator
        self.patience = patience
        self.generator = generator
        self.dz_from_weights = dz_from_weights and estimator == "first_order"
        self.prior_every = prior_every
        self._prior_calls = 0  # shrink_weights calls: one in prior_every is a prior step
        self.gate_every = gate_every  # minibatches each gate step stands for
        self._rent: Tensor | None = None  # the rent at the last prior step
        num = len(self.sections)
        self.theta = torch.full((num,), float(theta_init), dtype=torch.float64)
        self._streak = [0] * num  # minibatches each gate has met the pruning condition
        self._grad_avg = [0.0] * num
        self.pruned_at_step: dict[int, int] = {}
        self.steps = 0
        self.fixed = False
        self.device = self.prior.n.device
        # first-order estimator: ones whose gradient is dL/dz (sections.set_gates)
        self._probe = torch.ones(num, device=self.device, requires_grad=True)
        self._refresh_alive()
        self.theta[~torch.tensor(self._alive)] = 0.0

    # --- state ----------------------------------------------------------------------------

    @property
    def probed(self) -> bool:
        """Whether dL/dz comes from the probe (else from the weights' gradients)."""
        return self.estimator == "first_order" and self._euler is None

    @property
    def from_weight_gradients(self) -> bool:
        """Whether dL/dz is read from the weights' gradients (Euler): under DDP those are
        averaged over the ranks already, and so is dL/dz."""
        return self.estimator == "first_order" and self._euler is not None

    @property
    def alive(self) -> list[int]:
        return [i for i, alive in enumerate(self._alive) if alive]

    @property
    def streak(self) -> Tensor:
        return torch.tensor(self._streak, dtype=torch.long)

    @property
    def grad_avg(self) -> Tensor:
        return torch.tensor(self._grad_avg, dtype=torch.float64)

    def remaining(self) -> list[float]:
        """Every section still in the network on, the removed ones off."""
        return [1.0 if alive else 0.0 for alive in self._alive]  # no module lookups

    def deterministic(self) -> list[float]:
        """``round(theta)``: the gates used for evaluation and export."""
        return [float(t >= 0.5) for t in self.theta.tolist()]

    def undecided(self) -> int:
        return int(((self.theta > 0) & (self.theta < 1)).sum())

    def state_dict(self) -> dict:
        return {
            "theta": self.theta.clone(),
            "streak": self.streak,  # new tensors, from the lists
            "grad_avg": self.grad_avg,
            "pruned_at_step": dict(self.pruned_at_step),
            "steps": self.steps,
            "fixed": self.fixed,
            "prior_calls": self._prior_calls,
            "rent": None if self._rent is None else self._rent.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        # host state, whatever map_location the checkpoint was loaded with
        self.theta = state["theta"].to("cpu", torch.float64, copy=True)
        self._streak = [int(s) for s in state["streak"].tolist()]
        self._grad_avg = state.get("grad_avg", torch.zeros_like(self.theta)).double().tolist()
        self.pruned_at_step = {int(k): int(v) for k, v in state["pruned_at_step"].items()}
        self.steps = int(state["steps"])
        self.fixed = bool(state.get("fixed", False))
        self._prior_calls = int(state.get("prior_calls", 0))
        rent = state.get("rent")
        self._rent = None if rent is None else rent.to(self.device, torch.float32)
        self._refresh_alive()

    # --- one step ---------------------------------------------------------------------------

    def sample(self) -> GateDraw:
        """Draw one ``z`` for the minibatch and set it (with the dL/dz probe) on the network."""
        return self.set_draw(torch.bernoulli(self.theta, generator=self.generator))

    def set_draw(self, z: Tensor) -> GateDraw:
        """Set the gates ``z`` (a host tensor, as drawn at the current ``theta``) on the
        network; ``sample`` draws them, a test may give them."""
        draw = GateDraw(z.tolist(), None)  # a host tensor: nothing waits for the device
        if self.estimator == "first_order":
            # (z / theta): 0 / 0 where theta is 0 (z is 0 there too) gives NaN, set to 0
            draw.weight = to_device((z / self.theta).nan_to_num_(0.0), self.device)
        if self.probed:
            self._probe.grad = None
            draw.probe = self._probe
        set_gates(self.sections, draw.z, draw.probe)
        return draw

    def data_gradient(self, draw: GateDraw, loss: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The data part of dJ/dtheta on the device (call after ``loss.backward()``)."""
        if self.estimator == "exact":
            return self._exact_difference(draw.z, loss, x, y)
        if not self.probed:
            return self._dz_from_weights() * draw.weight
        grad = draw.probe.grad if draw.probe.grad is not None else torch.zeros_like(draw.probe)
        for section in self.sections:  # its slices are graph nodes: a model with them in it
            section.__dict__["probe"] = None  # could not be deep-copied (export.compact)
        return grad * draw.weight  # (z / theta) * dL/dz: unbiased for E[dL/dz | z = 1]

    @torch.no_grad()
    def _dz_from_weights(self) -> Tensor:
        """dL/dz_l = sum_p <p, dL/dp> over the section's homogeneous parameters (Euler's
        theorem, ``sections.homogeneous_parameters``): no work in the backward pass. A section
        drawn off has no gradients; its weight z / theta is 0, so <p, p> stands in (finite)."""
        params, owner_map = self._euler
        if not params:
            return torch.zeros(len(self.sections), device=self.device)
        return euler_dz(params, [p if p.grad is None else p.grad for p in params], owner_map)

    @torch.no_grad()
    def _exact_difference(self, z: list[float], loss: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """``L(z_l = 1) - L(z_l = 0)``, other gates as drawn; one extra forward per section."""
        diffs = torch.zeros(len(self.sections), device=loss.device)
        with frozen_batchnorm_stats(self.model):
            for i in self.alive:
                flipped = list(z)
                flipped[i] = 1.0 - z[i]
                self.model.set_gates(flipped)
                other = F.cross_entropy(self.model(x), y)
                on, off = (loss.detach(), other) if z[i] else (other, loss.detach())
                diffs[i] = on - off
        self.model.set_gates(z)
        return diffs

    @torch.no_grad()
    def decide(self, loss_of: Callable[[list[float]], float]) -> dict[int, float]:
        """Set every gate still inside (0, 1) to the vertex of [0, 1] where J is lower.

        J is affine in each ``theta_l``, so along one gate its minimum sits at 0 or 1, on the
        side given by ``L(z_l = 1) - L(z_l = 0) + (lambda/N)(R_1 - R_0)``. ``loss_of(z)`` gives
        the data part exactly (the deterministic network's loss with gates ``z``); the other
        gates take their rounded values, and gates decided earlier in the pass their vertex.
        Returns each decided gate's value before the decision.
        """
        rent = self.prior.rent(self.prior.quadratic()).cpu().double()
        before = {}
        for i in self.alive:
            t = float(self.theta[i])
            if not 0.0 < t < 1.0:
                continue
            z = self.deterministic()
            z[i] = 1.0
            on = loss_of(z)
            z[i] = 0.0
            off = loss_of(z)
            self.theta[i] = 1.0 if on - off + float(rent[i]) < 0.0 else 0.0
            before[i] = t
        return before

    @torch.no_grad()
    def gradient(self, data_grad: Tensor) -> GateGradient:
        """dJ/dtheta: the data part plus the prior's rent as of the last prior step, on the
        weights' device."""
        if self._rent is None:
            self._rent = self.prior.rent(self.prior.quadratic())
        return GateGradient(data_grad.float(), self._rent)

    def shrink_weights(self, lr: float) -> None:
        """The prior's step on the weights, on the device, at the ``theta`` of this step: on
        one call in ``prior_every``, with ``Q`` read then (the rent ``gradient`` uses is
        refreshed from it, while the gates still learn) and step size ``prior_every * lr``;
        nothing on the others (why: docs/algorithm.md, departure 10)."""
        self._prior_calls += 1
        if (self._prior_calls - 1) % self.prior_every:
            return
        q = self.prior.quadratic()
        if not self.fixed:  # fixed gates take no gate steps: nothing reads the rent
            self._rent = self.prior.rent(q)
        self.prior.shrink_(q, to_device(self.theta, self.device), lr * self.prior_every)

    def step(self, grad: GateGradient, schedule: float = 1.0) -> None:
        """Projected SGD on ``theta`` with step ``theta_lr * schedule * gate_every``
        (``schedule`` follows the weights' learning-rate schedule); ``grad`` on the host."""
        self.steps += 1
        g = grad.total()
        # Averaging the noisy gradient keeps a gate whose mean gradient says "keep" at exactly 1
        # (plain SGD lets single minibatches nudge it off 1 until the last step).
        b = self.averaging
        if self.steps > 1 and b:
            g = [b * a + (1 - b) * gi for a, gi in zip(self._grad_avg, g, strict=True)]
        self._grad_avg = g
        eta = self.theta_lr * schedule * self.gate_every
        theta = [min(max(t - eta * gi, 0.0), 1.0) if alive else 0.0
                 for t, gi, alive in zip(self.theta.numpy().tolist(), g, self._alive,
                                         strict=True)]
        self.theta = torch.tensor(theta, dtype=torch.float64)

    def prune(self, grad: GateGradient) -> list[nn.Parameter]:
        """The pruning rule: ``theta`` at exactly 0 and the spike already preferred
        (``R_1 > R_0``) for ``patience`` consecutive minibatches removes the section. Returns
        the removed parameters. ``grad`` on the host."""
        state = zip(self._streak, self._alive, self.theta.numpy().tolist(),
                    grad.rent.numpy().tolist(), strict=True)
        self._streak = [s + self.gate_every if alive and t == 0.0 and r > 0.0 else 0
                        for s, alive, t, r in state]
        removed: list[nn.Parameter] = []
        for i, s in enumerate(self._streak):
            if s >= self.patience:
                removed += self.sections[i].prune()
                self.pruned_at_step[i] = self.steps
                self._streak[i] = 0
        if removed:
            self._removed()
        return removed

    def fix(self, z: list[float]) -> list[nn.Parameter]:
        """Set theta to the decided gates ``z`` (0 or 1) for good and remove the sections at 0.
        Returns the removed parameters."""
        self.theta = torch.tensor(z, dtype=torch.float64)
        self.fixed = True
        removed: list[nn.Parameter] = []
        for i in self.alive:
            if z[i] == 0.0:
                removed += self.sections[i].prune()
                self.pruned_at_step[i] = self.steps
        if removed:
            self._removed()
        return removed

    def _removed(self) -> None:
        self.prior.refresh()
        self._rent = None
        self._refresh_alive()

    def _refresh_alive(self) -> None:
        self._alive = [not s.pruned for s in self.sections]
        self._euler = self._homogeneous() if self.dz_from_weights else None

    def _homogeneous(self) -> tuple[list[nn.Parameter], Tensor] | None:
        """Every live section's homogeneous parameters and the (parameters x sections) 0/1
        map that sums them per section, or None when a section has none (then the probe)."""
        params, owner = [], []
        for i, s in enumerate(self.sections):
            if s.pruned:
                continue
            found = homogeneous_parameters(s.body)
            if found is None or not all(p.requires_grad for p in found):
                return None
            params += found
            owner += [i] * len(found)
        owner_map = torch.zeros(len(params), len(self.sections), device=self.device)
        owner_map[torch.arange(len(params)), torch.tensor(owner, dtype=torch.long)] = 1.0
        return params, owner_map
