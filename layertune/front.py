"""Pareto fronts, hypervolume and plain-text tables.

Objectives are ``(metric, mode)`` pairs with mode ``max`` or ``min``; rows are dicts holding
each metric. Internally every objective is turned into one to minimise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Objectives = Sequence[tuple[str, str]]


def _signs(modes: Sequence[str]) -> list[float]:
    for m in modes:
        if m not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {m!r}")
    return [-1.0 if m == "max" else 1.0 for m in modes]


def _as_min(rows: Sequence[dict], objectives: Objectives) -> list[list[float]]:
    signs = _signs([m for _, m in objectives])
    return [[s * float(r[k]) for s, (k, _) in zip(signs, objectives, strict=True)] for r in rows]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` (both to minimise): no worse anywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def pareto_front(rows: Sequence[dict], objectives: Objectives) -> list[int]:
    """Indices of the rows no other row dominates (ties all stay), in input order."""
    pts = _as_min(rows, objectives)
    return [
        i for i, p in enumerate(pts)
        if all(math.isfinite(x) for x in p)
        and not any(dominates(q, p) for j, q in enumerate(pts) if j != i)
    ]


def _hv_min(points: list[list[float]], ref: list[float]) -> float:
    """Hypervolume of boxes [p, ref] (minimisation), by slicing along the last axis."""
    pts = [p for p in points if all(x < r for x, r in zip(p, ref, strict=True))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[-1])
    total = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            total += (upper - p[-1]) * _hv_min([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return total


def hypervolume(rows: Sequence[dict], objectives: Objectives, reference: Sequence[float]) -> float:
    """Volume of objective space that ``rows`` dominate, bounded by ``reference``.

    ``reference`` is in the metrics' own units (e.g. ``[0.1, 9]`` for val_accuracy max and
    active_layers min); rows no better than it in every objective add nothing.
    """
    signs = _signs([m for _, m in objectives])
    ref = [s * float(r) for s, r in zip(signs, reference, strict=True)]
    return _hv_min(_as_min(rows, objectives), ref)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value if value is not None else "-")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3g}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str],
                 headers: Sequence[str] | None = None) -> str:
    """Columns aligned with spaces; numbers right-aligned; missing cells ``-``."""
    headers = list(headers or columns)
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), int | float) for r in rows) for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if n else v.ljust(w)
                 for v, w, n in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in cells])
