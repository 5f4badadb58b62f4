"""A trial's whole state in one checkpoint file, so a trial goes on where it stopped."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .optim import drop_parameters

if TYPE_CHECKING:
    from .train import Trial

CHECKPOINT_FILE = "trial_state.pt"


def save_state(trial: Trial, folder: str | Path) -> None:
    """Weights (and their average), optimiser, schedule, gates, the random states of the gates
    and of the data's loaders, and the history so far."""
    state = {
        "epoch": trial.epoch,
        "pruned": [i for i, s in enumerate(trial.model.sections) if s.pruned],
        "model": trial.model.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "gates": trial.gates.state_dict(),
        "gate_rng": trial.gates.generator.get_state(),
        "data_rng": [g.get_state() for g in trial.data.generators()],
        "train_flops": trial.train_flops,
        "history": trial.history,
        "pruned_at": trial.pruned_at,
        "decided": trial.decided,
        "average": None if trial.average is None else trial.average.state_dict(),
    }
    torch.save(state, Path(folder) / CHECKPOINT_FILE)


def load_state(trial: Trial, folder: str | Path) -> None:
    """Bring a freshly built ``trial`` to the state saved in ``folder`` (``weights_only``)."""
    state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=trial.device,
                       weights_only=True)
    for i in state["pruned"]:  # the saved network has these sections removed
        drop_parameters(trial.optimizer, trial.model.sections[i].prune())
    trial.gates.prior.refresh()
    trial.model.load_state_dict(state["model"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    trial.gates.load_state_dict(state["gates"])
    trial.gates.generator.set_state(state["gate_rng"].cpu())
    for g, rng in zip(trial.data.generators(), state.get("data_rng", []), strict=False):
        g.set_state(rng.cpu())
    trial.epoch = state["epoch"]
    trial.train_flops = state["train_flops"]
    trial.history = state["history"]
    trial.pruned_at = {int(k): int(v) for k, v in state["pruned_at"].items()}
    trial.decided = {int(k): float(v) for k, v in state.get("decided", {}).items()}
    if state.get("average") is not None:  # the structure was fixed when it was saved
        trial.start_average()
        trial.average.load_state_dict(state["average"])
