"""One trial on several processes (data parallel), every process holding the same gates.

docs/algorithm.md, "Several workers", states the rule; in short, no process ever decides alone:

- ``z`` is drawn from a generator seeded by (trial seed, global step): the same on every rank
  without a message, and the same again after a resume;
- the gates' data gradient is averaged over the ranks before the gate step (``Pruner.reduce``);
  the prior's rent and ``Q`` come from the weights, which DDP keeps identical, so theta, the
  pruning rule and the removals are the same everywhere;
- the losses that decide the structure and the evaluation sums are all-reduced;
- DDP skips no check: ``find_unused_parameters`` because sections drawn off have no gradient
  (the same sections on every rank), and it is rebuilt over the remaining parameters once
  sections are removed; BatchNorm running statistics are averaged over the ranks after each
  epoch, so every rank evaluates (and rank 0 checkpoints) the same network.

Each rank takes its share of every global minibatch (``data.batch_size`` stays the global
batch; ``ShardedLoader``), so K ranks see exactly the minibatches one process would. Nothing
here knows Ray: ``layertune.workers`` runs it on Ray Train.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .config import TrialConfig
from .data import DataBundle
from .train import Trial


def step_seed(seed: int, step: int) -> int:
    """The gate generator's seed for global step ``step`` of a trial seeded ``seed``."""
    return (seed * 2**32 + step) % 2**63


def mean_over_ranks(t: Tensor) -> Tensor:
    """``t`` averaged over the process group (a new tensor; every rank gets the same bits)."""
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    out = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(out)
    return out.tolist()


class ShardedLoader:
    """This rank's share of each minibatch of ``base``: the batch cut in ``world`` contiguous
    parts (sizes differ by at most one). A batch smaller than ``world`` (a last one) is
    skipped, so every rank runs the same steps; ``seen`` counts the samples of the last pass."""

    def __init__(self, base: Any, rank: int, world: int) -> None:
        self.base, self.rank, self.world = base, rank, world
        self.seen = 0

    def __len__(self) -> int:
        n, b = getattr(self.base, "num_samples", None), getattr(self.base, "batch_size", None)
        tiny = n is not None and b is not None and 0 < n % b < self.world
        return len(self.base) - tiny

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.seen = 0
        for x, y in self.base:
            if len(y) >= self.world:
                y = y.tensor_split(self.world)[self.rank]
                self.seen += y.numel()  # as Trial.evaluate counts
                yield x.tensor_split(self.world)[self.rank], y


def _sharded_dataloader(loader: DataLoader, rank: int, world: int, shuffle: bool,
                        seed: int) -> DataLoader:
    """A streamed data set (ImageNet) through ``DistributedSampler``: ``batch_size / world``
    samples per rank and step."""
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank,
                                 shuffle=shuffle, seed=seed)
    nw = loader.num_workers
    return DataLoader(loader.dataset, batch_size=loader.batch_size // world, sampler=sampler,
                      num_workers=nw, pin_memory=loader.pin_memory, persistent_workers=nw > 0)


def shard_bundle(bundle: DataBundle, rank: int, world: int, seed: int) -> DataBundle:
    """Every loader of ``bundle`` cut to this rank's share; ``num_train`` (the objective's
    ``N``) stays the whole training set's."""
    def shard(loader: Any, shuffle: bool) -> DataLoader | ShardedLoader | None:
        if loader is None:
            return None
        if isinstance(loader, DataLoader):
            return _sharded_dataloader(loader, rank, world, shuffle, seed)
        return ShardedLoader(loader, rank, world)

    return replace(bundle, train=shard(bundle.train, True), val=shard(bundle.val, False),
                   test=shard(bundle.test, False))


def _samples(loader: DataLoader | ShardedLoader) -> int:
    """Samples this rank evaluated in its last pass over ``loader``."""
    return len(loader.sampler) if isinstance(loader, DataLoader) else loader.seen


class DistributedTrial(Trial):
    """A ``Trial`` on one rank of an initialised process group, on this rank's share of the
    data (``shard_bundle``). Every rank makes the same calls; rank 0 alone need save
    checkpoints."""

    def __init__(self, config: TrialConfig, data: DataBundle | None = None) -> None:
        super().__init__(config, data)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.data = shard_bundle(self.data, self.rank, self.world, config.seed)
        # dL/dz from DDP's averaged gradients is the same on every rank: nothing to send
        self.pruner.reduce = None if self.gates.from_weight_gradients else mean_over_ranks
        self._ddp: DistributedDataParallel | None = None
        self._ddp_pruned: list[int] = []

    # --- training ---------------------------------------------------------------------------

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        # the scheduler counts every step of the trial and is restored with it
        self.gates.generator.manual_seed(step_seed(self.config.seed, self.scheduler.last_epoch))
        return super().step(x, y)

    def train_module(self) -> nn.Module:
        """DDP over the parameters still in the network, rebuilt after a removal (DDP keeps
        the parameter list it was built with)."""
        pruned = [i for i, s in enumerate(self.model.sections) if s.pruned]
        if self._ddp is None or pruned != self._ddp_pruned:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids,
                                                find_unused_parameters=True)
            self._ddp_pruned = pruned
        return self._ddp

    def train_epoch(self, *args: Any, **kwargs: Any) -> tuple[float, float]:
        sampler = getattr(self.data.train, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)
        seconds, loss = super().train_epoch(*args, **kwargs)
        self._average_buffers()
        return seconds, loss

    @torch.no_grad()
    def _average_buffers(self) -> None:
        """BatchNorm running statistics (each rank saw its own share) averaged over ranks."""
        networks = [self.model] if self.average is None else [self.model, self.evaluated]
        for b in (b for network in networks for b in network.buffers()):
            if b.is_floating_point():
                b.copy_(mean_over_ranks(b))

    @torch.no_grad()
    def _batch_loss(self, batches: list[tuple[Tensor, Tensor]], z: list[float]) -> float:
        n = sum(len(y) for _, y in batches)
        total, count = sum_over_ranks([super()._batch_loss(batches, z) * n, n], self.device)
        return total / count

    # --- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, loader, gates: list[float] | None = None) -> tuple[float, float]:
        loss, acc = super().evaluate(loader, gates)
        n = _samples(loader)  # of the pass just made
        loss_sum, correct, count = sum_over_ranks([loss * n, acc * n, n], self.device)
        return loss_sum / count, correct / count

    def metrics(self, seconds: float) -> dict:
        m = super().metrics(seconds)
        m["train_flops"] = sum_over_ranks([self.train_flops], self.device)[0]  # all ranks' work
        return m
