"""A user's own network and data, written without layertune: the factories that the tests of
``model.factory`` / ``data.factory`` copy into a folder outside the package and sweep over."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class Block(nn.Module):
    """``x + residual(x)``: ``layertune.gate`` gates any block with a ``residual`` method."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def residual(self, x: Tensor) -> Tensor:
        return self.f(x)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.residual(x)


class Net(nn.Module):
    def __init__(self, depth: int, width: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Linear(64, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))))


def net(depth: int = 3, width: int = 32, classes: int = 10) -> nn.Module:
    return Net(depth, width, classes)


def digits(batch_size: int = 64, in_shape: tuple[int, ...] = (64,),
           split_seed: int | None = 0) -> tuple:
    """sklearn's 8x8 digits as torch loaders: (train, val, num_classes, in_shape); the split
    drawn with ``split_seed``, or with torch's global generator (None)."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y)
    seeded = None if split_seed is None else torch.Generator().manual_seed(split_seed)
    order = torch.randperm(len(y), generator=seeded)
    train, val = order[:1400], order[1400:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size, shuffle=True),
            DataLoader(TensorDataset(x[val], y[val]), 256), 10, tuple(in_shape))


class Branchy(Net):
    """Control flow on the data: torch.export cannot trace it."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out if float(x.sum()) > 0 else -out


def branchy() -> nn.Module:
    return Branchy(2, 16, 10)


# --- wrong ones (tests/test_factories.py) ------------------------------------------------------


def broken(**_: object) -> nn.Module:
    raise RuntimeError("no weights here")


def two_loaders() -> tuple:
    return digits()[:2]


def not_a_network() -> dict:
    return {"depth": 3}
