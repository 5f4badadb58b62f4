"""benchmarks/gpu.py keeps working where no GPU is: ``--device cpu --quick`` runs every part
(step table, packing sweep through ``layertune sweep``, data path) at CPU scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_runs_on_cpu_quick(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick",
         "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=580)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-cpu-quick.json").read_text())
    steps = {r["case"].split(" ")[0]: r for r in result["steps"]}
    assert set(steps) == {"mlp-12", "cnn1d-8", "resnet20", "resnet56"}
    assert all(r["gated_step_ms"] > 0 and r["plain_step_ms"] > 0 and r["fixed_step_ms"] > 0
               for r in steps.values())
    assert [r["share"] for r in result["sweep"]] == [1.0]
    for r in result["sweep"]:  # every trial of each sweep ended (finished or stopped)
        assert r["complete"] + r["stopped"] == r["trials"] == 2
        assert r["gpu_util_mean"] is None and "no GPU" in r["gpu_util_note"]
    assert "no GPU" in done.stdout  # the reason is printed, not only stored
    assert [r["examples_per_s"] > 0 for r in result["data"]] == [True, True]
    assert "| data path |" in done.stdout
