"""The from-scratch grid: one gates-fixed config per depth, same training otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sweep_files import assert_refused

from layertune.baseline import depth_grid, max_depth
from layertune.config import ConfigError, load_trial
from layertune.models import build_model
from layertune.train import Trial

ROOT = Path(__file__).resolve().parent.parent


def _trial(name: str, **overrides: object):
    return load_trial(ROOT / "trials" / name, dict(overrides))


def test_cnn1d_grid_is_every_depth_0_to_L_with_gates_fixed() -> None:
    config = _trial("mnist1d_cnn.yaml")
    grid = depth_grid(config)
    assert len(grid) == 9 and max_depth(config) == 8
    assert [p.sections for p in grid] == list(range(9))
    assert grid[0].config.method.gates == "removed"
    assert all(p.config.method.gates == "fixed" for p in grid[1:])
    assert [p.config.model.depth for p in grid[1:]] == list(range(1, 9))


def test_grid_changes_nothing_but_the_depth_and_the_gates() -> None:
    config = _trial("mnist1d_cnn.yaml", epochs=7, seed=3)
    for point in depth_grid(config):
        raw, base = point.config.model_dump(), config.model_dump()
        raw["method"].pop("gates"), base["method"].pop("gates")
        raw["model"].pop("depth"), base["model"].pop("depth")
        assert raw == base


def test_resnet_grid_is_every_equal_number_of_blocks_per_stage() -> None:
    config = _trial("mnist_resnet20.yaml")
    grid = depth_grid(config)
    assert [p.sections for p in grid] == [0, 3, 6, 9]
    assert [p.config.model.blocks_per_stage for p in grid[1:]] == [1, 2, 3]
    assert all(p.config.model.name == "resnet20" for p in grid)
    assert [p.config.method.gates for p in grid] == ["removed", "fixed", "fixed", "fixed"]
    resnet56 = depth_grid(config.with_overrides({"model.name": "resnet56"}))
    assert [p.sections for p in resnet56] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]


def test_each_grid_network_has_the_sections_it_is_listed_with() -> None:
    for name in ("mnist1d_cnn.yaml", "mnist_resnet20.yaml"):
        for point in depth_grid(_trial(name)):
            in_shape = (1, 40) if name.startswith("mnist1d") else (1, 28, 28)
            net = build_model(point.config.model, in_shape, 10)
            if point.config.method.gates == "removed":
                assert point.sections == 0
            else:
                assert len(net.sections) == point.sections
            assert net(torch.zeros(2, *in_shape)).shape == (2, 10)


def test_depth_zero_trains_the_network_with_every_section_removed() -> None:
    config = _trial("digits_mlp.yaml", epochs=1)
    zero = depth_grid(config)[0].config
    trial = Trial(zero)
    assert all(s.pruned for s in trial.model.sections)
    assert trial.metrics(0.0)["active_layers"] == 0


def test_models_without_a_grid_say_so() -> None:
    with pytest.raises(ValueError, match="lenet5: no from-scratch grid"):
        depth_grid(_trial("mnist_lenet5.yaml"))


def test_blocks_per_stage_is_for_cifar_resnets_only() -> None:
    with pytest.raises(ConfigError, match="blocks_per_stage"):
        _trial("mnist_resnet20.yaml", **{"model.name": "resnet18", "model.blocks_per_stage": 2})


# --- `layertune baseline`: bad input is one line and exit 2, before Ray starts ---------------

DIGITS = str(ROOT / "trials" / "digits_mlp.yaml")
BAD = {
    "missing trial file": (["nope.yaml"], ["nope.yaml", "not found"]),
    "model without a grid": ([str(ROOT / "trials" / "mnist_lenet5.yaml")],
                             ["lenet5", "no from-scratch grid"]),
    "bad --set": ([DIGITS, "--set", "epochs"], ["--set epochs"]),
    "unknown --set key": ([DIGITS, "--set", "optimzer.lr=0.1"], ["optimzer"]),
    "negative cpus": ([DIGITS, "--cpus-per-trial", "-1"], ["--cpus-per-trial"]),
    "name with a slash": ([DIGITS, "--name", "a/b"], ["--name"]),
    "tracking uri": ([DIGITS, "--tracking-uri", "ftp://x"], ["--tracking-uri"]),
    "another config's baseline": ([DIGITS, "--name", "other", "--storage", "{tmp}/other"],
                                  ["other", "epochs", "--recompute"]),
    "a sweep's folder": ([DIGITS, "--storage", "{tmp}/sweep"], ["holds a sweep"]),
    "object storage": ([DIGITS, "--storage", "s3://bucket/prefix"], ["--storage", "local"]),
    "workers": ([DIGITS, "--workers-per-trial", "2"], ["--workers-per-trial 2", "one process"]),
    "a data factory": ([DIGITS, "--set", "data={factory: 'pkg.mod:fn'}"], ["data.factory"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_baseline_bad_input_is_one_line_exit_2_and_starts_nothing(case, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    config = _trial("digits_mlp.yaml", epochs=99).model_dump(mode="json")
    (tmp_path / "other" / "baseline.json").write_text(json.dumps(
        {"name": "other", "config": config, "rows": [], "created": "2026-01-01"}))
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv, words = BAD[case]
    assert_refused(["baseline", *[a.replace("{tmp}", str(tmp_path)) for a in argv]], words,
                   capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
