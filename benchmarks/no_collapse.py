"""Issue 11, goal 2 on a second network: after epoch 3, validation accuracy never falls more than
3 points below its best so far, on every seed of ``trials/mnist_resnet20.yaml`` (ResNet-20 on
MNIST, the early decision at ``decide_at``), default torch threads. One run per seed as shipped
(``early_decision.run``); prints a table, writes benchmarks/out/no_collapse.json and, with
``--write``, the "no_collapse" section of docs/results.md.

    .venv/bin/python benchmarks/no_collapse.py --seeds 0 1 2 --write
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

try:
    from early_decision import OUT, run
    from results_table import write_section
except ImportError:  # run as a module
    from benchmarks.early_decision import OUT, run
    from benchmarks.results_table import write_section

LIMIT_PTS = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trial", default="trials/mnist_resnet20.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--write", action="store_true", help="update docs/results.md")
    args = parser.parse_args()
    rows = [run(seed, {}, args.trial) for seed in args.seeds]
    lines = ["| seed | sections kept | decided by epoch | val accuracy per epoch | "
             "max fall after epoch 3, pts | val |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['kept']} of {r['total']} | {r['decided_at']} | "
              f"{' '.join(f'{v:.3f}' for v in r['vals'])} | {100 * r['max_fall_after_3']:.1f} | "
              f"{r['val_accuracy']:.4f} |" for r in rows]
    worst = max(100 * r["max_fall_after_3"] for r in rows)
    verdict = (f"Largest fall after epoch 3: **{worst:.1f} points** (limit {LIMIT_PTS:.0f}): "
               + ("met on every seed." if worst <= LIMIT_PTS else
                  f"missed by {worst - LIMIT_PTS:.1f} points."))
    table = "\n".join(lines)
    print(table, verdict, sep="\n")
    OUT.mkdir(exist_ok=True)
    (OUT / "no_collapse.json").write_text(json.dumps(
        {"trial": args.trial, "rows": rows, "worst_fall_pts": worst,
         "threads": torch.get_num_threads()}, indent=2))
    if args.write:
        write_section("no_collapse", (
            f"## No collapse on {args.trial} (issue 11, goal 2)\n\n"
            f"`.venv/bin/python benchmarks/no_collapse.py {' '.join(sys.argv[1:])}` on "
            f"{platform.processor() or 'CPU'}, default torch threads "
            f"({torch.get_num_threads()}), torch {torch.__version__}.\n\n"
            + table + "\n\n" + verdict + "\n"))


if __name__ == "__main__":
    main()
