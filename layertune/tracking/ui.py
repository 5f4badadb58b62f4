"""``layertune ui``: the sweeps a folder holds, and the MLflow server that shows them.

The server binds to 127.0.0.1 only (docs/security.md says why).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .view import VIEW_TAG, view_page


def find_sweeps(root: str | Path) -> dict[str, Path]:
    """Sweep folders under ``root`` (or ``root`` itself) that hold an ``mlflow.db``: name->db.

    The name is the folder's (``./layertune-runs/NAME``); for ``root`` itself, the sweeps
    recorded in its database.
    """
    root = Path(root).expanduser().resolve()
    if (root / "mlflow.db").is_file():
        return {",".join(recorded_sweeps(root / "mlflow.db")) or root.name: root / "mlflow.db"}
    if not root.is_dir():
        return {}
    return {p.name: p / "mlflow.db" for p in sorted(root.iterdir())
            if (p / "mlflow.db").is_file()}


def recorded_sweeps(db: str | Path) -> list[str]:
    """Names of the sweeps (experiments) in an MLflow sqlite file, read without MLflow."""
    return list(recorded_experiments(db))


def _read(db: str | Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of a query on an MLflow sqlite file, read-only and without MLflow (none when the
    file is missing or not MLflow's)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []


def recorded_experiments(db: str | Path) -> dict[str, str]:
    """Sweep name -> MLflow experiment id in an MLflow sqlite file, read without MLflow."""
    rows = _read(db, "select name, experiment_id from experiments where lifecycle_stage = "
                 "'active' and name != 'Default' order by experiment_id")
    return {name: str(i) for name, i in rows}


def experiment_tag(db: str | Path, experiment_id: str, key: str) -> str | None:
    """An experiment's tag in an MLflow sqlite file (None: not set), read without MLflow."""
    rows = _read(db, "select value from experiment_tags where experiment_id = ? and key = ?",
                 (experiment_id, key))
    return rows[0][0] if rows else None


def child_kind(db: str | Path, experiment_id: str) -> str:
    """The ``layertune.kind`` of an experiment's nested runs: ``baseline`` (each depth) in a
    baseline's experiment, else ``trial``; read without MLflow."""
    kind = experiment_tag(db, experiment_id, "layertune.kind")
    return "baseline" if kind == "baseline-group" else "trial"


def runs_page(server: str, experiment_id: str, kind: str = "trial",
              db: str | Path | None = None) -> str:
    """The MLflow UI page of a sweep's trial runs (``kind``: or a baseline's depths): the
    training view (not the GenAI overview MLflow 3 opens by default), those runs only, best
    validation accuracy first, the objectives as columns: the saved view the experiment holds
    (``.view``). With ``db`` given and no view in it (recorded before views were), the same runs
    and sort set by the URL, without the columns."""
    if db is None or experiment_tag(db, experiment_id, VIEW_TAG) is not None:
        return view_page(server, experiment_id)
    query = ("workflowType=machine_learning&orderByKey=metrics.%60val_accuracy%60"
             f"&orderByAsc=false&searchFilter=tags.%60layertune.kind%60%20%3D%20%27{kind}%27")
    return f"{server}/#/experiments/{experiment_id}/runs?{query}"


def server_command(uri: str, port: int) -> list[str]:
    """``mlflow server`` over one database, bound to 127.0.0.1 (artifacts: file locations)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
