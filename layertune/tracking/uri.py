"""Where a sweep's MLflow record lives, and the client that opens it.

The record of sweep NAME defaults to ``sqlite:///SWEEP_FOLDER/mlflow.db``; ``--tracking-uri``
may name an MLflow server or another database instead, never a file store (MLflow 3 has none).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..config import ConfigError

_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


def sweep_folder(name: str, storage: str | Path | None = None) -> Path:
    """The sweep folder: ``storage`` or ``./layertune-runs/NAME`` (as ``layertune sweep``)."""
    if storage is not None and "://" in str(storage):
        raise ConfigError(f"--storage {storage}: give the sweep's local working folder "
                          "(its --work-dir, which holds mlflow.db), not its object storage")
    return (Path(storage) if storage else Path("layertune-runs") / name).expanduser().resolve()


def default_uri(folder: str | Path) -> str:
    """The record of the sweep in ``folder`` when no ``--tracking-uri`` is given."""
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """An MLflow server (it keeps the artifacts itself) rather than a database."""
    return urlparse(uri).scheme.lower() in ("http", "https")


def resolve_uri(uri: str | None, folder: str | Path) -> str | None:
    """``--tracking-uri`` made absolute; None when tracking is off (``none``).

    Default: ``sqlite:///FOLDER/mlflow.db``. Allowed: ``none``, an MLflow server
    (``http(s)://host:port``), ``sqlite:///FILE`` (a relative file is made absolute), a path
    ending in ``.db`` (an sqlite file), or a ``postgresql``/``mysql``/``mssql`` URI. MLflow 3
    refuses the ``./mlruns`` file store, so file paths are refused here.
    """
    if uri is None:
        return default_uri(folder)
    text = uri.strip()
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if text.lower() == "none":
        return None
    if scheme in ("http", "https") and parsed.netloc:
        return text.rstrip("/")
    if scheme == "sqlite" and text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return f"sqlite:///{Path(text[len('sqlite:///'):]).expanduser().resolve()}"
    if scheme.split("+")[0] in _DATABASES[1:] and parsed.netloc:
        return text
    if not scheme and text.endswith(".db"):
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    raise ConfigError(
        f"--tracking-uri {uri}: allowed: none (no tracking), http(s)://HOST:PORT (an MLflow "
        "server), sqlite:///FILE.db or FILE.db, postgresql://, mysql:// or mssql:// URIs "
        "(MLflow 3 has no file store)"
    )


def open_client(uri: str, *, create: bool = False) -> Any:
    """An ``MlflowClient`` for ``uri``; with ``create`` False an sqlite file must already exist.

    A server URI must answer ``/health`` (a dead server would otherwise cost minutes of MLflow
    retries); the error is one ``ConfigError`` line.
    """
    for name in ("mlflow.store.db.utils", "alembic", "mlflow.store.sql"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if uri.startswith("sqlite:///") and not create:
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ConfigError(f"--tracking-uri {uri}: no MLflow database at {path}")
    if is_server(uri):
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=10):
                pass
        except (OSError, ValueError) as err:
            raise ConfigError(f"--tracking-uri {uri}: no MLflow server answers ({err})") from None
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)
