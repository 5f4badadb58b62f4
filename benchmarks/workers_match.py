"""Reference (a) on 2 Ray Train workers (50 samples each per step) against one process (100).

    python benchmarks/workers_match.py [--epochs 20]

Prints the kept sections and the accuracies of both, writes benchmarks/out/workers_match.json.
(tests/test_distributed.py checks the same at 4 epochs.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import ray
import torch

from layertune.config import load_trial
from layertune.train import TrialResult, run_trial
from layertune.workers import Workers, run_on_workers

TRIAL = Path(__file__).resolve().parent.parent / "trials" / "mnist1d_cnn.yaml"


def summary(result: TrialResult, seconds: float) -> dict:
    return {"keep": result.keep, "val_accuracy": result.final["val_accuracy"],
            "test_accuracy": (result.test or {}).get("accuracy"),
            "train_flops": result.final["train_flops"], "wall_s": seconds}


def _save(path: str, t0: float, result: TrialResult) -> None:  # rank 0, pickled by value
    Path(path).write_text(json.dumps(summary(result, time.perf_counter() - t0)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "workers_match.json"))
    args = p.parse_args()
    config = load_trial(TRIAL, {"epochs": args.epochs, "device": "cpu"})
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    one = summary(run_trial(config, lambda m, _: None), 0.0)
    one["wall_s"] = time.perf_counter() - t0
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder, "two.json")
        run_on_workers(config, Workers(2), folder,
                       on_result=functools.partial(_save, str(saved), time.perf_counter()))
        two = json.loads(saved.read_text())
    ray.shutdown()
    print(f"reference (a), {args.epochs} epochs, global batch {config.data.batch_size}")
    for name, r in (("1 process", one), ("2 workers", two)):
        print(f"{name:>10}: kept {''.join('1' if k else '0' for k in r['keep'])}  val "
              f"{r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}")
    print(f"val accuracy apart: {abs(one['val_accuracy'] - two['val_accuracy']) * 100:.2f} "
          f"points; same sections: {one['keep'] == two['keep']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"epochs": args.epochs, "one": one, "two": two}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
