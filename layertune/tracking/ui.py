"""``layertune ui``: the sweeps a folder holds, and the MLflow server that shows them.

The server binds to 127.0.0.1 only (docs/security.md says why).
"""

from __future__ import annotations

import sys
from pathlib import Path


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


def recorded_experiments(db: str | Path) -> dict[str, str]:
    """Sweep name -> MLflow experiment id in an MLflow sqlite file, read without MLflow."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute("select name, experiment_id from experiments where "
                               "lifecycle_stage = 'active' and name != 'Default' "
                               "order by experiment_id").fetchall()
    except sqlite3.Error:
        return {}
    return {name: str(i) for name, i in rows}


def child_kind(db: str | Path, experiment_id: str) -> str:
    """The ``layertune.kind`` of an experiment's nested runs: ``baseline`` (each depth) in a
    baseline's experiment, else ``trial``; read without MLflow."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            row = con.execute("select value from experiment_tags where experiment_id = ? and "
                              "key = 'layertune.kind'", (experiment_id,)).fetchone()
    except sqlite3.Error:
        row = None
    return "baseline" if row and row[0] == "baseline-group" else "trial"


def runs_page(server: str, experiment_id: str, kind: str = "trial") -> str:
    """The MLflow UI page of a sweep's trial runs (``kind``: or a baseline's depths): the
    training view (not the GenAI overview MLflow 3 opens by default), those runs only, best
    validation accuracy first."""
    query = ("workflowType=machine_learning&orderByKey=metrics.%60val_accuracy%60"
             f"&orderByAsc=false&searchFilter=tags.%60layertune.kind%60%20%3D%20%27{kind}%27")
    return f"{server}/#/experiments/{experiment_id}/runs?{query}"


def server_command(uri: str, port: int) -> list[str]:
    """``mlflow server`` over one database, bound to 127.0.0.1 (artifacts: file locations)."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
