"""A trial run inside Ray, by a Tune trainable or a Ray Train worker: ``run_trial`` from Ray's
last checkpoint when Ray retries it, the compact network put into the last checkpoint (the
driver's MLflow record copies it from there), and a diverged loss made final: Ray retries every
error from the last checkpoint, which is right for a lost worker or node and pointless for a loss
that went NaN, so the first failure leaves a file that makes every retry fail at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrialConfig
from .train import Report, Trial, TrialDiverged, TrialResult, run_trial


def run_in_ray(config: TrialConfig, report: Report, checkpoint: Any, *, save: bool = True,
               export: bool = False, diverged: Path | None = None,
               trial: Trial | None = None) -> TrialResult:
    """``run_trial`` of ``config``, from ``checkpoint`` (Ray's, or None); ``save``: report a
    checkpoint each epoch; ``export``: the compact network in the last one (``save_bundle``);
    ``diverged``: the file that marks a diverged loss."""
    if diverged is not None and diverged.exists():
        raise TrialDiverged(diverged.read_text())

    def bundle(model: Any, keep: list[bool], folder: str) -> None:
        from .export import save_bundle

        save_bundle(model, keep, config.model_dump(mode="json"), folder)

    options = {"checkpoint": save, "last_checkpoint": bundle if export else None, "trial": trial}
    try:
        if checkpoint is None:
            return run_trial(config, report, **options)
        with checkpoint.as_directory() as folder:
            return run_trial(config, report, resume_from=folder, **options)
    except TrialDiverged as err:
        if diverged is not None:
            diverged.write_text(str(err))
        raise
