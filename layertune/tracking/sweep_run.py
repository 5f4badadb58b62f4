"""The sweep's parent run: made on the first start, reopened on every resume.

One MLflow experiment per sweep, named after it, holds one parent run (tag ``KIND=sweep``).
Made: the settings as params (objectives, searched keys, the plan, command, versions, git
commit), the trial and space files and the resolved trial config under ``config/``. As trials
end: the front's figures at step = trials ended so far. At the end: the front under
``pareto/``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..front import hypervolume
from .artifacts import write_front
from .environment import environment
from .rows import KIND, PARENT, SWEEP, TAG_MAX, group_trials, log_params, reference_point
from .uri import is_server, open_client

_RESUMES = "layertune.resumes"  # tag: how often the sweep was resumed
# MLflow 3's UI opens an experiment of this kind on its training runs (the runs table with
# their metrics), not on the GenAI overview of traces it shows for experiments of no kind.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
DESCRIPTION = "mlflow.note.content"  # a run's description in the UI (markdown)
_TABLE = "pareto/trials_table.json"


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
                # a database keeps no artifacts: they go to the sweep folder (a server has its own)
                location = None if is_server(s.uri) else (s.folder / "mlflow-artifacts").as_uri()
                self.experiment_id = client.create_experiment(
                    s.name, artifact_location=location, tags={KIND: "sweep", **EXPERIMENT_KIND})
            elif exp.lifecycle_stage == "deleted":
                raise ConfigError(f"--name {s.name}: its MLflow experiment in {s.uri} is "
                                  "deleted (restore it in the MLflow UI, or use another --name)")
            else:
                self.experiment_id = exp.experiment_id
                for key, value in EXPERIMENT_KIND.items():  # sweeps recorded before it was set
                    if exp.tags.get(key) != value:
                        client.set_experiment_tag(exp.experiment_id, key, value)
        except MlflowException as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"--tracking-uri {s.uri}: {first}") from None
        self.client = client

    def earlier(self) -> Any | None:
        """The parent run of an earlier start of this sweep (the latest), or None."""
        parents = self._search(f"tags.`{KIND}` = 'sweep'")
        return max(parents, key=lambda r: r.info.start_time or 0) if parents else None

    def create(self) -> None:
        """A new parent run with the settings, the environment and the config files."""
        s, c = self.settings, self.client
        env = environment()
        tags = {KIND: "sweep", SWEEP: s.name, "layertune.command": s.command[:TAG_MAX],
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
            c.log_dict(self.parent_id, s.trial_config, "config/trial.resolved.json")

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
        ref = [parent.data.params.get(f"hv_reference.{m}") for m, _ in s.objectives]
        self.reference = [float(r) for r in ref] if all(ref) else None

    def trial_runs(self) -> list:
        """The runs of this sweep's trials (its children)."""
        return self._search(f"tags.`{PARENT}` = '{self.parent_id}'")

    def set_reference(self, first: dict) -> None:
        """Fix the hypervolume reference from the sweep's first report (later ones: no-op)."""
        if self.reference is not None:
            return
        from mlflow.entities import Param

        s = self.settings
        self.reference = reference_point(s.objectives, first, s.chance)
        self.client.log_batch(self.parent_id, params=[
            Param(f"hv_reference.{m}", repr(r)) for (m, _), r in
            zip(s.objectives, self.reference, strict=True)])

    def log_progress(self, rows: Sequence[dict]) -> None:
        """The front's figures over the ended trials ``rows``, at step = how many they are."""
        objectives = self.settings.objectives
        groups = group_trials(rows, objectives)
        hv = hypervolume(groups["front"], objectives, self.reference) if self.reference else 0.0
        self._log_metrics({"hypervolume": hv, "front_size": len(groups["front"]),
                           "trials_finished": len(groups["front"]) + len(groups["finished"]),
                           "trials_stopped": len(groups["stopped"]),
                           "trials_failed": len(groups["failed"])}, step=len(rows))

    def log_front(self, rows: Sequence[dict]) -> None:
        """The front of the ended trials ``rows`` under ``pareto/``, replacing an earlier one."""
        s = self.settings
        with tempfile.TemporaryDirectory(prefix="layertune-front-") as tmp:
            table = write_front(rows, s.objectives, s.parameters, s.name, Path(tmp))
            self.client.log_artifacts(self.parent_id, tmp, "pareto")
        # log_table appends to an existing table: a resumed sweep deletes the old one first
        if _TABLE in [f.path for f in self.client.list_artifacts(self.parent_id, "pareto")]:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            uri = self.client.get_run(self.parent_id).info.artifact_uri
            get_artifact_repository(uri).delete_artifacts(_TABLE)
        self.client.log_table(self.parent_id, data=table, artifact_file=_TABLE)

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


def _description(s: SweepSettings) -> str:
    """The parent run's description: what the sweep searched and where its front is."""
    objectives = ", ".join(f"{m} ({d})" for m, d in s.objectives)
    return (f"Sweep **{s.name}** over {', '.join(f'`{p}`' for p in s.parameters)}; "
            f"objectives {objectives}. Each trial is a nested run below this one.\n\n"
            "The Pareto front, once the sweep ends, is in this run's artifacts: "
            "`pareto/front.html` (interactive), "
            "`pareto/front.png`, `pareto/front.csv` and `pareto/trials.csv` (every trial), "
            "and the `pareto/trials_table.json` table for the Evaluation view. Read back with "
            f"`layertune front {s.name}`.")
