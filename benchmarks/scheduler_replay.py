"""Scheduler replay: FIFO sweeps fed again, offline, through early-stopping rules.

A FIFO sweep (every trial runs all its epochs) holds each trial's whole history. Feeding those
histories to a scheduler, trials started in their original order on ``--slots`` slots and each
epoch taking the time it took, shows what that scheduler would have spent and kept, in seconds
instead of a sweep per setting. Training is seeded, so a stopped trial's epochs up to the stop are
the ones it would have run; only the interleaving of trials is modelled (from epoch times).

    .venv/bin/python benchmarks/sweep_efficiency.py --schedulers fifo   # the sweeps to replay
    .venv/bin/python benchmarks/scheduler_replay.py

Per rule and seed: trial-epochs as a share of FIFO's, the hypervolume of the finished trials'
front as a share of FIFO's (reference point of sweep_efficiency.py) and the number of distinct
depths from 1 to 7 on that front (what issue 11 asks of ``make demo``'s front: 5). One row
replays the shipped rule with the covering trials (the first, one per depth) started shallowest
first. Prints a Markdown table, writes ``benchmarks/out/scheduler_replay.json`` and its section
of docs/results.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from layertune.config import SettleConfig
from layertune.front import pareto_front
from layertune.scheduler import GateCollapseScheduler, RecordingASHA
from layertune.settle import settled
from layertune.space import CollapseSettings

try:
    from results_table import write_section
    from sweep_efficiency import REFERENCE, front_hv
except ImportError:  # imported as benchmarks.scheduler_replay
    from benchmarks.results_table import write_section
    from benchmarks.sweep_efficiency import REFERENCE, front_hv

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = [("val_accuracy", "max"), ("active_layers", "min")]
COVERED = "method.decide_sections"  # the covered parameter of search_spaces/cnn1d.yaml
SHIPPED = "gate-collapse, grace 4, margin 0.005 (cnn1d.yaml)"
History = tuple[str, list[dict]]
# settle_std and settle_epochs replayed with the shipped rule (docs/algorithm.md, "Settled trials")
SETTLED = ((0.003, 3), (0.005, 3), (0.005, 4))
NEVER = SettleConfig()  # every trial runs all its epochs


class AccuracyRungs(GateCollapseScheduler):
    """The rule with ASHA's cut on accuracy alone at the rungs (its first version)."""

    def judge(self, trial_id: str, result: dict) -> tuple[str, str] | None:
        if int(result.get(self._collapsed_attr, 0)) == 1:
            return super().judge(trial_id, result)
        rung = self._rung(int(result[self._time_attr]))
        if rung is None or trial_id in self._rungs.get(rung, {}):
            return None
        recorded = [acc for k, (acc, _) in self._rungs.get(rung, {}).items() if k != trial_id]
        if not recorded:
            return None
        cutoff = float(np.percentile(recorded, (1 - 1 / self.reduction_factor) * 100))
        return ("asha", "below the rung cutoff") if result[self._metric] < cutoff else None


class Oracle(FIFOScheduler):
    """Knows FIFO's front: runs its trials to the end and stops every other one after its
    first epoch. No rule that keeps the whole front spends less."""

    def __init__(self, keep: set[str]) -> None:
        super().__init__()
        self.keep = keep

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return TrialScheduler.CONTINUE if trial.trial_id in self.keep else TrialScheduler.STOP


def load(folder: Path) -> list[History]:
    """Each trial's reports, in the order the trials started."""
    trials = []
    for path in folder.glob("tune/trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            trials.append((rows[0]["timestamp"] - rows[0]["time_total_s"], rows[0]["trial_id"],
                           rows))
    return [(tid, rows) for _, tid, rows in sorted(trials)]


