"""Versus training each depth from scratch: a gate-collapse sweep's front against the grid.

The baseline is the from-scratch grid (``layertune.baseline.depth_grid``): every depth 0..L
trained with gates fixed for the same epochs, run one after another with ``run_trial`` (default
torch threads). Against it, a gate-collapse sweep per seed through the project's sweep API (as
benchmarks/sweep_efficiency.py runs them). For the grid and each sweep: the front (val_accuracy
against active sections, finished trials only), its hypervolume (reference: accuracy 0.1,
L + 1 sections) and the training FLOPs of all its trials (stopped ones included), in units of
one full gates-fixed run (the grid's depth-L network).

Goal (issue 11, goal 5): each sweep's hypervolume >= the grid's at training FLOPs <= the grid's.

    .venv/bin/python benchmarks/versus_scratch.py                       # cnn1d, 3 seeds x 16
    .venv/bin/python benchmarks/versus_scratch.py --trial trials/mnist_resnet20.yaml \\
        --space search_spaces/cnn1d.yaml --seeds 0 --samples 4 --epochs 4
    .venv/bin/python benchmarks/versus_scratch.py --quick --no-docs     # seconds-scale check

Prints Markdown tables and writes ``benchmarks/out/versus_scratch-TRIAL.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import ray
import torch

from layertune.baseline import depth_grid, max_depth
from layertune.config import TrialConfig, load_trial, parse_set
from layertune.data import load_data
from layertune.front import hypervolume, pareto_front
from layertune.sweep import SweepResult, plan_sweep, run_sweep
from layertune.train import resolve_device, run_trial

try:
    from results_table import write_section
    from sweep_efficiency import finished_rows
except ImportError:  # imported as benchmarks.versus_scratch
    from benchmarks.results_table import write_section
    from benchmarks.sweep_efficiency import finished_rows

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = [("val_accuracy", "max"), ("active_layers", "min")]
CHANCE = 0.1  # the reference accuracy: chance on 10 classes (issue 11's figures)
DEFAULTS = {"epochs": None, "samples": 16, "seeds": [0, 1, 2]}
QUICK = {"epochs": 2, "samples": 2, "seeds": [0]}


def reference(depth: int) -> list[float]:
    """Hypervolume reference: chance accuracy and one section more than the full network, so
    the full network's point still adds volume (issue 11: 0.1 and 9 sections for L = 8)."""
    return [CHANCE, depth + 1.0]


def front_of(points: list[dict]) -> list[dict]:
    """The Pareto-optimal points (accuracy up, sections down), fewest sections first."""
    front = [points[i] for i in pareto_front(points, OBJECTIVES)]
    return sorted(front, key=lambda p: (p["active_layers"], -p["val_accuracy"]))


def front_hypervolume(points: list[dict], depth: int) -> float:
    return hypervolume(front_of(points), OBJECTIVES, reference(depth))


def run_grid(config: TrialConfig) -> list[dict]:
    """Train every grid network in turn; one row each (its last report)."""
    # The grid's networks share data config and seed: load once (generating MNIST-1D takes
    # longer than a cnn1d epoch), and give each a fresh copy, loaders' shuffle seeds included,
    # so each sees exactly what a trial of its own would.
    data = load_data(config.data, config.seed, resolve_device(config.device))
    rows = []
    for point in depth_grid(config):
        start = time.perf_counter()
        last = run_trial(point.config, lambda metrics, folder: None,
                         data=copy.deepcopy(data)).history[-1]
        rows.append({"active_layers": last["active_layers"],
                     "val_accuracy": last["val_accuracy"], "train_flops": last["train_flops"],
                     "wall_s": round(time.perf_counter() - start, 1)})
        print(f"grid: {point.sections} sections, val_accuracy {last['val_accuracy']:.4f}, "
              f"{rows[-1]['wall_s']:.0f} s", flush=True)
    return rows


def reuse_grid(path: str, config: TrialConfig) -> list[dict]:
    """The grid rows of an earlier run's JSON, or of ``layertune baseline``'s baseline.json
    (the same grid, trained as a Tune run), only if it trained this very config."""
    data = json.loads(Path(path).read_text())
    grid = data.get("grid", data)
    # read through TrialConfig: a key added since, at its default, is the same config
    stored = grid.get("config")
    if stored is None or TrialConfig.model_validate(stored) != config:
        raise SystemExit(f"--grid-from {path}: its grid trained another trial config")
    print(f"grid: reused from {path}", flush=True)
    return [{"wall_s": 0.0, **r} for r in grid["rows"]]


def run_seed(args: argparse.Namespace, seed: int, overrides: dict) -> SweepResult:
    out = Path(args.out).resolve() / f"{Path(args.trial).stem}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)  # scratch: each run starts afresh
    plan = plan_sweep(args.trial, args.space, samples=args.samples,
                      name=f"versus-scratch-seed{seed}-{int(time.time())}", storage=out,
                      scheduler="gate-collapse", seed=seed, cpus_per_trial=args.cpus_per_trial,
                      max_concurrent=args.max_concurrent, overrides=overrides,
                      tracking_uri=args.tracking_uri)
    objectives = list(zip(plan.space.metrics, plan.space.modes, strict=True))
    if objectives != OBJECTIVES:
        raise SystemExit(f"{args.space}: objectives {objectives}; this comparison needs "
                         f"{OBJECTIVES}")
    print(f"== gate-collapse sweep, seed {seed}", flush=True)
    return run_sweep(plan, live=args.live)


def summarise(points: list[dict], flops: float, unit: float, depth: int) -> dict:
    return {"front": [{k: p[k] for k in ("val_accuracy", "active_layers")} for p in
                      front_of(points)],
            "hypervolume": front_hypervolume(points, depth),
            "train_flops": flops, "train_runs": flops / unit, "points": len(points)}


