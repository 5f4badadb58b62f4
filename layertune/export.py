"""The compact network: gates gone, sections with ``round(theta) = 0`` deleted.

Written as three files sharing a stem: ``STEM.pt`` (TorchScript), ``STEM.state.pt`` (state
dict) and ``STEM.json`` (architecture: the model spec and which sections are kept), so a
model can be reloaded with or without TorchScript.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .models import build_from_spec
from .sections import GatedNetwork, GatedSection


class Residual(nn.Module):
    """A kept section: ``post(skip(x) + body(x))``."""

    def __init__(self, body: nn.Module, skip: nn.Module, post: nn.Module) -> None:
        super().__init__()
        self.body, self.skip, self.post = body, skip, post

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.skip(x) + self.body(x))


class Skip(nn.Module):
    """A removed section: only its linear skip (and the block's activation) remain."""

    def __init__(self, skip: nn.Module, post: nn.Module) -> None:
        super().__init__()
        self.skip, self.post = skip, post

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.skip(x))


def compact(model: GatedNetwork, keep: list[bool]) -> nn.Sequential:
    """A gate-free copy of ``model`` with the sections not in ``keep`` deleted."""
    layers: list[nn.Module] = []
    sections = iter(keep)
    for layer in copy.deepcopy(model).layers:
        if isinstance(layer, GatedSection):
            kept = next(sections) and layer.body is not None
            layers.append(Residual(layer.body, layer.skip, layer.post) if kept
                          else Skip(layer.skip, layer.post))
        else:
            layers.append(layer)
    return nn.Sequential(*layers).eval()


def save_compact(model: GatedNetwork, keep: list[bool], stem: str | Path) -> dict[str, str]:
    """Write TorchScript, state dict and architecture JSON; returns their paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    net = compact(model, keep).cpu()
    paths = {
        "torchscript": str(stem.with_suffix(".pt")),
        "state_dict": str(stem.with_suffix(".state.pt")),
        "architecture": str(stem.with_suffix(".json")),
    }
    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; it is still the
        warnings.simplefilter("ignore", FutureWarning)  # format users can load without our code
        torch.jit.script(net).save(paths["torchscript"])
    torch.save(net.state_dict(), paths["state_dict"])
    arch = {"spec": model.spec, "keep": [bool(k) for k in keep]}
    Path(paths["architecture"]).write_text(json.dumps(arch, indent=2))
    return paths


def load_compact(stem: str | Path) -> nn.Sequential:
    """Rebuild a compact network from its architecture JSON and state dict (no TorchScript)."""
    stem = Path(stem)
    arch = json.loads(stem.with_suffix(".json").read_text())
    net = compact(build_from_spec(arch["spec"]), arch["keep"])
    net.load_state_dict(torch.load(stem.with_suffix(".state.pt"), weights_only=True))
    return net


# A trial's export bundle: the compact network's three files plus the exact trial config, so
# that the network can be re-evaluated on the same seeded validation split later.
MODEL_STEM = "model"
CONFIG_FILE = "trial_config.json"
BUNDLE_FILES = ("model.pt", "model.state.pt", "model.json", CONFIG_FILE)


def save_bundle(model: GatedNetwork, keep: list[bool], config: dict, folder: str | Path) -> None:
    """Write the export bundle (``BUNDLE_FILES``) into ``folder`` (e.g. a final checkpoint)."""
    folder = Path(folder)
    save_compact(model, keep, folder / MODEL_STEM)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
