"""The runs-table view a sweep's MLflow experiment opens on: a saved view of MLflow 3's UI.

MLflow's UI keeps the runs table's columns, sort and filter in the browser's localStorage
(``MLflowLocalStorage-1.1-ExperimentPage-["ID"]-ReactComponentState``) and shows no metric
column until someone picks one. It also keeps *saved views* on the server: an experiment tag
``mlflow.sharedViewState.VIEW_ID`` whose value is ``{"name", "createdAt", "updatedAt",
"state"}``, ``state`` the JSON of the page's search facets (``searchFilter``, ``orderByKey``,
``orderByAsc``...) and UI state (``selectedColumns``...). The page
``#/experiments/ID/runs?viewStateShareKey=VIEW_ID`` opens that view in any browser, fresh
profile included, and lists it under the runs table's "Views" (MLflow's
``useSharedExperimentViewState`` and ``savedViewEnvelope``, 3.x). The view shows the trial runs
only, best first objective first, with the objectives and the searched parameters as columns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

VIEW_ID = "layertune-trials"  # the saved view's id: the page's viewStateShareKey
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"  # the experiment tag that holds it
# of the columns MLflow shows when nobody chose any (getDefaultSelectedColumns: Source, Models,
# Dataset), the one a trial run fills: Source and Dataset would be empty, and push the
# objectives out of a narrow window
_DEFAULT_COLUMNS = ["attributes.`Models`"]


def column(kind: str, name: str) -> str:
    """A runs-table column's key in MLflow's UI state: ``metrics.`val_accuracy```."""
    return f"{kind}.`{name}`"


def trials_view(objectives: Sequence[tuple[str, str]], parameters: Sequence[str],
                child_kind: str, stamp_ms: int | None = None) -> str:
    """The ``VIEW_TAG`` value: the runs tagged ``layertune.kind = child_kind``, sorted by the
    first objective (``max``: best first), its objectives and ``parameters`` as columns."""
    metric, direction = objectives[0]
    state = {
        "searchFilter": f"tags.`layertune.kind` = '{child_kind}'",
        "orderByKey": column("metrics", metric),
        "orderByAsc": direction != "max",
        "selectedColumns": [*_DEFAULT_COLUMNS, *(column("metrics", m) for m, _ in objectives),
                            *(column("params", p) for p in parameters)],
    }
    stamp = int(time.time() * 1000) if stamp_ms is None else stamp_ms
    what = "depths" if child_kind == "baseline" else "trials"
    return json.dumps({"name": f"layertune: {what} by {metric}", "createdAt": stamp,
                       "updatedAt": stamp, "state": json.dumps(state)})


def same_view(a: str | None, b: str) -> bool:
    """Whether two ``VIEW_TAG`` values show the same (their stamps aside)."""
    try:
        return a is not None and json.loads(a)["state"] == json.loads(b)["state"]
    except (ValueError, KeyError, TypeError):
        return False


def view_page(server: str, experiment_id: str) -> str:
    """The MLflow UI page of the saved view: the training view (not the GenAI overview),
    ``workflowType`` being no search facet, which would make MLflow skip the view."""
    return (f"{server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_ID}")
