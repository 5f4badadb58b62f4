"""The compact network: gates gone, sections with ``round(theta) = 0`` deleted.

Written as three files sharing a stem: the network for a runtime (``STEM.pt2`` by default, or
``STEM.onnx`` / ``STEM.pt``, see ``formats``), ``STEM.state.pt`` (state dict) and ``STEM.json``
(architecture: the model spec and which sections are kept), so that layertune can rebuild the
network from its weights alone.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import first_line
from .formats import DEFAULT_FORMAT, check_format, input_dtype, save_mlflow_model, write_network
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


def compact(model: nn.Module, keep: list[bool]) -> nn.Module:
    """A gate-free copy of ``model`` with the sections not in ``keep`` deleted: for a
    ``GatedNetwork`` an ``nn.Sequential``, for ``layertune.gate``'s result the user's own
    network (``gating.strip``)."""
    if not isinstance(model, GatedNetwork):
        from .gating import strip

        return strip(model, keep)
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


def save_compact(model: GatedNetwork, keep: list[bool], stem: str | Path,
                 fmt: str = DEFAULT_FORMAT) -> dict[str, str]:
    """Write the network as ``fmt``, its state dict and architecture JSON; returns their paths
    (keys ``network``, ``state_dict``, ``architecture``)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    net = compact(model, keep).cpu()
    paths = {
        "network": str(stem.with_suffix(check_format(fmt))),
        "state_dict": str(stem.with_suffix(".state.pt")),
        "architecture": str(stem.with_suffix(".json")),
    }
    write_network(net, model.spec["in_shape"], paths["network"], fmt, input_dtype(model.spec))
    _save_weights(model, keep, net, stem)
    return paths


def _save_weights(model: GatedNetwork, keep: list[bool], net: nn.Module, stem: Path) -> None:
    torch.save(net.state_dict(), stem.with_suffix(".state.pt"))
    arch = {"spec": model.spec, "keep": [bool(k) for k in keep]}
    stem.with_suffix(".json").write_text(json.dumps(arch, indent=2))


def input_shape(stem: str | Path) -> tuple[int, ...]:
    """One input's shape (no batch) of the compact network saved at ``stem``."""
    arch = json.loads(Path(stem).with_suffix(".json").read_text())
    return tuple(int(s) for s in arch["spec"]["in_shape"])


def saved_input_dtype(stem: str | Path) -> torch.dtype:
    """The input dtype of the compact network saved at ``stem`` (float32 unless recorded)."""
    return input_dtype(json.loads(Path(stem).with_suffix(".json").read_text())["spec"])


def load_compact(stem: str | Path) -> nn.Sequential:
    """Rebuild a compact network from its architecture JSON and state dict (weights only)."""
    stem = Path(stem)
    arch = json.loads(stem.with_suffix(".json").read_text())
    spec = arch["spec"]
    if "factory" in spec:  # the user's network: its factory builds it again
        from .factory import rebuild

        net = compact(rebuild(spec), arch["keep"])
    else:
        net = compact(build_from_spec(spec), arch["keep"])
    net.load_state_dict(torch.load(stem.with_suffix(".state.pt"), weights_only=True))
    return net


# A trial's export bundle: the compact network's weights and architecture plus the exact trial
# config, so that it can be re-evaluated on the same seeded validation split later, and the
# network as an MLflow Model folder, which the MLflow record logs as a model. The folder is
# written in the trial's worker so that the driver only copies it (tracing costs ~0.5 s).
MODEL_STEM = "model"
CONFIG_FILE = "trial_config.json"
BUNDLE_FILES = ("model.state.pt", "model.json", CONFIG_FILE)
MLFLOW_MODEL = "mlflow_model"
EXPORT_ERROR = "export_error.txt"  # instead of MLFLOW_MODEL when a factory's network fails


def save_bundle(model: GatedNetwork, keep: list[bool], config: dict, folder: str | Path) -> None:
    """Write the export bundle (``BUNDLE_FILES`` and ``MLFLOW_MODEL``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = compact(model, keep).cpu()
    _save_weights(model, keep, net, folder / MODEL_STEM)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    shutil.rmtree(folder / MLFLOW_MODEL, ignore_errors=True)  # MLflow will not overwrite it
    try:
        save_mlflow_model(net, model.spec["in_shape"], folder / MLFLOW_MODEL,
                          input_dtype(model.spec))
    except Exception as err:
        if "factory" not in model.spec:
            raise
        # the user's network may not trace (data-dependent control flow, say): the trial
        # keeps its result and weights, the record logs no MLflow model and says why
        reason = first_line(err)[:300]
        (folder / EXPORT_ERROR).write_text(
            f"{model.spec['factory']}: the compact network cannot be written as an MLflow "
            f"model ({type(err).__name__}: {reason}); its weights and architecture are in "
            "model.state.pt / model.json\n")
