"""The gate step one step late (docs/algorithm.md, departure 9) against the gate step in the step
that computed its gradient: reference (a), trials/mnist1d_cnn.yaml (or ``--trial``), over seeds.

Each run appends one JSON line (seed, final validation accuracy, sections kept, when each was
removed) to OUT; ``--no-lag`` applies every gradient at once (``Pruner.settle`` after each step).
``--table A.jsonl B.jsonl ...`` prints the comparison of finished files.

    .venv/bin/python benchmarks/gate_lag.py OUT.jsonl [--no-lag] [--seeds 0 1 2 3 4]
        [--set method.decide_at=0 ...] [--trial trials/mnist_mlp.yaml]
    .venv/bin/python benchmarks/gate_lag.py --table before.jsonl lag.jsonl no-lag.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean

import torch

from layertune.config import load_trial, parse_set
from layertune.train import Trial, run_trial

TRIAL = "trials/mnist1d_cnn.yaml"


class NoLagTrial(Trial):
    """Trial.step with the gate gradient applied in the same step."""

    def step(self, x, y):
        loss = super().step(x, y)
        if self.mode == "learned":
            self._note_removed(self.pruner.settle())
        return loss


def run(out: Path, seeds: list[int], overrides: dict, no_lag: bool, trial_file: str = TRIAL,
        threads: int = 1) -> None:
    if threads:
        torch.set_num_threads(threads)
    for seed in seeds:
        config = load_trial(trial_file, {"seed": seed, **overrides})
        start = time.perf_counter()
        trial = NoLagTrial(config) if no_lag else None
        result = run_trial(config, lambda m, c: None, trial=trial)
        row = {"seed": seed, **overrides, "no_lag": no_lag,
               "val_accuracy": result.final["val_accuracy"],
               "active": result.final["active_layers"], "keep": result.keep,
               "pruned_at": {str(k): v for k, v in result.pruned_at.items()},
               "seconds": time.perf_counter() - start}
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def table(files: list[Path]) -> str:
    lines = ["| runs | seeds | val accuracy per seed | mean | sections kept |",
             "|---|---|---|---|---|"]
    for f in files:
        rows = sorted((json.loads(line) for line in f.read_text().splitlines()),
                      key=lambda r: r["seed"])
        accs = " / ".join(f"{r['val_accuracy']:.4f}" for r in rows)
        kept = ", ".join(str(r["active"]) for r in rows)
        lines.append(f"| {f.stem} | {', '.join(str(r['seed']) for r in rows)} | {accs} | "
                     f"{mean(r['val_accuracy'] for r in rows):.4f} | {kept} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trial", default=TRIAL, help=f"trial file (default {TRIAL})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--no-lag", action="store_true")
    parser.add_argument("--table", type=Path, nargs="+")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
    elif args.out is None:
        parser.error("give OUT.jsonl, or --table FILES")
    else:
        run(args.out, args.seeds, parse_set(args.set), args.no_lag, args.trial, args.threads)


if __name__ == "__main__":
    main()
