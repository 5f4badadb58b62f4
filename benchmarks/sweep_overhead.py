"""Sweep overhead: many trials that do almost nothing, on the embedded default.

One ``layertune sweep`` (the real path: plan, local Ray, Optuna in sqlite, gate-collapse
scheduler, MLflow record) of ``--samples`` trials, each one epoch of a 1-section MLP on 64
synthetic samples. Reports trials per minute, the scheduling overhead per trial (wall time times
concurrent slots, less the time trials spent in their own code, per trial), and the driver's
resident memory (peak so far, and now) when 50, 100 and 200 trials had ended: it must not grow
with the trial count beyond the results the driver keeps.

    .venv/bin/python benchmarks/sweep_overhead.py               # 200 trials
    .venv/bin/python benchmarks/sweep_overhead.py --samples 50  # quicker

Prints a Markdown table, writes ``benchmarks/out/sweep_overhead.json`` and its section of
docs/results.md. No timed asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

from layertune.sweep import plan_sweep, run_sweep

try:
    from results_table import write_section
except ImportError:  # imported as benchmarks.sweep_overhead
    from benchmarks.results_table import write_section

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"

TRIAL = """\
data: {name: synthetic, synthetic_shape: [8], synthetic_samples: 64, batch_size: 32,
       val_fraction: 0.25}
model: {name: mlp, depth: 1, width: 4}
epochs: 1
seed: 0
"""

SPACE = ROOT / "search_spaces" / "prior_weight.yaml"

MARKS = (50, 100, 200)


def memory_mb() -> tuple[float, float]:
    """(peak, current) resident set of this process, MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024)


class EndedTrials(threading.Thread):
    """Polls the Optuna study for ended trials and notes the driver's memory at each mark."""

    def __init__(self, db: Path, marks: tuple[int, ...]):
        super().__init__(daemon=True)
        self.db, self.marks, self.seen = db, list(marks), {}
        self.stop = threading.Event()

    def ended(self) -> int:
        if not self.db.exists():
            return 0
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as con:
            try:
                return con.execute("select count(*) from trials where state in "
                                   "('COMPLETE', 'PRUNED', 'FAIL')").fetchone()[0]
            except sqlite3.OperationalError:  # tables not there yet
                return 0

    def run(self) -> None:
        while not self.stop.is_set() and self.marks:
            n = self.ended()
            while self.marks and n >= self.marks[0]:
                peak, now = memory_mb()
                self.seen[self.marks.pop(0)] = {"peak_mb": round(peak, 1),
                                                "rss_mb": round(now, 1)}
            time.sleep(0.5)


def trial_seconds(folder: Path) -> list[float]:
    out = []
    for f in (folder / "tune").glob("trial_*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if lines:
            out.append(float(lines[-1].get("time_total_s", 0.0)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--scheduler", default="gate-collapse")
    p.add_argument("--out", default=str(OUT / "sweep_overhead"))
    args = p.parse_args(argv)
    folder = Path(args.out).resolve()
    shutil.rmtree(folder, ignore_errors=True)  # scratch
    folder.mkdir(parents=True)
    (folder / "trial.yaml").write_text(TRIAL)
    plan = plan_sweep(folder / "trial.yaml", SPACE, samples=args.samples,
                      name="overhead", storage=folder / "sweep", scheduler=args.scheduler)
    start_peak, start_rss = memory_mb()
    probe = EndedTrials(folder / "sweep" / "optuna.db", tuple(m for m in MARKS
                                                              if m <= args.samples))
    probe.start()
    t0 = time.monotonic()
    result = run_sweep(plan, live=False)
    wall = time.monotonic() - t0
    probe.stop.set()
    probe.join(timeout=2)
    slots = os.cpu_count() or 1  # one CPU per trial: the embedded Ray runs this many at once
    own = trial_seconds(plan.folder)
    n = len(own)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "samples": args.samples, "trials_recorded": n, "wall_s": round(wall, 1),
        "trials_per_minute": round(60 * n / wall, 1),
        "overhead_per_trial_s": round((wall * slots - sum(own)) / max(n, 1), 2),
        "trial_own_s_mean": round(sum(own) / max(n, 1), 3),
        "driver_memory_start": {"peak_mb": round(start_peak, 1), "rss_mb": round(start_rss, 1)},
        "driver_memory_at": probe.seen, "front": len(result.front),
    }
    lines = [
        "| trials | wall s | trials / min | overhead / trial s | trial's own s |",
        "|---|---|---|---|---|",
        f"| {n} | {report['wall_s']} | {report['trials_per_minute']} | "
        f"{report['overhead_per_trial_s']} | {report['trial_own_s_mean']} |",
        "",
        "| trials ended | driver peak RSS MB | driver RSS MB |",
        "|---|---|---|",
        f"| 0 (before the sweep) | {start_peak:.0f} | {start_rss:.0f} |",
        *[f"| {k} | {v['peak_mb']:.0f} | {v['rss_mb']:.0f} |" for k, v in probe.seen.items()],
    ]
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "sweep_overhead.json").write_text(json.dumps(report, indent=2))
    write_section("sweep_overhead", (
        "## Sweep overhead: 200 trials that do almost nothing\n\n"
        f"`.venv/bin/python benchmarks/sweep_overhead.py --samples {args.samples}` "
        f"({report['machine']}, embedded Ray, scheduler {args.scheduler}, MLflow on; each "
        "trial: one epoch of a 1-section MLP on 64 synthetic samples)\n\n" + text))
    print(f"\nwrote {OUT / 'sweep_overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
