"""Issue 11, goals 1-4 and 7: one trial with the early decision against what a user would do.

For each seed, reference experiment (a) (trials/mnist1d_cnn.yaml, default torch threads) is run
three ways: as shipped (the structure decided after epoch ``decide_at``), gates fixed (the full
network), and from scratch with gates fixed at the depth the first run kept (cnn1d's sections all
have the same shape, so ``model.depth = k`` is the kept network). Variants (wider, deeper) run
the first two on their own seeds. Prints a table, writes benchmarks/out/early_decision.json and,
with ``--write``, the "early_decision" section of docs/results.md.

    .venv/bin/python benchmarks/early_decision.py --seeds 0 1 2 --variant-seeds 20 21
    .venv/bin/python benchmarks/early_decision.py --trial trials/mnist_resnet20.yaml \
        --learned-only          # goal 2 on ResNet-20: the shipped runs only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from statistics import mean

import torch

from layertune.config import ConfigError, load_trial, parse_set
from layertune.train import run_trial

try:
    from results_table import write_section
except ImportError:  # run as a module
    from benchmarks.results_table import write_section

OUT = Path(__file__).resolve().parent / "out"
TRIAL = "trials/mnist1d_cnn.yaml"
VARIANTS = {"channels 64": {"model.channels": 64}, "depth 16": {"model.depth": 16},
            "depth 12, channels 16": {"model.depth": 12, "model.channels": 16}}


def run(trial: str, seed: int, overrides: dict) -> dict:
    config = load_trial(trial, {"seed": seed, **overrides})
    start = time.perf_counter()
    history = run_trial(config, lambda m, c: None).history
    vals = [h["val_accuracy"] for h in history]
    final = history[-1]
    # the first epoch from which every gate is 0 or 1 and never changes again
    decided = next(h["epoch"] for h in history
                   if set(h["theta"]) <= {0.0, 1.0} and h["theta"] == final["theta"])
    row = {
        "seed": seed, "overrides": overrides, "val_accuracy": final["val_accuracy"],
        "kept": final["active_layers"], "total": final["total_layers"],
        "decided_at": decided, "train_flops": final["train_flops"],
        "max_fall_after_3": max((max(vals[:i + 1]) - v for i, v in enumerate(vals) if i >= 3),
                                default=0.0),
        "vals": vals, "wall_s": time.perf_counter() - start,
    }
    print(f"  seed {seed} {overrides}: val {row['val_accuracy']:.4f} kept {row['kept']}/"
          f"{row['total']} decided at {decided} fall {100 * row['max_fall_after_3']:.1f} pts "
          f"({row['wall_s']:.0f}s)", flush=True)
    return row


def summary(name: str, learned: list[dict], fixed: list[dict] | None,
            scratch: list[dict] | None) -> tuple[str, dict]:
    """One table line; with ``fixed`` None (``--learned-only``) the columns that compare with
    the gates-fixed run are "-"."""
    s = {
        "seeds": [r["seed"] for r in learned], "kept": [r["kept"] for r in learned],
        "total": learned[0]["total"], "decided_at_max": max(r["decided_at"] for r in learned),
        "max_fall_pts": 100 * max(r["max_fall_after_3"] for r in learned),
        "val_mean": mean(r["val_accuracy"] for r in learned),
        "val_min": min(r["val_accuracy"] for r in learned),
    }
    head = (f"| {name} | {', '.join(map(str, s['seeds']))} | "
            f"{', '.join(map(str, s['kept']))} of {s['total']} | {s['decided_at_max']} | ")
    if fixed is None:
        return (head + f"{s['max_fall_pts']:.1f} (-) | {s['val_mean']:.4f} (worst "
                f"{s['val_min']:.4f}) | - | - | - | - |"), s
    gaps = [100 * (f["val_accuracy"] - r["val_accuracy"]) for r, f in zip(learned, fixed,
                                                                             strict=True)]
    ratios = [r["train_flops"] / f["train_flops"] for r, f in zip(learned, fixed, strict=True)]
    s.update({
        "fixed_max_fall_pts": 100 * max(r["max_fall_after_3"] for r in fixed),
        "fixed_val_mean": mean(r["val_accuracy"] for r in fixed),
        "worst_gap_pts": max(gaps), "mean_gap_pts": mean(gaps),
        "flops_mean": mean(ratios), "flops_max": max(ratios),
        "scratch_val_mean": mean(r["val_accuracy"] for r in scratch) if scratch else None,
    })
    scratch_cell = f"{s['scratch_val_mean']:.4f}" if scratch else "-"
    line = (head + f"{s['max_fall_pts']:.1f} ({s['fixed_max_fall_pts']:.1f}) | "
            f"{s['val_mean']:.4f} | {s['fixed_val_mean']:.4f} | {scratch_cell} | "
            f"{s['worst_gap_pts']:+.2f} / {s['mean_gap_pts']:+.2f} | {s['flops_mean']:.3f} / "
            f"{s['flops_max']:.3f} |")
    return line, s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--held-out", type=int, nargs="*", default=[],
                        help="reference seeds reported as a separate row")
    parser.add_argument("--variant-seeds", type=int, nargs="*", default=None,
                        help="seeds of the wider and deeper cnn1d variants (default 20 21 "
                        "for trials/mnist1d_cnn.yaml, none for other trial files)")
    parser.add_argument("--trial", default=TRIAL, help=f"trial config (default {TRIAL})")
    parser.add_argument("--learned-only", action="store_true",
                        help="only the shipped runs (no gates-fixed or from-scratch runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a trial override for every run, e.g. method.decide_at=1")
    parser.add_argument("--write", action="store_true", help="update docs/results.md")
    args = parser.parse_args()
    common = parse_set(args.set)
    fixed = {"method.gates": "fixed"}
    name = "reference (a)" if args.trial == TRIAL else Path(args.trial).stem
    # model.depth = k is the kept network only where every section has one shape (cnn1d)
    from_scratch = args.trial == TRIAL
    groups: list[tuple[str, list[int], dict, bool]] = [(name, args.seeds, common, from_scratch)]
    if args.held_out:
        groups.append((f"{name}, held out", args.held_out, common, from_scratch))
    variant_seeds = args.variant_seeds
    if variant_seeds is None:  # the variants change cnn1d's keys
        variant_seeds = [20, 21] if args.trial == TRIAL else []
    groups += [(name, variant_seeds, {**common, **o}, False)
               for name, o in VARIANTS.items() if variant_seeds]
    try:  # every run's config, checked before the first run
        for _, seeds, overrides, _ in groups:
            for seed in seeds:
                load_trial(args.trial, {"seed": seed, **overrides, **fixed})
    except ConfigError as err:
        raise SystemExit(f"early_decision.py: {err}") from None
    lines = ["| run | seeds | sections kept | decided by epoch | max fall after epoch 3, "
             "pts (gates fixed) | val | gates-fixed val | kept depth from scratch val | "
             "worst / mean gap to fixed, pts | train FLOPs / fixed, mean / max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows, summaries = [], {}
    for name, seeds, overrides, with_scratch in groups:
        print(name, flush=True)
        learned = [run(args.trial, s, overrides) for s in seeds]
        base = None if args.learned_only else [
            run(args.trial, s, {**overrides, **fixed}) for s in seeds]
        scratch = [run(args.trial, r["seed"], {**overrides, **fixed, "model.depth": r["kept"]})
                   for r in learned] if with_scratch and base is not None else None
        line, summaries[name] = summary(name, learned, base, scratch)
        lines.append(line)
        rows += [dict(r, run=name, kind=k) for k, rs in
                 (("learned", learned), ("fixed", base or []), ("scratch", scratch or []))
                 for r in rs]
    table = "\n".join(lines)
    print(table)
    OUT.mkdir(exist_ok=True)
    stem = "early_decision" + ("" if args.trial == TRIAL else "-" + Path(args.trial).stem)
    (OUT / f"{stem}.json").write_text(json.dumps(
        {"rows": rows, "summaries": summaries, "threads": torch.get_num_threads()}, indent=2))
    if args.write:
        write_section(stem, (
            "## One trial, early decision (issue 11, goals 1-4 and 7)"
            + ("" if args.trial == TRIAL else f": {args.trial}") + "\n\n"
            f"`.venv/bin/python benchmarks/early_decision.py {' '.join(sys.argv[1:])}` on "
            f"{platform.processor() or 'CPU'}, default torch threads "
            f"({torch.get_num_threads()}), torch {torch.__version__}. Gap = gates-fixed minus "
            "this run, in points (negative: better than the full network). Kept depth from "
            "scratch: gates fixed, `model.depth` = the sections the run kept, same epochs.\n\n"
            + table + "\n"))


if __name__ == "__main__":
    main()
