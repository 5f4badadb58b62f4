"""Every architecture builds, trains a step, prunes, zero-gates exactly and rebuilds from spec."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import TypeAdapter
from torch import nn

from layertune.config import MLPConfig, ModelConfig
from layertune.models import build_from_spec, build_model
from layertune.sections import GatedNetwork, GatedSection

NUM_CLASSES = 10
_adapter: TypeAdapter = TypeAdapter(ModelConfig)

# (config, in_shape, batch, sections, sections with a projection skip)
CASES = {
    "mlp": ({"name": "mlp", "depth": 3, "width": 32}, (1, 28, 28), 4, 3, 0),
    "mlp-bn": ({"name": "mlp", "depth": 2, "width": 32, "batchnorm": True}, (1, 28, 28), 4, 2, 0),
    "cnn1d": ({"name": "cnn1d", "depth": 4, "channels": 8}, (1, 40), 4, 4, 0),
    "lenet5": ({"name": "lenet5"}, (1, 28, 28), 4, 4, 4),
    "vgg16-cifar": ({"name": "vgg16", "head": "cifar"}, (3, 32, 32), 2, 13, 4),
    "vgg16-imagenet": ({"name": "vgg16", "head": "imagenet"}, (3, 64, 64), 2, 13, 4),
    "resnet20": ({"name": "resnet20"}, (3, 32, 32), 2, 9, 2),
    "resnet32": ({"name": "resnet32"}, (3, 32, 32), 2, 15, 2),
    "resnet44": ({"name": "resnet44"}, (3, 32, 32), 2, 21, 2),
    "resnet56": ({"name": "resnet56"}, (3, 32, 32), 2, 27, 2),
    "resnet110": ({"name": "resnet110"}, (3, 32, 32), 2, 54, 2),
    "resnet18": ({"name": "resnet18"}, (3, 64, 64), 2, 8, 3),
    "resnet34": ({"name": "resnet34"}, (3, 64, 64), 2, 16, 3),
    "resnet50": ({"name": "resnet50"}, (3, 64, 64), 2, 16, 4),
}
params = pytest.mark.parametrize("case", list(CASES), ids=list(CASES))


def _build(case: str, seed: int = 0) -> GatedNetwork:
    torch.manual_seed(seed)
    cfg, in_shape, *_ = CASES[case]
    return build_model(_adapter.validate_python(cfg), in_shape, NUM_CLASSES)


def _batch(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    _, in_shape, batch, *_ = CASES[case]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *in_shape, generator=g)
    return x, torch.randint(0, NUM_CLASSES, (batch,), generator=g)


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _is_projection(s: GatedSection) -> bool:
    return not isinstance(s.skip, nn.Identity)


@params
def test_builds_with_right_sections_spec_and_init(case: str) -> None:
    cfg, in_shape, _, n_sections, n_proj = CASES[case]
    net = _build(case)
    assert len(net.sections) == n_sections
    assert sum(_is_projection(s) for s in net.sections) == n_proj
    # projection skips carry parameters; identity skips none
    assert all(any(True for _ in s.skip.parameters()) == _is_projection(s) for s in net.sections)
    head = net.layers[-1]
    assert isinstance(head, nn.Linear) and head.out_features == NUM_CLASSES
    expected = _adapter.validate_python(cfg).model_dump(mode="json")
    assert net.spec == expected | {"in_shape": list(in_shape), "num_classes": NUM_CLASSES}
    assert json.loads(json.dumps(net.spec)) == net.spec
    # he_init ran: torch's default init leaves non-zero biases
    biases = [m.bias for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    assert all(b is None or not b.any() for b in biases)


@params
def test_one_sgd_step_trains(case: str) -> None:
    net = _build(case)
    x, y = _batch(case)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in net.parameters()]

    def loss() -> torch.Tensor:
        torch.manual_seed(2)  # the same dropout masks in both evaluations
        out = net(x)
        assert out.shape == (x.shape[0], NUM_CLASSES)
        assert torch.isfinite(out).all()
        return nn.functional.cross_entropy(out, y)

    loss0 = loss()
    opt.zero_grad()
    loss0.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2
    with torch.no_grad():
        loss1 = loss()
    assert torch.isfinite(loss1) and loss1 < loss0


@params
def test_pruning_lowers_params_and_still_trains(case: str) -> None:
    net = _build(case)
    sections = net.sections
    picks = {
        next((s for s in sections if _is_projection(s)), None),
        next((s for s in sections if not _is_projection(s)), None),
    } - {None}
    assert picks
    for s in picks:
        n_before = _n_params(net)
        removed = s.prune()
        assert s.pruned and removed
        assert _n_params(net) == n_before - sum(p.numel() for p in removed)
        assert not {id(p) for p in removed} & {id(p) for p in net.parameters()}
    x, y = _batch(case)
    net.train()
    out = net(x)
    assert out.shape == (x.shape[0], NUM_CLASSES) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, y).backward()
    for s in picks:
        # a pruned projection section still passes the gradient through its skip
        for p in s.skip.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@params
def test_zero_gates_equal_all_sections_pruned(case: str) -> None:
    net = _build(case)
    x, _ = _batch(case)
    net.eval()
    n = len(net.sections)
    with torch.no_grad():
        full = net(x)
        net.set_gates([0.0] * n)
        gated_off = net(x)
        for s in net.sections:
            s.prune()
        net.set_gates([1.0] * n)  # a pruned section ignores its gate
        pruned = net(x)
    assert torch.isfinite(gated_off).all()
    assert (full - gated_off).abs().max() > 1e-4  # the sections did contribute
    assert (gated_off - pruned).abs().max() <= 1e-6


@params
def test_build_from_spec_rebuilds_same_architecture(case: str) -> None:
    net = _build(case)
    again = build_from_spec(json.loads(json.dumps(net.spec)))
    assert again.spec == net.spec
    a, b = net.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert [type(m) for m in net.modules()] == [type(m) for m in again.modules()]


@pytest.mark.parametrize("case", ["lenet5", "resnet20", "cnn1d"])
def test_build_from_spec_restores_a_pruned_network(case: str) -> None:
    net = _build(case)
    for i in (0, 2):
        net.sections[i].prune()
    net.eval()
    x, _ = _batch(case)
    again = build_from_spec(net.spec | {"pruned": [2, 0]})
    assert [s.pruned for s in again.sections][:3] == [True, False, True]
    again.load_state_dict(net.state_dict())  # strict: the same keys, no body for 0 and 2
    again.eval()
    with torch.no_grad():
        assert torch.equal(net(x), again(x))


@pytest.mark.parametrize(
    ("in_shape", "flat"), [((1, 8, 8), 16 * 2 * 2), ((1, 7, 7), 16 * 2 * 2),
                           ((1, 28, 28), 16 * 7 * 7), ((3, 32, 32), 16 * 8 * 8)],
)
def test_lenet5_any_input_size(in_shape: tuple[int, ...], flat: int) -> None:
    net = build_model(_adapter.validate_python({"name": "lenet5"}), in_shape, NUM_CLASSES)
    assert net.sections[2].skip.in_features == flat
    assert net(torch.randn(2, *in_shape)).shape == (2, NUM_CLASSES)


def test_lenet5_sections_keep_their_inputs_scale_at_initialisation() -> None:
    """Projection plus unnormalised body, each He-initialised, tripled the variance at every
    section: logits at a standard deviation of about 11, and the recipe diverged at once."""
    torch.manual_seed(0)
    net = build_model(_adapter.validate_python({"name": "lenet5"}), (1, 28, 28), NUM_CLASSES)
    x = torch.randn(256, 1, 28, 28)
    scales = []
    with torch.no_grad():
        for layer in net.layers:
            x = layer(x)
            if isinstance(layer, GatedSection):
                scales.append(float(x.pow(2).mean().sqrt()))
    assert all(0.4 < s < 2.5 for s in scales), scales


def test_the_shipped_lenet5_recipe_trains_its_first_epochs() -> None:
    from layertune.config import load_trial
    from layertune.train import Trial

    trial = Trial(load_trial("trials/mnist_lenet5.yaml", {"seed": 1}))
    losses = [trial.train_epoch()[1] for _ in range(2)]  # TrialDiverged on NaN
    assert losses[1] < min(losses[0], 1.2), losses


@pytest.mark.parametrize(
    ("case", "feature_shape"),
    [("cnn1d", (8, 40)), ("vgg16-cifar", (512, 1, 1)), ("resnet20", (64, 8, 8)),
     ("resnet18", (512, 2, 2)), ("resnet50", (2048, 2, 2))],
)
def test_feature_map_before_head(case: str, feature_shape: tuple[int, ...]) -> None:
    """Strides and widths: the tensor entering the head's pooling/flatten."""
    net = _build(case)
    layers = list(net.layers)
    after = layers[layers.index(net.sections[-1]) + 1 :]
    heads = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten)
    first_head = next(m for m in after if isinstance(m, heads))
    seen: list[torch.Size] = []
    first_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[1:]))
    net.eval()
    with torch.no_grad():
        net(_batch(case)[0])
    assert seen == [torch.Size(feature_shape)]


