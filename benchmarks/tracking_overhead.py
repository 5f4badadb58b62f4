"""Tracking overhead: what the driver-side MLflow record costs.

1. Per report: ``SweepRecorder.on_trial_result`` (one ``log_batch`` of the contract's numbers
   and every gate as ``theta/NN``) timed on a real sqlite database with synthetic reports of the
   contract's shape, for networks with 8 and with 56 gates; also the end of a trial (tags,
   ``result.json``, gate plot, the parent's hypervolume) and the end of the sweep (front CSV,
   table, PNG, HTML).
2. Per sweep: the same small sweep (same seed and FIFO scheduling, so the same trials and
   epochs) with tracking and with ``--tracking-uri none``, alternated; wall time of each and
   the ratio of the means. Tracking off also skips writing the compact network into the last
   checkpoint.

    .venv/bin/python benchmarks/tracking_overhead.py
    .venv/bin/python benchmarks/tracking_overhead.py --samples 8 --set epochs=20 --repeats 3

Prints a Markdown table, writes ``benchmarks/out/tracking_overhead.json`` and the
``tracking_overhead`` section of docs/results.md. No timed asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import ray

from layertune.config import parse_set
from layertune.sweep import plan_sweep, run_sweep
from layertune.tracking import SweepRecorder

try:
    from results_table import write_section
except ImportError:  # imported as benchmarks.tracking_overhead
    from benchmarks.results_table import write_section

ROOT = Path(__file__).resolve().parent.parent
OBJ = [("val_accuracy", "max"), ("active_layers", "min")]


def synthetic_report(epoch: int, gates: int, rng: random.Random) -> dict:
    """A report with every key of the trial contract (layertune/contract.py)."""
    theta = [rng.random() for _ in range(gates)]
    active = sum(t >= 0.5 for t in theta)
    return {
        "epoch": epoch, "val_accuracy": rng.random(), "val_loss": rng.random(),
        "train_loss": rng.random(), "active_layers": active, "total_layers": gates,
        "undecided_layers": sum(0 < t < 1 for t in theta), "collapsed": 0,
        "flops": rng.randint(10**6, 10**9), "params": rng.randint(10**4, 10**7),
        "train_flops": rng.random() * 1e12, "epoch_seconds": rng.random(), "theta": theta,
        # what Ray adds to every result (not logged)
        "training_iteration": epoch, "time_this_iter_s": 0.1, "trial_id": "x", "done": False,
    }


def ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": 1e3 * statistics.median(values),
            "p90": 1e3 * values[int(0.9 * (len(values) - 1))],
            "mean": 1e3 * statistics.fmean(values)}


def time_reports(gates: int, trials: int, epochs: int, folder: Path) -> dict:
    """The recorder's callbacks on stub trials, timed one call at a time."""
    from ray.tune.experiment import Trial

    folder.mkdir(parents=True, exist_ok=True)
    rec = SweepRecorder(f"sqlite:///{folder / 'mlflow.db'}", f"bench-{gates}", folder,
                        objectives=OBJ, chance=0.1, parameters=["optimizer.lr"])
    t0 = time.perf_counter()
    rec.prepare()
    rec.start()
    open_s = time.perf_counter() - t0
    rng = random.Random(gates)
    start, report, end = [], [], []
    for i in range(trials):
        trial = Trial("__fake", trial_id=f"t{i:03d}", config={"optimizer.lr": 0.1}, stub=True)
        t0 = time.perf_counter()
        rec.on_trial_start(iteration=0, trials=[], trial=trial)
        start.append(time.perf_counter() - t0)
        for epoch in range(1, epochs + 1):
            result = synthetic_report(epoch, gates, rng)
            t0 = time.perf_counter()
            rec.on_trial_result(iteration=0, trials=[], trial=trial, result=result)
            report.append(time.perf_counter() - t0)
        trial.run_metadata.last_result = result
        t0 = time.perf_counter()
        rec.on_trial_complete(iteration=0, trials=[], trial=trial)
        end.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    rec.on_experiment_end(trials=[])
    finish_s = time.perf_counter() - t0
    if rec.errors:
        raise SystemExit(f"the recorder reported {rec.errors} errors")
    return {"gates": gates, "metrics_per_report": len(result["theta"]) + 12,
            "trials": trials, "reports": len(report), "open_s": open_s,
            "trial_start_ms": ms(start), "report_ms": ms(report), "trial_end_ms": ms(end),
            "sweep_end_s": finish_s}


