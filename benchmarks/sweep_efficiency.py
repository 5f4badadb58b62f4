"""Sweep efficiency: gate collapse against ASHA and FIFO on the same trials.

For each seed, the same configurations (Optuna's random sampler with that seed, so every
scheduler is proposed the same trials in the same order) run under ``gate-collapse``, ``asha``
and ``fifo``. Per sweep: trial-epochs spent, wall time, and the hypervolume of the final Pareto
front (finished trials only) against a reference point fixed here. Gate collapse is also
compared with ASHA at equal trial-epochs: the hypervolume of the trials each had finished when
it had spent the smaller of the two budgets.

Goals (docs/results.md): gate-collapse spends <= 50 % of FIFO's trial-epochs, keeps >= 98 % of
FIFO's hypervolume, and beats ASHA's hypervolume at equal trial-epochs.

    .venv/bin/python benchmarks/sweep_efficiency.py                 # 3 seeds, 16 trials each
    .venv/bin/python benchmarks/sweep_efficiency.py --seeds 0 --samples 8 --set epochs=10

Prints a Markdown table and writes ``benchmarks/out/sweep_efficiency.json``. No timed asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import ray

from layertune.config import parse_set
from layertune.front import hypervolume, pareto_front
from layertune.space import SamplerConfig
from layertune.sweep import SCHEDULERS, SweepResult, plan_sweep, run_sweep
from layertune.sweep.monitor import DONE, ERRORED, STOPPED

try:
    from results_table import write_section
except ImportError:  # imported as benchmarks.sweep_efficiency
    from benchmarks.results_table import write_section

ROOT = Path(__file__).resolve().parent.parent

# Hypervolume reference: chance accuracy on 10 classes, one section more than cnn1d's 8.
REFERENCE = {"val_accuracy": 0.1, "active_layers": 9.0}


def finished_rows(result: SweepResult, until_s: float = float("inf")) -> list[dict]:
    return [r for r in result.trials
            if r["status"] == DONE and r.get("ended_s", float("inf")) <= until_s]


def front_hv(rows: list[dict], objectives: list[tuple[str, str]]) -> float:
    ref = [REFERENCE[m] for m, _ in objectives]
    front = [rows[i] for i in pareto_front(rows, objectives)]
    return hypervolume(front, objectives, ref)


def hv_at_budget(result: SweepResult, budget: int) -> float:
    """Hypervolume of the trials finished when ``budget`` trial-epochs had been reported."""
    events = sorted(result.events)
    until = events[budget - 1][0] + 1e-6 if 0 < budget <= len(events) else float("inf")
    return front_hv(finished_rows(result, until), result.objectives)


def run(args: argparse.Namespace) -> dict:
    overrides = parse_set(args.set or [])
    out = Path(args.out).resolve()
    records = []
    for seed in args.seeds:
        for scheduler in args.schedulers:
            shutil.rmtree(out / f"{scheduler}-seed{seed}", ignore_errors=True)  # scratch
            plan = plan_sweep(args.trial, args.space, samples=args.samples,
                              name=f"{scheduler}-seed{seed}-{int(time.time())}",
                              storage=out / f"{scheduler}-seed{seed}", scheduler=scheduler,
                              seed=seed, cpus_per_trial=args.cpus_per_trial,
                              max_concurrent=args.max_concurrent, overrides=overrides)
            objectives = list(zip(plan.space.metrics, plan.space.modes, strict=True))
            missing = [m for m, _ in objectives if m not in REFERENCE]
            if missing:
                raise SystemExit(f"{args.space}: objectives {missing} have no reference point")
            # Same proposals for every scheduler: the random sampler, seeded.
            plan = dataclasses.replace(plan, space=plan.space.model_copy(
                update={"sampler": SamplerConfig(name="random", seed=seed)}))
            print(f"== {scheduler}, seed {seed}", flush=True)
            result = run_sweep(plan, live=args.live)
            rows = finished_rows(result)
            records.append({
                "scheduler": scheduler, "seed": seed, "trials": len(result.trials),
                "finished": len(rows),
                "stopped": sum(r["status"] == STOPPED for r in result.trials),
                "failed": sum(r["status"] == ERRORED for r in result.trials),
                "trial_epochs": result.trial_epochs, "wall_s": round(result.wall_s, 1),
                "hv": front_hv(rows, result.objectives),
                "front": [{m: r[m] for m, _ in result.objectives} | {"trial": r["trial"]}
                          for r in (rows[i] for i in pareto_front(rows, result.objectives))],
                "configs": [r["config"] for r in result.trials],
                "_result": result,
            })
    for seed in args.seeds:
        by = {r["scheduler"]: r for r in records if r["seed"] == seed}
        fifo, gc, asha = by.get("fifo"), by.get("gate-collapse"), by.get("asha")
        if fifo:
            for r in by.values():
                r["epochs_vs_fifo"] = r["trial_epochs"] / max(fifo["trial_epochs"], 1)
                r["hv_vs_fifo"] = r["hv"] / fifo["hv"] if fifo["hv"] > 0 else float("nan")
        if gc and asha:
            budget = min(gc["trial_epochs"], asha["trial_epochs"])
            gc["equal_budget"] = asha["equal_budget"] = budget
            gc["hv_at_equal_budget"] = hv_at_budget(gc["_result"], budget)
            asha["hv_at_equal_budget"] = hv_at_budget(asha["_result"], budget)
    for r in records:
        r.pop("_result")
    return {"trial": args.trial, "space": args.space, "samples": args.samples,
            "reference": REFERENCE, "overrides": overrides, "runs": records}


def table(report: dict) -> str:
    head = ("| scheduler | seed | finished / stopped / failed | trial-epochs | of FIFO | wall s "
            "| hypervolume | of FIFO | HV at equal trial-epochs (budget) |")
    lines = [head, "|" + "---|" * 9]
    for r in report["runs"]:
        eq = (f"{r['hv_at_equal_budget']:.3f} ({r['equal_budget']})"
              if "hv_at_equal_budget" in r else "")
        lines.append(
            f"| {r['scheduler']} | {r['seed']} | {r['finished']} / {r['stopped']} / "
            f"{r['failed']} | {r['trial_epochs']} | {r.get('epochs_vs_fifo', 0):.0%} | "
            f"{r['wall_s']:.0f} | {r['hv']:.3f} | {r.get('hv_vs_fifo', 0):.1%} | {eq} |"
        )
    lines.append("")
    for s in SCHEDULERS:
        runs = [r for r in report["runs"] if r["scheduler"] == s]
        if not runs:
            continue
        ep = statistics.mean(r.get("epochs_vs_fifo", float("nan")) for r in runs)
        hv = statistics.mean(r.get("hv_vs_fifo", float("nan")) for r in runs)
        lines.append(f"- {s}: mean trial-epochs {ep:.0%} of FIFO, mean hypervolume {hv:.1%} "
                     "of FIFO")
    pairs = [(g, a) for g in report["runs"] for a in report["runs"]
             if g["scheduler"] == "gate-collapse" and a["scheduler"] == "asha"
             and g["seed"] == a["seed"]]
    if pairs:
        wins = sum(g["hv_at_equal_budget"] > a["hv_at_equal_budget"] for g, a in pairs)
        ties = sum(g["hv_at_equal_budget"] == a["hv_at_equal_budget"] for g, a in pairs)
        lines.append(f"- gate-collapse vs ASHA at equal trial-epochs: {wins} wins, {ties} ties "
                     f"of {len(pairs)} seeds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trial", default=str(ROOT / "trials" / "mnist1d_cnn.yaml"))
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "cnn1d.yaml"))
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--max-concurrent", type=int, default=2,
                   help="trials at a time (default 2, as in `make demo` on 2 cores)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="trial-config override, e.g. --set epochs=10 (repeatable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "sweep_efficiency"))
    p.add_argument("--live", action="store_true", help="show each sweep's live table")
    p.add_argument("--address", help="Ray cluster to join (default: a local Ray)")
    p.add_argument("--no-docs", action="store_true", help="leave docs/results.md alone")
    args = p.parse_args(argv)
    ray.init(address=args.address, include_dashboard=False if not args.address else None,
             log_to_driver=False)
    try:
        report = run(args)
    finally:
        ray.shutdown()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / "sweep_efficiency.json").write_text(json.dumps(report, indent=2,
                                                                 default=str))
    text = table(report)
    print(text)
    if args.no_docs:
        return 0
    write_section("sweep_efficiency", (
        f"## Sweep efficiency: gate collapse vs ASHA vs FIFO\n\n"
        f"`.venv/bin/python benchmarks/sweep_efficiency.py` ({report['samples']} trials of "
        f"{Path(report['trial']).name} over {Path(report['space']).name} per sweep, random "
        f"sampler with the seed, 2 at a time on CPU; hypervolume reference {REFERENCE})\n\n"
        + text))
    print(f"\nwrote {out.parent / 'sweep_efficiency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
