"""Gated architectures (docs/algorithm.md section 1): ``stem -> GatedSection * L -> head``.

Every network is a flat ``GatedNetwork``: stem, pooling, flatten and head are plain layers in
the same list as the sections, so removing a section never touches the layers around it.
``net.spec`` is JSON-able and ``build_from_spec`` rebuilds the same architecture from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from pydantic import TypeAdapter
from torch import nn

from layertune.config import CNN1dConfig, LeNet5Config, MLPConfig, ModelConfig, VGG16Config
from layertune.sections import GatedNetwork, GatedSection, he_init

Layers = list[nn.Module]
_SPEC_EXTRA = ("in_shape", "num_classes", "pruned")
_model_adapter: TypeAdapter = TypeAdapter(ModelConfig)

# ReLUs are never in-place: with an identity skip a section may hand its input tensor straight
# to ``post``, and an in-place ReLU there would overwrite a tensor autograd saved earlier.


def _conv_bn(
    c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True, dim: int = 2
) -> Layers:
    """conv (no bias: BN's shift replaces it) + BN [+ ReLU]; padding keeps size at stride 1."""
    conv = (nn.Conv1d, nn.Conv2d)[dim - 1]
    norm = (nn.BatchNorm1d, nn.BatchNorm2d)[dim - 1]
    layers: Layers = [conv(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, bias=False)]
    layers.append(norm(c_out))
    return layers + [nn.ReLU()] if relu else layers


def _projection(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    """Identity when shapes match, else the linear 1x1 conv (stride) + BN skip."""
    if c_in == c_out and stride == 1:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride, relu=False))


