"""The sweep's parent run: made on the first start, reopened on every resume.

One MLflow experiment per sweep, named after it, holds one parent run (tag ``KIND=sweep``);
its tags make MLflow's UI open it on the trial runs, with the objectives as columns (``.view``).
Made: the settings as params (objectives, searched keys, the plan, command, versions, git
commit), the trial and space files and the resolved trial config under ``config/``. As trials
end: the front's figures at step = trials ended so far. At the end: the front under
``pareto/``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..comparison import Versus, find_baseline, versus
from ..config import ConfigError, first_line
from ..front import hypervolume
from .artifacts import write_front
from .environment import environment
from .rows import (
    KIND,
    PARENT,
    SWEEP,
    SWEEP_KIND,
    TAG_MAX,
    TRIAL_KIND,
    group_trials,
    log_params,
    reference_point,
)
from .uri import is_server, open_client
from .view import VIEW_TAG, same_view, trials_view

_RESUMES = "layertune.resumes"  # tag: how often the sweep was resumed
# MLflow 3's UI opens an experiment of this kind on its training runs (the runs table with
# their metrics), not on the GenAI overview of traces it shows for experiments of no kind.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
DESCRIPTION = "mlflow.note.content"  # a run's description in the UI (markdown)
_TABLE = "pareto/trials_table.json"
TRIAL_CONFIG = "config/trial.resolved.json"  # the resolved trial config (a baseline's key)
BASELINE_TAG = "layertune.baseline"  # the baseline the front artifacts show (Baseline.stamp)


@dataclass
class SweepSettings:
    """What a sweep's record is made from: all that a pickled ``SweepRecorder`` keeps."""

    uri: str
    name: str
    folder: Path
    objectives: list[tuple[str, str]]
    parameters: list[str]
    chance: float  # chance accuracy: the hypervolume reference of val_accuracy
    files: list[Path]  # logged under config/
    trial_config: dict
    params: dict[str, Any]  # the plan, logged as params
    command: str
    kind: str = SWEEP_KIND  # the parent run's KIND tag: a sweep, or a baseline's group
    trial_kind: str = TRIAL_KIND  # its children's
    reference: list[float] | None = None  # the hypervolume reference, if known at the start
    artifacts: str | None = None  # where a database's artifacts go (default: folder)


