"""A small pre-norm ViT on MNIST, its blocks gated by layertune and pruned while it trains.

    .venv/bin/python examples/vit_mnist.py [--gates learned|fixed] [--epochs 6] [--depth 6]

The block mirrors timm's ``Block`` (``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, with the
same attribute names), so ``layertune.gate`` finds it by those names, as it would timm's own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop import loop_options, settings, train  # noqa: E402

from layertune.config import DataConfig  # noqa: E402
from layertune.data import load_data  # noqa: E402


class Attention(nn.Module):
    """timm's ``Attention``: one qkv Linear, scaled dot-product attention, one proj Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm's pre-norm ``Block`` without layer scale and drop path."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, mlp_ratio * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding (7x7 patches of a 28x28 image: 16 tokens) + class token, ``depth``
    blocks, final LayerNorm, linear head on the class token."""

    def __init__(self, depth: int = 6, dim: int = 64, heads: int = 4, patch: int = 7,
                 image: int = 28, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def main(argv: list[str] | None = None) -> dict:
    p = loop_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]), epochs=6,
                     decide_at=2, lr=2e-3, batch_size=128)
    p.add_argument("--depth", type=int, default=6)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    data = load_data(DataConfig(name="mnist", batch_size=a.batch_size), a.seed,
                     torch.device("cpu"))
    out = train(ViT(depth=a.depth), data, optimizer="adamw", **settings(a))
    print({k: v for k, v in out.items() if k != "network"})
    return out


if __name__ == "__main__":
    main()
