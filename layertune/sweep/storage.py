"""Where a sweep's files live: a local folder, or object storage (``s3://``, ``gs://``).

With ``--storage s3://BUCKET/PREFIX`` Ray Tune writes the trials' checkpoints and its
experiment state there itself (its ``storage_path``), each file from the machine that makes it.
The driver keeps its own files (the Optuna study, the MLflow database, ``sweep.json``, the
front) in a local working folder and copies them beside Ray's, so that ``--resume`` on a fresh
driver machine needs nothing but the bucket. Everything goes through the pyarrow file system
Ray uses, with credentials and endpoint from the standard environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...; for GCS,
``GOOGLE_APPLICATION_CREDENTIALS``); nothing here writes a credential anywhere.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
from ray.tune import Callback

from ..config import ConfigError, first_line

REMOTE_SCHEMES = ("s3", "gs", "gcs")
# The driver's own files, copied beside Ray's on object storage (the record of what the sweep
# searched, its Optuna study, its MLflow database when that is the default sqlite file, the
# front). MLflow's artifacts go to the bucket directly (tracking/sweep_run.py).
DRIVER_FILES = ("sweep.json", "optuna.db", "mlflow.db", "front.json", "front.csv")


def is_remote(storage: str | Path | None) -> bool:
    """``storage`` names object storage (``s3://``, ``gs://``), not a local folder."""
    return isinstance(storage, str) and urlparse(storage).scheme.lower() in REMOTE_SCHEMES


@dataclass(frozen=True)
class SweepStorage:
    """A sweep's storage: what Ray's ``storage_path`` gets (``uri``), and the same place as a
    pyarrow file system (``fs``) and a path in it (``root``)."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @classmethod
    def at(cls, where: str | Path) -> SweepStorage:
        """The storage at a local folder or an object-storage URI, checked reachable (one
        ``ConfigError`` line naming ``--storage`` otherwise)."""
        if not is_remote(where):
            folder = str(Path(where).expanduser().resolve())
            return cls(folder, pafs.LocalFileSystem(), folder)
        uri = str(where).rstrip("/")
        try:
            fs, root = pafs.FileSystem.from_uri(uri)
            bucket = root.split("/", 1)[0]
            found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
        except (OSError, ValueError) as err:
            first = first_line(err)
            raise ConfigError(f"--storage {uri}: cannot reach it ({first}); credentials and "
                              "endpoint come from the standard environment variables") from None
        if not found or not root.strip("/"):
            raise ConfigError(f"--storage {uri}: no bucket {bucket!r} there (create it first; "
                              "use s3://BUCKET/PREFIX or gs://BUCKET/PREFIX)")
        return cls(uri, fs, root.rstrip("/"))

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    def path(self, *parts: str) -> str:
        """A path in ``fs`` under the root."""
        return "/".join([self.root, *parts])

    def join(self, *parts: str) -> str:
        """A location under the root as Ray takes it: a local path or a URI."""
        return "/".join([self.uri, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read().decode()

    def upload(self, folder: Path, names: tuple[str, ...] = DRIVER_FILES) -> None:
        """Copy the files ``names`` of the local ``folder`` that exist to the root. An sqlite
        file is copied from a consistent snapshot (sqlite's backup), never half-written."""
        for name in names:
            local = folder / name
            if not local.is_file():
                continue
            with tempfile.TemporaryDirectory() as tmp:
                source = _snapshot(local, Path(tmp)) if name.endswith(".db") else local
                pafs.copy_files(str(source), self.path(name),
                                source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)

    def download(self, folder: Path, names: tuple[str, ...] = DRIVER_FILES) -> list[str]:
        """Copy the files ``names`` found at the root into ``folder``; the names copied."""
        folder.mkdir(parents=True, exist_ok=True)
        copied = []
        for name in names:
            if self.exists(name):
                pafs.copy_files(self.path(name), str(folder / name), source_filesystem=self.fs,
                                destination_filesystem=pafs.LocalFileSystem())
                copied.append(name)
        return copied


def _snapshot(database: Path, tmp: Path) -> Path:
    copy = tmp / database.name
    with sqlite3.connect(database) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return copy


class DriverFilesSync(Callback):
    """Copies the driver's files to object storage whenever a trial starts or ends.

    Tune tells the searcher (so Optuna's database) before this callback hears of a trial's
    end, and saves its experiment state after both: a state the bucket holds never names an
    Optuna trial the bucket's copy of the study lacks.
    """

    def __init__(self, storage: SweepStorage, folder: Path) -> None:
        self.storage, self.folder = storage, folder

    def sync(self) -> None:
        # a short outage of the storage must not end the sweep: the next event copies again
        try:
            self.storage.upload(self.folder)
        except OSError as err:
            first = first_line(err)
            print(f"warning: copying the driver's files to {self.storage.uri} failed ({first}); "
                  "retried at the next trial event", file=sys.stderr, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.sync()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.sync()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.sync()

    def on_experiment_end(self, trials: list, **info) -> None:
        self.sync()