@pytest.mark.parametrize(
    ("name", "in_shape", "classes", "count"),
    [
        # torchvision's resnet18/34/50 (same layout, 1x1 conv + BN downsampling)
        ("resnet18", (3, 224, 224), 1000, 11_689_512),
        ("resnet34", (3, 224, 224), 1000, 21_797_672),
        ("resnet50", (3, 224, 224), 1000, 25_557_032),
        # He et al.'s option-A CIFAR counts plus the two 1x1 conv + BN projections (2752)
        ("resnet20", (3, 32, 32), 10, 269_722 + 2752),
        ("resnet56", (3, 32, 32), 10, 853_018 + 2752),
        ("resnet110", (3, 32, 32), 10, 1_727_962 + 2752),
    ],
)
def test_resnet_parameter_counts(
    name: str, in_shape: tuple[int, ...], classes: int, count: int
) -> None:
    net = build_model(_adapter.validate_python({"name": name}), in_shape, classes)
    assert _n_params(net) == count


def test_bad_input_gives_value_error() -> None:
    bogus = MLPConfig.model_construct(name="nope", depth=1, width=4, batchnorm=False)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model(bogus, (4,), 2)
    with pytest.raises(ValueError):
        build_from_spec({"name": "nope", "in_shape": [4], "num_classes": 2})
    with pytest.raises(ValueError, match="in_shape"):
        build_from_spec({"name": "mlp"})
    with pytest.raises(ValueError, match="cnn1d needs in_shape"):
        build_model(_adapter.validate_python({"name": "cnn1d"}), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="32x32"):
        build_model(_adapter.validate_python({"name": "vgg16"}), (3, 16, 16), 10)
    with pytest.raises(ValueError, match="prunes section 5"):
        build_from_spec({"name": "mlp", "depth": 2, "in_shape": [4], "num_classes": 2,
                         "pruned": [5]})