def run(args: argparse.Namespace) -> dict:
    overrides = parse_set(args.set or [])
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = load_trial(args.trial, overrides)
    depth = max_depth(config)
    grid_rows = reuse_grid(args.grid_from, config) if args.grid_from else run_grid(config)
    unit = next(r["train_flops"] for r in grid_rows if r["active_layers"] == depth)
    grid = summarise(grid_rows, sum(r["train_flops"] for r in grid_rows), unit, depth)
    grid |= {"rows": grid_rows, "wall_s": round(sum(r["wall_s"] for r in grid_rows), 1),
             "config": config.model_dump(mode="json")}
    sweeps = []
    # Ray starts after the grid: the grid trains with no Ray processes on the CPUs
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        results = [(seed, run_seed(args, seed, overrides)) for seed in args.seeds]
    finally:
        ray.shutdown()
    for seed, result in results:
        rows = finished_rows(result)
        flops = sum(float(r.get("train_flops", 0.0) or 0.0) for r in result.trials)
        sweeps.append({"seed": seed, "trials": len(result.trials),
                       "finished": len(rows), "trial_epochs": result.trial_epochs,
                       "wall_s": round(result.wall_s, 1),
                       "finished_points": [{k: r[k] for k in ("val_accuracy", "active_layers")}
                                           for r in rows],
                       "configs": [r["config"] for r in result.trials]}
                      | summarise(rows, flops, unit, depth))
    return {"trial": args.trial, "space": args.space, "samples": args.samples,
            "overrides": overrides, "epochs": config.epochs, "depth": depth,
            "reference": reference(depth), "grid": grid, "sweeps": sweeps}


def _points(front: list[dict]) -> str:
    return ", ".join(f"{p['val_accuracy']:.3f} @ {p['active_layers']}" for p in front)


def table(report: dict) -> str:
    grid, sweeps = report["grid"], report["sweeps"]
    lines = ["| front | trials | training FLOPs (full runs) | hypervolume | of grid | wall s "
             "| front (val accuracy @ sections) |", "|" + "---|" * 7]
    lines.append(f"| from-scratch grid | {grid['points']} | {grid['train_runs']:.2f} | "
                 f"{grid['hypervolume']:.3f} | 100% | {grid['wall_s']:.0f} | "
                 f"{_points(grid['front'])} |")
    for s in sweeps:
        lines.append(f"| gate collapse, seed {s['seed']} | {s['trials']} ({s['finished']} "
                     f"finished) | {s['train_runs']:.2f} | {s['hypervolume']:.3f} | "
                     f"{s['hypervolume'] / grid['hypervolume']:.1%} | {s['wall_s']:.0f} | "
                     f"{_points(s['front'])} |")
    lines += ["", "Best finished val accuracy at each depth (grid: the network trained at it):",
              "", "| sections | grid | " + " | ".join(f"seed {s['seed']}" for s in sweeps)
              + " |", "|" + "---|" * (2 + len(sweeps))]
    for d in range(report["depth"] + 1):
        cells = [_best(grid["rows"], d)] + [_best(s["finished_points"], d) for s in sweeps]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append("")
    met = [s for s in sweeps if s["hypervolume"] >= grid["hypervolume"]
           and s["train_flops"] <= grid["train_flops"]]
    lines.append(f"- goal (hypervolume >= grid's at training FLOPs <= grid's): met on "
                 f"{len(met)} of {len(sweeps)} seeds")
    return "\n".join(lines)


def _best(points: list[dict], depth: int) -> str:
    accs = [p["val_accuracy"] for p in points if p["active_layers"] == depth]
    return f"{max(accs):.3f}" if accs else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trial", default=str(ROOT / "trials" / "mnist1d_cnn.yaml"))
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "cnn1d.yaml"))
    p.add_argument("--samples", type=int, help="trials per sweep (default 16)")
    p.add_argument("--seeds", type=int, nargs="+", help="sweep seeds (default 0 1 2)")
    p.add_argument("--epochs", type=int, help="override the trial's epochs (grid and sweeps)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="trial-config override for grid and sweeps (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny run for a test: {QUICK} unless given")
    p.add_argument("--grid-from", metavar="JSON",
                   help="reuse the grid of an earlier run's JSON, or a layertune baseline's "
                   "baseline.json (same trial config only)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--max-concurrent", type=int, default=2,
                   help="sweep trials at a time (default 2, as in `make demo` on 2 cores)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "versus_scratch"))
    p.add_argument("--tracking-uri", default="none",
                   help="the sweeps' MLflow record (default none: the fronts come from Tune)")
    p.add_argument("--live", action="store_true", help="show each sweep's live table")
    p.add_argument("--no-docs", action="store_true", help="leave docs/results.md alone")
    p.add_argument("--threads", type=int,
                   help="torch threads of the grid (default: torch's; sweep trials use their "
                        "CPU share)")
    args = p.parse_args(argv)
    if args.threads:
        # on a loaded machine, intra-op threads wait on each other: 1 can be several times faster
        torch.set_num_threads(args.threads)
    for key, default in DEFAULTS.items():  # --quick's values where none is given
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else default)
    report = run(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"versus_scratch-{Path(args.trial).stem}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    text = table(report)
    print(text)
    print(f"\nwrote {path}")
    if not args.no_docs:
        name = Path(args.trial).stem
        write_section(f"versus_scratch_{name}", (
            f"### {name}: {report['samples']} trials per sweep over "
            f"{Path(args.space).name}, {report['epochs']} epochs, seeds "
            f"{', '.join(map(str, args.seeds))}\n\n"
            f"`.venv/bin/python benchmarks/versus_scratch.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}` (hypervolume reference "
            f"{report['reference']})\n\n" + text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
