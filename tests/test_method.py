"""docs/algorithm.md section 6, properties 2-5: removal, affinity, estimator, weights to zero."""

from __future__ import annotations

import dataclasses
import itertools
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from test_models import CASES, _batch, _build

from layertune.config import MLPConfig, load_trial
from layertune.export import compact
from layertune.gates import GateController, GateGradient
from layertune.models import build_model
from layertune.prior import PriorSettings, decay_coefficient, energies
from layertune.sections import GatedNetwork
from layertune.train import TrialResult, run_trial

SETTINGS = PriorSettings(prior_scale=1.0, spike_ratio=0.1, hyperprior_strength=1.0,
                         prior_weight=1.0, num_train=100)


def _tiny(depth: int = 3, width: int = 6, seed: int = 0, body_scale: float = 1.0) -> GatedNetwork:
    torch.manual_seed(seed)
    net = build_model(MLPConfig(name="mlp", depth=depth, width=width), (5,), 3)
    with torch.no_grad():
        for p in net.section_parameters():
            p.mul_(body_scale)
    return net.eval()


def _data(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


@torch.no_grad()
def _loss(net: GatedNetwork, z: tuple[float, ...], x, y) -> float:
    net.set_gates(list(z))
    return float(F.cross_entropy(net(x), y))


def _expected_loss(net: GatedNetwork, theta: list[float], x, y) -> float:
    """E_z[L(z)] over all 2^L gate settings, z_l ~ Bernoulli(theta_l)."""
    total = 0.0
    for z in itertools.product((0.0, 1.0), repeat=len(theta)):
        p = 1.0
        for zi, t in zip(z, theta, strict=True):
            p *= t if zi else 1.0 - t
        total += p * _loss(net, z, x, y)
    return total


# --- property 2: exact removal ----------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_compact_network_equals_gated_network(case: str) -> None:
    net = _build(case)
    x, _ = _batch(case)
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN is not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    keep = [i % 3 != 1 for i in range(len(net.sections))]  # removes a third, projections too
    net.eval()
    net.set_gates([float(k) for k in keep])
    with torch.no_grad():
        gated = net(x)
        small = compact(net, keep)(x)
    assert (gated - small).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in compact(net, keep).parameters()) < sum(
        p.numel() for p in net.parameters()
    )


# --- property 3: affinity ---------------------------------------------------------------------


def test_expected_objective_is_affine_in_each_gate() -> None:
    net = _tiny()
    x, y = _data()
    base = [0.3, 0.6, 0.8]
    for layer in range(3):
        values = []
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):
            theta = list(base)
            theta[layer] = t
            values.append(_expected_loss(net, theta, x, y))
        slopes = [b - a for a, b in itertools.pairwise(values)]
        assert max(slopes) - min(slopes) < 1e-6 * max(1.0, abs(slopes[0]))
        assert abs(slopes[0]) > 1e-4  # the gate matters, so the check is not vacuous


def test_prior_energies_are_the_student_t_of_the_formulation() -> None:
    """R_c = (alpha + n/2) log(1 + Q / (2 alpha c^2)) + n log c, alpha = n / (2h); the rent
    R_1 - R_0 is n log(1/rho) for vanishing weights (prune) and tends to 2 alpha log(rho) < 0
    for large ones (keep); the weight step's decay is d/dQ of theta R_1 + (1 - theta) R_0."""
    n, rho, h = 10.0, 0.1, 2.0
    alpha = n / (2 * h)
    q = torch.tensor([5.0, 1e-9, 1e9], dtype=torch.float64, requires_grad=True)
    r1, r0 = energies(q, torch.full((3,), n, dtype=torch.float64), rho, h)
    assert r1[0].item() == pytest.approx((alpha + n / 2) * math.log(1 + 5.0 / (2 * alpha)))
    assert r0[0].item() == pytest.approx(
        (alpha + n / 2) * math.log(1 + 5.0 / (2 * alpha * rho**2)) + n * math.log(rho))
    rent = (r1 - r0).detach()
    assert rent[1].item() == pytest.approx(n * math.log(1 / rho), rel=1e-6)
    assert rent[2].item() == pytest.approx(2 * alpha * math.log(rho), rel=1e-3)
    theta = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    (theta * r1 + (1 - theta) * r0).sum().backward()
    decay = decay_coefficient(q.detach(), torch.full((3,), n, dtype=torch.float64), theta, rho,
                              h)
    assert torch.allclose(decay, q.grad, rtol=1e-9)


# --- property 4: estimators -------------------------------------------------------------------