def _out_shape(layers: Layers, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape (without batch) of ``layers``; eval mode so no BN statistics move."""
    net = nn.Sequential(*layers)
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, *in_shape))
    net.train()
    return tuple(out.shape[1:])


def _need_dims(name: str, in_shape: tuple[int, ...], dims: int, what: str) -> None:
    if len(in_shape) != dims:
        raise ValueError(f"{name} needs in_shape {what}, got {tuple(in_shape)}")


def _mlp(cfg: MLPConfig, in_shape: tuple[int, ...], num_classes: int) -> Layers:
    """Flatten + Linear-ReLU stem, ``depth`` Linear[-BN]-ReLU sections, Linear head."""
    w = cfg.width

    def body() -> nn.Sequential:
        if cfg.batchnorm:  # no bias: BN's shift replaces it
            return nn.Sequential(nn.Linear(w, w, bias=False), nn.BatchNorm1d(w), nn.ReLU())
        return nn.Sequential(nn.Linear(w, w), nn.ReLU())

    stem: Layers = [nn.Flatten(), nn.Linear(math.prod(in_shape), w), nn.ReLU()]
    # the residual stream grows with every section; normalising it before the head keeps the
    # logits' scale independent of how many sections remain (as in cnn1d)
    head: Layers = [nn.BatchNorm1d(w), nn.Linear(w, num_classes)]
    return stem + [GatedSection(body()) for _ in range(cfg.depth)] + head


def _cnn1d(cfg: CNN1dConfig, in_shape: tuple[int, ...], num_classes: int) -> Layers:
    """Conv1d stem, ``depth`` pre-activation BN-ReLU-Conv1d sections, BN-ReLU-pool-Linear head.

    Pre-activation (He et al. 2016b) puts the kernel last in each section, so the prior on the
    section's weights sets its output scale (no normalisation after it undoes a shrink), and the
    residual stream only grows linearly with depth, so 16 sections train as well as 8.
    """
    _need_dims("cnn1d", in_shape, 2, "(channels, length)")
    c, k = cfg.channels, cfg.kernel_size

    def conv(c_in: int) -> nn.Conv1d:
        # padding="same" also keeps the length for even kernels (torch pads asymmetrically)
        return nn.Conv1d(c_in, c, k, padding="same")

    sections: Layers = [
        GatedSection(nn.Sequential(nn.BatchNorm1d(c), nn.ReLU(), conv(c))) for _ in range(cfg.depth)
    ]
    head: Layers = [
        nn.BatchNorm1d(c), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        nn.Linear(c, num_classes),
    ]
    return [conv(in_shape[0])] + sections + head


def _lenet5(cfg: LeNet5Config, in_shape: tuple[int, ...], num_classes: int) -> Layers:
    """conv(6)/conv(16) sections with max-pools between, fc(120)/fc(84) sections, Linear head."""
    _need_dims("lenet5", in_shape, 3, "(channels, height, width)")

    def conv(c_in: int, c_out: int) -> GatedSection:
        body = nn.Sequential(nn.Conv2d(c_in, c_out, 5, padding=2), nn.ReLU())
        return GatedSection(body, nn.Conv2d(c_in, c_out, 1, bias=False))

    def fc(n_in: int, n_out: int) -> GatedSection:
        body = nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU())
        return GatedSection(body, nn.Linear(n_in, n_out, bias=False))

    # ceil_mode so that inputs as small as 8x8 (sklearn digits) or odd sizes never pool to 0
    features: Layers = [
        conv(in_shape[0], 6), nn.MaxPool2d(2, ceil_mode=True),
        conv(6, 16), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
    ]
    n_flat = _out_shape(features, in_shape)[0]
    return features + [fc(n_flat, 120), fc(120, 84), nn.Linear(84, num_classes)]


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16(cfg: VGG16Config, in_shape: tuple[int, ...], num_classes: int) -> Layers:
    """13 conv-BN-ReLU sections (1x1 conv-BN skip on channel changes); CIFAR or ImageNet head."""
    _need_dims("vgg16", in_shape, 3, "(channels, height, width)")
    if min(in_shape[1:]) < 32:
        raise ValueError(f"vgg16 pools 5 times and needs inputs of 32x32 or more, got {in_shape}")
    layers: Layers = []
    c = in_shape[0]
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(GatedSection(nn.Sequential(*_conv_bn(c, v, 3)), _projection(c, v)))
            c = v
    if cfg.head == "imagenet":
        return layers + [
            nn.AdaptiveAvgPool2d(7), nn.Flatten(),
            nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, num_classes),
        ]
    # 512 features at 32x32; a larger input keeps the remaining spatial positions
    layers.append(nn.Flatten())
    return layers + [nn.Linear(_out_shape(layers, in_shape)[0], num_classes)]


def _basic(c_in: int, c_out: int, stride: int) -> GatedSection:
    """Basic residual block: conv3x3(stride)-BN-ReLU-conv3x3-BN, post ReLU."""
    body = nn.Sequential(*_conv_bn(c_in, c_out, 3, stride), *_conv_bn(c_out, c_out, 3, relu=False))
    return GatedSection(body, _projection(c_in, c_out, stride), nn.ReLU())


def _bottleneck(c_in: int, width: int, stride: int) -> GatedSection:
    """Bottleneck block 1x1-3x3(stride)-1x1 with expansion 4 (stride on the 3x3, as torchvision)."""
    c_out = 4 * width
    body = nn.Sequential(
        *_conv_bn(c_in, width, 1), *_conv_bn(width, width, 3, stride),
        *_conv_bn(width, c_out, 1, relu=False),
    )
    return GatedSection(body, _projection(c_in, c_out, stride), nn.ReLU())


def _stages(
    c: int, widths: tuple[int, ...], blocks: tuple[int, ...], bottleneck: bool
) -> tuple[Layers, int]:
    """Residual stages; the first block of every stage after the first has stride 2."""
    out: Layers = []
    for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            out.append(_bottleneck(c, w, stride) if bottleneck else _basic(c, w, stride))
            c = 4 * w if bottleneck else w
    return out, c


def _resnet_cifar(n: int, cfg: object, in_shape: tuple[int, ...], num_classes: int) -> Layers:
    """He et al. 2016 CIFAR ResNet-(6n+2): 3x3 stem, 3 stages of n basic blocks (16/32/64);
    ``blocks_per_stage`` in the config replaces n."""
    _need_dims("resnet", in_shape, 3, "(channels, height, width)")
    n = getattr(cfg, "blocks_per_stage", None) or n
    blocks, c = _stages(16, (16, 32, 64), (n, n, n), bottleneck=False)
    stem = _conv_bn(in_shape[0], 16, 3)
    head: Layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return stem + blocks + head


def _resnet_imagenet(
    blocks: tuple[int, ...], bottleneck: bool, cfg: object, in_shape: tuple[int, ...],
    num_classes: int,
) -> Layers:
    """ImageNet ResNet: 7x7/2 stem + max-pool, 4 stages (64..512 wide), avg-pool + Linear."""
    _need_dims("resnet", in_shape, 3, "(channels, height, width)")
    stem = _conv_bn(in_shape[0], 64, 7, 2) + [nn.MaxPool2d(3, 2, 1)]
    sections, c = _stages(64, (64, 128, 256, 512), blocks, bottleneck)
    head: Layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return stem + sections + head


_Builder = Callable[[ModelConfig, tuple[int, ...], int], Layers]
_BUILDERS: dict[str, _Builder] = {
    "mlp": _mlp,
    "cnn1d": _cnn1d,
    "lenet5": _lenet5,
    "vgg16": _vgg16,
    **{f"resnet{d}": partial(_resnet_cifar, (d - 2) // 6) for d in (20, 32, 44, 56, 110)},
    "resnet18": partial(_resnet_imagenet, (2, 2, 2, 2), False),
    "resnet34": partial(_resnet_imagenet, (3, 4, 6, 3), False),
    "resnet50": partial(_resnet_imagenet, (3, 4, 6, 3), True),
}


def build_model(config: ModelConfig, in_shape: tuple[int, ...], num_classes: int) -> GatedNetwork:
    """The He-initialised gated network ``config`` names, for inputs ``in_shape`` (no batch)."""
    builder = _BUILDERS.get(config.name)
    if builder is None:
        raise ValueError(f"unknown model {config.name!r}; known: {', '.join(_BUILDERS)}")
    in_shape = tuple(int(s) for s in in_shape)
    spec = config.model_dump(mode="json") | {"in_shape": list(in_shape), "num_classes": num_classes}
    net = GatedNetwork(builder(config, in_shape, num_classes), spec)
    he_init(net)
    _halve_variance_of_branches(net)
    return net


@torch.no_grad()
def _halve_variance_of_branches(net: GatedNetwork) -> None:
    """Sections whose skip is a bare projection (LeNet-5's; the other built-ins' projections
    end in a normalisation): the He-initialised sum of projection and unnormalised body triples
    the variance of each section's input, so that LeNet-5's logits started at a standard
    deviation of 11 and SGD diverged in the first epoch. Each branch at half its input's
    variance (body kernels He / sqrt 2, the projection LeCun / sqrt 2) keeps the scale."""
    for s in net.sections:
        if isinstance(s.skip, (nn.Conv2d, nn.Linear)) and s.body is not None:
            s.skip.weight.mul_(0.5)
            for m in s.body.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.mul_(math.sqrt(0.5))


def build_from_spec(spec: dict) -> GatedNetwork:
    """Rebuild the architecture ``spec`` (a ``net.spec``) describes, with fresh weights.

    An optional ``pruned`` list of section indices deletes those sections' bodies, so that the
    state_dict of an exported, pruned network loads into the result.
    """
    missing = [k for k in ("in_shape", "num_classes") if k not in spec]
    if missing:
        raise ValueError(f"model spec lacks {', '.join(missing)}: {spec!r}")
    config = _model_adapter.validate_python({k: v for k, v in spec.items() if k not in _SPEC_EXTRA})
    net = build_model(config, tuple(spec["in_shape"]), int(spec["num_classes"]))
    pruned = [int(i) for i in spec.get("pruned", [])]
    sections = net.sections
    for i in pruned:
        if not 0 <= i < len(sections):
            raise ValueError(f"model spec prunes section {i}, but there are {len(sections)}")
        sections[i].prune()
    if pruned:
        net.spec["pruned"] = sorted(set(pruned))
    return net
