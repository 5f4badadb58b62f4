"""The files a run carries: a trial's gate plot and compact network, the sweep's front.

A trial run gets ``gates.png`` and, when it finished, the export bundle under ``MODEL_DIR``;
the sweep run gets ``front.csv``, ``trials.csv``, ``front.png`` and ``front.html`` (written
here into a folder the caller logs) and the rows of ``trials.csv`` as an MLflow table.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..contract import GROUPS, STATUS, STOPPED_BY, THETA
from ..export import BUNDLE_FILES
from ..front import plot_front_html, plot_front_png, write_csv
from .rows import front_columns, gate_key, group_trials

MODEL_DIR = "model"  # artifact folder of a finished trial's export bundle


def plot_gates(history: Sequence[dict], path: str, title: str) -> None:
    """The gate trajectory: each section's theta against the epoch (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    count = max((len(h.get(THETA) or []) for h in history), default=0)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        for k in range(count):
            ax.plot(epochs, [h[THETA][k] if k < len(h.get(THETA) or []) else math.nan
                             for h in history], marker="." if len(epochs) < 30 else None,
                    lw=1.2, label=gate_key(k, count))
        if not count:
            ax.text(0.5, 0.5, "no gate values reported", ha="center", transform=ax.transAxes)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel("theta (probability the section is kept)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if 0 < count <= 16:
            ax.legend(fontsize=7, ncol=2, loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def copy_model(checkpoint: Any, dest: Path) -> bool:
    """The export bundle from a trial's last checkpoint (persisted storage) into ``dest``.

    The trial writes the bundle into its checkpoint (``export.save_bundle``); False when there
    is no checkpoint or it lacks a bundle file, and then nothing is copied.
    """
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        files = [Path(folder, f) for f in BUNDLE_FILES]
        if not all(f.is_file() for f in files):
            return False
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, dest / f.name)
    return True


def write_front(rows: Sequence[dict], objectives: Sequence[tuple[str, str]],
                parameters: Sequence[str], name: str, folder: Path) -> dict[str, list]:
    """The front files of the ended trials ``rows`` into ``folder``; returns every trial as a
    table (column -> values, the columns of ``trials.csv``) for ``log_table``."""
    rows = sorted(rows, key=lambda r: (r["trial"] is None, r["trial"] or 0,
                                       r["ray_trial"] or ""))
    groups = group_trials(rows, objectives)
    cols = front_columns(objectives, parameters)
    table = [{**r, "group": g} for g in GROUPS for r in groups[g]]
    every = ["group", STATUS, STOPPED_BY, *cols]
    title = f"sweep {name}: {len(groups['front'])} on the front of " \
            f"{len(groups['front']) + len(groups['finished'])} finished trials"
    write_csv(groups["front"], cols, folder / "front.csv")
    write_csv(table, every, folder / "trials.csv")
    plot_front_png(groups, objectives, str(folder / "front.png"), title)
    plot_front_html(groups, objectives, str(folder / "front.html"), title,
                    hover=[*parameters, "run_id"])
    return {c: [r.get(c) for r in table] for c in every}
