"""Pareto fronts, hypervolume and plain-text tables.

Objectives are ``(metric, mode)`` pairs with mode ``max`` or ``min``; rows are dicts holding
each metric. Internally every objective is turned into one to minimise.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .contract import GROUPS

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


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: str | Path) -> None:
    """``rows`` under a header of ``columns`` (keys not among them are left out)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


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


# --- picking one network ----------------------------------------------------------------------


def knee(rows: Sequence[dict], objectives: Objectives) -> int:
    """Index of the knee of ``rows`` (normally a front): the row closest to the utopia point.

    Each objective is scaled to [0, 1] over ``rows`` (1 = the best value there, 0 = the worst;
    an objective equal on every row scales to 1), and the row with the smallest Euclidean
    distance to (1, ..., 1) is the knee; ties go to the earlier row. With two objectives this
    is the trade-off point nearest the corner both extremes would like to reach.
    """
    if not rows:
        raise ValueError("knee of an empty set")
    pts = _as_min(rows, objectives)  # every objective to minimise
    lows = [min(p[k] for p in pts) for k in range(len(objectives))]
    highs = [max(p[k] for p in pts) for k in range(len(objectives))]

    def distance(p: list[float]) -> float:
        return math.sqrt(sum(((x - lo) / (hi - lo)) ** 2 if hi > lo else 0.0
                             for x, lo, hi in zip(p, lows, highs, strict=True)))

    return min(range(len(pts)), key=lambda i: (distance(pts[i]), i))


# --- plots (matplotlib for PNG: plotly's PNG export needs a browser) --------------------------

_STYLE = {  # group: (colour, marker, label)
    "front": ("#1f77b4", "o", "Pareto front"),
    "finished": ("#9a9a9a", "o", "finished, dominated"),
    "stopped": ("#ff7f0e", "x", "stopped early (last values)"),
    "failed": ("#d62728", "X", "failed (last values)"),
}


def _axes(objectives: Objectives) -> tuple[str, str]:
    """(x, y) metric names: the second objective against the first (trial number if alone)."""
    metrics = [m for m, _ in objectives]
    return (metrics[1] if len(metrics) > 1 else "trial", metrics[0])


def _plotted(rows: Sequence[dict], x: str, y: str) -> list[dict]:
    return [r for r in rows if isinstance(r.get(x), int | float) and
            isinstance(r.get(y), int | float) and math.isfinite(r[x]) and math.isfinite(r[y])]


_BASELINE = ("#2ca02c", "s", "from-scratch baseline")
_DOMINATED = "dominated_by_baseline"  # a front row's mark (layertune.comparison.DOMINATED)


def plot_front_png(groups: dict[str, list[dict]], objectives: Objectives, path: str,
                   title: str = "", baseline: Sequence[dict] = ()) -> None:
    """The front and, apart from it, dominated, stopped and failed trials; written to ``path``.

    ``baseline``: the from-scratch baseline's front, drawn beside the sweep's; front rows whose
    ``dominated_by_baseline`` is true get a ring.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = _axes(objectives)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    try:
        for group in reversed(GROUPS):  # the front on top
            rows = _plotted(groups.get(group, []), x, y)
            colour, marker, label = _STYLE[group]
            total = len(groups.get(group, []))
            if not total:
                continue
            missing = total - len(rows)
            label = f"{label}: {total}" + (f" ({missing} with no values to draw)" if missing
                                           else "")
            ax.scatter([r[x] for r in rows], [r[y] for r in rows], c=colour, marker=marker,
                       s=40 if group == "front" else 28, label=label, zorder=3 if group ==
                       "front" else 2)
            if group == "front" and len(rows) > 1:
                line = sorted(rows, key=lambda r: (r[x], r[y]))
                ax.plot([r[x] for r in line], [r[y] for r in line], c=colour, lw=1,
                        drawstyle="steps-post", zorder=1)
        _baseline_png(ax, groups.get("front", []), baseline, x, y)
        if x in ("active_layers", "undecided_layers", "trial"):
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel(x + "".join(f" ({d})" for m, d in objectives if m == x))
        ax.set_ylabel(y + "".join(f" ({d})" for m, d in objectives if m == y))
        ax.set_title(title or "Pareto front")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _baseline_png(ax: Any, front: Sequence[dict], baseline: Sequence[dict], x: str,
                  y: str) -> None:
    rows = _plotted(baseline, x, y)
    if rows:
        colour, marker, label = _BASELINE
        line = sorted(rows, key=lambda r: (r[x], r[y]))
        ax.plot([r[x] for r in line], [r[y] for r in line], c=colour, lw=1, ls="--",
                drawstyle="steps-post", zorder=1)
        ax.scatter([r[x] for r in rows], [r[y] for r in rows], c=colour, marker=marker, s=34,
                   label=f"{label}: {len(rows)} on its front", zorder=2)
    beaten = [r for r in _plotted(front, x, y) if r.get(_DOMINATED)]
    if beaten:
        ax.scatter([r[x] for r in beaten], [r[y] for r in beaten], facecolors="none",
                   edgecolors="#d62728", s=130, linewidths=1.5, zorder=4,
                   label=f"front points the baseline dominates: {len(beaten)}")


def plot_front_html(groups: dict[str, list[dict]], objectives: Objectives, path: str,
                    title: str = "", hover: Sequence[str] = (),
                    baseline: Sequence[dict] = ()) -> None:
    """Interactive version (plotly); plotly.js comes from its CDN so the file stays small.
    ``baseline`` and the marks as in ``plot_front_png``."""
    import plotly.graph_objects as go

    x, y = _axes(objectives)
    fig = go.Figure()
    for group in GROUPS:
        rows = _plotted(groups.get(group, []), x, y)
        if not rows:
            continue
        colour, marker, label = _STYLE[group]
        text = ["<br>".join(f"{k}: {_cell(r.get(k))}" for k in ("trial", "ray_trial", *hover)
                            if k in r) for r in rows]
        fig.add_trace(go.Scatter(
            x=[r[x] for r in rows], y=[r[y] for r in rows], mode="markers", name=label,
            text=text, hoverinfo="text+x+y",
            marker={"color": colour, "symbol": "x" if marker in "xX" else "circle", "size": 9},
        ))
    rows = _plotted(baseline, x, y)
    if rows:
        colour, _, label = _BASELINE
        fig.add_trace(go.Scatter(
            x=[r[x] for r in rows], y=[r[y] for r in rows], mode="lines+markers", name=label,
            line={"color": colour, "dash": "dash", "shape": "hv"},
            marker={"color": colour, "symbol": "square", "size": 9},
            text=[f"run_id: {r.get('run_id', '-')}" for r in rows], hoverinfo="text+x+y"))
    beaten = [r for r in _plotted(groups.get("front", []), x, y) if r.get(_DOMINATED)]
    if beaten:
        fig.add_trace(go.Scatter(
            x=[r[x] for r in beaten], y=[r[y] for r in beaten], mode="markers",
            name="front points the baseline dominates", hoverinfo="skip",
            marker={"symbol": "circle-open", "size": 16, "color": "#d62728",
                    "line": {"width": 2}}))
    fig.update_layout(title=title or "Pareto front", xaxis_title=x, yaxis_title=y,
                      template="plotly_white")
    fig.write_html(path, include_plotlyjs="cdn", full_html=True)
