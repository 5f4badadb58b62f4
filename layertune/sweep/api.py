"""``layertune.sweep(model, data, space, ...)``: a sweep from Python over the user's functions.

The functions become the trial YAML's ``factory: "module:function"`` strings (Ray workers import
them by name, and the record keeps the names), the trial and space are written as the YAML
files ``layertune sweep`` reads, and the sweep runs as that command runs it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, read_yaml
from .plan import plan_sweep
from .result import SweepResult
from .run import run_sweep

Section = Callable[..., Any] | str | dict


def sweep(
    model: Section,
    data: Section,
    space: str | Path | dict,
    *,
    model_kwargs: dict[str, Any] | None = None,
    data_kwargs: dict[str, Any] | None = None,
    trial: str | Path | dict | None = None,
    live: bool = False,
    **options: Any,
) -> SweepResult:
    """Run a sweep whose trials build ``model`` and ``data`` with the user's functions.

    ``model`` / ``data``: a function defined at the top level of an importable module (not in
    the script being run), a ``"module:function"`` string, or a built-in section as a dict
    (``{"name": "digits"}``); the functions are called as ``fn(**model_kwargs)`` and
    ``fn(**data_kwargs)``, and return what a trial YAML's factories return (README, "Your own
    model"). ``space``: a search-space YAML file or the same as a dict (parameters may be
    ``model.kwargs.NAME``). ``trial``: the trial's other keys (``method``, ``optimizer``,
    ``epochs``, ``seed``...) as a dict or a trial YAML file. ``options``: the keywords of
    ``SweepOptions`` (``samples``, ``name``, ``storage``, ``address``...). Bad input raises
    ``ConfigError`` (one line) before Ray starts; the factories are called once here first.
    """
    raw = read_yaml(trial) if isinstance(trial, str | Path) else dict(trial or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{trial}: (top level): expected a mapping of trial keys to values")
    raw["model"] = _section(model, model_kwargs, "model")
    raw["data"] = _section(data, data_kwargs, "data")
    stem = raw["model"].get("name") or str(raw["model"].get("factory")).rpartition(":")[2]
    with tempfile.TemporaryDirectory(prefix="layertune-sweep-") as tmp:
        trial_path = Path(tmp, f"{stem}.yaml")
        trial_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        space_path = Path(space) if isinstance(space, str | Path) else Path(tmp, "space.yaml")
        if isinstance(space, dict):
            space_path.write_text(yaml.safe_dump(space, sort_keys=False))
        plan = plan_sweep(trial_path, space_path, **options)
        return run_sweep(plan, live=live)


def _section(given: Section, kwargs: dict[str, Any] | None, key: str) -> dict:
    """The trial's ``model:`` / ``data:`` section for ``given``."""
    if isinstance(given, dict):
        if kwargs is not None:
            raise ConfigError(f"layertune.sweep: {key}_kwargs: only with a function as {key}")
        return dict(given)
    if isinstance(given, str):
        return {"factory": given, "kwargs": dict(kwargs or {})}
    module = getattr(given, "__module__", None)
    name = getattr(given, "__qualname__", "")
    if not callable(given) or module in (None, "__main__") or "<" in name:
        raise ConfigError(
            f"layertune.sweep: {key}={given!r}: Ray workers import the function by name; "
            "define it at the top level of a module your script imports (not in the script "
            "itself, not a lambda, nested function or partial)")
    return {"factory": f"{module}:{name}", "kwargs": dict(kwargs or {})}
