"""Inference latency of the compact networks where they are deployed (issue 17).

For each network, the full gated network with every gate at 1 and compact networks at several
depths (sections removed evenly, the first kept), each run in eager torch, as the program
``torch.export`` wrote (``.pt2``, loaded back) and in ONNX Runtime (``.onnx``, loaded back), at
batch 1 and batch 64, with 1 thread and with the default thread count. A time is the median of
many runs (after warm-up; at least ``--min-runs``, more until ``--budget`` seconds). Next to
each: the ratio to the full network in the same runtime, and the FLOPs ratio, so the table shows
how much of the FLOPs saving each runtime turns into time. Weights are random (He init) with
normalisation in eval mode: latency does not depend on their values.

    .venv/bin/python benchmarks/inference.py               # cnn1d-8, resnet20, resnet56
    .venv/bin/python benchmarks/inference.py --budget 0.2  # quicker, noisier

Prints the tables, writes ``benchmarks/out/inference.json`` and the "inference" section of
docs/results.md. No timed asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch

from layertune.export import compact
from layertune.flops import flop_table
from layertune.formats import example_input, load_network, write_network
from layertune.models import build_from_spec

try:
    from results_table import write_section
except ImportError:  # imported as benchmarks.inference
    from benchmarks.results_table import write_section

OUT = Path(__file__).resolve().parent / "out"
# name: (model spec, depths of the compact networks); the full network has every section
CASES: dict[str, tuple[dict, list[int]]] = {
    "cnn1d-8": ({"name": "cnn1d", "depth": 8, "channels": 32, "in_shape": [1, 40]}, [6, 4, 2]),
    "resnet20": ({"name": "resnet20", "in_shape": [3, 32, 32]}, [6, 3, 1]),
    # 16x16 inputs: a quarter of CIFAR's FLOPs, so the whole run fits in minutes on 2 cores
    "resnet56": ({"name": "resnet56", "in_shape": [3, 16, 16]}, [18, 9, 3]),
}
RUNTIMES = ("eager", "export", "onnx")
BATCHES = (1, 64)


def evenly_kept(sections: int, depth: int) -> list[bool]:
    """``depth`` of ``sections`` kept, spread evenly, the first always kept."""
    chosen = {round(i * sections / depth) for i in range(depth)}
    return [i in chosen for i in range(sections)]


def median_seconds(fn: Callable[[], object], budget: float, min_runs: int) -> tuple[float, int]:
    """Median wall time of ``fn``: at least ``min_runs`` runs, more until ``budget`` seconds;
    past ``10 * budget`` three runs are enough (a contended core can make one run take s)."""
    for _ in range(2):  # warm-up: allocator, ONNX Runtime's first-run planning
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        spent = time.perf_counter() - start
        if (len(times) >= min_runs and spent >= budget) or len(times) >= 2000 or (
                len(times) >= 3 and spent >= 10 * budget):
            return statistics.median(times), len(times)


def write_files(net: torch.nn.Module, in_shape: list[int], folder: Path, tag: str) -> None:
    """The ``.pt2`` and ``.onnx`` a deployment would get, written once for both thread counts."""
    for fmt, suffix in (("export", ".pt2"), ("onnx", ".onnx")):
        if not (folder / f"{tag}{suffix}").exists():
            write_network(net, in_shape, folder / f"{tag}{suffix}", fmt)


def load(runtime: str, net: torch.nn.Module, folder: Path, tag: str, threads: int) -> Callable:
    """The network in ``runtime``, loaded back from its file (eager: ``net`` itself)."""
    if runtime == "eager":
        return net.eval()
    if runtime == "export":
        return load_network(folder / f"{tag}.pt2")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per core)
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(folder / f"{tag}.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})


def measure(case: str, threads: int, args: argparse.Namespace, folder: Path) -> list[dict]:
    spec, depths = CASES[case]
    model = build_from_spec({**spec, "num_classes": 10}).eval()
    sections = len(model.sections)
    table = flop_table(model, tuple(spec["in_shape"]))
    full_flops = table.forward([True] * sections)
    networks = [("full (gated, z = 1)", model, sections, full_flops)]
    for d in depths:
        keep = evenly_kept(sections, d)
        networks.append((f"compact, {d} sections", compact(model, keep), d, table.forward(keep)))
    torch.set_num_threads(threads or args.default_threads)
    rows = []
    for label, net, depth, flops in networks:
        tag = f"{case}-{depth}" + ("-gated" if net is model else "")
        write_files(net, spec["in_shape"], folder, tag)
        for runtime in RUNTIMES:  # one runtime alive at a time: idle ONNX Runtime threads spin
            fn = load(runtime, net, folder, tag, threads)
            for batch in BATCHES:
                x = example_input(spec["in_shape"], batch)
                with torch.no_grad():
                    seconds, runs = median_seconds(lambda fn=fn, x=x: fn(x), args.budget,
                                                   args.min_runs)
                rows.append({"network": case, "label": label, "sections": depth,
                             "total_sections": sections, "flops": flops,
                             "flops_ratio": flops / full_flops, "threads": threads or "default",
                             "batch": batch, "runtime": runtime, "ms": seconds * 1e3,
                             "runs": runs})
                print(json.dumps(rows[-1]), flush=True)
            del fn
    full = {(r["batch"], r["runtime"]): r["ms"] for r in rows if r["label"].startswith("full")}
    for r in rows:
        r["ratio"] = r["ms"] / full[(r["batch"], r["runtime"])]
    return rows


def markdown(rows: list[dict], threads: int | str) -> str:
    """One table per thread setting: a row per network and depth, ms (ratio) per cell."""
    head = " | ".join(f"{rt} b{b} ms (ratio)" for b in BATCHES for rt in RUNTIMES)
    lines = [f"| network | sections | FLOPs ratio | {head} |",
             "|---|---|---|" + "---|" * (len(BATCHES) * len(RUNTIMES))]
    keys = dict.fromkeys((r["network"], r["label"]) for r in rows if r["threads"] == threads)
    for case, label in keys:
        cell = {(r["batch"], r["runtime"]): r for r in rows
                if (r["network"], r["label"], r["threads"]) == (case, label, threads)}
        first = cell[(BATCHES[0], RUNTIMES[0])]
        values = " | ".join(f"{cell[(b, rt)]['ms']:.3g} ({cell[(b, rt)]['ratio']:.2f})"
                            for b in BATCHES for rt in RUNTIMES)
        lines.append(f"| {case} {label} | {first['sections']}/{first['total_sections']} | "
                     f"{first['flops_ratio']:.2f} | {values} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--budget", type=float, default=0.3,
                        help="seconds of timed runs per measurement (default 0.3)")
    parser.add_argument("--min-runs", type=int, default=7)
    args = parser.parse_args()
    args.default_threads = torch.get_num_threads()
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="layertune-inference-") as tmp:
        for threads in (1, 0):  # 0: the default thread count
            for case in args.cases:
                rows += measure(case, threads, args, Path(tmp))
    elapsed = time.perf_counter() - started
    tables = {t: markdown(rows, t) for t in (1, "default")}
    for t, text in tables.items():
        print(f"\n{t} thread(s)\n{text}")
    OUT.mkdir(exist_ok=True)
    (OUT / "inference.json").write_text(json.dumps(rows, indent=2))
    where = (f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
             f"onnxruntime {onnxruntime.__version__}")
    command = "`.venv/bin/python benchmarks/inference.py" + (
        f" --budget {args.budget:g}" if args.budget != 0.3 else "") + (
        f" --cases {' '.join(args.cases)}" if args.cases != list(CASES) else "") + "`"
    write_section("inference", (
        f"## Inference (issue 17)\n\n{command} ({where}; {elapsed / 60:.1f} min). Median "
        f"latency in ms of at least {args.min_runs} runs and {args.budget:g} s of runs per cell "
        f"(3 runs where {10 * args.budget:g} s were spent first; the count of each is in the "
        "JSON); "
        "in brackets the ratio to the full network (every gate at 1) in the same runtime. "
        "`eager`: the network in torch; `export`: the `.pt2` written by `layertune export` and "
        "loaded back with `torch.export.load(...).module()`; `onnx`: the `.onnx` in ONNX "
        "Runtime (CPU provider). Random weights, batch-norm in eval mode; inputs "
        + ", ".join(f"{c} {'x'.join(map(str, CASES[c][0]['in_shape']))}" for c in args.cases)
        + ".\n\n"
        f"One thread (torch and ONNX Runtime):\n\n{tables[1]}\n\n"
        f"Default threads (torch {args.default_threads}, ONNX Runtime one per core):\n\n"
        f"{tables['default']}\n"))


if __name__ == "__main__":
    main()
