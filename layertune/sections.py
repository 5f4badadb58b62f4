"""Gated residual sections and the network that holds them (docs/algorithm.md section 1).

A section computes ``post(skip(x) + z * body(x))`` with ``z`` in {0, 1} drawn once per
minibatch. ``z = 0`` skips ``body`` in the forward and the backward pass; a pruned section
has no ``body`` at all and is exactly ``post(skip(x))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

_KERNELS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


class GatedSection(nn.Module):
    """``post(skip(x) + z * body(x))``; ``skip`` is linear (identity or a projection)."""

    def __init__(
        self, body: nn.Module, skip: nn.Module | None = None, post: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.body: nn.Module | None = body
        self.skip = skip if skip is not None else nn.Identity()
        self.post = post if post is not None else nn.Identity()
        self.z = 1.0
        self.probe: Tensor | None = None

    @property
    def pruned(self) -> bool:
        return self.body is None

    def prune(self) -> list[nn.Parameter]:
        """Delete ``body``; returns its parameters so the caller can drop them elsewhere."""
        params = list(self.body.parameters()) if self.body is not None else []
        self.body = None
        return params

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        """``args`` / ``kwargs`` (a block's attention mask, say) go to ``body`` alone."""
        s = self.skip(x)
        body = self.body  # once: a submodule's lookup is nn.Module.__getattr__, ~1 us
        if body is None or self.z == 0.0:
            return self.post(s)
        f = body(x, *args, **kwargs)
        if self.probe is not None and torch.is_grad_enabled():
            # s + f * probe with probe = 1: the same value; autograd's own backward gives
            # probe's gradient <dL/d(s + f), f> = dL/dz (no Python in the backward pass)
            return self.post(torch.addcmul(s, f, self.probe))
        return self.post(s + f)

    def prior_tensors(self) -> list[tuple[Tensor, float]]:
        """The section's weights ``W_l``, each tensor with its initial scale.

        Every conv/linear kernel and bias (scale sqrt(2 / fan_in), as in He init) and the affine
        scale and shift of the body's last normalisation (scale 1). A normalisation undoes the
        scale of the kernels before it, so without its affine parameters the prior could be met
        by shrinking those kernels at no cost to the function.
        """
        if self.body is None:
            return []
        out: list[tuple[Tensor, float]] = []
        last_norm: nn.Module | None = None
        for m in self.body.modules():
            if isinstance(m, _KERNELS):
                scale = math.sqrt(2.0 / fan_in(m))
                out.append((m.weight, scale))
                if m.bias is not None:
                    out.append((m.bias, scale))
            elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
                # the packed q/k/v kernel is a bare Parameter, not a Linear (its out_proj is one)
                scale = math.sqrt(2.0 / m.embed_dim)
                out.append((m.in_proj_weight, scale))
                if m.in_proj_bias is not None:
                    out.append((m.in_proj_bias, scale))
            elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
                last_norm = m
        if last_norm is not None:
            out += [(last_norm.weight, 1.0), (last_norm.bias, 1.0)]
        return out


class GatedNetwork(nn.Module):
    """A sequence of layers, some of them ``GatedSection``; gates are indexed in order.

    ``spec`` is the JSON-able description that rebuilds the architecture (see ``models``).
    """

    def __init__(self, layers: Sequence[nn.Module], spec: dict | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.spec = dict(spec or {})
        if not self.sections:
            raise ValueError("a gated network needs at least one GatedSection")

    @property
    def sections(self) -> list[GatedSection]:
        return [m for m in self.layers if isinstance(m, GatedSection)]

    def set_gates(self, z: Sequence[float], probe: Tensor | None = None) -> None:
        """Fix each section's gate for the next forward; ``probe[l]`` collects dL/dz_l."""
        set_gates(self.sections, z, probe)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def section_parameters(self) -> Iterator[nn.Parameter]:
        for s in self.sections:
            if s.body is not None:
                yield from s.body.parameters()


def set_gates(sections: Sequence[GatedSection], z: Sequence[float],
              probe: Tensor | None = None) -> None:
    """Fix each section's gate for the next forward; ``probe[l]`` (a tensor of ones that
    requires grad) collects dL/dz_l in its gradient."""
    slices = probe.unbind() if probe is not None else [None] * len(sections)
    for section, zi, p in zip(sections, z, slices, strict=True):
        # plain attributes, set past nn.Module.__setattr__ (it checks for parameters, buffers
        # and modules on every call: a tenth of a small network's step, once per section)
        section.__dict__["z"] = float(zi)
        section.__dict__["probe"] = p


# f(c u) = c f(u) for c > 0: after the last parametric module they keep the body homogeneous
_HOMOGENEOUS = (nn.ReLU, nn.Identity, nn.Dropout)


def homogeneous_parameters(body: nn.Module | None) -> list[nn.Parameter] | None:
    """Parameters ``P`` in which ``body``'s output is positively homogeneous of degree 1
    (scaling them by ``c > 0`` scales the output by ``c``), or None when there is no such set
    that can be read off its structure.

    By Euler's theorem ``f = sum_p p * df/dp`` then, so ``<dL/df, f> = sum_p <p, dL/dp>``: the
    gate's ``dL/dz`` from the gradients the backward pass computes anyway. Found for an
    ``nn.Sequential`` whose last Linear / Conv (weight and bias) or affine normalisation
    (scale and shift) is followed only by ReLU, Identity or Dropout (every built-in section).
    """
    if not isinstance(body, nn.Sequential):
        return None
    for m in reversed(body):
        if isinstance(m, _HOMOGENEOUS):
            continue
        if isinstance(m, nn.Sequential):  # only homogeneous modules after it
            return homogeneous_parameters(m)
        if isinstance(m, _KERNELS):
            return [m.weight] + ([m.bias] if m.bias is not None else [])
        if isinstance(m, _NORMS) and getattr(m, "weight", None) is not None \
                and getattr(m, "bias", None) is not None:
            return [m.weight, m.bias]
        return None
    return None


def fan_in(m: nn.Module) -> int:
    w = m.weight
    return int(w.shape[1] * math.prod(w.shape[2:]))


def he_init(module: nn.Module) -> None:
    """He-normal kernels, zero biases, unit norms: the scale ``sigma`` is relative to."""
    for m in module.modules():
        if isinstance(m, _KERNELS):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in(m)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
