"""A sweep's front against its from-scratch baseline (``layertune baseline``).

The baseline of a trial config is the grid of ``layertune.baseline`` trained once, kept as
``baseline.json`` in its own folder (``./layertune-runs/baseline-TRIAL-DIGEST`` by default).
A sweep finds its baseline beside its own folder (the same parent folder, ``./layertune-runs``
by default): the ``baseline.json`` whose trial config is the sweep's, i.e. the same trial file
with the same ``--set`` overrides (so the same epochs, data, optimiser and seed); the newest
one if several match. The comparison is made at the sweep's hypervolume reference point, for
both fronts, and each point of the sweep's front is marked dominated by the baseline or not.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import front_order
from .front import dominates, hypervolume, pareto_front

BASELINE_FILE = "baseline.json"
DOMINATED = "dominated_by_baseline"  # the column that marks a sweep front point
SECTIONS = "sections"  # a grid point's key: the sections its network keeps


def config_digest(config: dict) -> str:
    """Eight hex digits naming a resolved trial config (the default baseline name has them)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Baseline:
    """One trained grid, as ``baseline.json`` holds it."""

    path: Path
    name: str
    config: dict  # the resolved trial config it trained (the sweep's, to match)
    rows: list[dict]  # one per finished depth: sections, the report's numbers, run_id
    created: str  # when it was trained (ISO time): with the path, names this very grid

    @property
    def stamp(self) -> str:
        return f"{self.path}@{self.created}"

    def front(self, objectives: Sequence[tuple[str, str]]) -> list[dict]:
        rows = [r for r in self.rows if _has(r, objectives)]
        front = [rows[i] for i in pareto_front(rows, objectives)]
        return sorted(front, key=front_order(objectives))


def load_baseline(path: str | Path) -> Baseline:
    """``baseline.json`` read back; ``ValueError`` (or ``OSError``) when it is not one."""
    path = Path(path).resolve()
    data = json.loads(path.read_text())
    try:
        return Baseline(path=path, name=str(data["name"]), config=dict(data["config"]),
                        rows=list(data["rows"]), created=str(data["created"]))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a baseline file ({err})") from None


def find_baseline(sweep_folder: str | Path, trial_config: dict) -> Baseline | None:
    """The newest baseline beside ``sweep_folder`` that trained ``trial_config``, or None."""
    found = []
    for path in Path(sweep_folder).resolve().parent.glob(f"*/{BASELINE_FILE}"):
        try:
            baseline = load_baseline(path)
        except (OSError, ValueError):
            continue
        if baseline.config == trial_config:
            found.append(baseline)
    return max(found, key=lambda b: b.created, default=None)


@dataclass(frozen=True)
class Versus:
    """A sweep's front against a baseline's, at one hypervolume reference point."""

    baseline: Baseline
    reference: list[float]
    hypervolume: float  # of the sweep's front
    baseline_hypervolume: float
    baseline_front: list[dict]
    dominated: list[bool]  # per point of the sweep's front, in its order

    def mark(self, front: Sequence[dict]) -> list[dict]:
        """The sweep's front rows with the ``dominated_by_baseline`` column."""
        return [{**r, DOMINATED: d} for r, d in zip(front, self.dominated, strict=True)]

    def line(self) -> str:
        """One line: both hypervolumes and how many front points the baseline dominates."""
        share = self.hypervolume / self.baseline_hypervolume if self.baseline_hypervolume else 0
        return (f"hypervolume at reference {self.reference}: sweep {self.hypervolume:.4g}, "
                f"from-scratch baseline {self.baseline_hypervolume:.4g}"
                + (f" (sweep: {share:.1%} of it)" if share else "")
                + f"; {sum(self.dominated)} of {len(self.dominated)} sweep front points "
                "dominated by the baseline")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.baseline.name, "file": str(self.baseline.path),
                "created": self.baseline.created, "reference": self.reference,
                "hypervolume": self.hypervolume,
                "baseline_hypervolume": self.baseline_hypervolume,
                "baseline_front": self.baseline_front,
                "dominated": sum(self.dominated)}


def versus(front: Sequence[dict], baseline: Baseline, objectives: Sequence[tuple[str, str]],
           reference: Sequence[float]) -> Versus | None:
    """``front`` (the sweep's, in its order) against ``baseline``; None when the baseline's
    rows lack one of the objectives (a sweep may optimise a metric a grid run did not report).
    """
    objectives = [(str(m), str(d)) for m, d in objectives]
    theirs = baseline.front(objectives)
    if not theirs:
        return None
    signs = [-1.0 if d == "max" else 1.0 for _, d in objectives]

    def point(r: dict) -> list[float]:
        return [s * float(r[m]) for s, (m, _) in zip(signs, objectives, strict=True)]

    others = [point(b) for b in theirs]
    return Versus(
        baseline=baseline, reference=[float(x) for x in reference],
        hypervolume=hypervolume(front, objectives, reference),
        baseline_hypervolume=hypervolume(theirs, objectives, reference),
        baseline_front=theirs,
        dominated=[any(dominates(b, point(r)) for b in others) for r in front])


def _has(row: dict, objectives: Sequence[tuple[str, str]]) -> bool:
    return all(isinstance(row.get(m), int | float) and math.isfinite(row[m])
               for m, _ in objectives)
