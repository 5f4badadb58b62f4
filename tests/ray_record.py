"""Ray's own record of a sweep, as the tests read it from the sweep folder or a bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs

from layertune.sweep.storage import SweepStorage


def ray_reports(where: Path | SweepStorage) -> dict[str, list[dict]]:
    """Trial id -> the reports in its ``result.json`` (empty for a trial that reported none).

    ``where``: a local sweep folder, or the sweep's object storage. Ray writes these files on
    the driver and copies them to the sweep's storage with its experiment state, about once a
    second; a copy may end in a partial line, which is left out.
    """
    storage = where if isinstance(where, SweepStorage) else SweepStorage.at(where)
    listing = storage.fs.get_file_info(pafs.FileSelector(storage.path("tune"),
                                                         allow_not_found=True))
    out = {}
    for trial in sorted(f.base_name for f in listing if f.type == pafs.FileType.Directory
                        and f.base_name.startswith("trial_")):
        try:
            text = storage.read_text("tune", trial, "result.json")
        except (FileNotFoundError, OSError):
            text = ""
        rows = []
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
        out[trial.removeprefix("trial_")] = rows
    return out
