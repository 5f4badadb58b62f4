"""The method inside a training loop the user keeps (``Trial.step`` is built on the same calls).

    pruner = Pruner(net, optimizer, num_train=len(train_set))
    for x, y in loader:
        pruner.draw()                     # z ~ Bernoulli(theta) set on the network
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        pruner.step(loss, x, y)           # optimizer.step() + gate step, prior, pruning
    pruner.decide(batches)                # optional, once: the early structure decision

While the gates learn, ``draw`` draws ``z`` on one minibatch in ``gate_every`` (default 8) and
holds it for the others, which read no gate gradient (docs/algorithm.md, departure 11).
``step`` is ``after_backward`` (the gates' data gradient, read before the weights move),
``optimizer.step()`` and ``update`` (the prior's step on the weights, projected SGD on theta,
the pruning rule; removed sections' parameters leave the optimiser); a loop that steps the
optimiser itself (gradient scaling, clipping after backward) calls the three in that order.

Nothing here waits for the device: each step's gate gradient comes back to the host while the
next step runs, and ``update`` applies it then (docs/algorithm.md, "Gate gradient and update":
the gate step is one step late). ``settle()`` applies the one still in flight; the methods
that read theta (``decide``, ``keep``, ``theta``, ...) call it first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batchnorm import frozen_batchnorm_stats
from .config import MethodConfig
from .decision import loss_budget, most_useful
from .gates import GateController, GateDraw, GateGradient
from .optim import drop_parameters, effective_step, forget_direction, schedule_factor
from .prior import PriorSettings
from .transfer import Handoff

LossFn = Callable[[Tensor, Tensor], Tensor]


class Pruner:
    """Learned gates, their prior and the pruning rule for ``model`` trained by ``optimizer``.

    ``model`` is a ``GatedNetwork`` or a ``gating.GatedModel``; ``num_train`` is ``N`` of the
    objective (training samples). The method's knobs are ``MethodConfig``'s
    (``method=`` or keywords, e.g. ``prior_weight=0.5``); the trial-level ones (``decide_at``,
    ``recalibrate_bn``, ``gates``) are the loop's business. The gate step follows the
    optimiser's learning-rate schedule (``lr / initial_lr``, or the ``lr`` at construction).
    Under data parallelism give ``generator`` the same seed on every process and ``reduce`` the
    mean over processes (docs/algorithm.md, "Several workers"; ``layertune.distributed``).
    ``dz_from_weights``: read each gate's dL/dz from the gradients of its section's last
    parameters (Euler's theorem, docs/algorithm.md "Gate gradient and update") instead of a
    probe in the backward pass; exact only when the loss depends on those parameters through
    the network's output alone (weight decay in the optimiser, not a penalty in the loss).
    ``Trial`` sets it; if a section has no such parameters, every section keeps the probe.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        num_train: int,
        method: MethodConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
        dz_from_weights: bool = False,
        **knobs: object,
    ) -> None:
        m = MethodConfig.model_validate({**(method or MethodConfig()).model_dump(), **knobs})
        self.method = m
        self.model = model
        self.optimizer = optimizer
        self.gates = GateController(
            model,
            PriorSettings(m.prior_scale, m.spike_ratio, m.hyperprior_strength, m.prior_weight,
                          num_train),
            theta_lr=m.theta_lr,
            averaging=m.theta_averaging,
            theta_init=m.theta_init,
            estimator=m.estimator,
            patience=m.prune_patience,
            generator=generator or torch.Generator().manual_seed(0),
            dz_from_weights=dz_from_weights,
            prior_every=m.prior_every,
            gate_every=m.gate_every,
        )
        self.reduce = reduce  # the data gradient's mean over processes: one gate step for all
        self._base_lr = optimizer.param_groups[0]["lr"]
        self._draw: GateDraw | None = None
        self._held: list[float] | None = None  # the draw held for gate_every minibatches
        self._held_for = 0
        self._holding = False  # this minibatch reuses the held draw: no gate gradient
        self._data_grad: Tensor | None = None
        self._in_flight = Handoff()  # the last step's gate gradient, on its way to the host

    # --- one step -----------------------------------------------------------------------------

    def draw(self) -> list[float]:
        """Set this minibatch's gates on the network: a new draw every ``gate_every``
        minibatches, the held one between; once the gates are fixed, every remaining section
        on. Returns ``z``."""
        self._holding = False
        if self.gates.fixed:
            self._draw = None
            z = self.gates.remaining()
            self.model.set_gates(z)
            return z
        if self._held is not None and self._held_for < self.gates.gate_every:
            self._holding, self._draw = True, None
            self._held_for += 1
            self.model.set_gates(self._held)  # an evaluation may have set others
            return self._held
        self._draw = self.gates.sample()
        self._held, self._held_for = self._draw.z, 1
        return self._draw.z

    def after_backward(self, loss: Tensor, x: Tensor | None = None,
                       y: Tensor | None = None) -> None:
        """Read the gates' data gradient (before the weights move). ``x, y`` only for the
        ``exact`` estimator, which re-runs the network with cross-entropy."""
        if self.gates.fixed or self._holding:
            return
        if self._draw is None:
            raise RuntimeError("Pruner.after_backward without a draw: call pruner.draw() "
                               "before the forward pass")
        self._data_grad = self.gates.data_gradient(self._draw, loss, x, y)
        if self.reduce is not None:
            self._data_grad = self.reduce(self._data_grad)

    def update(self) -> list[nn.Parameter]:
        """After ``optimizer.step()``: the prior's step on the weights (now), the gate step and
        the pruning rule (with the previous step's gradient, which has reached the host).
        Returns the parameters removed (already out of the optimiser)."""
        gates, opt = self.gates, self.optimizer
        if gates.fixed:  # only the prior's slab acts on the kept weights
            gates.shrink_weights(effective_step(opt))
            return []
        if self._holding:  # no gate gradient of its own: the last one arrives
            gates.shrink_weights(effective_step(opt))
            return self._gate_step(self._in_flight.swap(None))
        if self._data_grad is None:
            raise RuntimeError("Pruner.update before after_backward: call pruner.step(loss) "
                               "or after_backward(loss) before the optimiser's step")
        gates.shrink_weights(effective_step(opt))  # at the theta z was drawn from
        grad = gates.gradient(self._data_grad)
        self._draw = self._data_grad = None
        return self._gate_step(self._in_flight.swap(grad.packed(), self.schedule_factor()))

    def settle(self) -> list[nn.Parameter]:
        """Apply the gate gradient still in flight (waits for the device). Returns the
        parameters removed."""
        return self._gate_step(self._in_flight.swap(None))

    def end_draw(self) -> None:
        """End the held draw: the next minibatch draws afresh (``Trial``: at an epoch's end)."""
        self._held = None

    def _gate_step(self, arrived: tuple[Tensor, float] | None) -> list[nn.Parameter]:
        if arrived is None:
            return []
        host, schedule = arrived
        grad = GateGradient.unpacked(host)
        self.gates.step(grad, schedule)
        removed = self.gates.prune(grad)
        if removed:
            drop_parameters(self.optimizer, removed)
            self._held = None  # it may hold a removed section on
        return removed

    def step(self, loss: Tensor, x: Tensor | None = None,
             y: Tensor | None = None) -> list[nn.Parameter]:
        """``after_backward``, ``optimizer.step()``, ``update``: call it instead of the
        optimiser's step. Returns the parameters removed."""
        self.after_backward(loss, x, y)
        self.optimizer.step()
        return self.update()

    def schedule_factor(self) -> float:
        """Where the learning-rate schedule stands (1 at the base rate)."""
        return schedule_factor(self.optimizer, self._base_lr)

    # --- the structure ------------------------------------------------------------------------

    def decide(self, batches: Sequence[tuple[Tensor, Tensor]], tolerance: float | None = None,
               loss_fn: LossFn = F.cross_entropy) -> list[float]:
        """The early structure decision (docs/algorithm.md, departure 7) on ``batches`` of
        training data, with BatchNorm batch statistics: remove the sections the loss budget
        ``tolerance`` allows (default: ``method.decide_sections`` sections kept when set, else
        the budget ``method.decide_tolerance``), fix the gates for good, and forget the
        optimiser's momentum (``optim.forget_direction``). Returns the gates."""
        return self.decide_by(lambda z: self.batch_loss(batches, z, loss_fn), tolerance)

    def decide_by(self, loss_of: Callable[[list[float]], float],
                  tolerance: float | None = None) -> list[float]:
        """``decide`` with the loss of the network with gates ``z`` given by ``loss_of(z)``."""
        self.settle()
        m, gates = self.method, self.gates.deterministic()
        if tolerance is None and m.decide_sections is not None:
            keep = most_useful(loss_of, gates, m.decide_sections)
        else:
            keep = loss_budget(loss_of, gates, m.decide_tolerance if tolerance is None
                               else tolerance)
        drop_parameters(self.optimizer, self.gates.fix(keep))
        forget_direction(self.optimizer)  # the compact network starts from where it is
        return keep

    @torch.no_grad()
    def batch_loss(self, batches: Sequence[tuple[Tensor, Tensor]], z: list[float],
                   loss_fn: LossFn = F.cross_entropy) -> float:
        """Mean loss over ``batches`` with gates ``z``, batch statistics, running ones kept."""
        was_training = self.model.training
        self.model.train()
        self.model.set_gates(z)
        with frozen_batchnorm_stats(self.model):
            total = sum(loss_fn(self.model(x).float(), y) * len(y) for x, y in batches)
        self.model.train(was_training)
        return float(total) / sum(len(y) for _, y in batches)  # one wait for the device

    def decide_open_gates(self, loss_of: Callable[[list[float]], float]) -> dict[int, float]:
        """End of training: gates still inside (0, 1) go to the vertex where J is lower
        (departure 5); ``loss_of(z)`` the deterministic network's loss. Returns their values."""
        self.settle()
        return self.gates.decide(loss_of)

    def set_deterministic(self) -> list[float]:
        """Gates ``round(theta)`` on the network, for evaluation. Returns them."""
        self.settle()
        z = self.gates.deterministic()
        self.model.set_gates(z)
        return z

    def keep(self) -> list[bool]:
        """Which sections the network keeps now (``round(theta)`` = 1 and not removed)."""
        self.settle()
        return [g == 1.0 and not s.pruned
                for g, s in zip(self.gates.deterministic(), self.gates.sections, strict=True)]

    @property
    def theta(self) -> list[float]:
        self.settle()
        return self.gates.theta.tolist()
