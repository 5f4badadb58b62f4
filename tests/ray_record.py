"""Ray's own record of a sweep, as the tests read it from the sweep folder."""

from __future__ import annotations

import json
from pathlib import Path


def ray_reports(folder: Path) -> dict[str, list[dict]]:
    """Trial id -> the reports in its ``result.json`` (empty for a trial that reported none).

    Ray writes these files on the driver and copies them into the sweep folder with its
    experiment state, about once a second; a copy may end in a partial line, which is left out.
    """
    out = {}
    for trial in sorted((folder / "tune").glob("trial_*")):
        f = trial / "result.json"
        rows = []
        for line in (f.read_text().splitlines() if f.exists() else []):
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
        out[trial.name.removeprefix("trial_")] = rows
    return out