def time_sweeps(args: argparse.Namespace, out: Path) -> list[dict]:
    overrides = parse_set(args.set or [])
    rows = []
    for rep in range(args.repeats):
        for tracking in (False, True):  # alternating, so drift in machine load hits both
            name = f"{'tracked' if tracking else 'untracked'}-{rep}"
            plan = plan_sweep(args.trial, args.space, samples=args.samples, name=name,
                              storage=out / name, tracking_uri=None if tracking else "none",
                              max_concurrent=2, cpus_per_trial=1, seed=args.seed,
                              overrides=overrides, scheduler=args.scheduler)
            t0 = time.perf_counter()
            result = run_sweep(plan, live=False)
            wall = time.perf_counter() - t0
            print(f"  {name}: {wall:.1f} s, {result.trial_epochs} trial-epochs", flush=True)
            rows.append({"tracking": tracking, "repeat": rep, "wall_s": wall,
                         "fit_s": result.wall_s, "trials": len(result.trials),
                         "trial_epochs": result.trial_epochs, "front": len(result.front)})
    return rows


def table(report: dict) -> str:
    lines = ["| gates | metrics per batch | reports | log one report, ms (median / p90 / mean) "
             "| trial start ms | trial end ms (artifacts, plot) | sweep end s (front files) |",
             "|---|---|---|---|---|---|---|"]
    for r in report["reports"]:
        m = r["report_ms"]
        lines.append(f"| {r['gates']} | {r['metrics_per_report']} | {r['reports']} | "
                     f"{m['median']:.1f} / {m['p90']:.1f} / {m['mean']:.1f} | "
                     f"{r['trial_start_ms']['median']:.1f} | {r['trial_end_ms']['median']:.0f} "
                     f"| {r['sweep_end_s']:.2f} |")
    lines += ["", "| sweep | repeat | trials | trial-epochs | wall s | Tuner.fit s |",
              "|---|---|---|---|---|---|"]
    for r in report["sweeps"]:
        lines.append(f"| {'tracking on' if r['tracking'] else 'tracking off'} | {r['repeat']} "
                     f"| {r['trials']} | {r['trial_epochs']} | {r['wall_s']:.1f} | "
                     f"{r['fit_s']:.1f} |")
    on = [r["wall_s"] for r in report["sweeps"] if r["tracking"]]
    off = [r["wall_s"] for r in report["sweeps"] if not r["tracking"]]
    if on and off:
        report["ratio"] = statistics.fmean(on) / statistics.fmean(off)
        lines += ["", f"Sweep wall time with tracking / without: **{report['ratio']:.3f}** "
                  f"(mean of {len(on)} each)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gates", type=int, nargs="+", default=[8, 56])
    p.add_argument("--trials", type=int, default=8, help="stub trials per gate count")
    p.add_argument("--epochs", type=int, default=30, help="reports per stub trial")
    p.add_argument("--trial", default=str(ROOT / "trials" / "digits_mlp.yaml"))
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "mlp.yaml"))
    p.add_argument("--samples", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--scheduler", default="fifo", help="fifo (default): every trial runs all "
                   "its epochs, so both sweeps do the same work whatever the timing")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=None,
                   help="trial-config override (default: epochs=10)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "tracking_overhead"))
    p.add_argument("--no-docs", action="store_true", help="leave docs/results.md alone")
    args = p.parse_args(argv)
    if args.set is None:
        args.set = ["epochs=10"]
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)  # this script's own scratch folder
    out.mkdir(parents=True)
    print("driver-side logging, real sqlite database:", flush=True)
    reports = [time_reports(g, args.trials, args.epochs, out / f"reports-{g}")
               for g in args.gates]
    print("sweeps with and without tracking:", flush=True)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sweeps = time_sweeps(args, out / "sweeps")
    finally:
        ray.shutdown()
    import mlflow

    report = {"reports": reports, "sweeps": sweeps, "trial": args.trial, "space": args.space,
              "samples": args.samples, "overrides": args.set, "seed": args.seed,
              "scheduler": args.scheduler,
              "mlflow": mlflow.__version__, "python": platform.python_version()}
    text = table(report)
    print(text)
    (out.parent / "tracking_overhead.json").write_text(json.dumps(report, indent=2))
    if args.no_docs:
        return 0
    sets = " ".join(f"--set {s}" for s in args.set)
    write_section("tracking_overhead", (
        "## Tracking overhead (driver-side MLflow record)\n\n"
        f"`.venv/bin/python benchmarks/tracking_overhead.py` (MLflow {mlflow.__version__}, "
        "sqlite in the sweep folder). Per report: `SweepRecorder.on_trial_result` on synthetic "
        f"reports of the contract's shape, {args.trials} stub trials x {args.epochs} epochs "
        "per gate count. Per sweep: "
        f"{args.samples} trials of {Path(args.trial).name} over {Path(args.space).name} "
        f"(`{sets}`, seed {args.seed}, scheduler {args.scheduler}, 2 at a time on CPU) with "
        "tracking and with "
        "`--tracking-uri none`, alternated.\n\n" + text))
    print(f"\nwrote {out.parent / 'tracking_overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
