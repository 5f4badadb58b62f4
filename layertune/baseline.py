"""The from-scratch grid: the baseline a pruning sweep's front has to beat.

For a trial config, one config per depth the pruned networks can have: the same data, method
settings, optimiser, epochs and seed, with every gate fixed at 1 (``method.gates: fixed``), so
each network trains at that depth from the first step. Trained and read as a front
(val_accuracy against active sections), it answers "is pruning any better than training each
depth from scratch?" (issue 11, goal 5; issue 15's ``layertune baseline``).

- ``mlp`` and ``cnn1d``: every ``model.depth`` d = 1..L.
- CIFAR ResNets (``resnet20`` .. ``resnet110``): every equal number of blocks per stage
  k = 1..n (``model.blocks_per_stage``), 3k sections.
- Depth 0, for all of them: the network with every section removed (``method.gates:
  removed``): stem, the skips (projections included) and head, which is exactly the network
  a sweep leaves when it prunes every section; a depth-0 ``model.depth`` is not a model.

Other architectures (lenet5, vgg16, ImageNet ResNets) have sections of different kinds or
uneven stages; they have no grid here (``ValueError``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CNN1dConfig, MLPConfig, ResNetConfig, TrialConfig

_CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


@dataclass(frozen=True)
class GridPoint:
    """One network of the grid: the sections it keeps, and the trial config that trains it."""

    sections: int  # its active_layers once trained
    config: TrialConfig


def max_depth(config: TrialConfig) -> int:
    """L: the gated sections of ``config``'s network (the grid's deepest point)."""
    model = config.model
    if isinstance(model, MLPConfig | CNN1dConfig):
        return model.depth
    if isinstance(model, ResNetConfig) and model.name in _CIFAR_RESNETS:
        return 3 * _blocks_per_stage(model)
    what = getattr(model, "name", None) or f"factory {model.factory}"
    raise ValueError(f"model {what}: no from-scratch grid (mlp, cnn1d and the CIFAR "
                     f"ResNets {', '.join(_CIFAR_RESNETS)} have one)")


def depth_grid(config: TrialConfig) -> list[GridPoint]:
    """The configs of the grid, shallowest first: depth 0 (every section removed), then every
    depth (ResNets: every equal number of blocks per stage) up to the full network."""
    total = max_depth(config)  # raises for models without a grid
    points = [GridPoint(0, _with(config, gates="removed"))]
    if isinstance(config.model, ResNetConfig):
        points += [GridPoint(3 * k, _with(config, gates="fixed", blocks_per_stage=k))
                   for k in range(1, total // 3 + 1)]
    else:
        points += [GridPoint(d, _with(config, gates="fixed", depth=d))
                   for d in range(1, total + 1)]
    return points


def _blocks_per_stage(model: ResNetConfig) -> int:
    return model.blocks_per_stage or (int(model.name.removeprefix("resnet")) - 2) // 6


def _with(config: TrialConfig, gates: str, **model: int) -> TrialConfig:
    # model_copy skips validation; the grid's configs are rebuilt through the schema instead
    overrides = {"method.gates": gates} | {f"model.{k}": v for k, v in model.items()}
    return config.with_overrides(overrides, source="depth grid")
