"""A small decoder-only transformer on Python's own source, character by character, its blocks
gated by layertune and pruned while it trains.

    .venv/bin/python examples/char_transformer.py [--gates learned|fixed] [--epochs 3]

The text is the standard library's ``.py`` files (in folder and name order, the first
``--megabytes``), read as bytes: 256 symbols, nearly all of them ASCII characters. The last
tenth is the validation text. Each block is timm's pre-norm ``Block`` with the causal mask as
its ``attn_mask`` argument: the model passes the mask to each block, the gated section passes
it on to the block's attention, and a removed block ignores it. ``CharTransformer`` and
``text_data`` also serve as a trial YAML's factories (README, "Your own model").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layertune.data import DataBundle, TensorLoader


def python_source(megabytes: float) -> Tensor:
    """The first ``megabytes`` of the standard library's ``.py`` files (folders and files in
    name order, installed packages left out), as byte values."""
    limit, parts, size = int(megabytes * 2**20), [], 0
    for folder, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        for name in sorted(f for f in files if f.endswith(".py")):
            if size < limit:
                parts.append(Path(folder, name).read_bytes()[: limit - size])
                size += len(parts[-1])
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8).long()


def text_data(megabytes: float, seq: int, batch_size: int, seed: int = 0) -> DataBundle:
    """Windows of ``seq + 1`` bytes: ``x`` the first ``seq``, ``y`` the next byte at each."""
    text = python_source(megabytes)
    split = int(0.9 * len(text))

    def windows(part: Tensor) -> tuple[Tensor, Tensor]:
        w = part[: len(part) // (seq + 1) * (seq + 1)].view(-1, seq + 1)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    train_x, train_y = windows(text[:split])
    val_x, val_y = windows(text[split:])
    return DataBundle(TensorLoader(train_x, train_y, batch_size, shuffle=True, seed=seed),
                      TensorLoader(val_x, val_y, 256), None, (seq,), 256, len(train_x))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """timm's pre-norm ``Block``: ``x + attn(norm1(x), attn_mask)``, then ``+ mlp(norm2(.))``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """Byte embedding + learned positions, ``depth`` causal blocks, final norm, a linear head.
    Returns logits ``(batch, 256, positions)``, the layout ``F.cross_entropy`` takes."""

    def __init__(self, depth: int = 6, dim: int = 128, heads: int = 4, seq: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, seq, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 256)
        # True where a position may attend: itself and the positions before it
        self.register_buffer("causal", torch.ones(seq, seq, dtype=torch.bool).tril(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        h = self.embed(x) + self.pos[:, :n]
        mask = self.causal[:n, :n]
        for block in self.blocks:
            h = block(h, attn_mask=mask)
        return self.head(self.norm(h)).transpose(1, 2)


def main(argv: list[str] | None = None) -> dict:
    # imported here: as factories (README), this file's functions travel to Ray workers alone
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loop import loop_options, settings, train

    p = loop_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]), epochs=3,
                     decide_at=1, lr=2e-3, batch_size=64)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--megabytes", type=float, default=1.0, help="of Python source (max ~30)")
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    data = text_data(a.megabytes, a.seq, a.batch_size, a.seed)
    net = CharTransformer(a.depth, a.dim, seq=a.seq)
    out = train(net, data, optimizer="adamw", **settings(a))
    out["bits_per_char"] = out["val_loss"] / math.log(2)
    print({k: v for k, v in out.items() if k != "network"})
    return out


if __name__ == "__main__":
    main()
