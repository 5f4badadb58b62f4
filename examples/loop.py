"""A training loop you keep, with layertune's gates in it (README, "Your own model").

``train(net, data, ...)`` is an ordinary PyTorch loop; the lines marked ``# layertune`` are all
the method adds: gate the residual blocks, draw the gates each minibatch, let ``pruner.step``
take the optimiser's step with the gate step, the prior and the pruning rule, decide the
structure once after ``decide_at`` epochs. ``gates="fixed"`` trains the same network without
gates (every block kept): the baseline. The examples beside it call it, with the options of
``loop_options``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import layertune
from layertune.batchnorm import recalibrate
from layertune.data import DataBundle


def loop_options(parser: argparse.ArgumentParser, *, epochs: int, decide_at: int, lr: float,
                 batch_size: int) -> argparse.ArgumentParser:
    """The options every example has: ``train``'s settings (``settings(args)``), the batch
    size and the seed, with the example's defaults."""
    parser.add_argument("--gates", choices=["learned", "fixed"], default="learned")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--decide-at", type=int, default=decide_at)
    parser.add_argument("--tolerance", type=float, default=0.7)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--steps", type=int, default=None, help="minibatches per epoch (tests)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def settings(args: argparse.Namespace) -> dict:
    """``train``'s keywords from the options of ``loop_options``."""
    return {"epochs": args.epochs, "lr": args.lr, "gates": args.gates,
            "decide_at": args.decide_at, "tolerance": args.tolerance, "steps": args.steps}


def train(
    net: nn.Module,
    data: DataBundle,
    *,
    epochs: int,
    optimizer: str = "sgd",
    lr: float = 0.05,
    gates: str = "learned",
    decide_at: int = 2,
    tolerance: float = 0.7,
    steps: int | None = None,
) -> dict:
    """Train ``net`` on ``data``; returns the last epoch's validation accuracy and the blocks
    kept. ``steps`` caps the minibatches per epoch (tests)."""
    batches = [b for _, b in zip(range(10), data.train, strict=False)]
    pruner = None
    if gates == "learned":
        net = layertune.gate(net, example=batches[0][0])  # layertune
    if optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    per_epoch = min(len(data.train), steps or len(data.train))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    if gates == "learned":
        pruner = layertune.Pruner(net, opt, num_train=data.num_train)  # layertune
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        for _, (x, y) in zip(range(per_epoch), data.train, strict=False):
            if pruner:
                pruner.draw()  # layertune: z ~ Bernoulli(theta) on the blocks
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            if pruner:
                pruner.step(loss, x, y)  # layertune: opt.step() + gates, prior, pruning
            else:
                opt.step()
            schedule.step()
        if pruner and epoch == decide_at:
            pruner.decide(batches, tolerance)  # layertune: the structure, once
        if pruner:
            pruner.set_deterministic()  # layertune: z = round(theta) for evaluation
        recalibrate(net, batches)  # BatchNorm statistics of the network evaluated
        acc, val_loss = evaluate(net, data.val)
        kept = pruner.keep() if pruner else []
        print(f"epoch {epoch}: loss {loss.item():.3f}  val loss {val_loss:.4f}  val acc {acc:.4f}  "
              f"blocks kept {sum(kept) if pruner else 'all'}/{len(kept) if pruner else 'all'}  "
              f"{time.perf_counter() - start:.0f}s", flush=True)
    result = {"val_accuracy": acc, "val_loss": val_loss, "seconds": time.perf_counter() - start}
    if pruner:
        kept = pruner.keep()
        compact = layertune.strip(net, kept)  # layertune: the user's network, blocks deleted
        result.update(kept=sum(kept), gated=len(kept),
                      removed=[p for p, k in zip(net.paths, kept, strict=True) if not k],
                      compact_accuracy=evaluate(compact, data.val)[0], network=compact)
    return result


@torch.no_grad()
def evaluate(net: nn.Module, loader: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over every target: a sample's class, or each position of
    a sequence (logits ``(batch, classes, positions)``, as ``F.cross_entropy`` takes them)."""
    net.eval()
    right = total = 0
    loss = 0.0
    for x, y in loader:
        out = net(x)
        right += int((out.argmax(1) == y).sum())
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        total += y.numel()
    return right / total, loss / total