def _enumerated_difference(net: GatedNetwork, theta: list[float], x, y) -> list[float]:
    """E[L | z_l = 1] - E[L | z_l = 0] by enumeration."""
    out = []
    for layer in range(len(theta)):
        on, off = list(theta), list(theta)
        on[layer], off[layer] = 1.0, 0.0
        out.append(_expected_loss(net, on, x, y) - _expected_loss(net, off, x, y))
    return out


def _mean_estimate(net: GatedNetwork, theta: list[float], estimator: str, x, y) -> list[float]:
    """The estimator's exact mean: its value under every z, weighted by P(z)."""
    gates = GateController(net, SETTINGS, theta_lr=0.1, estimator=estimator)
    gates.theta = torch.tensor(theta, dtype=torch.float64)
    mean = torch.zeros(len(theta), dtype=torch.float64)
    for z in itertools.product((0.0, 1.0), repeat=len(theta)):
        p = 1.0
        for zi, t in zip(z, theta, strict=True):
            p *= t if zi else 1.0 - t
        draw = gates.set_draw(torch.tensor(z, dtype=torch.float64))
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        mean += p * gates.data_gradient(draw, loss, x, y).double()
    return mean.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_order_estimator_agrees_with_enumeration_for_small_sections(seed: int) -> None:
    """Its mean is dE[L]/dz_l at z_l = 1; the exact difference integrates that slope over z_l,
    so the two agree to first order in the section's output (checked at 3 % of He scale)."""
    net = _tiny(seed=seed, body_scale=0.03)
    x, y = _data(seed=seed + 10)
    theta = [0.9, 0.6, 0.75]
    exact = _enumerated_difference(net, theta, x, y)
    estimate = _mean_estimate(net, theta, "first_order", x, y)
    for e, g in zip(exact, estimate, strict=True):
        assert (e > 0) == (g > 0)
        assert abs(g - e) <= 0.15 * abs(e)


def test_exact_estimator_matches_enumeration() -> None:
    net = _tiny(body_scale=1.0)
    x, y = _data()
    theta = [0.9, 0.4, 0.7]
    exact = _enumerated_difference(net, theta, x, y)
    estimate = _mean_estimate(net, theta, "exact", x, y)
    assert estimate == pytest.approx(exact, abs=1e-5)


@pytest.mark.parametrize("case", ["mlp", "mlp-bn", "cnn1d", "lenet5", "resnet20", "resnet50"])
def test_dz_from_the_weights_gradients_is_the_probes(case: str) -> None:
    """Euler's theorem on each section's last parameters (``dz_from_weights``, what Trial uses)
    gives the probe's <dL/d out, body(x)>, on every kind of built-in section."""
    net = _build(case).train()
    x, y = _batch(case)
    z = torch.tensor([float(i % 3 != 1) for i in range(len(net.sections))], dtype=torch.float64)
    got = {}
    for from_weights in (False, True):
        gates = GateController(net, SETTINGS, theta_lr=0.1, theta_init=0.6,
                               dz_from_weights=from_weights)
        assert gates.probed is not from_weights
        draw = gates.set_draw(z)
        net.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        got[from_weights] = gates.data_gradient(draw, loss, x, y)
    assert got[False].abs().max() > 0  # something to compare
    assert torch.allclose(got[True], got[False], rtol=1e-3, atol=1e-5 * got[False].abs().max())
    assert (got[True][z == 0] == 0).all()


def _gate_step(gates: GateController, data_grad: torch.Tensor, lr: float) -> None:
    """What ``Trial.step`` does after the weights' step, with a given data gradient."""
    gates.shrink_weights(lr)
    grad = gates.gradient(data_grad)
    gates.step(grad)
    gates.prune(grad)


# --- property 5: weights to zero --------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_section_held_at_zero_shrinks_monotonically(case: str) -> None:
    net = _build(case)
    gates = GateController(net, SETTINGS, theta_lr=0.1, patience=10**6)
    gates.theta[0] = 0.0
    tensors = [t for t, _ in net.sections[0].prior_tensors()]
    norms = []
    for _ in range(200):
        norms.append(torch.sqrt(sum(t.detach().pow(2).sum() for t in tensors)).item())
        # z_0 = 0 always, so section 0 gets no data gradient: only the prior acts on it
        _gate_step(gates, torch.zeros(len(net.sections)), lr=0.5)
    assert all(b < a or a == 0.0 for a, b in itertools.pairwise(norms))
    assert norms[-1] < 1e-3 * norms[0]
    assert gates.theta[0].item() == 0.0


