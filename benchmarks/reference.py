"""docs/algorithm.md section 6, properties 6 and 7: the reference experiments and the training cost.

(a) cnn1d on MNIST-1D, 8 and 16 sections, 3 seeds, against the gates-fixed network at the same
budget and the network with no sections; (b) the 12-section MLP on MNIST. Prints a table, writes
benchmarks/out/reference.json and the "reference" section of docs/results.md.

    .venv/bin/python benchmarks/reference.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path
from statistics import mean

import torch

from layertune.config import load_trial
from layertune.train import run_trial

try:
    from results_table import write_section
except ImportError:  # run as a module
    from benchmarks.results_table import write_section

OUT = Path(__file__).resolve().parent / "out"
TRIALS = ("trials/mnist1d_cnn.yaml", "trials/mnist1d_cnn_deep.yaml", "trials/mnist_mlp.yaml")


def run(trial: str, seed: int, **overrides) -> dict:
    config = load_trial(trial, {"seed": seed, **overrides})
    start = time.perf_counter()
    result = run_trial(config, lambda m, c: None)
    f = result.final
    row = {
        "trial": trial, "seed": seed, "gates": config.method.gates,
        "val_accuracy": f["val_accuracy"], "test_accuracy": (result.test or {}).get("accuracy"),
        "active": f["active_layers"], "total": f["total_layers"],
        "undecided": f["undecided_layers"], "train_flops": f["train_flops"],
        # gates still inside (0, 1) after the last epoch, and how many of them the
        # end-of-training decision set to the vertex that rounding would not have chosen
        "decided": len(result.decided),
        "against_rounding": sum((t >= 0.5) != (f["theta"][i] == 1.0)
                                for i, t in result.decided.items()),
        "first_epoch_s": result.history[0]["epoch_seconds"],
        "last_epoch_s": f["epoch_seconds"],
        # item 7: the first epoch that ran from start to end with at most half the sections
        "half_pruned_epoch_s": next(
            (h["epoch_seconds"] for prev, h in itertools.pairwise(result.history)
             if prev["active_layers"] <= prev["total_layers"] / 2), float("nan")),
        "pruned_at": {str(k): v for k, v in result.pruned_at.items()},
        "wall_s": time.perf_counter() - start,
    }
    print(f"  {trial} seed {seed} gates {row['gates']}: val {row['val_accuracy']:.4f} "
          f"sections {row['active']}/{row['total']} decided at the end {row['decided']} "
          f"({row['against_rounding']} against rounding), undecided {row['undecided']} "
          f"({row['wall_s']:.0f}s)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for trial in TRIALS:
        for seed in args.seeds:
            rows.append(run(trial, seed))
            if trial != "trials/mnist1d_cnn_deep.yaml":
                rows.append(run(trial, seed, **{"method.gates": "fixed"}))
        rows.append(run(trial, args.seeds[0], **{"method.gates": "removed"}))

    def pick(trial: str, gates: str) -> list[dict]:
        return [r for r in rows if r["trial"] == trial and r["gates"] == gates]

    lines = ["| experiment | seeds | sections kept | decided at the end (against rounding) | "
             "undecided | val acc | gates-fixed val acc | "
             "no-sections val acc | first / half-pruned / last epoch s | "
             "train FLOPs vs fixed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    checks = {}
    fixed_of = {"trials/mnist1d_cnn_deep.yaml": "trials/mnist1d_cnn.yaml"}
    for trial in TRIALS:
        learned, fixed = pick(trial, "learned"), pick(fixed_of.get(trial, trial), "fixed")
        removed = pick(fixed_of.get(trial, trial), "removed")
        acc, facc = mean(r["val_accuracy"] for r in learned), mean(r["val_accuracy"] for r in fixed)
        ratio = mean(r["train_flops"] for r in learned) / mean(r["train_flops"] for r in fixed)
        # the 16-section gates-fixed run is not part of item 6
        flops = "-" if trial.endswith("deep.yaml") else f"{ratio:.2f}"
        lines.append(
            f"| {Path(trial).stem} | {len(learned)} | "
            f"{', '.join(str(r['active']) for r in learned)} of {learned[0]['total']} | "
            f"{', '.join(str(r['decided']) for r in learned)} "
            f"({sum(r['against_rounding'] for r in learned)}) | "
            f"{', '.join(str(r['undecided']) for r in learned)} | {acc:.4f} | {facc:.4f} | "
            f"{removed[0]['val_accuracy']:.4f} | "
            f"{mean(r['first_epoch_s'] for r in learned):.2f} / "
            f"{mean(r['half_pruned_epoch_s'] for r in learned):.2f} / "
            f"{mean(r['last_epoch_s'] for r in learned):.2f} | {flops} |"
        )
        checks[trial] = {"accuracy_gap_points": 100 * (facc - acc),
                         "depth_spread": max(r["active"] for r in learned)
                         - min(r["active"] for r in learned),
                         "worst_half_pruned_over_first_epoch": max(
                             r["half_pruned_epoch_s"] / r["first_epoch_s"] for r in learned)}
    a8 = mean(r["active"] for r in pick("trials/mnist1d_cnn.yaml", "learned"))
    a16 = mean(r["active"] for r in pick("trials/mnist1d_cnn_deep.yaml", "learned"))
    checks["deep_minus_shallow_sections"] = a16 - a8
    table = "\n".join(lines)
    print(table)
    print(json.dumps(checks, indent=2))
    OUT.mkdir(exist_ok=True)
    (OUT / "reference.json").write_text(json.dumps({"rows": rows, "checks": checks}, indent=2))
    write_section("reference", (
        "## Reference experiments (docs/algorithm.md properties 6 and 7)\n\n"
        f"`.venv/bin/python benchmarks/reference.py` on {platform.processor() or 'CPU'}, "
        f"1 torch thread, torch {torch.__version__}. Accuracy is the mean over seeds; epoch "
        "seconds are training time only.\n\n" + table + "\n\n"
        f"Checks: `{json.dumps(checks)}`\n"
    ))


if __name__ == "__main__":
    main()
