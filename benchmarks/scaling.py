"""Epoch time of one trial on K data-parallel Ray Train workers (layertune.workers).

ResNet-20 (9 gated blocks) on synthetic 32x32 images, the global minibatch fixed (each of K
workers takes 1/K of it). K = 1 is the plain trial, one process (what ``--workers-per-trial 1``
runs); K > 1 runs ``layertune.workers.run_on_workers``: gloo on the CPU, NCCL with ``--device
cuda`` (one GPU per worker). The time is the trial's own ``epoch_seconds`` (training only, no
evaluation, no Ray start-up), the median over the epochs after the first.

    python benchmarks/scaling.py                          # CPU: K = 1, 2, one thread each
    python benchmarks/scaling.py --device cuda --workers 1 2 4 8 --samples 50000

Prints a table and writes benchmarks/out/scaling.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch

from layertune.config import TrialConfig
from layertune.train import run_trial
from layertune.workers import Workers, run_on_workers


def trial_config(args: argparse.Namespace) -> TrialConfig:
    return TrialConfig.model_validate({
        "data": {"name": "synthetic", "synthetic_shape": [3, 32, 32],
                 "synthetic_samples": args.samples, "batch_size": args.batch,
                 "val_fraction": 0.05},
        "model": {"name": "resnet20"},
        "optimizer": {"lr": 0.05},
        "epochs": args.epochs, "seed": 0, "device": args.device,
    })


def _append(path: str, metrics: dict) -> None:  # runs on rank 0 (pickled by value: __main__)
    with open(path, "a") as f:
        f.write(json.dumps({"epoch_seconds": metrics["epoch_seconds"]}) + "\n")


def one_process(config: TrialConfig, threads: int) -> list[float]:
    torch.set_num_threads(threads)
    seconds: list[float] = []
    run_trial(config, lambda m, _: seconds.append(m["epoch_seconds"]))
    return seconds


def on_workers(config: TrialConfig, k: int, threads: int, gpus: float) -> list[float]:
    import functools

    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder, "epochs.jsonl")
        run_on_workers(config, Workers(k, cpus=threads, gpus=gpus), folder,
                       on_epoch=functools.partial(_append, str(log)))
        return [json.loads(line)["epoch_seconds"] for line in log.read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--batch", type=int, default=128, help="global minibatch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "scaling.json"))
    args = p.parse_args()
    config = trial_config(args)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    gpus = 1.0 if args.device == "cuda" else 0.0
    rows = []
    for k in args.workers:
        t0 = time.perf_counter()
        seconds = (one_process(config, args.threads) if k == 1
                   else on_workers(config, k, args.threads, gpus))
        epoch = statistics.median(seconds[1:] or seconds)
        rows.append({"workers": k, "threads_per_worker": args.threads, "epoch_s": epoch,
                     "samples_per_s": args.samples * 0.95 / epoch,
                     "wall_s": time.perf_counter() - t0, "epochs_s": seconds})
    base = rows[0]["epoch_s"] * rows[0]["workers"]
    for r in rows:  # 1.0: K workers are K times as fast as one
        r["efficiency"] = base / (r["epoch_s"] * r["workers"])
    ray.shutdown()
    print(f"resnet20, synthetic 3x32x32, {args.samples} samples, global batch {args.batch}, "
          f"{args.device} ({'nccl' if gpus else 'gloo'}), {os.cpu_count()} cores visible")
    print(f"{'workers':>7} {'threads':>7} {'epoch s':>8} {'samples/s':>9} {'efficiency':>10}")
    for r in rows:
        print(f"{r['workers']:>7} {r['threads_per_worker']:>7} {r['epoch_s']:>8.2f} "
              f"{r['samples_per_s']:>9.0f} {r['efficiency']:>10.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows,
                               "torch": torch.__version__, "ray": ray.__version__}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