def test_the_prior_every_k_steps_is_one_step_k_times_as_long() -> None:
    """With ``prior_every = k`` the weights move on one call in k, by the prior's step of
    k * lr at that moment's Q; the rent the gate gradient uses is the one read then."""
    k, lr = 4, 0.5
    lazy_net, every_net = _build("mlp"), _build("mlp")
    every_net.load_state_dict(lazy_net.state_dict())
    lazy = GateController(lazy_net, SETTINGS, theta_lr=0.1, theta_init=0.3, prior_every=k)
    every = GateController(every_net, SETTINGS, theta_lr=0.1, theta_init=0.3)
    tensors = lazy.prior.tensors
    before = [t.detach().clone() for t in tensors]
    rents = []
    for call in range(2 * k):
        lazy.shrink_weights(lr)
        rents.append(lazy.gradient(torch.zeros(len(lazy.sections))).rent.clone())
        moved = any(not torch.equal(t, b) for t, b in zip(tensors, before, strict=True))
        assert moved is (call % k == 0)
        if call % k == 0:
            every.shrink_weights(k * lr)  # one step k times as long, from the same weights
            assert all(torch.allclose(a, b) for a, b in zip(
                lazy.prior.tensors, every.prior.tensors, strict=True))
            fresh = every.prior.rent(every.prior.quadratic())
        before = [t.detach().clone() for t in tensors]
        assert torch.equal(rents[-1], rents[call - call % k])  # unchanged between
        assert not torch.allclose(rents[-1], fresh)  # the Q before the step, not after


def test_a_gate_step_for_k_minibatches_is_k_steps_long_and_counts_k_to_patience() -> None:
    """With ``gate_every = k`` one gate step moves theta as far as k steps of the same gradient
    would (before the clip), and the pruning streak counts the k minibatches it stands for."""
    k = 4
    held = GateController(_build("mlp"), SETTINGS, theta_lr=0.01, theta_init=0.5,
                          gate_every=k, patience=2 * k)
    each = GateController(_build("mlp"), SETTINGS, theta_lr=0.01, theta_init=0.5)
    n = len(held.sections)
    grad = GateGradient(data=torch.full((n,), 2.0), rent=torch.zeros(n))
    held.step(grad)
    for _ in range(k):
        each.step(grad)
    assert torch.allclose(held.theta, each.theta)
    assert (held.theta < 0.5).all()  # it moved: the comparison says something
    held.theta[0] = 0.0
    spike = dataclasses.replace(grad, rent=torch.ones_like(grad.rent))  # R_1 > R_0
    assert held.prune(spike) == []  # k of the 2k minibatches
    assert held.prune(spike) != [] and held.sections[0].pruned


def test_section_held_at_zero_shrinks_while_the_network_trains() -> None:
    """The same through real training steps (SGD with momentum and weight decay)."""
    from layertune.config import load_trial
    from layertune.train import Trial

    config = load_trial("trials/digits_mlp.yaml", {"method.prune_patience": 10**6})
    trial = Trial(config)
    tensors = [t for t, _ in trial.model.sections[2].prior_tensors()]
    norms = []
    batches = [b for _ in range(6) for b in trial.data.train]
    for x, y in batches:
        trial.gates.theta[2] = 0.0  # held there: z_2 is never drawn as 1
        norms.append(torch.sqrt(sum(t.detach().pow(2).sum() for t in tensors)).item())
        trial.step(x, y)
    # between the prior's steps (every prior_every) nothing acts on it: no gradient flows
    assert all(b <= a for a, b in itertools.pairwise(norms))
    assert all(b < a for a, b in itertools.pairwise(norms[::config.method.prior_every]))
    assert norms[-1] < 0.5 * norms[0]


# --- the gate step: plain projected SGD, or on an averaged gradient -------------------------


def _steps_off_one(averaging: float) -> tuple[int, GateController]:
    """Mean gradient -0.02 ("keep"), minibatch noise 0.05, as measured on reference (a)."""
    gates = GateController(_tiny(depth=1), dataclasses.replace(SETTINGS, prior_weight=0.0),
                           theta_lr=0.5, averaging=averaging)
    noise = torch.Generator().manual_seed(0)
    off = 0
    for _ in range(500):
        _gate_step(gates, -0.02 + 0.05 * torch.randn(1, generator=noise, dtype=torch.float64),
                   lr=0.0)
        off += gates.theta[0].item() < 1.0
    return off, gates


