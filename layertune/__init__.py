"""layertune: concurrent training and layer pruning (arXiv 2406.04549) and its sweeps.

``gate``, ``strip`` and ``Pruner`` are the API for a network and a training loop of the user's
own (README, "Your own model"). They are imported on first use: the CLI should not pay for
torchvision's import.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"gate": "gating", "strip": "gating", "GatedModel": "gating", "GatingError": "gating",
         "Pruner": "pruner"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'layertune' has no attribute {name!r}")
