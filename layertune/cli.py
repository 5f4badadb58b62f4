"""``layertune`` command line: thin wrappers over train, sweep and export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, load_trial, parse_set


def _print_epoch(metrics: dict, epochs: int) -> None:
    m = metrics
    print(
        f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  "
        f"val_acc {m['val_accuracy']:.4f}  sections {m['active_layers']}/{m['total_layers']}  "
        f"undecided {m['undecided_layers']}  {m['epoch_seconds']:.2f}s",
        flush=True,
    )


def train_command(args: argparse.Namespace) -> int:
    from .data import DataError
    from .export import save_compact
    from .train import TrialDiverged, run_trial

    overrides = parse_set(args.set or [])
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_trial(args.trial, overrides)
    out = Path(args.out or f"runs/{Path(args.trial).stem}").resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create folder ({err.strerror})") from None
    print(f"layertune train {args.trial} -> {out}", flush=True)
    try:
        result = run_trial(config, lambda m, _: _print_epoch(m, config.epochs))
    except DataError as err:  # raised while loading, before any training
        raise ConfigError(f"{args.trial}: data: {err}") from None
    except TrialDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result.note:
        print(result.note)
    (out / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    paths = save_compact(result.model, result.keep, out / "model")
    f = result.final
    pruned = ", ".join(f"{i} (epoch {e})" for i, e in sorted(result.pruned_at.items())) or "none"
    print(f"kept {f['active_layers']}/{f['total_layers']} sections; removed: {pruned}")
    if result.test:
        print(f"test accuracy {result.test['accuracy']:.4f}")
    print(f"wrote {out / 'result.json'} and {paths['torchscript']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layertune",
        description="Concurrent training and layer pruning, and sweeps over it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run one trial from a trial YAML")
    t.add_argument("trial", help="trial YAML (see trials/)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, e.g. --set optimizer.lr=0.1 (repeatable)")
    t.add_argument("--out", help="output folder (default runs/<trial name>)")
    t.add_argument("--seed", type=int, help="random seed (overrides the YAML)")
    t.set_defaults(func=train_command)
    from .sweep import add_sweep_arguments, sweep_command

    w = sub.add_parser("sweep", help="search the method's knobs: Ray Tune + Optuna + gate collapse")
    add_sweep_arguments(w)
    w.set_defaults(func=sweep_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