def replay(trials: list[History], scheduler: TrialScheduler, slots: int,
           settle: SettleConfig = NEVER) -> tuple[int, list]:
    """Trial-epochs spent and the last reports of the trials that were not stopped; with
    ``settle`` a trial ends at the report where it has settled (``layertune.settle``)."""
    queue, running, finished, spent, started = list(trials), [], [], 0, 0

    def start(now: float) -> None:
        nonlocal started
        tid, rows = queue.pop(0)
        started += 1
        trial = Trial("__fake", trial_id=tid, config=rows[0]["config"], stub=True)
        scheduler.on_trial_add(None, trial)
        heapq.heappush(running, (now + rows[0]["time_this_iter_s"], started, trial, rows, 0))

    while queue and len(running) < slots:
        start(0.0)
    while running:
        now, order, trial, rows, i = heapq.heappop(running)
        last = i == len(rows) - 1 or settled(rows[:i + 1], settle)
        spent += 1
        # a settled trial's last report reaches the scheduler like any other: it may stop it
        action = scheduler.on_trial_result(None, trial, rows[i] | {"done": i == len(rows) - 1})
        if last and action != TrialScheduler.STOP:
            finished.append(rows[i])
        if last or action == TrialScheduler.STOP:
            if queue:
                start(now)
        else:
            heapq.heappush(running, (now + rows[i + 1]["time_this_iter_s"], order, trial, rows,
                                     i + 1))
    return spent, finished


def rules(epochs: int) -> dict[str, Callable[[], TrialScheduler]]:
    asha = dict(time_attr="epoch", metric="val_accuracy", mode="max", max_t=epochs,
                reduction_factor=3)
    return {
        # search_spaces/cnn1d.yaml's own setting, then others: accuracy (near chance,
        # dominated) judged from the grace epoch on, dominance needing the margin's lead
        SHIPPED: lambda: GateCollapseScheduler(
            max_t=epochs, decide_by=4, grace_epochs=4, margin=0.005),
        "gate-collapse, grace 4, margin 0 (cnn1d.yaml before the seventh session)": lambda:
            GateCollapseScheduler(max_t=epochs, decide_by=4, grace_epochs=4, margin=0.0),
        "gate-collapse, grace 4, margin 0.01 (the default)": lambda: GateCollapseScheduler(
            max_t=epochs, decide_by=4, grace_epochs=4),
        "gate-collapse, grace 3, margin 0.005": lambda: GateCollapseScheduler(
            max_t=epochs, decide_by=4, grace_epochs=3, margin=0.005),
        "gate-collapse, grace 3, margin 0": lambda: GateCollapseScheduler(
            max_t=epochs, decide_by=4, grace_epochs=3, margin=0.0),
        "gate-collapse, grace 2, margin 0": lambda: GateCollapseScheduler(
            max_t=epochs, decide_by=4, grace_epochs=2, margin=0.0),
        "accuracy-only rungs, decide_by 4": lambda: AccuracyRungs(max_t=epochs, decide_by=4),
        "ASHA, grace 4": lambda: RecordingASHA(grace_period=4, **asha),
        "ASHA, grace 5": lambda: RecordingASHA(grace_period=5, **asha),
    }


def shallow_first(trials: list[History]) -> list[History]:
    """The sweep's covering trials (its first ones, each a new value of ``COVERED``) started
    shallowest first, the rest as they ran: what starting order does to an equal-epoch rule."""
    def covered(history: History) -> Any:
        return history[1][0]["config"].get(COVERED)

    seen: list = []
    for history in trials:
        if covered(history) is None or covered(history) in seen:
            break
        seen.append(covered(history))
    return sorted(trials[:len(seen)], key=covered) + trials[len(seen):]


def fewest_kept(rows: list[dict], share: float) -> set[str]:
    """The fewest trials of the FIFO front whose own front keeps ``share`` of its hypervolume
    (dropping, one at a time, the trial whose loss is smallest)."""
    keep = {rows[i]["trial_id"]: rows[i] for i in pareto_front(rows, OBJECTIVES)}
    full = front_hv(list(keep.values()), OBJECTIVES)
    while len(keep) > 1:
        hv, drop = max((front_hv([r for k, r in keep.items() if k != t], OBJECTIVES), t)
                       for t in keep)
        if hv < share * full:
            break
        del keep[drop]
    return set(keep)


