"""Where a gated step's extra time goes: the torch operators a ``Trial.step`` runs beyond the
plain step of the same network without gates (``benchmarks/overhead.py``'s pair), counted with
``torch.profiler`` over a few steps. Counts are exact; the microseconds are the profiler's self
CPU time (inflated by the profiler and by other load, so read them as shares).

    .venv/bin/python benchmarks/step_ops.py [--trial trials/mnist_mlp.yaml] [--steps 5]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from layertune.config import load_trial
from layertune.train import Trial

try:
    from overhead import plain_step_of
except ImportError:  # imported as benchmarks.step_ops
    from benchmarks.overhead import plain_step_of


def _profile(step, batches) -> tuple[Counter, Counter]:
    calls, micros = Counter(), Counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in batches:
            step(x, y)
    for event in prof.events():
        calls[event.name] += 1
        micros[event.name] += event.self_cpu_time_total
    return calls, micros


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trial", default="trials/mnist_mlp.yaml")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # gates at 1 and never moved, as in overhead.py
    config = load_trial(args.trial, {"device": "cpu", "method.prune_patience": 10**9,
                                     "method.theta_lr": 1e-9})
    trial = Trial(config)
    batches = [b for _, b in zip(range(2 * args.steps), trial.data.train, strict=False)]
    plain_step = plain_step_of(trial, batches[0][0].dim())

    trial.model.train()
    for x, y in batches[:args.steps]:  # warm-up
        trial.step(x, y)
        plain_step(x, y)
    gated_calls, gated_us = _profile(trial.step, batches[args.steps:])
    plain_calls, plain_us = _profile(plain_step, batches[args.steps:])
    n = len(batches) - args.steps
    print(f"{args.trial}: operator calls per step, gated {sum(gated_calls.values()) / n:.0f}, "
          f"plain {sum(plain_calls.values()) / n:.0f}\n")
    print("| operator | extra calls / step | extra self CPU µs / step |\n|---|---|---|")
    extra = [(name, (gated_calls[name] - plain_calls[name]) / n,
              (gated_us[name] - plain_us[name]) / n) for name in gated_calls
             if gated_calls[name] > plain_calls[name]]
    for name, calls, micros in sorted(extra, key=lambda e: -e[2])[:20]:
        print(f"| {name} | {calls:.0f} | {micros:.1f} |")


if __name__ == "__main__":
    main()
