"""Does ``torch.compile`` make the gates' data gradient cheaper? (issue 13, item 2)

While the gates learn, every step reads dL/dz from the weights' gradients (Euler's theorem,
``gates.euler_dz``): a product and a sum per homogeneous tensor, each a small
kernel. This times that call eagerly and compiled (inductor, ``dynamic=False``) on the
gradients of a few real steps, and reports the compile time.

    .venv/bin/python benchmarks/gate_compile.py [--device cpu] [--threads 1]

Prints a Markdown table and writes benchmarks/out/gate_compile-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from layertune.config import load_trial
from layertune.gates import euler_dz
from layertune.train import Trial

try:
    from overhead import _paired
except ImportError:  # imported as benchmarks.gate_compile
    from benchmarks.overhead import _paired

OUT = Path(__file__).resolve().parent / "out"
CASES = {"mlp-12 / MNIST": "trials/mnist_mlp.yaml",
         "cnn1d-8 / MNIST-1D": "trials/mnist1d_cnn.yaml"}


def measure(name: str, trial_file: str, device: str, calls: int) -> dict:
    trial = Trial(load_trial(trial_file, {"device": device}))
    batches = iter(trial.data.train)
    for _ in range(3):
        x, y = next(batches)
        trial.step(x.to(trial.device), y.to(trial.device))
    params, owner_map = trial.gates._euler
    args = ([p.detach() for p in params], [p.grad for p in params], owner_map)
    compiled = torch.compile(euler_dz, dynamic=False)
    start = time.perf_counter()
    same = torch.allclose(compiled(*args), euler_dz(*args), rtol=1e-4, atol=1e-6)
    compile_s = time.perf_counter() - start
    pairs = [(None, None)] * calls  # overhead.py's timer calls fn(x, y) per pair
    compiled_s, eager_s, ratio, _ = _paired(lambda x, y: compiled(*args),
                                            lambda x, y: euler_dz(*args),
                                            pairs, trial.device, repeats=5)
    row = {"case": name, "device": str(trial.device), "tensors": len(params),
           "eager_us": 1e6 * eager_s, "compiled_us": 1e6 * compiled_s,
           "compiled_over_eager": ratio, "compile_s": compile_s, "same_result": same}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on the CPU (0: torch's default)")
    parser.add_argument("--calls", type=int, default=200, help="calls per timed pass")
    args = parser.parse_args()
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(name, f, args.device, args.calls) for name, f in CASES.items()]
    print(f"\ntorch {torch.__version__}, {args.device}, {torch.get_num_threads()} torch threads\n")
    print("| network | homogeneous tensors | dL/dz eager, µs | compiled, µs | compiled / eager "
          "| compile s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['tensors']} | {r['eager_us']:.0f} | {r['compiled_us']:.0f} "
              f"| {r['compiled_over_eager']:.2f} | {r['compile_s']:.1f} |")
    OUT.mkdir(exist_ok=True)
    key = args.device.split(":")[0]
    (OUT / f"gate_compile-{key}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
