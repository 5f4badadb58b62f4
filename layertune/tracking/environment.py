"""What a sweep's result depends on besides its config: package versions and the git commit."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("layertune", "torch", "ray", "optuna", "mlflow")


def environment() -> dict[str, str]:
    """``version.PKG`` of each package a result depends on (``unknown`` if not installed);
    ``git_commit`` and ``git_dirty`` when this code runs from a git checkout."""
    out = {}
    for pkg in _PACKAGES:
        try:
            out[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[f"version.{pkg}"] = "unknown"
    here = str(Path(__file__).resolve().parent)
    commit = _git(here, "rev-parse", "HEAD")
    if commit:
        out["git_commit"] = commit
        out["git_dirty"] = str(bool(_git(here, "status", "--porcelain", "--untracked-files=no")))
    return out


def _git(folder: str, *args: str) -> str:
    """``git -C folder ARGS``'s output; empty if git is missing or fails."""
    try:
        r = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""
