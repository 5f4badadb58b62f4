"""layertune.gate on networks the user already has: which blocks, exact at 0, errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from layertune import GatedModel, GatingError, gate, strip
from layertune.flops import flop_table
from layertune.sections import GatedSection


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return net.eval()


def _randomise_bn(net: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is not identity."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.3, 0.3, generator=g)


def test_resnet18_gates_the_blocks_without_downsample_and_says_why_for_the_others():
    net = _resnet18()
    x = torch.randn(4, 1, 28, 28)
    lines: list[str] = []
    gated = gate(net, x, log=lines.append)
    assert gated.paths == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert len(lines) == 3
    for line, path in zip(lines, ["layer2.0", "layer3.0", "layer4.0"], strict=True):
        assert path in line and "downsample" in line
    assert all(isinstance(s, GatedSection) for s in gated.sections)
    assert isinstance(net.layer1[0], GatedSection)  # in place: the user's module changed


def test_gate_at_1_is_the_network_and_gate_at_0_is_the_network_without_that_block():
    net = _resnet18()
    _randomise_bn(net)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        before = net(x)
    gated = gate(net, x, log=lambda _: None).eval()
    with torch.no_grad():
        assert torch.equal(gated(x), before)
        reference = _resnet18()
        _randomise_bn(reference)
        reference.layer2[1] = nn.Identity()
        reference.eval()
        gated.set_gates([1, 1, 0, 1, 1])  # layer2.1
        assert torch.allclose(gated(x), reference(x), atol=1e-6)
        assert not torch.allclose(gated(x), before, atol=1e-3)


def test_bottleneck_blocks_are_gated_and_exact():
    torch.manual_seed(0)
    net = torchvision.models.resnet.ResNet(Bottleneck, [2, 1, 1, 1], num_classes=5).eval()
    _randomise_bn(net)
    x = torch.randn(2, 3, 32, 32)
    gated = gate(net, x, blocks=[Bottleneck], log=lambda _: None)
    assert gated.paths == ["layer1.1"]  # layer1.0 widens 64 -> 256: a downsample


def test_torchvision_vit_blocks_are_gated_and_one_removed_equals_its_deletion():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=28, patch_size=7, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10).eval()
    x = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        before = vit(x)
    gated = gate(vit, x)
    assert len(gated.sections) == 3
    with torch.no_grad():
        assert torch.allclose(gated(x), before, atol=1e-5)
        gated.set_gates([1, 0, 1])
        cut = gated(x)
        middle = vit.encoder.layers.encoder_layer_1
        vit.encoder.layers.encoder_layer_1 = nn.Identity()
        assert torch.equal(cut, vit(x))
        vit.encoder.layers.encoder_layer_1 = middle


def test_torch_transformer_layer_pre_norm_gated_post_norm_left_out_with_a_line():
    torch.manual_seed(0)
    pre = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
    net = nn.Sequential(
        pre,
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=False),
    )
    lines: list[str] = []
    gated = gate(net, torch.randn(2, 5, 16), log=lines.append)
    assert gated.paths == ["0"]
    assert len(lines) == 1 and "1 (TransformerEncoderLayer)" in lines[0] and "post-norm" in lines[0]
    # the packed q/k/v kernel of nn.MultiheadAttention is one of the prior's tensors
    kernels = [t for t, _ in gated.sections[0].prior_tensors()]
    assert any(t is pre.self_attn.in_proj_weight for t in kernels)


class _CausalDecoder(nn.Module):
    """Pre-norm torch layers called with a causal mask, as a decoder-only model calls them."""

    def __init__(self, depth: int = 3, d: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(depth))

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return x


def test_a_causal_mask_reaches_the_gated_blocks_and_a_deleted_block_ignores_it():
    torch.manual_seed(0)
    net = _CausalDecoder().eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        full = net(x)
        mask = nn.Transformer.generate_square_subsequent_mask(6)
        without_1 = net.layers[2](net.layers[0](x, src_mask=mask, is_causal=True),
                                  src_mask=mask, is_causal=True)
    gated = gate(net, x)  # the check at gate 1 fails unless the mask reaches the branch
    assert gated.paths == ["layers.0", "layers.1", "layers.2"]
    with torch.no_grad():
        gated.set_gates([1.0, 1.0, 1.0])
        assert torch.allclose(gated(x), full, atol=1e-5)
        gated.set_gates([1.0, 0.0, 1.0])
        assert torch.allclose(gated(x), without_1, atol=1e-5)
        # causal: the first position cannot see the later ones
        changed = x.clone()
        changed[:, 3:] += 1.0
        assert torch.allclose(gated(changed)[:, :3], gated(x)[:, :3], atol=1e-5)
        compact = strip(gated, [True, False, True])  # the deleted block takes the mask too
        assert torch.allclose(compact(x), without_1, atol=1e-5)


class _PostNormTimmNames(nn.Module):
    """timm's attribute names, but post-norm: ``norm(x + f(x))``; the check must catch it."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), nn.Linear(d, d)
        self.norm2, self.mlp = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


