"""The files a run carries: a trial's gate plot and compact network, the sweep's front.

A trial run gets ``gates.png`` and, when it finished, the export bundle under ``MODEL_DIR`` and
the compact network as an MLflow model (``mlflow.pytorch``, a LoggedModel with the run as its
source, signature and input example);
the sweep run gets ``front.csv``, ``trials.csv``, ``front.png`` and ``front.html`` (written
here into a folder the caller logs; with its from-scratch baseline when one is found, and
``baseline_front.csv``) and the rows of ``trials.csv`` as an MLflow table.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..comparison import DOMINATED, SECTIONS, Versus
from ..contract import GROUPS, STATUS, STOPPED_BY, THETA
from ..export import BUNDLE_FILES, EXPORT_ERROR, MLFLOW_MODEL
from ..front import plot_front_html, plot_front_png, write_csv
from .rows import front_columns, gate_key, group_trials

MODEL_DIR = "model"  # artifact folder of a finished trial's export bundle
MODEL_NAME = "compact"  # the LoggedModel's name; its run says which trial


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
    is no checkpoint or it lacks a bundle file, and then nothing is copied. The MLflow Model
    folder lands in ``dest / MLFLOW_MODEL`` for ``log_model``. A factory's network that could
    not be written as an MLflow Model: its bundle and ``EXPORT_ERROR`` are copied, and False.
    """
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        files = [Path(folder, f) for f in BUNDLE_FILES]
        model = Path(folder, MLFLOW_MODEL)
        error = Path(folder, EXPORT_ERROR)
        if all(f.is_file() for f in files) and error.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            for f in (*files, error):
                shutil.copy2(f, dest / f.name)
            return False
        if not all(f.is_file() for f in files) or not (model / "MLmodel").is_file():
            return False
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, dest / f.name)
        shutil.copytree(model, dest / MLFLOW_MODEL)
    return True


def log_model(client: Any, experiment_id: str, run_id: str, folder: Path, step: int) -> str:
    """The MLflow Model ``folder`` logged as the run's model; returns its URI ``models:/ID``.

    What ``mlflow.pytorch.log_model`` does, through ``client``: that function writes to the
    process-wide tracking URI and would trace the network again in the driver, while the
    worker already wrote the folder (``formats.save_mlflow_model``).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    model = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       model_type="compact network")
    try:
        mlmodel = Model.load(str(folder))  # the ids Model.log would have written into MLmodel
        mlmodel.model_id = mlmodel.model_uuid = model.model_id
        mlmodel.run_id, mlmodel.artifact_path = run_id, model.artifact_location
        mlmodel.save(str(folder / "MLmodel"))
        client.log_model_artifacts(model.model_id, str(folder))
    except Exception:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    return f"models:/{model.model_id}"


def write_front(rows: Sequence[dict], objectives: Sequence[tuple[str, str]],
                parameters: Sequence[str], name: str, folder: Path,
                versus: Versus | None = None) -> dict[str, list]:
    """The front files of the ended trials ``rows`` into ``folder``; returns every trial as a
    table (column -> values, the columns of ``trials.csv``) for ``log_table``.

    With ``versus`` (the sweep's baseline found): the baseline's front is drawn beside the
    sweep's, the title has both hypervolumes, front rows get the ``dominated_by_baseline``
    column, and ``baseline_front.csv`` holds the baseline's front.
    """
    rows = sorted(rows, key=lambda r: (r["trial"] is None, r["trial"] or 0,
                                       r["ray_trial"] or ""))
    groups = group_trials(rows, objectives)
    cols = front_columns(objectives, parameters)
    title = f"sweep {name}: {len(groups['front'])} on the front of " \
            f"{len(groups['front']) + len(groups['finished'])} finished trials"
    theirs: list[dict] = []
    if versus is not None:
        groups["front"] = versus.mark(groups["front"])
        cols.append(DOMINATED)
        theirs = versus.baseline_front
        title += f"\nhypervolume {versus.hypervolume:.3g}, from-scratch baseline " \
                 f"{versus.baseline_hypervolume:.3g}"
        write_csv(theirs, [SECTIONS, *[m for m, _ in objectives], "run_id"],
                  folder / "baseline_front.csv")
    table = [{**r, "group": g} for g in GROUPS for r in groups[g]]
    every = ["group", STATUS, STOPPED_BY, *cols]
    write_csv(groups["front"], cols, folder / "front.csv")
    write_csv(table, every, folder / "trials.csv")
    plot_front_png(groups, objectives, str(folder / "front.png"), title, baseline=theirs)
    plot_front_html(groups, objectives, str(folder / "front.html"), title.replace("\n", "<br>"),
                    hover=[*parameters, "run_id"], baseline=theirs)
    return {c: [r.get(c) for r in table] for c in every}
