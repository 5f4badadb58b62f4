"""One trial: train a gated network while its sections prune themselves.

``run_trial(config, report)`` calls ``report(metrics, checkpoint_dir | None)`` once per epoch
with the keys of ``layertune.contract`` (docs/design.md); it knows nothing of Ray.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .averaging import WeightAverage
from .batchnorm import recalibrate
from .config import ConfigError, TrialConfig
from .data import DataBundle
from .decision import nothing_to_rank
from .factory import trial_data, trial_model
from .flops import FlopTable, flop_table
from .gates import GateController
from .optim import cool_down, make_optimizer, make_schedule
from .progress import EpochProgress
from .pruner import Pruner
from .sections import GatedNetwork
from .settle import settled, settled_at
from .trial_state import load_state, save_state

Report = Callable[[dict, "str | None"], None]


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrialResult:
    config: dict
    history: list[dict]
    pruned_at: dict[int, int]  # section index -> epoch it was removed in (0: before)
    decided: dict[int, float] = field(default_factory=dict)  # gate -> theta before the decision
    test: dict | None = None
    note: str | None = None
    model: GatedNetwork | None = field(default=None, repr=False)
    keep: list[bool] = field(default_factory=list)

    @property
    def final(self) -> dict:
        return self.history[-1]

    def to_json(self) -> dict:
        return {
            "config": self.config,
            "final": self.final,
            "history": self.history,
            "pruned_at": {str(k): v for k, v in sorted(self.pruned_at.items())},
            "decided_at_end": {str(k): v for k, v in sorted(self.decided.items())},
            "test": self.test,
            "note": self.note,
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {name} asked for, but torch sees no CUDA device (use auto or cpu)"
        )
    return device


class Trial:
    """The pieces of one trial and the step that trains them; ``run_trial`` drives it."""

    def __init__(self, config: TrialConfig, data: DataBundle | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.data = data or trial_data(config, self.device)
        self.model = trial_model(config, self.data)  # built-in, or the user's factory's
        self.mode = config.method.gates
        if self.mode == "removed":
            for s in self.model.sections:
                s.prune()
        self.model.to(self.device)
        if config.channels_last and self.device.type == "cuda" and len(self.data.in_shape) == 3:
            self.model.to(memory_format=torch.channels_last)
        self.flops: FlopTable = flop_table(self.model, self.data.in_shape)
        m = config.method
        self.optimizer = make_optimizer(self.model, config)
        # the user's API (``layertune.Pruner``) holds the gates; fixed / removed gates stay at 1
        self.pruner = Pruner(
            self.model, self.optimizer, self.data.num_train, m,
            generator=torch.Generator().manual_seed(config.seed + 1),
            theta_init=m.theta_init if self.mode == "learned" else 1.0,
            dz_from_weights=True,  # the loss is the cross-entropy alone
        )
        self.gates: GateController = self.pruner.gates
        steps_per_epoch = len(self.data.train)
        self.scheduler = make_schedule(self.optimizer, config, steps_per_epoch)
        self.epoch = 0
        self.train_flops = 0.0
        self.history: list[dict] = []
        self.pruned_at: dict[int, int] = {}
        self.decided: dict[int, float] = {}  # gate -> theta before the end-of-training decision
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if config.bf16 else nullcontext()
        )
        self.average: WeightAverage | None = None  # the weights evaluated, once averaging
        present = self.gates.remaining()
        if (self.mode == "learned" and m.decide_at and self.gates.deterministic() == present
                and nothing_to_rank(present, m.decide_sections)):
            # a depth target of none or all sections needs no training to decide: the trial
            # trains that network from its first step (docs/algorithm.md, "Early decision")
            self.decide_structure()
        elif self.mode != "learned":  # the structure is fixed from the first step
            self.start_average()

    # --- training ---------------------------------------------------------------------------

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """One minibatch: draw gates, weights step, gate step, pruning. Returns the loss."""
        if self.mode != "learned":
            return self._plain_step(x, y)
        z = self.pruner.draw()  # every remaining section on once the gates are fixed
        loss = self._backward(x, y)
        # optimizer.step, prior, and the gate step and pruning with the previous step's gradient
        self._note_removed(self.pruner.step(loss, x, y))
        return self._end_step(z, loss, len(y))

    def _note_removed(self, removed: list) -> None:
        if removed:
            for i in self.gates.pruned_at_step:
                self.pruned_at.setdefault(i, self.epoch)

    def _plain_step(self, x: Tensor, y: Tensor) -> Tensor:
        """Every section on (``gates: fixed``) or none (``removed``): no gates, no prior."""
        z = self.gates.remaining()
        self.model.set_gates(z)
        loss = self._backward(x, y)
        self.optimizer.step()
        return self._end_step(z, loss, len(y))

    def _backward(self, x: Tensor, y: Tensor) -> Tensor:
        if self.config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            loss = F.cross_entropy(self.train_module()(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def train_module(self) -> torch.nn.Module:
        """What the training forward runs: the network (a data-parallel trial wraps it)."""
        return self.model

    def _end_step(self, z: list[float], loss: Tensor, batch: int) -> Tensor:
        self.scheduler.step()
        if self.average is not None:
            self.average.update()
        self.train_flops += self.flops.training_step([zi == 1.0 for zi in z], batch)
        return loss.detach()

    def end_after(self, settled_epoch: int | None) -> int:
        """The epoch this trial ends at if it settled at ``settled_epoch`` (None: it has not):
        ``settle.cooldown`` epochs later, its learning rate falling linearly to 0 by then."""
        c = self.config
        if settled_epoch is None:
            return c.epochs
        end = min(c.epochs, settled_epoch + c.settle.cooldown)
        if end > settled_epoch:
            steps = len(self.data.train)
            cool_down(self.scheduler, settled_epoch * steps, (end - settled_epoch) * steps)
        return end

    def train_epoch(self, progress: EpochProgress | None = None) -> tuple[float, float]:
        """Returns (seconds, mean minibatch loss). ``progress`` is told of every step."""
        self.epoch += 1
        self.model.train()
        total = torch.zeros((), device=self.device)
        start = time.perf_counter()
        if progress is not None:
            progress.start(self.epoch, len(self.data.train))
        for x, y in self.data.train:
            total += self.step(x, y)
            if progress is not None:
                progress.update(len(y))
        if progress is not None:
            progress.close()
        if self.mode == "learned":  # the last step's gate gradient: the epoch ends with it
            self._note_removed(self.pruner.settle())
            self.pruner.end_draw()  # and its checkpoint with no half-used draw
        mean_loss = float(total) / max(len(self.data.train), 1)  # syncs the device
        if not math.isfinite(mean_loss):
            raise TrialDiverged(
                f"training loss is {mean_loss} in epoch {self.epoch}: lower optimizer.lr or "
                "method.prior_weight"
            )
        m = self.config.method
        if self.mode == "learned" and self.epoch == m.decide_at and not self.gates.fixed:
            self.decide_structure()
        if m.recalibrate_bn:
            self.recalibrate_bn()
        return time.perf_counter() - start, mean_loss

    def decide_structure(self) -> None:
        """The early decision (``method.decide_at``): keep the sections the loss budget (or
        ``method.decide_sections``) keeps, fix the gates, remove the rest from the network and
        the optimiser."""
        m = self.config.method
        batches = cache(lambda: self._train_batches(m.decide_batches))  # only if ranked
        self.pruner.decide_by(lambda z: self._batch_loss(batches(), z))
        for i in self.gates.pruned_at_step:
            self.pruned_at.setdefault(i, self.epoch)
        self.start_average()

    def start_average(self) -> None:
        """Average the weights from now on (``method.ema_decay``); the structure is fixed."""
        if self.config.method.ema_decay > 0.0:
            self.average = WeightAverage(self.model, self.config.method.ema_decay)

    @property
    def evaluated(self) -> torch.nn.Module:
        """The network evaluation reads and the trial delivers: the averaged weights once
        they are averaged (``method.ema_decay``), else the trained network."""
        return self.model if self.average is None else self.average.network

    @torch.no_grad()
    def _batch_loss(self, batches: list[tuple[Tensor, Tensor]], z: list[float]) -> float:
        """Training loss of the network with gates ``z``, with batch statistics as in training
        (running statistics mislead mid-training). Its forwards count as training work."""
        samples = sum(len(y) for _, y in batches)
        self.train_flops += self.flops.forward([zi == 1.0 for zi in z]) * samples
        with self.autocast:
            return self.pruner.batch_loss(batches, z)

    def recalibrate_bn(self) -> None:
        """Running statistics of the network that is evaluated (``method.recalibrate_bn``).
        Not counted in ``train_flops``: training never reads them, only evaluation does."""
        self.evaluated.set_gates(self.gates.deterministic())
        recalibrate(self.evaluated, self._train_batches(self.config.method.recalibrate_batches))

    def _train_batches(self, count: int) -> list[tuple[Tensor, Tensor]]:
        return [batch for _, batch in zip(range(count), self.data.train, strict=False)]

    # --- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, loader, gates: list[float] | None = None) -> tuple[float, float]:
        """(loss, accuracy) of the deterministic network, z = round(theta) unless ``gates``
        are given, in eval mode, of the ``evaluated`` network."""
        network = self.evaluated
        network.eval()
        network.set_gates(self.gates.deterministic() if gates is None else gates)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        count = 0
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast:
                out = network(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(1) == y).sum()
            count += y.numel()  # per target: a sample's class, or each position of a sequence
        return float(loss_sum) / count, float(correct) / count

    def decide_gates(self) -> None:
        """End of training: gates still inside (0, 1) go to the vertex where J is lower."""
        self.decided = self.pruner.decide_open_gates(
            lambda z: self.evaluate(self.data.train, z)[0])

    def keep(self) -> list[bool]:
        return self.pruner.keep()

    def metrics(self, seconds: float) -> dict:
        """One report of the trial contract (``layertune.contract``)."""
        val_loss, val_acc = self.evaluate(self.data.val)
        train_loss, _ = self.evaluate(self.data.train)
        keep = self.keep()
        theta = self.gates.theta.tolist()
        return {
            "epoch": self.epoch,
            "val_accuracy": val_acc,
            "val_loss": val_loss,
            "train_loss": train_loss,
            "active_layers": sum(keep),
            "total_layers": len(keep),
            "undecided_layers": self.gates.undecided(),
            "decided_at_end": len(self.decided),
            # every gate at 0 or 1 says nothing while no gate has moved (theta_0 = 1 starts
            # there): the depth counts as known once the gates have removed a section, or once
            # the early decision has fixed them
            "collapsed": int(self.gates.fixed or (
                self.gates.undecided() == 0 and any(s.pruned for s in self.model.sections)
            )),
            "flops": self.flops.forward(keep),
            "params": sum(p.numel() for p in self.model.parameters()) - self._dropped_params(keep),
            "train_flops": self.train_flops,
            "epoch_seconds": seconds,
            "theta": [float(t) for t in theta],
        }

    def _dropped_params(self, keep: list[bool]) -> int:
        """Parameters of sections still present but rounded to 0 (absent from the export)."""
        return sum(
            p.numel()
            for k, s in zip(keep, self.model.sections, strict=True)
            if not k and s.body is not None
            for p in s.body.parameters()
        )


def run_trial(
    config: TrialConfig,
    report: Report,
    *,
    checkpoint: bool = False,
    resume_from: str | None = None,
    data: DataBundle | None = None,
    last_checkpoint: Callable[[GatedNetwork, list[bool], str], None] | None = None,
    trial: Trial | None = None,
    progress: EpochProgress | None = None,
) -> TrialResult:
    """Train ``config`` for its epochs, or until it has settled (``config.settle``,
    ``layertune.settle``), calling ``report`` after each one.

    With ``checkpoint`` each report carries a folder holding the whole trial state;
    ``resume_from`` continues from such a folder. ``last_checkpoint(model, keep, folder)`` may
    add files to the last report's checkpoint folder before it is reported (the sweep puts the
    compact network there, so the driver can record it from the trial's checkpoint).
    ``trial``: one built already (a data-parallel trial, ``layertune.distributed``).
    ``progress`` shows each epoch's steps as they go (``layertune train``).
    """
    trial = trial or Trial(config, data)
    if resume_from:
        load_state(trial, resume_from)
    # a resumed trial may have settled before (layertune.settle): it ends as it would have
    settled_epoch = settled_at(trial.history, config.settle)
    end = trial.end_after(settled_epoch)
    while trial.epoch < end:
        seconds, _ = trial.train_epoch(progress)
        if (trial.epoch == config.epochs and trial.mode == "learned"
                and config.method.decide_at_end and not trial.gates.fixed):
            trial.decide_gates()
        metrics = trial.metrics(seconds)
        trial.history.append(metrics)
        if settled_epoch is None and settled(trial.history, config.settle):
            settled_epoch = trial.epoch
            end = trial.end_after(settled_epoch)
        last = trial.epoch == end
        if checkpoint:
            with tempfile.TemporaryDirectory(prefix="layertune-ckpt-") as folder:
                save_state(trial, folder)
                if last_checkpoint is not None and last:
                    last_checkpoint(trial.evaluated, trial.keep(), folder)
                report(metrics, folder)
        else:
            report(metrics, None)
    test = None
    if trial.data.test is not None:
        loss, acc = trial.evaluate(trial.data.test)
        test = {"accuracy": acc, "loss": loss}
    return TrialResult(
        config=config.model_dump(mode="json"),
        history=trial.history,
        pruned_at=trial.pruned_at,
        decided=trial.decided,
        test=test,
        note=trial.data.note,
        model=trial.evaluated,
        keep=trial.keep(),
    )
