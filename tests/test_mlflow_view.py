"""What the MLflow UI shows first for a sweep: its training runs, and a parent run that says
where the front is (a real MLflow database; no Ray needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from layertune.tracking.rows import KIND, PARENT
from layertune.tracking.sweep_run import DESCRIPTION, EXPERIMENT_KIND, SweepRun, SweepSettings
from layertune.tracking.ui import runs_page
from layertune.tracking.uri import default_uri, open_client
from layertune.tracking.view import VIEW_ID, VIEW_TAG


def _settings(folder: Path, name: str = "demo") -> SweepSettings:
    return SweepSettings(
        uri=default_uri(folder), name=name, folder=folder,
        objectives=[("val_accuracy", "max"), ("active_layers", "min")],
        parameters=["method.decide_tolerance"], chance=0.1, files=[], trial_config={},
        params={}, command="layertune sweep t.yaml")


def test_a_sweep_experiment_opens_on_its_training_runs(tmp_path: Path) -> None:
    run = SweepRun(_settings(tmp_path))
    run.prepare()
    run.create()
    client = open_client(default_uri(tmp_path))
    experiment = client.get_experiment_by_name("demo")
    for key, value in EXPERIMENT_KIND.items():
        assert experiment.tags[key] == value
    description = client.get_run(run.parent_id).data.tags[DESCRIPTION]
    assert "pareto/front.html" in description and "layertune front demo" in description
    assert "`method.decide_tolerance`" in description


def test_an_experiment_recorded_before_the_kind_existed_gets_it(tmp_path: Path) -> None:
    client = open_client(default_uri(tmp_path), create=True)
    client.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())
    db = tmp_path / "mlflow.db"
    experiment_id = client.get_experiment_by_name("old").experiment_id
    assert "viewStateShareKey" not in runs_page("http://h", experiment_id, db=db)  # no view yet
    run = SweepRun(_settings(tmp_path, "old"))
    run.prepare()
    tags = client.get_experiment_by_name("old").tags
    assert all(tags.get(k) == v for k, v in EXPERIMENT_KIND.items())
    assert VIEW_TAG in tags
    assert runs_page("http://h", experiment_id, db=db).endswith(f"viewStateShareKey={VIEW_ID}")


def test_the_saved_view_shows_the_trials_with_the_objectives_as_columns(tmp_path: Path) -> None:
    run = SweepRun(_settings(tmp_path))
    run.prepare()
    view = json.loads(open_client(default_uri(tmp_path)).get_experiment_by_name("demo")
                      .tags[VIEW_TAG])  # MLflow's saved-view envelope: name, createdAt, state
    assert view["name"] and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert {"metrics.`val_accuracy`", "metrics.`active_layers`",
            "params.`method.decide_tolerance`"} <= set(state["selectedColumns"])
    assert state["orderByKey"] == "metrics.`val_accuracy`" and state["orderByAsc"] is False
    assert state["searchFilter"] == "tags.`layertune.kind` = 'trial'"


# --- the page in a real browser -------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's headless Chromium, installed here when missing; skipped only where it can't be."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       capture_output=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("no chromium, and apt-get could not install it here (not root, or no apt)")
    return found


class _ColumnHeaders(HTMLParser):
    """The runs table's column headers in a page: ag-grid's ``col-id`` -> the header's text."""

    _VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
             "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, str] = {}
        self._open: tuple[str, list[str]] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._VOID:
            return
        if self._open is not None:
            self._depth += 1
        elif dict(attrs).get("role") == "columnheader" and dict(attrs).get("col-id"):
            self._open, self._depth = (str(dict(attrs)["col-id"]), []), 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._VOID or self._open is None:
            return
        self._depth -= 1
        if self._depth == 0:
            self.headers[self._open[0]] = " ".join("".join(self._open[1]).split())
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[1].append(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_layertune_ui_opens_on_the_trial_runs_in_a_browser(tmp_path: Path, chromium: str) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    run = SweepRun(_settings(folder))
    run.prepare()
    run.create()
    client = open_client(default_uri(folder))
    for i in range(3):  # trial runs as the recorder tags them
        child = client.create_run(run.experiment_id, run_name=f"trial-{i}",
                                  tags={PARENT: run.parent_id, KIND: "trial"}).info.run_id
        client.log_metric(child, "val_accuracy", 0.9 + i / 100)
        client.log_metric(child, "active_layers", 3 + i)
        client.set_terminated(child)
    port = _free_port()
    ui = subprocess.Popen([str(Path(sys.executable).parent / "layertune"), "ui", "demo",
                           "--storage", str(tmp_path), "--port", str(port)],
                          stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        page = next(line.split(": ", 1)[1].strip() for line in ui.stdout
                    if line.strip().startswith("demo: http"))
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server did not come up"
                time.sleep(1)
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
             "--virtual-time-budget=30000", "--dump-dom", page],  # a fresh profile each time
            capture_output=True, text=True, timeout=180).stdout
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style|svg).*?</\1>", "", dom,
                                                    flags=re.S)).split())
    assert "Run Name" in text  # the runs table, not the GenAI overview of traces
    assert "Detect Issues" not in text and "Token Usage" not in text
    assert all(f"trial-{i}" in text for i in range(3))
    assert text.index("trial-2") < text.index("trial-0")  # best val_accuracy first
    assert "Sort: val_accuracy" in text
    parser = _ColumnHeaders()
    parser.feed(dom)
    for metric in ("val_accuracy", "active_layers"):  # the objectives: columns on first load
        assert parser.headers.get(f"metrics.`{metric}`") == metric, parser.headers
