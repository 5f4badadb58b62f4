"""Gate the residual blocks of a network the user already has (docs/algorithm.md, "Your own
model: how a block is gated").

``gate(model, example)`` replaces each residual block ``out = post(x + F(x))`` found in
``model`` by a ``GatedSection(F, post=post)``, so the gate multiplies the branch ``F`` before the
addition (never rescaled), and returns a ``GatedModel`` that the rest of layertune accepts
(``sections``, ``set_gates``). Each wrapped block is checked once on ``example``: with its gate
at 1 it must give the block's own output, with its gate at 0 exactly its input (the network
with the block deleted). Blocks that are known not to be exact at 0 (a torchvision block with a
``downsample``, a post-norm transformer layer) stay ungated with one line saying why; a block
that fails the check is a ``GatingError`` naming it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vision_transformer import EncoderBlock

from .sections import GatedSection, set_gates

Branch = Callable[..., Tensor]  # (block, x, *the block's other arguments) -> F(x)
_Call = tuple[Tensor, tuple, dict]  # a block's x, other positional and keyword arguments


class GatingError(ValueError):
    """A block cannot be gated exactly; the message names it and says why."""


class _Branch(nn.Module):
    """The residual branch ``F`` of ``block``, computed by ``fn(block, x, *args, **kwargs)``
    from the block's own submodules (same parameters: an optimiser built before gating still
    holds them); ``args`` / ``kwargs`` are what the network passes the block besides ``x``."""

    def __init__(self, block: nn.Module, fn: Branch) -> None:
        super().__init__()
        self.block = block
        self.fn = fn

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self.fn(self.block, x, *args, **kwargs)


# --- the residual branch of each kind of block, written from its forward ---------------------


def _basic_branch(b: nn.Module, x: Tensor) -> Tensor:
    return b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))


def _bottleneck_branch(b: nn.Module, x: Tensor) -> Tensor:
    out = b.relu(b.bn1(b.conv1(x)))
    out = b.relu(b.bn2(b.conv2(out)))
    return b.bn3(b.conv3(out))


def _encoder_block_branch(b: nn.Module, x: Tensor) -> Tensor:
    """torchvision ``EncoderBlock``: ``x1 = x + drop(attn(ln_1(x)))``, ``x1 + mlp(ln_2(x1))``."""
    h = b.ln_1(x)
    a = b.dropout(b.self_attention(h, h, h, need_weights=False)[0])
    return a + b.mlp(b.ln_2(x + a))


def _timm_branch(b: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
    """timm ``Block`` (and any block with its names): ``x + dp1(ls1(attn(norm1(x))))``, then
    ``+ dp2(ls2(mlp(norm2(.))))``; layer scale and drop path are optional. The block's other
    arguments (timm's ``attn_mask``, a causal mask) go to ``attn``, as in timm."""
    a = _part(b, "drop_path1")(_part(b, "ls1")(b.attn(b.norm1(x), *args, **kwargs)))
    return a + _part(b, "drop_path2")(_part(b, "ls2")(b.mlp(b.norm2(x + a))))


def _torch_layer_branch(b: nn.Module, x: Tensor, src_mask: Tensor | None = None,
                        src_key_padding_mask: Tensor | None = None,
                        is_causal: bool = False) -> Tensor:
    """``nn.TransformerEncoderLayer(norm_first=True)``, with the masks of its ``forward``."""
    a = b._sa_block(b.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
    return a + b._ff_block(b.norm2(x + a))


def _part(block: nn.Module, name: str) -> Callable[[Tensor], Tensor]:
    return getattr(block, name, None) or nn.Identity()


def _is_timm_like(m: nn.Module) -> bool:
    names = ("norm1", "attn", "norm2", "mlp")
    return all(isinstance(getattr(m, n, None), nn.Module) for n in names)


@dataclass(frozen=True)
class _Plan:
    """How one block is gated: its branch and the activation after the addition; or why not."""

    branch: Branch | None = None
    post: nn.Module | None = None
    skip_reason: str | None = None


def _plan(block: nn.Module) -> _Plan | None:
    """The plan for a block of a known kind; ``None`` when layertune does not know it."""
    if isinstance(block, (BasicBlock, Bottleneck)):
        if block.downsample is not None:
            return _Plan(skip_reason="has a downsample: with its gate at 0 it would still "
                                     "change the shape, not exact")
        # relu(x + z F) at z = 0 is relu(x) = x: the block's input comes out of a ReLU
        fn = _basic_branch if isinstance(block, BasicBlock) else _bottleneck_branch
        return _Plan(fn, nn.ReLU())  # not in place: the skip may hand its input to post
    if isinstance(block, EncoderBlock):
        return _Plan(_encoder_block_branch)
    if isinstance(block, nn.TransformerEncoderLayer):
        if not block.norm_first:
            return _Plan(skip_reason="is post-norm (norm(x + F(x))): with its gate at 0 it "
                                     "would still normalise, not exact")
        return _Plan(_torch_layer_branch)
    if callable(getattr(block, "residual", None)):
        return _Plan(type(block).residual)  # the user's own: forward(x) == x + residual(x)
    if _is_timm_like(block):
        return _Plan(_timm_branch)
    return None


# --- the gated model ---------------------------------------------------------------------------


class GatedModel(nn.Module):
    """The user's network with some blocks replaced by ``GatedSection``s, in forward order.

    ``net`` is the user's module itself (changed in place); ``paths`` are the module paths of
    the gated blocks, ``with_arguments`` those the network passes more than ``x`` (a mask).
    Offers what ``GateController``, ``Pruner`` and ``flop_table`` read.
    """

    def __init__(self, net: nn.Module, paths: Sequence[str],
                 with_arguments: Sequence[str] = ()) -> None:
        super().__init__()
        if not paths:
            raise GatingError("no block was gated: name blocks= (classes or module paths)")
        self.net = net
        self.paths = list(paths)
        self.with_arguments = set(with_arguments)
        self.training = net.training  # the user's mode, children untouched

    @property
    def sections(self) -> list[GatedSection]:
        return [self.net.get_submodule(p) for p in self.paths]

    def set_gates(self, z: Sequence[float], probe: Tensor | None = None) -> None:
        set_gates(self.sections, z, probe)

    def forward(self, *args, **kwargs):  # noqa: D102
        return self.net(*args, **kwargs)


def gate(
    model: nn.Module,
    example: Tensor,
    blocks: Sequence[type | str] | None = None,
    *,
    log: Callable[[str], None] = print,
    rtol: float = 1e-4,
) -> GatedModel:
    """Wrap the residual blocks of ``model`` in gated sections (in place) and check each one.

    ``blocks``: classes and/or module paths (``"layer1.0"``) to gate; default every block of a
    kind layertune knows (torchvision ``BasicBlock``/``Bottleneck``/ViT ``EncoderBlock``,
    ``nn.TransformerEncoderLayer``, timm-style ``norm1/attn/norm2/mlp`` blocks, and any module
    with a ``residual(x)`` method such that ``forward(x) == x + residual(x)``). ``example`` is
    one input batch for the check. Raises ``GatingError`` naming a block that cannot be gated
    exactly.
    """
    chosen = _find(model, blocks)
    inputs, outputs = _capture(model, example, chosen)
    paths = []
    for path in chosen:
        block = model.get_submodule(path)
        plan = _plan(block)
        if plan is None:
            raise GatingError(f"{path} ({type(block).__name__}): not a residual block layertune "
                              "knows; give it a residual(x) method with forward(x) == x + "
                              "residual(x), or leave it out of blocks=")
        if plan.skip_reason is not None:
            log(f"layertune.gate: {path} ({type(block).__name__}) left ungated: it "
                f"{plan.skip_reason}")
            continue
        if path not in inputs:
            raise GatingError(f"{path} ({type(block).__name__}): not called by the forward "
                              "pass on the example, cannot be checked")
        section = GatedSection(_Branch(block, plan.branch), post=plan.post)
        _check(path, block, section, inputs[path], outputs[path], rtol)
        _replace(model, path, section)
        paths.append(path)
    more = [p for p in paths if inputs[p][1] or inputs[p][2]]
    return GatedModel(model, paths, more)


def _find(model: nn.Module, blocks: Sequence[type | str] | None) -> list[str]:
    """Module paths of the blocks to gate, outermost only, in registration order."""
    if blocks is None:
        want = [p for p, m in model.named_modules() if p and _plan(m) is not None]
    else:
        types = tuple(b for b in blocks if isinstance(b, type))
        names = {b for b in blocks if isinstance(b, str)}
        for name in names:
            try:
                model.get_submodule(name)
            except AttributeError:
                raise GatingError(f"{name}: no such module in {type(model).__name__}") from None
        want = [p for p, m in model.named_modules()
                if p and (p in names or (types and isinstance(m, types)))]
    # a block inside another chosen block belongs to that block's branch
    return [p for p in want if not any(p.startswith(q + ".") for q in want)]


@torch.no_grad()
def _capture(model: nn.Module, example: Tensor,
             paths: list[str]) -> tuple[dict[str, _Call], dict[str, Tensor]]:
    """Each block's arguments and output on ``example`` (first call), eval mode."""
    inputs: dict[str, _Call] = {}
    outputs: dict[str, Tensor] = {}

    def hook(path: str):
        def record(_m: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> None:
            if path not in inputs and args:
                inputs[path] = (args[0].detach().clone(), args[1:], kwargs)
                outputs[path] = out.detach().clone()
        return record

    handles = [model.get_submodule(p).register_forward_hook(hook(p), with_kwargs=True)
               for p in paths]
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return inputs, outputs


@torch.no_grad()
def _check(path: str, block: nn.Module, section: GatedSection, call: _Call, expected: Tensor,
           rtol: float) -> None:
    """Gate 1: the block's own output (so the branch was read right); gate 0: exactly ``x``.
    The section gets the block's other arguments (a mask, say) as the network passed them."""
    name = f"{path} ({type(block).__name__})"
    x, args, kwargs = call
    was_training = block.training
    section.eval()
    try:
        section.z = 1.0
        on = section(x, *args, **kwargs)
        section.z = 0.0
        off = section(x, *args, **kwargs)
    finally:
        section.z = 1.0
        section.train(was_training)
    scale = float(expected.abs().max()) or 1.0
    if on.shape != expected.shape or not torch.allclose(on, expected, rtol=rtol,
                                                        atol=rtol * scale):
        diff = (on - expected).abs().max() if on.shape == expected.shape else "shape"
        raise GatingError(f"{name}: with its gate at 1 the output differs from the block's own "
                          f"(max diff {diff}): its forward is not x + branch as assumed")
    if off.shape != x.shape or not torch.equal(off, x):
        diff = (off - x).abs().max() if off.shape == x.shape else "shape"
        raise GatingError(f"{name}: with its gate at 0 the output is not its input (max diff "
                          f"{diff}), so it would differ from the network without the block")


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def strip(model: GatedModel, keep: Sequence[bool]) -> nn.Module:
    """A gate-free copy of the user's network: kept blocks are the original modules again,
    removed ones are deleted (an identity; exact, by the check in ``gate``)."""
    net = copy.deepcopy(model.net)
    for path, kept in zip(model.paths, keep, strict=True):
        section = net.get_submodule(path)
        # a deleted block is nn.Identity (TorchScript compiles it), Removed where the network
        # passes the block more than x
        gone = Removed() if path in model.with_arguments else nn.Identity()
        _replace(net, path, section.body.block if kept and section.body is not None else gone)
    return net.eval()


class Removed(nn.Identity):
    """A deleted block: its input, whatever else the network passes it (a mask, say)."""

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:  # noqa: D102
        return x