class SweepRun:
    """The experiment and the parent run of one sweep.

    ``prepare()`` opens the experiment; then either ``create()`` or, when ``earlier()`` finds
    the run of a previous start, ``reopen(run)``. ``reference`` (the hypervolume reference
    point) is fixed by the sweep's first report and kept in params ``hv_reference.METRIC``.
    """

    def __init__(self, settings: SweepSettings) -> None:
        self.settings = settings
        self.client: Any = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.reference: list[float] | None = None

    def prepare(self) -> None:
        """Create (or find) the database and the experiment; raises ConfigError if it can't."""
        if self.client is not None:
            return
        from mlflow.exceptions import MlflowException

        s = self.settings
        client = open_client(s.uri, create=True)
        try:
            exp = client.get_experiment_by_name(s.name)
            if exp is None:
                # a database keeps no artifacts: they go to the sweep folder, or with object
                # storage to the bucket (a server has its own)
                location = None if is_server(s.uri) else \
                    s.artifacts or (s.folder / "mlflow-artifacts").as_uri()
                self.experiment_id = client.create_experiment(
                    s.name, artifact_location=location,
                    tags={KIND: s.kind, **EXPERIMENT_KIND, **self._view()})
            elif exp.lifecycle_stage == "deleted":
                raise ConfigError(f"--name {s.name}: its MLflow experiment in {s.uri} is "
                                  "deleted (restore it in the MLflow UI, or use another --name)")
            else:
                self.experiment_id = exp.experiment_id
                for key, value in EXPERIMENT_KIND.items():  # sweeps recorded before it was set
                    if exp.tags.get(key) != value:
                        client.set_experiment_tag(exp.experiment_id, key, value)
                for key, value in self._view().items():  # or before the view
                    if not same_view(exp.tags.get(key), value):
                        client.set_experiment_tag(exp.experiment_id, key, value)
        except MlflowException as err:
            raise ConfigError(f"--tracking-uri {s.uri}: {first_line(err)}") from None
        self.client = client

    def _view(self) -> dict[str, str]:
        """The experiment tag of the runs table's saved view that ``layertune ui`` opens
        (``.view``); none without objectives."""
        s = self.settings
        return {VIEW_TAG: trials_view(s.objectives, s.parameters, s.trial_kind)} \
            if s.objectives else {}

    def earlier(self) -> Any | None:
        """The parent run of an earlier start of this sweep (the latest), or None."""
        parents = self._search(f"tags.`{KIND}` = '{self.settings.kind}'")
        return max(parents, key=lambda r: r.info.start_time or 0) if parents else None

    def delete_earlier(self) -> int:
        """Delete (MLflow's soft delete) the parent runs of earlier starts and their children:
        a baseline trained again replaces its record. Returns how many runs."""
        parents = self._search(f"tags.`{KIND}` = '{self.settings.kind}'")
        runs = [r for p in parents for r in self._search(f"tags.`{PARENT}` = '{p.info.run_id}'")]
        for run in runs + parents:
            self.client.delete_run(run.info.run_id)
        return len(runs) + len(parents)

    def create(self) -> None:
        """A new parent run with the settings, the environment and the config files."""
        s, c = self.settings, self.client
        env = environment()
        tags = {KIND: s.kind, SWEEP: s.name, "layertune.command": s.command[:TAG_MAX],
                DESCRIPTION: _description(s)}
        if env.get("git_commit"):
            tags["mlflow.source.git.commit"] = env["git_commit"]
        self.parent_id = c.create_run(self.experiment_id, run_name=s.name, tags=tags).info.run_id
        log_params(c, self.parent_id, {
            "objectives": ",".join(f"{m}:{d}" for m, d in s.objectives),
            "parameters": ",".join(s.parameters), "command": s.command, **s.params, **env})
        for f in s.files:
            c.log_artifact(self.parent_id, str(f), "config")
        if s.trial_config:
            c.log_dict(self.parent_id, s.trial_config, TRIAL_CONFIG)
        if s.reference is not None:
            self._log_reference(s.reference)

    def reopen(self, parent: Any) -> None:
        """The earlier parent run RUNNING again; the resume counted (tag ``layertune.resumes``)
        with its command and plan (tag ``layertune.resume.N``); the reference read back."""
        from mlflow.entities import RunTag

        s, c = self.settings, self.client
        self.parent_id = parent.info.run_id
        resumes = int(parent.data.tags.get(_RESUMES, "0")) + 1
        c.update_run(self.parent_id, status="RUNNING")
        c.log_batch(self.parent_id, tags=[
            RunTag(_RESUMES, str(resumes)),
            RunTag(f"layertune.resume.{resumes}", json.dumps(
                {"command": s.command, **s.params}, default=str)[:TAG_MAX])])
        self.reference = _reference(parent, s.objectives)

    def attach(self, parent: Any) -> None:
        """The parent run of an ended sweep, to log its front again (``layertune front``, once
        a baseline exists); its status is left as it is."""
        self.prepare()
        self.parent_id = parent.info.run_id
        self.reference = _reference(parent, self.settings.objectives)

    def trial_runs(self) -> list:
        """The runs of this sweep's trials (its children)."""
        return self._search(f"tags.`{PARENT}` = '{self.parent_id}'")

    def set_reference(self, first: dict) -> None:
        """Fix the hypervolume reference from the sweep's first report (later ones: no-op)."""
        if self.reference is None:
            s = self.settings
            self._log_reference(reference_point(s.objectives, first, s.chance))

    def _log_reference(self, reference: list[float]) -> None:
        from mlflow.entities import Param

        self.reference = reference
        self.client.log_batch(self.parent_id, params=[
            Param(f"hv_reference.{m}", repr(r)) for (m, _), r in
            zip(self.settings.objectives, reference, strict=True)])

    def log_progress(self, rows: Sequence[dict]) -> None:
        """The front's figures over the ended trials ``rows``, at step = how many they are."""
        objectives = self.settings.objectives
        groups = group_trials(rows, objectives)
        hv = hypervolume(groups["front"], objectives, self.reference) if self.reference else 0.0
        self._log_metrics({"hypervolume": hv, "front_size": len(groups["front"]),
                           "trials_finished": len(groups["front"]) + len(groups["finished"]),
                           "trials_stopped": len(groups["stopped"]),
                           "trials_failed": len(groups["failed"])}, step=len(rows))

    def baseline(self, rows: Sequence[dict]) -> Versus | None:
        """The sweep's front against its from-scratch baseline, if one is beside its folder
        (``layertune.comparison``); None for a baseline's own group, or with none found."""
        s = self.settings
        if s.kind != SWEEP_KIND or not s.trial_config or self.reference is None:
            return None
        found = find_baseline(s.folder, s.trial_config)
        if found is None:
            return None
        return versus(group_trials(rows, s.objectives)["front"], found, s.objectives,
                      self.reference)

    def log_front(self, rows: Sequence[dict]) -> Versus | None:
        """The front of the ended trials ``rows`` under ``pareto/``, replacing an earlier one,
        beside the sweep's baseline when it has one (tag ``layertune.baseline``: which one;
        metrics ``baseline_hypervolume`` and ``front_dominated_by_baseline``)."""
        s = self.settings
        against = self.baseline(rows)
        with tempfile.TemporaryDirectory(prefix="layertune-front-") as tmp:
            table = write_front(rows, s.objectives, s.parameters, s.name, Path(tmp), against)
            self.client.log_artifacts(self.parent_id, tmp, "pareto")
        if against is not None:
            self.client.set_tag(self.parent_id, BASELINE_TAG, against.baseline.stamp[:TAG_MAX])
            self._log_metrics({"baseline_hypervolume": against.baseline_hypervolume,
                               "front_dominated_by_baseline": sum(against.dominated)},
                              step=len(rows))
        # log_table appends to an existing table: a resumed sweep deletes the old one first
        if _TABLE in [f.path for f in self.client.list_artifacts(self.parent_id, "pareto")]:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            uri = self.client.get_run(self.parent_id).info.artifact_uri
            get_artifact_repository(uri).delete_artifacts(_TABLE)
        self.client.log_table(self.parent_id, data=table, artifact_file=_TABLE)
        return against

    def log_summary(self, values: dict[str, float]) -> None:
        """Extra numbers (e.g. the sweep's wall time) at step 0; not finite ones are left out."""
        self._log_metrics({k: v for k, v in values.items()
                           if isinstance(v, int | float) and math.isfinite(v)}, step=0)

    def end(self, status: str) -> None:
        """The parent run terminated with MLflow ``status`` (FINISHED, KILLED)."""
        self.client.set_terminated(self.parent_id, status)

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[
            Metric(k, float(v), stamp, step) for k, v in values.items()])

    def _search(self, query: str) -> list:
        """Every run of the experiment that matches ``query`` (all pages)."""
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=query,
                                           max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out


