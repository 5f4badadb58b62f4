"""benchmarks/versus_scratch.py: the hypervolume it reports, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.versus_scratch import front_hypervolume, main, reuse_grid
from layertune.config import load_trial

ROOT = Path(__file__).resolve().parent.parent

# issue 11: cnn1d on MNIST-1D trained from scratch at depths 0..8, 20 epochs, seed 0
ISSUE_11_GRID = [0.614, 0.965, 0.984, 0.988, 0.990, 0.993, 0.992, 0.993, 0.990]


def test_hypervolume_matches_issue_11_figure_for_the_grid() -> None:
    points = [{"val_accuracy": a, "active_layers": d} for d, a in enumerate(ISSUE_11_GRID)]
    assert front_hypervolume(points, depth=8) == pytest.approx(7.61, abs=0.005)


def test_hypervolume_rewards_a_shallower_point_and_ignores_dominated_ones() -> None:
    full = [{"val_accuracy": 0.9, "active_layers": 8}]
    assert front_hypervolume(full, 8) == pytest.approx(0.8)  # (0.9 - 0.1) x (9 - 8)
    assert front_hypervolume(full + [{"val_accuracy": 0.8, "active_layers": 8}], 8) == \
        pytest.approx(0.8)
    assert front_hypervolume(full + [{"val_accuracy": 0.9, "active_layers": 4}], 8) == \
        pytest.approx(0.8 * 5)


def test_quick_run_on_digits_writes_grid_and_sweep(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "parameters:\n  method.prior_weight: {type: float, low: 0.1, high: 3.0, log: true}\n"
        "objectives:\n  - {metric: val_accuracy, mode: max}\n"
        "  - {metric: active_layers, mode: min}\n"
        "sampler: {name: random, seed: 0}\n")
    out = tmp_path / "out"
    assert main(["--quick", "--trial", str(ROOT / "trials" / "digits_mlp.yaml"),
                 "--space", str(space), "--out", str(out), "--no-docs"]) == 0
    report = json.loads((tmp_path / "versus_scratch-digits_mlp.json").read_text())
    grid = report["grid"]
    assert [r["active_layers"] for r in grid["rows"]] == list(range(7))
    assert report["reference"] == [0.1, 7.0] and report["epochs"] == 2
    # the full network is the unit, and the grid's other networks cost less than it each
    assert 1.0 < grid["train_runs"] < 7.0
    (sweep,) = report["sweeps"]
    assert sweep["seed"] == 0 and sweep["trials"] == 2
    assert sweep["train_runs"] > 0 and sweep["hypervolume"] >= 0
    # --grid-from reuses it for the same trial config only
    config = load_trial(ROOT / "trials" / "digits_mlp.yaml", {"epochs": 2})
    path = str(tmp_path / "versus_scratch-digits_mlp.json")
    assert reuse_grid(path, config) == grid["rows"]
    with pytest.raises(SystemExit, match="another trial config"):
        reuse_grid(path, config.with_overrides({"epochs": 3}))
    # and the baseline.json of `layertune baseline` (the same grid, as a Tune run)
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"config": config.model_dump(mode="json"),
                                    "rows": [{k: r[k] for k in r if k != "wall_s"}
                                             for r in grid["rows"]]}))
    assert [r["val_accuracy"] for r in reuse_grid(str(baseline), config)] == \
        [r["val_accuracy"] for r in grid["rows"]]