def front_depths(rows: list[dict], low: int = 1, high: int = 7) -> int:
    """Distinct depths in ``low..high`` on the front of ``rows`` (goal 5's count for the demo)."""
    return len({int(rows[i]["active_layers"]) for i in pareto_front(rows, OBJECTIVES)
                if low <= rows[i]["active_layers"] <= high})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="*", type=Path, help="FIFO sweep folders (default: "
                   "benchmarks/out/sweep_efficiency/fifo-seed*)")
    p.add_argument("--slots", type=int, default=2, help="trials at a time (default 2)")
    p.add_argument("--no-docs", action="store_true", help="leave docs/results.md alone")
    args = p.parse_args(argv)
    folders = args.folders or sorted((ROOT / "benchmarks/out/sweep_efficiency").glob("fifo-*"))
    if not folders:
        raise SystemExit("no FIFO sweeps to replay: run benchmarks/sweep_efficiency.py first")
    runs: dict[str, list[dict[str, Any]]] = {}
    for folder in folders:
        trials = load(folder)
        epochs = max(len(rows) for _, rows in trials)
        fifo_spent, fifo_rows = replay(trials, FIFOScheduler(), args.slots)
        front = {fifo_rows[i]["trial_id"] for i in pareto_front(fifo_rows, OBJECTIVES)}
        enough = fewest_kept(fifo_rows, 0.98)
        made = rules(epochs)
        cases = {name: (make, trials, NEVER) for name, make in made.items()}
        cases |= {
            f"{SHIPPED}, trials settled at std {std:g} over {n} epochs end, no cooldown": (
                made[SHIPPED], trials, CollapseSettings(  # as a sweep hands it to its trials,
                    grace_epochs=4, margin=0.005, settle_std=std, settle_epochs=n,
                    settle_cooldown=0).settle())  # FIFO's histories hold no annealed epochs
            for std, n in SETTLED}
        cases |= {
            "the same as cnn1d.yaml, covering trials started shallowest first":
                (made[SHIPPED], shallow_first(trials), NEVER),
            "oracle (FIFO's front to the end, the rest 1 epoch)":
                (lambda front=front: Oracle(front), trials, NEVER),
            "oracle keeping 98 % of FIFO's hypervolume (fewest front trials, the rest 1 "
            "epoch)": (lambda keep=enough: Oracle(keep), trials, NEVER),
        }
        replays = {name: replay(order, make(), args.slots, settle)
                   for name, (make, order, settle) in cases.items()}
        replays["FIFO (depths on its front)"] = (fifo_spent, fifo_rows)  # replayed above
        for name, (spent, rows) in replays.items():
            runs.setdefault(name, []).append({
                "sweep": folder.name, "trial_epochs": spent, "of_fifo": spent / fifo_spent,
                "hv_of_fifo": front_hv(rows, OBJECTIVES) / front_hv(fifo_rows, OBJECTIVES),
                "front_depths_1_7": front_depths(rows)})
    lines = ["| rule | " + " | ".join(f"{f.name}: epochs / HV of FIFO / depths" for f in folders)
             + " | mean | worst HV |", "|---|" + "---|" * (len(folders) + 2)]
    for name, per in runs.items():
        cells = " | ".join(f"{r['of_fifo']:.0%} / {r['hv_of_fifo']:.1%} / "
                           f"{r['front_depths_1_7']}" for r in per)
        mean = (f"{statistics.fmean(r['of_fifo'] for r in per):.0%} / "
                f"{statistics.fmean(r['hv_of_fifo'] for r in per):.1%}")
        lines.append(f"| {name} | {cells} | {mean} | {min(r['hv_of_fifo'] for r in per):.1%} |")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "out" / "scheduler_replay.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"folders": [str(f) for f in folders], "slots": args.slots,
                               "reference": REFERENCE, "runs": runs}, indent=2))
    if not args.no_docs:
        write_section("scheduler_replay", (
            "## Scheduler replay: the FIFO sweeps through other rules\n\n"
            "`.venv/bin/python benchmarks/scheduler_replay.py` (after sweep_efficiency.py): each "
            f"FIFO sweep's histories fed again through a rule, {args.slots} trials at a time in "
            "their original order (except where a row says otherwise), epochs timed as they "
            "ran. Per sweep: trial-epochs and hypervolume of the finished trials' front, each "
            "as a share of FIFO's, and the distinct depths 1-7 on that front.\n\n" + text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