def test_averaging_the_gate_gradient_keeps_a_kept_gate_at_1() -> None:
    plain, _ = _steps_off_one(0.0)
    averaged, gates = _steps_off_one(0.9)
    assert plain > 100  # single minibatches keep nudging it off 1
    assert averaged < plain / 3
    restored = GateController(gates.model, SETTINGS, theta_lr=0.5, averaging=0.9)
    restored.load_state_dict(gates.state_dict())
    assert torch.equal(restored.grad_avg, gates.grad_avg)


# --- property 1: the end-of-training decision ------------------------------------------------


def _objective(gates: GateController, z: tuple[float, ...], x, y) -> float:
    """J of the deterministic network ``z``: its loss plus (lambda/N) sum_l R_{z_l}(W_l)."""
    s = gates.prior.s
    r1, r0 = energies(gates.prior.quadratic(), gates.prior.n, s.spike_ratio,
                      s.hyperprior_strength)
    prior = sum(float(r1[i] if zi else r0[i]) for i, zi in enumerate(z))
    return _loss(gates.model, z, x, y) + s.prior_weight / s.num_train * prior


def test_a_gate_left_inside_goes_to_the_vertex_where_the_objective_is_lower() -> None:
    x, y = _data()
    chosen = set()
    for body_scale, prior_weight in itertools.product((0.05, 1.0, 3.0), (0.0, 1.0, 100.0)):
        net = _tiny(body_scale=body_scale)
        gates = GateController(net, dataclasses.replace(SETTINGS, prior_weight=prior_weight),
                               theta_lr=0.1)
        gates.theta = torch.tensor([1.0, 0.4, 0.0], dtype=torch.float64)
        before = gates.decide(lambda z, net=net: _loss(net, tuple(z), x, y))
        assert before == {1: 0.4}  # gates at 0 or 1 are already decided
        assert gates.theta[0].item() == 1.0 and gates.theta[2].item() == 0.0
        j = {v: _objective(gates, (1.0, v, 0.0), x, y) for v in (0.0, 1.0)}
        assert gates.theta[1].item() == min(j, key=j.get)
        chosen.add(gates.theta[1].item())
    assert chosen == {0.0, 1.0}  # the cases above lead to both vertices


# --- properties 1 and 6, reduced: one seed of reference experiment (a) ----------------------


def _reference_a(overrides: dict) -> TrialResult:
    """Reference experiment (a) at one thread (the suite's setting), its network dropped."""
    torch.set_num_threads(1)
    result = run_trial(load_trial("trials/mnist1d_cnn.yaml", overrides), lambda m, c: None)
    return dataclasses.replace(result, model=None)


@pytest.fixture(scope="module")
def reference_a():
    # the learned and the gates-fixed run at once, a process each: one core each on CI's two
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        learned, fixed = pool.map(_reference_a, [{}, {"method.gates": "fixed"}])
    return learned, fixed


def test_reference_a_prunes_half_and_keeps_accuracy(reference_a) -> None:
    learned, fixed = reference_a
    final = learned.final
    assert final["active_layers"] <= final["total_layers"] // 2
    assert final["active_layers"] >= 1
    assert final["val_accuracy"] >= fixed.final["val_accuracy"] - 0.015


def test_reference_a_reports_undecided_gates_and_pruned_gates_are_zero(reference_a) -> None:
    learned, _ = reference_a
    for h in learned.history:
        assert h["undecided_layers"] == sum(0.0 < t < 1.0 for t in h["theta"])
    assert learned.pruned_at and all(learned.final["theta"][i] == 0.0 for i in learned.pruned_at)


def test_reference_a_every_gate_ends_at_0_or_1(reference_a) -> None:
    learned, _ = reference_a
    assert learned.final["undecided_layers"] == 0
    assert all(t in (0.0, 1.0) for t in learned.final["theta"])
    assert learned.final["decided_at_end"] == len(learned.decided)
    assert all(0.0 < t < 1.0 for t in learned.decided.values())  # only undecided gates moved


def test_reference_a_structure_is_final_by_30_percent_of_the_epochs(reference_a) -> None:
    learned, _ = reference_a
    history = learned.history
    by = int(0.3 * len(history))
    assert all(set(h["theta"]) <= {0.0, 1.0} for h in history[by - 1:])
    assert all(h["theta"] == history[-1]["theta"] for h in history[by - 1:])


@pytest.mark.parametrize("run", [0, 1], ids=["learned", "fixed"])
def test_reference_a_accuracy_never_falls_3_points_below_its_best_after_epoch_3(
    reference_a, run: int
) -> None:
    vals = [h["val_accuracy"] for h in reference_a[run].history]
    assert all(v >= max(vals[:i + 1]) - 0.03 for i, v in enumerate(vals) if i >= 3)