def test_a_block_that_is_not_what_it_looks_like_is_an_error_naming_it():
    net = nn.Sequential(nn.Linear(8, 8), _PostNormTimmNames())
    with pytest.raises(GatingError, match=r"^1 \(_PostNormTimmNames\): with its gate at 1"):
        gate(net, torch.randn(4, 8))


def test_a_basic_block_on_a_signed_input_fails_the_check_at_gate_0():
    # no ReLU before the block: relu(x + z F(x)) at z = 0 is relu(x) != x
    net = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), BasicBlock(64, 64)).eval()
    with pytest.raises(GatingError, match=r"^1 \(BasicBlock\): with its gate at 0"):
        gate(net, torch.randn(2, 1, 8, 8))


def test_unknown_blocks_and_paths_are_errors_naming_them():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.raises(GatingError, match=r"^2 \(Linear\): not a residual block"):
        gate(net, torch.randn(2, 4), blocks=["2"])
    with pytest.raises(GatingError, match=r"^layer9: no such module"):
        gate(net, torch.randn(2, 4), blocks=["layer9"])
    with pytest.raises(GatingError, match="no block was gated"):
        gate(net, torch.randn(2, 4))


class _Residual(nn.Module):
    """A user's block that declares its branch."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def residual(self, x):
        return self.f(x)

    def forward(self, x):
        return x + self.residual(x)


def test_user_block_by_path_with_a_residual_method_and_strip():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), _Residual(), _Residual(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    gated = gate(net, x, blocks=["2"])
    assert isinstance(gated, GatedModel) and gated.paths == ["2"]
    gated.set_gates([0.0])
    with torch.no_grad():
        compact = strip(gated, [False])
        assert isinstance(compact[2], nn.Identity) and isinstance(compact[1], _Residual)
        assert torch.equal(compact(x), gated(x))
        gated.set_gates([1.0])
        assert torch.allclose(strip(gated, [True])(x), gated(x))


def test_flop_table_of_a_gated_model_matches_the_counted_network():
    from torch.utils.flop_counter import FlopCounterMode

    net = _resnet18()
    gated = gate(net, torch.randn(2, 1, 28, 28), log=lambda _: None)
    table = flop_table(gated, (1, 28, 28))
    assert not gated.training  # the mode it was in (the user's eval) comes back
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        gated(torch.zeros(1, 1, 28, 28))
    assert table.forward([True] * 5) == pytest.approx(counter.get_total_flops())
    assert all(b > 0 for b in table.body)
    assert table.body[0] == table.body[1] and table.body[2] > table.body[0]  # 7x7x64 vs 4x4x128
    gated.set_gates([1, 0, 1, 1, 1])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        gated(torch.zeros(1, 1, 28, 28))
    assert table.forward([True, False, True, True, True]) == pytest.approx(
        counter.get_total_flops())


class _MaskedAttention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class _MaskedBlock(nn.Module):
    """timm's names; the mask is a required positional argument of the block and of attn."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), _MaskedAttention(d)
        self.norm2, self.mlp = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x, mask):
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _MaskedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_MaskedBlock() for _ in range(2))

    def forward(self, x):
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        for block in self.blocks:
            x = block(x, mask)
        return x


def test_a_block_that_needs_its_mask_is_gated_counted_and_stripped():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = _MaskedNet().eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        only_second = net.blocks[1](x, torch.ones(5, 5, dtype=torch.bool).tril())
    gated = gate(net, x)
    table = flop_table(gated, (5, 8))  # each body counted with the mask it was given
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        gated(torch.zeros(1, 5, 8))
    assert table.forward([True, True]) == pytest.approx(counter.get_total_flops())
    assert table.body[0] == table.body[1] > 0
    with torch.no_grad():
        assert torch.allclose(strip(gated, [False, True])(x), only_second, atol=1e-6)
