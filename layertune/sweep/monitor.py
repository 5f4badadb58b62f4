"""The live table of a sweep: one row per trial, kept up to date from Tune's callbacks."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ray import tune

from ..contract import ERROR, STOP_REASON, STOPPED_BY
from ..front import format_table

# A row's status: the live table's own words (benchmarks read them back from SweepResult.trials).
PENDING = "pending"
RUNNING = "running"
DONE = "done"  # finished all its epochs
STOPPED = "stopped"  # stopped early by the scheduler (its row says by what: STOPPED_BY)
ERRORED = "error"  # raised
ENDED = (DONE, STOPPED, ERRORED)


def clock(seconds: float) -> str:
    """``1h02m03s``, or ``2m03s`` under an hour."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class SweepMonitor(tune.Callback):
    """Keeps one row per trial and prints the live table.

    On a terminal the table is redrawn in place every ``interval`` seconds; otherwise (a log
    file, CI) one line is printed per trial that ends and the whole table every ``interval``.
    """

    def __init__(self, total: int, name: str, live: bool = True, interval: float | None = None):
        self.total = total
        self.name = name
        self.live = live
        self.interval = interval
        self.rows: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[float, str, int]] = []  # (seconds, trial, epoch) per result
        self.start = time.monotonic()
        self._printed_at = 0.0
        self._drawn = 0
        self._dirty = False

    # Ray pickles its run config (this callback included) into tuner.pkl: keep that simple.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_drawn": 0}

    def setup(self, **info) -> None:
        self.start = self._printed_at = time.monotonic()

    def _row(self, trial: Any) -> dict[str, Any]:
        row = self.rows.get(trial.trial_id)
        if row is None:
            row = {"trial": trial.trial_id, "status": PENDING, "epoch": 0,
                   "config": dict(trial.config), "started_s": time.monotonic() - self.start}
            self.rows[trial.trial_id] = row
        return row

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._row(trial)["status"] = RUNNING
        self._dirty = True

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info) -> None:
        row = self._row(trial)
        row["status"] = RUNNING
        row.update({k: v for k, v in result.items()
                    if isinstance(v, int | float | str) and k != "config"})
        self.events.append((time.monotonic() - self.start, trial.trial_id,
                            int(result.get("epoch", 0))))
        self._dirty = True

    def _ended(self, trial: Any, raised: bool) -> None:
        row = self._row(trial)
        last = trial.last_result or {}
        row.update({k: v for k, v in last.items() if isinstance(v, int | float | str)})
        row["ended_s"] = time.monotonic() - self.start
        if raised:
            row["status"] = ERRORED
            row[STOPPED_BY] = ERROR
            row["error_file"] = str(Path(trial.local_path or "", "error.txt"))
        elif last.get(STOPPED_BY):
            row["status"] = STOPPED
        else:
            row["status"] = DONE
        self._dirty = True
        if self.live and not sys.stdout.isatty():
            self._print_line(row)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._ended(trial, raised=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._ended(trial, raised=True)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        tty = sys.stdout.isatty()
        interval = self.interval if self.interval is not None else (2.0 if tty else 30.0)
        if self.live and self._dirty and now - self._printed_at >= interval:
            self.draw()

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.live and sys.stdout.isatty():
            self.draw()

    # -- text ------------------------------------------------------------------------------

    def progress(self) -> str:
        rows = self.rows.values()
        ended = [r for r in rows if r["status"] in ENDED]
        stopped = sum(r["status"] == STOPPED for r in rows)
        failed = sum(r["status"] == ERRORED for r in rows)
        running = sum(r["status"] == RUNNING for r in rows)
        return (f"sweep {self.name}: {len(ended)}/{self.total} trials ended ({stopped} stopped "
                f"early, {failed} failed), {running} running, elapsed "
                f"{clock(time.monotonic() - self.start)}")

    def table(self) -> str:
        rows = []
        for r in self.rows.values():
            status = r["status"]
            if status == STOPPED:
                status = f"{STOPPED}: {r.get(STOPPED_BY, '?')}"
            active = r.get("active_layers")
            rows.append({
                "trial": r["trial"], "status": status, "epoch": r.get("epoch", 0),
                "val_acc": r.get("val_accuracy"),
                "active": f"{active}/{r.get('total_layers', '?')}" if active is not None else "-",
                "undecided": r.get("undecided_layers"),
            })
        cols = ["trial", "status", "epoch", "val_acc", "active", "undecided"]
        return format_table(rows, cols)

    def draw(self) -> None:
        text = self.progress() + "\n" + self.table()
        out = sys.stdout
        if out.isatty() and self._drawn:
            out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the old table's first line
        out.write(text + "\n")
        out.flush()
        self._drawn = text.count("\n") + 1
        self._printed_at = time.monotonic()
        self._dirty = False

    def _print_line(self, r: dict) -> None:
        why = f" by {r.get(STOPPED_BY)} ({r.get(STOP_REASON, '')})" if r["status"] == STOPPED \
            else ""
        acc = r.get("val_accuracy")
        acc_text = f"{acc:.4f}" if isinstance(acc, float) else "-"
        print(f"[{clock(r['ended_s'])}] trial {r['trial']} {r['status']}{why} at epoch "
              f"{r.get('epoch', 0)}: val_accuracy {acc_text}, active "
              f"{r.get('active_layers', '-')}/{r.get('total_layers', '?')}", flush=True)
