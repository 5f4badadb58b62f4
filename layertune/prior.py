"""The Gaussian scale-mixture prior with the flattening hyper-prior (docs/algorithm.md
section 2, and "Prior" as implemented).

Per section ``l`` with prior tensors ``W_t`` (``n`` entries in all) and He-relative scales
``s_t``, let ``Q = sum_t ||W_t||^2 / (sigma * s_t)^2``. Integrating the inverse-gamma variance
(shape ``alpha = n / (2h)``) out of ``N(0, v c^2 diag(sigma s_t)^2)`` gives, up to terms slab
and spike share,

    R(c) = (alpha + n/2) * log(1 + Q / (2 * alpha * c^2)) + n * log(c)

with ``c = 1`` for the slab (``R_1``) and ``c = rho`` for the spike (``R_0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .sections import GatedSection


@dataclass(frozen=True)
class PriorSettings:
    prior_scale: float  # sigma
    spike_ratio: float  # rho
    hyperprior_strength: float  # h
    prior_weight: float  # lambda
    num_train: int  # N


def energies(q: Tensor, n: Tensor, rho: float, h: float) -> tuple[Tensor, Tensor]:
    """``(R_1, R_0)`` per section from ``Q`` and ``n`` (shared terms dropped)."""
    a = n * (1.0 + h) / (2.0 * h)  # alpha + n/2
    u = h * q / n  # Q / (2 alpha)
    r1 = a * torch.log1p(u)
    r0 = a * torch.log1p(u / rho**2) + n * torch.log(torch.tensor(rho, dtype=q.dtype))
    return r1, r0


def decay_coefficient(q: Tensor, n: Tensor, theta: Tensor, rho: float, h: float) -> Tensor:
    """``d/dQ [theta R_1 + (1 - theta) R_0]``: the adaptive decay, before ``2 / (sigma s)^2``."""
    a = n * ((1.0 + h) / (2.0 * h))
    slab = a / (n / h + q)
    spike = a / (n * (rho**2 / h) + q)
    return torch.lerp(spike, slab, theta.to(q.dtype))


class SectionPrior:
    """Evaluates ``R_1 - R_0`` per section and applies the prior's pull on the weights.

    The pull is a decoupled, semi-implicit step ``W <- W / (1 + lr * (lambda / N) * k)`` with
    ``k`` the adaptive decay at the current ``W``: it is the gradient step of the prior term for
    small ``lr`` and cannot overshoot, so a section held at ``theta = 0`` shrinks monotonically
    (docs/algorithm.md, "Departures").
    """

    def __init__(self, sections: list[GatedSection], settings: PriorSettings) -> None:
        self.sections = sections
        self.s = settings
        self.refresh()

    def refresh(self) -> None:
        """Re-read the prior tensors (after a section was pruned)."""
        self.tensors: list[Tensor] = []
        scales: list[float] = []
        owner: list[int] = []
        for i, section in enumerate(self.sections):
            for t, scale in section.prior_tensors():
                self.tensors.append(t)
                scales.append(self.s.prior_scale * scale)
                owner.append(i)
        device = self.tensors[0].device if self.tensors else torch.device("cpu")
        inv_var = torch.tensor([1.0 / c**2 for c in scales], device=device)
        self._owner = torch.tensor(owner, dtype=torch.long, device=device)
        # Q = (||W_t||^2 per tensor) @ _to_section: one product instead of a scatter
        self._to_section = torch.zeros(len(self.tensors), len(self.sections), device=device)
        self._to_section[torch.arange(len(self.tensors)), self._owner] = inv_var
        n = torch.zeros(len(self.sections), device=device)
        n.index_add_(0, self._owner, torch.tensor([float(t.numel()) for t in self.tensors],
                                                  device=device))
        self.n = n.clamp_min(1.0)  # pruned sections: no tensors; keeps the formulas finite
        # the constants of rent(): (lambda/N)(R_1 - R_0) = A (log1p(u) - log1p(u/rho^2)) + B
        s, h = self.s, self.s.hyperprior_strength
        self._u_per_q = h / self.n
        self._rent_a = (s.prior_weight / s.num_train) * self.n * ((1.0 + h) / (2.0 * h))
        self._rent_b = (s.prior_weight / s.num_train) * -math.log(s.spike_ratio) * self.n
        # the weight step's factor per tensor is 1 / (1 + lr * k[owner] * _pull)
        self._pull = (2.0 * s.prior_weight / s.num_train) * inv_var

    @torch.no_grad()
    def quadratic(self) -> Tensor:
        """``Q`` per section (0 for pruned sections), on the weights' device."""
        if not self.tensors:
            return torch.zeros_like(self.n)
        # one fused kernel group instead of a reduction per tensor
        return torch.stack(torch._foreach_norm(self.tensors)).float().square_() @ self._to_section

    @torch.no_grad()
    def rent(self, q: Tensor) -> Tensor:
        """``(lambda / N) * (R_1 - R_0)`` (``energies``): the prior's exact part of dJ/dtheta."""
        u = q * self._u_per_q
        diff = torch.log1p(u) - torch.log1p(u / self.s.spike_ratio**2)
        return torch.addcmul(self._rent_b, diff, self._rent_a)

    @torch.no_grad()
    def shrink_(self, q: Tensor, theta: Tensor, lr: float) -> None:
        """One decoupled prior step on every prior tensor; ``q`` and ``theta`` on the weights'
        device, so nothing comes back to the host."""
        if not self.tensors or self.s.prior_weight == 0.0:
            return
        k = decay_coefficient(q, self.n, theta, self.s.spike_ratio, self.s.hyperprior_strength)
        factors = (k[self._owner] * self._pull).mul_(lr).add_(1.0).reciprocal_()
        torch._foreach_mul_(self.tensors, factors.unbind())
