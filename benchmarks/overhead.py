"""Cost of the gates: a training step of the gated network with every gate at 1 against the
same network without gates, while the gates learn and after the early decision has fixed them
(every section kept), and inference of the compact network against the full one.

Prints a table, writes benchmarks/out/overhead.json and the "overhead" section of
docs/results.md. Target: gated / plain step time <= 1.05.

    .venv/bin/python benchmarks/overhead.py [--device cpu|cuda] [--steps 40] [--threads 1]

Both steps run the trial's learning-rate schedule, and its bf16 autocast and channels_last when
the trial file asks for them (benchmarks/gpu.py does); ``--threads 0`` keeps torch's default.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F

from layertune.config import load_trial
from layertune.export import compact
from layertune.optim import make_optimizer, make_schedule
from layertune.train import Trial

try:
    from results_table import write_section
except ImportError:
    from benchmarks.results_table import write_section

OUT = Path(__file__).resolve().parent / "out"
CASES = {  # name: (trial file, overrides)
    "cnn1d-8 / MNIST-1D, batch 100": ("trials/mnist1d_cnn.yaml", {}),
    "mlp-12 / MNIST, batch 100": ("trials/mnist_mlp.yaml", {}),
    "resnet20 / synthetic 32x32, batch 128": (
        "trials/cifar10_resnet56.yaml",
        {"model.name": "resnet20", "data.name": "synthetic", "data.root": None,
         "data.synthetic_samples": 1024, "bf16": False, "channels_last": False},
    ),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _pass(fn, batches, device) -> float:
    """Seconds per call over one pass of ``batches``."""
    _sync(device)
    start = time.perf_counter()
    for x, y in batches:
        fn(x, y)
    _sync(device)
    return (time.perf_counter() - start) / len(batches)


def _timed(fn, batches, device, repeats: int) -> float:
    """Median seconds per call over ``repeats`` passes of ``batches`` (after one warm-up)."""
    _pass(fn, batches, device)
    return median(_pass(fn, batches, device) for _ in range(repeats))


def _paired(gated, plain, batches, device, repeats: int) -> tuple[float, ...]:
    """Median seconds per step of each, passes alternated so that both see the same load
    (the machine may be shared), the median of the per-pair ratios, and the ratio of the
    fastest passes (the least disturbed by other load)."""
    _pass(gated, batches, device), _pass(plain, batches, device)  # warm-up
    pairs = [(_pass(gated, batches, device), _pass(plain, batches, device))
             for _ in range(repeats)]
    return (median(g for g, _ in pairs), median(p for _, p in pairs),
            median(g / p for g, p in pairs),
            min(g for g, _ in pairs) / min(p for _, p in pairs))


def x_dims(batches: list) -> int:
    return batches[0][0].dim()


def plain_step_of(trial: Trial, x_dim: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """What ``trial.step`` does, on the same network without gates (every section kept):
    its own optimiser and schedule, the trial's autocast and channels_last."""
    config, dev = trial.config, trial.device
    plain = compact(trial.model, [True] * len(trial.model.sections)).to(dev).train()
    if config.channels_last and dev.type == "cuda" and x_dim == 4:
        plain.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(plain, config)
    schedule = make_schedule(optimizer, config, len(trial.data.train))

    def plain_step(x, y) -> None:
        if config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with trial.autocast:
            loss = F.cross_entropy(plain(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    return plain_step


def measure(name: str, trial_file: str, overrides: dict, device: str, steps: int,
            repeats: int = 3) -> dict:
    config = load_trial(trial_file, {**overrides, "device": device,
                                     "method.prune_patience": 10**9, "method.theta_lr": 1e-9})
    trial = Trial(config)
    dev = trial.device
    batches = []
    for x, y in trial.data.train:
        batches.append((x.to(dev), y.to(dev)))
        if len(batches) == steps:
            break
    plain_step = plain_step_of(trial, x_dims(batches))
    trial.model.train()
    gated, base, ratio, fastest = _paired(trial.step, plain_step, batches, dev, repeats)
    trial.gates.fix([1.0] * len(trial.model.sections))  # what follows the early decision
    fixed, fixed_base, fixed_ratio, _ = _paired(trial.step, plain_step, batches, dev, repeats)
    keep = [i % 2 == 0 for i in range(len(trial.model.sections))]
    full = compact(trial.model, [True] * len(keep)).to(dev)
    small = compact(trial.model, keep).to(dev)
    few = batches[:20]
    x1 = batches[0][0][:1]
    xb = batches[0][0]
    with torch.no_grad(), trial.autocast:
        lat = {
            "full_b1_ms": 1e3 * _timed(lambda x, y: full(x1), few, dev, repeats),
            "half_b1_ms": 1e3 * _timed(lambda x, y: small(x1), few, dev, repeats),
            "full_batch_ms": 1e3 * _timed(lambda x, y: full(xb), few, dev, repeats),
            "half_batch_ms": 1e3 * _timed(lambda x, y: small(xb), few, dev, repeats),
        }
    row = {"case": name, "device": str(dev), "gated_step_ms": 1e3 * gated,
           "plain_step_ms": 1e3 * base, "step_ratio": ratio, "fastest_ratio": fastest,
           "fixed_step_ms": 1e3 * fixed, "fixed_plain_step_ms": 1e3 * fixed_base,
           "fixed_ratio": fixed_ratio, **lat,
           "inference_ratio_batch": lat["half_batch_ms"] / lat["full_batch_ms"]}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5, help="alternated pairs of passes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU "
                        "(0: torch's default)")
    args = parser.parse_args()
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(name, f, o, args.device, args.steps, args.repeats)
            for name, (f, o) in CASES.items()]
    threads = torch.get_num_threads()
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else f"{platform.processor() or 'CPU'}, {threads} torch thread"
             + ("s" if threads > 1 else ""))
    key = f"overhead-{args.device.split(':')[0]}" + (
        f"-{threads}threads" if args.device == "cpu" and threads != 1 else "")
    lines = ["| network | gated step ms (all gates 1) | plain step ms | ratio | "
             "ratio, fastest passes | ratio, gates fixed | "
             "inference ms, full / half the sections (batch) | batch 1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['gated_step_ms']:.2f} | {r['plain_step_ms']:.2f} | "
            f"{r['step_ratio']:.3f} | {r['fastest_ratio']:.3f} | {r['fixed_ratio']:.3f} | "
            f"{r['full_batch_ms']:.2f} / {r['half_batch_ms']:.2f} | "
            f"{r['full_b1_ms']:.2f} / {r['half_b1_ms']:.2f} |")
    table = "\n".join(lines)
    print(table)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{key}.json").write_text(json.dumps(rows, indent=2))
    write_section(key, (
        f"## Gate overhead and compact inference ({where})\n\n"
        f"`.venv/bin/python benchmarks/overhead.py --device {args.device} --threads "
        f"{args.threads}`; torch {torch.__version__}; {args.repeats} alternated pairs of passes "
        f"over {args.steps} steps (medians; the ratio is the median of the pairs' ratios). "
        "The gated step includes sampling, dL/dz, the prior step and the gate update; "
        "'gates fixed': the step after the early decision (every section kept), the prior's "
        "step alone; both steps include the learning-rate schedule's step.\n\n" + table
        + "\n"))


if __name__ == "__main__":
    main()