def _reference(parent: Any, objectives: Sequence[tuple[str, str]]) -> list[float] | None:
    """The hypervolume reference a parent run keeps in params ``hv_reference.METRIC``."""
    ref = [parent.data.params.get(f"hv_reference.{m}") for m, _ in objectives]
    return [float(r) for r in ref] if all(ref) else None


def _description(s: SweepSettings) -> str:
    """The parent run's description: what the sweep searched and where its front is."""
    if s.kind != SWEEP_KIND:
        return (f"From-scratch baseline **{s.name}**: every depth of the grid trained with its "
                "gates fixed, for the trial's epochs; each depth is a nested run (tag "
                f"`layertune.kind = {s.trial_kind}`, param `sections`). Its front is in this "
                "run's artifacts (`pareto/front.html`, `pareto/front.png`, `pareto/front.csv`)"
                f" and in `{s.folder / 'baseline.json'}`; sweeps of the same trial config "
                "beside it show it with their front (`layertune front SWEEP`).")
    objectives = ", ".join(f"{m} ({d})" for m, d in s.objectives)
    return (f"Sweep **{s.name}** over {', '.join(f'`{p}`' for p in s.parameters)}; "
            f"objectives {objectives}. Each trial is a nested run below this one.\n\n"
            "The Pareto front, once the sweep ends, is in this run's artifacts: "
            "`pareto/front.html` (interactive), "
            "`pareto/front.png`, `pareto/front.csv` and `pareto/trials.csv` (every trial), "
            "and the `pareto/trials_table.json` table for the Evaluation view. Read back with "
            f"`layertune front {s.name}`.")


def front_versus_baseline(uri: str, parent: Any, folder: Path,
                          rows: Sequence[dict]) -> tuple[Versus | None, bool]:
    """An ended sweep's front against the baseline beside ``folder`` (``layertune front``).

    When the front artifacts of the sweep run ``parent`` do not show the baseline found (it was
    trained after the sweep ended, or again), they are logged again with it. Returns the
    comparison (None: no baseline of the sweep's trial config) and whether they were.
    """
    if parent.data.tags.get(KIND) != SWEEP_KIND:  # a baseline's own group
        return None, False
    params = parent.data.params
    settings = SweepSettings(
        uri=uri, name=parent.data.tags.get(SWEEP, parent.info.run_name), folder=folder,
        objectives=[tuple(o.split(":", 1)) for o in params.get("objectives", "").split(",")
                    if o],
        parameters=[p for p in params.get("parameters", "").split(",") if p], chance=0.0,
        files=[], trial_config={}, params={}, command="")
    run = SweepRun(settings)
    run.attach(parent)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    with tempfile.TemporaryDirectory(prefix="layertune-config-") as tmp:
        try:
            path = run.client.download_artifacts(parent.info.run_id, TRIAL_CONFIG, tmp)
            settings.trial_config = json.loads(Path(path).read_text())
        except Exception:  # a sweep recorded without its resolved config: no baseline match
            return None, False
    against = run.baseline(rows)
    if against is None or parent.info.status == "RUNNING" or \
            parent.data.tags.get(BASELINE_TAG) == against.baseline.stamp[:TAG_MAX]:
        return against, False
    run.log_front(rows)
    return against, True
