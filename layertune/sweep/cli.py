"""``layertune sweep`` on the command line: its flags, and the command with its exit codes."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..config import ConfigError
from ..workers import add_worker_arguments
from .plan import SCHEDULERS, SweepOptions, plan_sweep
from .result import summary
from .run import run_sweep


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``layertune sweep`` (the CLI wires them to ``sweep_command``); each
    flag is the ``SweepOptions`` field of the same name."""
    parser.add_argument("trial", help="trial YAML (see trials/)")
    parser.add_argument("--space", required=True, help="search-space YAML (see search_spaces/)")
    parser.add_argument("--samples", type=int, default=16, help="trials to run (default 16)")
    parser.add_argument("--name", help="sweep and Optuna study name (default TRIAL-SPACE-time)")
    parser.add_argument("--storage", help="sweep folder (default ./layertune-runs/NAME), or "
                        "object storage s3://BUCKET/PREFIX or gs://BUCKET/PREFIX for Ray's files "
                        "(credentials from the standard environment variables)")
    parser.add_argument("--work-dir", metavar="DIR", help="with object storage: the driver's "
                        "local folder (Optuna study, MLflow database, front; copied to the "
                        "bucket as well; default ./layertune-runs/NAME)")
    add_resource_arguments(parser)
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="gate-collapse",
                        help="early stopping (default gate-collapse)")
    parser.add_argument("--seed", type=int, help="sampler seed (overrides the search space)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the sweep --name after its driver stopped (Ctrl-C, a "
                        "crash): finished trials stay, running ones go on from their checkpoint")


def add_resource_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``layertune sweep`` and ``layertune baseline`` share: the cluster, each
    trial's resources, the MLflow record and retries."""
    parser.add_argument("--address", help="Ray cluster to join ('auto', or host:port; default: "
                        "RAY_ADDRESS, else a local Ray sized to this machine)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C",
                        help="CPUs per trial, fractions allowed (default 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="G",
                        help="GPUs per trial, fractions allowed (default 0)")
    add_worker_arguments(parser)
    parser.add_argument("--max-concurrent", type=int, metavar="K",
                        help="trials at a time (default: as many as resources allow)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI: an MLflow server "
                        "(http://host:port) or a database (default sqlite:///<sweep folder>/"
                        "mlflow.db); 'none' records nothing")
    parser.add_argument("--max-failures", type=int, default=2, metavar="F",
                        help="retries of a trial whose worker or node died, from its last "
                        "checkpoint (default 2)")


def sweep_command(args: argparse.Namespace) -> int:
    """``layertune sweep``: 0 when trials finished, 1 when none did, 2 on bad input, 130 when
    interrupted (it can be resumed)."""
    names = {f.name for f in fields(SweepOptions)}
    options = {k: v for k, v in vars(args).items() if k in names}
    try:
        plan = plan_sweep(args.trial, args.space, **options)
        result = run_sweep(plan)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.interrupted:
        print(f"\nsweep {plan.name} interrupted; everything so far is kept in {plan.folder}."
              f"\ncontinue it with: layertune sweep {plan.trial_path} --space "
              f"{plan.space_path} --name {plan.name} --storage {plan.storage.uri}"
              + (f" --work-dir {plan.folder}" if plan.storage.remote else "") + " --resume",
              flush=True)
        return 130
    print(summary(result), flush=True)
    return 0 if result.front else 1


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``layertune baseline`` (wired to ``baseline_command``)."""
    parser.add_argument("trial", help="trial YAML (see trials/): the sweeps' own")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a key as the sweep did, e.g. --set epochs=5 "
                        "(repeatable); a sweep matches a baseline of its very trial config")
    parser.add_argument("--name", help="baseline name (default baseline-TRIAL-DIGEST, DIGEST "
                        "naming the resolved trial config)")
    parser.add_argument("--storage", help="its folder (default ./layertune-runs/NAME: beside "
                        "the sweeps, where they look for it)")
    add_resource_arguments(parser)
    parser.add_argument("--recompute", action="store_true",
                        help="train it again although it exists (default: reuse it)")


def baseline_command(args: argparse.Namespace) -> int:
    """``layertune baseline``: 0 when every depth finished (or the baseline was reused), 1 when
    a depth failed, 2 on bad input, 130 when interrupted (the next call starts it afresh)."""
    from ..config import parse_set
    from .baseline import plan_baseline, run_baseline
    from .baseline import summary as baseline_summary

    names = {f.name for f in fields(SweepOptions)}
    options = {k: v for k, v in vars(args).items() if k in names}
    try:
        plan = plan_baseline(args.trial, recompute=args.recompute,
                             overrides=parse_set(args.set or []), **options)
        baseline = run_baseline(plan)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if baseline is None:
        print(f"\nbaseline {plan.name} interrupted: no baseline.json written; running the "
              "command again trains it from the start", flush=True)
        return 130
    print(baseline_summary(plan, baseline), flush=True)
    return 1 if len(baseline.rows) < len(plan.grid) else 0
