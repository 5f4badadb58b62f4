"""Packing small trials onto one GPU: what the gates cost per step, what packing buys, and the
data path (docs/results.md, "GPU packing").

1. gated vs plain step time (benchmarks/overhead.py's measurement) for mlp-12, cnn1d-8,
   resnet20 and resnet56 (bf16 autocast and channels_last on CUDA);
2. a gate-collapse sweep (``layertune sweep``, search_spaces/cnn1d.yaml) of 16 cnn1d trials at
   1, 0.5 and 0.25 GPU per trial: trials per hour, and GPU utilisation sampled with NVML;
3. the data path: ``TensorLoader`` (data resident on the device) against a ``DataLoader``
   (CPU tensors, pinned, copied per batch), as training examples per second.

One script, under 8 minutes on one GPU. ``--device cpu --quick`` runs every part at CPU scale
in about a minute (few steps, 2 trials of 2 epochs at 2 and 1 CPUs per trial, no NVML) so a
test keeps it working where no GPU is. NVML needs ``nvidia-ml-py`` (``import pynvml``).

    .venv/bin/python benchmarks/gpu.py [--device cuda] [--quick] [--parts steps sweep data]

Prints each table, writes benchmarks/out/gpu-DEVICE.json and, on CUDA without --quick, the
"gpu" section of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from layertune.config import load_trial
from layertune.train import Trial

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import measure  # noqa: E402
from results_table import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
SYNTHETIC = {"data.name": "synthetic", "data.root": None, "data.synthetic_samples": 2048}
STEP_CASES = {  # name: (trial file, overrides)
    "mlp-12 / MNIST, batch 100": ("trials/mnist_mlp.yaml", {}),
    "cnn1d-8 / MNIST-1D, batch 100": ("trials/mnist1d_cnn.yaml", {}),
    "resnet20 / synthetic 32x32, batch 128": (
        "trials/cifar10_resnet56.yaml", {**SYNTHETIC, "model.name": "resnet20"}),
    "resnet56 / synthetic 32x32, batch 128": ("trials/cifar10_resnet56.yaml", SYNTHETIC),
}


def step_table(device: str, quick: bool) -> list[dict]:
    cuda = device.startswith("cuda")
    precision = {"bf16": cuda, "channels_last": cuda}
    # quick: 2 steps, one pass, ResNets on batches of 8 (a CPU takes seconds per full batch)
    steps, repeats, small = (2, 1, {"data.batch_size": 8}) if quick else (40, 3, {})
    rows = []
    for name, (trial, overrides) in STEP_CASES.items():
        shrink = small if "resnet" in name else {}
        if shrink:
            name = name.replace("batch 128", "batch 8")
        row = measure(name, trial, {**overrides, **precision, **shrink}, device, steps, repeats)
        rows.append({**row, **precision})
    return rows


# --- the packing sweep -------------------------------------------------------------------------


class Utilisation:
    """GPU utilisation (%) sampled with NVML every ``period`` s while it runs, or the reason it
    cannot be."""

    def __init__(self, device: str, period: float = 0.5) -> None:
        self.samples: list[int] = []
        self.reason: str | None = None
        self.period = period
        self._stop = threading.Event()
        self._handle = None
        if not device.startswith("cuda"):
            self.reason = "no GPU (--device cpu): GPU utilisation not sampled"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = torch.device(device).index or 0
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as err:  # the module or the driver's library is missing
            self.reason = f"NVML not available ({err}; pip install nvidia-ml-py)"

    def __enter__(self) -> Utilisation:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._handle is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def sweep_row(trial_file: Path, samples: int, share: float, device: str, folder: Path,
              cpus: int) -> dict:
    """One ``layertune sweep`` with ``share`` of a GPU (CUDA) or ``share`` CPUs per trial."""
    cuda = device.startswith("cuda")
    resources = (["--gpus-per-trial", str(share), "--cpus-per-trial", "1"] if cuda
                 else ["--cpus-per-trial", str(share)])
    name = f"pack-{str(share).replace('.', '_')}"
    cmd = [str(Path(sys.executable).parent / "layertune"), "sweep", str(trial_file),
           "--space", str(ROOT / "search_spaces" / "cnn1d.yaml"), "--samples", str(samples),
           "--name", name, "--storage", str(folder / name), "--tracking-uri", "none",
           "--seed", "0", *resources]
    with Utilisation(device) as util:
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    states = _trial_states(folder / name, name)
    concurrent = int(1 / share) if cuda else max(1, int(cpus // share))
    return {"share": share, "unit": "GPU" if cuda else "CPU", "trials": samples,
            "complete": states.get("COMPLETE", 0), "stopped": states.get("PRUNED", 0),
            "concurrent": concurrent, "seconds": seconds,
            "trials_per_hour": 3600 * samples / seconds, "gpu_util_mean": util.mean,
            "gpu_util_samples": len(util.samples), "gpu_util_note": util.reason}


def _trial_states(folder: Path, name: str) -> dict[str, int]:
    """Trials of the sweep's Optuna study by state (PRUNED: stopped by gate collapse)."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")
    return dict(Counter(t.state.name for t in study.trials))


