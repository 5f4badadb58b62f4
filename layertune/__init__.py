"""layertune: concurrent training and layer pruning (arXiv 2406.04549) and its sweeps.

``gate``, ``strip`` and ``Pruner`` are the API for a network and a training loop of the user's
own, ``sweep(model, data, space, ...)`` a sweep over the user's functions (README, "Your own
model"). They are imported on first use: the CLI should not pay for torchvision's import.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"gate": "gating", "strip": "gating", "GatedModel": "gating", "GatingError": "gating",
         "Pruner": "pruner"}
__all__ = [*_LAZY, "sweep"]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "sweep":  # the package, callable: layertune.sweep(model, data, space, ...)
        return importlib.import_module(".sweep", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'layertune' has no attribute {name!r}")
