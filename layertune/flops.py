"""Forward FLOPs per sample of each part of a gated network (``torch.utils.flop_counter``).

Counts what FlopCounterMode counts (matmuls and convolutions); elementwise work is left out,
as is usual for FLOP figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .formats import input_dtype
from .sections import GatedNetwork, GatedSection


@dataclass(frozen=True)
class FlopTable:
    fixed: float  # stem, transitions, head, and every section's skip
    body: tuple[float, ...]  # each section's body

    def forward(self, active: list[bool]) -> float:
        """Forward FLOPs per sample with the sections marked active running their body."""
        return self.fixed + sum(b for b, on in zip(self.body, active, strict=True) if on)

    def training_step(self, active: list[bool], batch: int) -> float:
        """Forward plus backward (about twice the forward) for one minibatch."""
        return 3.0 * batch * self.forward(active)


def _count(fn, *args) -> tuple[float, torch.Tensor]:
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return float(counter.get_total_flops()), out


@torch.no_grad()
def flop_table(model: GatedNetwork | nn.Module, in_shape: tuple[int, ...]) -> FlopTable:
    """Measure every part on one sample in eval mode; pruned sections have a body of 0.

    A network with ``sections`` but no flat ``layers`` (``gating.GatedModel``) is measured
    whole, with each section's body counted on the input that reached it.
    """
    if not hasattr(model, "layers"):
        return _nested_table(model, in_shape)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros((1, *in_shape), device=device, dtype=_dtype(model))
    fixed, body = 0.0, []
    for layer in model.layers:
        if isinstance(layer, GatedSection):
            f_skip, s = _count(lambda v, m=layer: m.post(m.skip(v)), x)
            f_body = _count(layer.body, x)[0] if layer.body is not None else 0.0
            fixed += f_skip
            body.append(f_body)
            x = layer.post(layer.skip(x) + layer.body(x)) if layer.body is not None else s
        else:
            f, x = _count(layer, x)
            fixed += f
    model.train(was_training)
    return FlopTable(fixed, tuple(body))


@torch.no_grad()
def _nested_table(model: nn.Module, in_shape: tuple[int, ...]) -> FlopTable:
    """Whole forward with every remaining section on; ``fixed`` is that minus the bodies."""
    sections: list[GatedSection] = model.sections
    was_training = model.training
    saved = [s.z for s in sections]
    model.eval()
    model.set_gates([1.0] * len(sections))
    seen: dict[int, tuple[tuple, dict]] = {}  # each section's arguments (x, and a mask, say)

    def keep(i: int):
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.setdefault(i, (args, kwargs))
        return hook

    handles = [s.register_forward_pre_hook(keep(i), with_kwargs=True)
               for i, s in enumerate(sections)]
    device = next(model.parameters()).device
    try:
        total, _ = _count(model, torch.zeros((1, *in_shape), device=device,
                                             dtype=_dtype(model)))
    finally:
        for h in handles:
            h.remove()
    body = tuple(_count(partial(s.body, **seen[i][1]), *seen[i][0])[0]
                 if s.body is not None and i in seen else 0.0 for i, s in enumerate(sections))
    model.set_gates(saved)
    model.train(was_training)
    return FlopTable(total - sum(body), body)


def _dtype(model: nn.Module) -> torch.dtype:
    """float32, or the input dtype a factory's network recorded (token ids: int64)."""
    return input_dtype(getattr(model, "spec", None) or {})