def sweep_table(device: str, quick: bool, epochs: int) -> list[dict]:
    cuda = device.startswith("cuda")
    trial = yaml.safe_load((ROOT / "trials" / "mnist1d_cnn.yaml").read_text())
    trial.update(epochs=epochs, device="cuda" if cuda else "cpu")
    trial["method"]["decide_at"] = min(trial["method"]["decide_at"], epochs - 1)
    if quick:
        trial["data"]["num_samples"] = 600
    # quick on a CPU: one sweep (the path, not the packing; Ray's start costs most of it)
    shares = (1.0, 0.5, 0.25) if cuda else (1.0,) if quick else (2.0, 1.0)
    samples = 2 if quick else 16
    cpus = torch.get_num_threads() if not cuda else 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="layertune-gpu-bench-") as tmp:
        folder = Path(tmp)
        trial_file = folder / "cnn1d.yaml"
        trial_file.write_text(yaml.safe_dump(trial))
        for share in shares:
            row = sweep_row(trial_file, samples, share, device, folder, cpus)
            print(json.dumps(row), flush=True)
            if row["gpu_util_note"]:
                print(row["gpu_util_note"], flush=True)
            rows.append(row)
    return rows


# --- the data path -----------------------------------------------------------------------------


def data_table(device: str, steps: int) -> list[dict]:
    """Training examples/s of cnn1d-8 fed by its TensorLoader and by a DataLoader."""
    trial = Trial(load_trial("trials/mnist1d_cnn.yaml", {"device": device}))
    dev = trial.device
    resident = trial.data.train
    host = DataLoader(TensorDataset(resident.x.cpu(), resident.y.cpu()),
                      batch_size=resident.batch_size, shuffle=True,
                      pin_memory=dev.type == "cuda")

    def feed(loader, move: bool) -> float:
        seen, done = 0, 0
        _sync(dev)
        start = time.perf_counter()
        while done < steps:
            for x, y in loader:
                if move:
                    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                trial.step(x, y)
                seen, done = seen + len(y), done + 1
                if done == steps:
                    break
        _sync(dev)
        return seen / (time.perf_counter() - start)

    trial.model.train()
    feed(resident, False)  # warm-up
    rows = [{"loader": "TensorLoader (on the device)", "examples_per_s": feed(resident, False)},
            {"loader": "DataLoader (host, pinned, per-batch copy)" if dev.type == "cuda"
             else "DataLoader (host)", "examples_per_s": feed(host, True)}]
    for r in rows:
        r["steps"] = steps
        print(json.dumps(r), flush=True)
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the report --------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    lines = []
    if "steps" in result:
        lines += ["| network | gated step ms | plain step ms | ratio | ratio, gates fixed |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['gated_step_ms']:.2f} | {r['plain_step_ms']:.2f} | "
                  f"{r['step_ratio']:.3f} | {r['fixed_ratio']:.3f} |" for r in result["steps"]]
        lines.append("")
    if "sweep" in result:
        lines += ["| per trial | trials at once | trials | seconds | trials / hour | "
                  "GPU utilisation % |", "|---|---|---|---|---|---|"]
        for r in result["sweep"]:
            util = "-" if r["gpu_util_mean"] is None else f"{r['gpu_util_mean']:.0f}"
            lines.append(f"| {r['share']:g} {r['unit']} | {r['concurrent']} | {r['trials']} "
                         f"({r['complete']} complete, {r['stopped']} stopped) | "
                         f"{r['seconds']:.0f} | {r['trials_per_hour']:.0f} | {util} |")
        lines.append("")
    if "data" in result:
        lines += ["| data path | training examples / s |", "|---|---|"]
        lines += [f"| {r['loader']} | {r['examples_per_s']:.0f} |" for r in result["data"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="CPU scale: a test's minute")
    parser.add_argument("--parts", nargs="+", default=["steps", "sweep", "data"],
                        choices=["steps", "sweep", "data"])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device (use --device cpu)")
    started = time.perf_counter()
    result: dict = {"device": args.device, "quick": args.quick, "torch": torch.__version__,
                    "device_name": (torch.cuda.get_device_name(args.device)
                                    if args.device.startswith("cuda") else "CPU")}
    if "steps" in args.parts:
        result["steps"] = step_table(args.device, args.quick)
    if "sweep" in args.parts:
        result["sweep"] = sweep_table(args.device, args.quick, epochs=2 if args.quick else 5)
    if "data" in args.parts:
        result["data"] = data_table(args.device, 5 if args.quick else 200)
    result["seconds"] = time.perf_counter() - started
    table = markdown(result)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    kind = args.device.split(":")[0]
    (args.out / f"gpu-{kind}{'-quick' if args.quick else ''}.json").write_text(
        json.dumps(result, indent=2))
    if kind == "cuda" and not args.quick:
        write_section("gpu", (
            f"## GPU packing ({result['device_name']})\n\n`.venv/bin/python benchmarks/gpu.py "
            f"--device {args.device}`; torch {torch.__version__}; {result['seconds']:.0f} s in "
            "all. Steps: bf16 autocast and channels_last, median of 3 passes over 40 steps. "
            "Sweep: 16 cnn1d trials (trials/mnist1d_cnn.yaml, 5 epochs, search_spaces/cnn1d.yaml,"
            " gate collapse).\n\n" + table + "\n"))
    return result


if __name__ == "__main__":
    main()
