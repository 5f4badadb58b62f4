"""The examples run: a few minibatches each, small batches (the real runs: docs/results.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, argv, gated", [
    ("resnet18_mnist", ["--epochs", "1", "--steps", "2", "--batch-size", "16"], 5),
    ("vit_mnist", ["--epochs", "1", "--steps", "3", "--batch-size", "32", "--depth", "3",
                   "--decide-at", "1", "--tolerance", "0.9"], 3),
    ("char_transformer", ["--epochs", "1", "--steps", "3", "--batch-size", "16", "--depth", "3",
                          "--dim", "32", "--seq", "32", "--megabytes", "0.05",
                          "--tolerance", "0.9"], 3),
])
def test_example_learns_gates_decides_and_strips(name, argv, gated, capsys):
    out = _load(name).main(argv)
    assert out["gated"] == gated and 0 <= out["kept"] <= gated
    assert len(out["removed"]) == gated - out["kept"]
    # the stripped network is the user's own class with the removed blocks deleted, and it
    # gives the gated network's accuracy
    assert out["compact_accuracy"] == out["val_accuracy"]
    assert "epoch 1:" in capsys.readouterr().out


def test_example_baseline_has_no_gates():
    out = _load("vit_mnist").main(["--gates", "fixed", "--epochs", "1", "--steps", "2",
                                   "--batch-size", "32", "--depth", "2"])
    assert "kept" not in out and 0.0 <= out["val_accuracy"] <= 1.0

