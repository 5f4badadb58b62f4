"""One trial end to end: the CLI, the report contract, checkpoints, cost, bad config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layertune.cli import main
from layertune.config import load_trial
from layertune.contract import REPORT_EXTRA, REPORT_NUMBERS
from layertune.export import compact, load_compact
from layertune.train import Trial, run_trial

DIGITS = "trials/digits_mlp.yaml"
CONTRACT = {
    "epoch", "val_accuracy", "val_loss", "train_loss", "active_layers", "total_layers",
    "undecided_layers", "collapsed", "flops", "params", "train_flops", "epoch_seconds", "theta",
}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    assert main(["train", DIGITS, "--out", str(out)]) == 0
    return out


def test_cli_train_writes_result_and_compact_model(digits_run: Path) -> None:
    result = json.loads((digits_run / "result.json").read_text())
    assert set(result) >= {"config", "final", "history", "pruned_at"}
    epochs = result["config"]["epochs"]
    assert [h["epoch"] for h in result["history"]] == list(range(1, epochs + 1))
    assert set(result["final"]) >= CONTRACT and result["final"] == result["history"][-1]
    assert set(result["final"]) == {*REPORT_NUMBERS, *REPORT_EXTRA}  # nothing off the contract
    final = result["final"]
    assert final["active_layers"] + len(result["pruned_at"]) <= final["total_layers"]

    exported = torch.export.load(str(digits_run / "model.pt2")).module()  # the default format
    rebuilt = load_compact(digits_run / "model")
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(exported(x), rebuilt(x), atol=1e-6)
    assert not (digits_run / "model.pt").exists()  # TorchScript only on request
    arch = json.loads((digits_run / "model.json").read_text())
    assert sum(arch["keep"]) == final["active_layers"]


def test_digits_run_prunes_and_keeps_its_accuracy(digits_run: Path) -> None:
    final = json.loads((digits_run / "result.json").read_text())["final"]
    assert final["active_layers"] < final["total_layers"]
    assert final["val_accuracy"] > 0.9


def test_gates_left_inside_after_the_last_epoch_are_decided(tmp_path: Path, capsys) -> None:
    # gates start at 0.5 and barely move in one epoch: all are still inside (0, 1) at its end
    undecided = ["--set", "epochs=1", "--set", "method.theta_init=0.5",
                 "--set", "method.theta_lr=1e-4"]
    assert main(["train", DIGITS, "--out", str(tmp_path / "a"), *undecided]) == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    final = result["final"]
    assert final["undecided_layers"] == 0 and set(final["theta"]) <= {0.0, 1.0}
    assert final["decided_at_end"] == final["total_layers"] == len(result["decided_at_end"])
    assert all(0.4 < t < 0.6 for t in result["decided_at_end"].values())
    assert "set to the vertex where the objective is lower" in capsys.readouterr().out

    assert main(["train", DIGITS, "--out", str(tmp_path / "b"), *undecided,
                 "--set", "method.decide_at_end=false"]) == 0
    kept_inside = json.loads((tmp_path / "b" / "result.json").read_text())
    assert kept_inside["final"]["undecided_layers"] == final["total_layers"]
    assert kept_inside["decided_at_end"] == {}


def test_pruning_makes_training_cheaper() -> None:
    """Property 7 in FLOPs: pruned sections leave the optimiser and later steps cost less."""
    config = load_trial(DIGITS)
    trial = Trial(config)
    full_step = trial.flops.training_step([True] * len(trial.model.sections), 64)
    per_epoch = []
    for _ in range(config.epochs):
        before = trial.train_flops
        trial.train_epoch()
        per_epoch.append(trial.train_flops - before)
    pruned = [s for s in trial.model.sections if s.pruned]
    assert pruned, "the digits recipe prunes at least one section"
    live = {id(p) for g in trial.optimizer.param_groups for p in g["params"]}
    assert live == {id(p) for p in trial.model.parameters()}  # pruned weights left the optimiser
    assert live >= {id(t) for t in trial.gates.prior.tensors}
    assert per_epoch[-1] < per_epoch[0]
    assert trial.flops.forward(trial.keep()) < trial.flops.forward([True] * len(trial.keep()))
    assert per_epoch[0] <= len(trial.data.train) * full_step


def test_checkpoint_resume_continues_the_same_trial(tmp_path: Path) -> None:
    config = load_trial(DIGITS, {"epochs": 5})
    saved = tmp_path / "ckpt"
    reports: list[dict] = []

    class Stop(Exception):
        pass

    def report(metrics: dict, folder: str | None) -> None:
        reports.append(metrics)
        if metrics["epoch"] == 3:
            shutil.copytree(folder, saved)
            raise Stop

    with pytest.raises(Stop):
        run_trial(config, report, checkpoint=True)
    resumed = run_trial(config, lambda m, c: None, resume_from=str(saved))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.history[:3] == reports[:3]
    uninterrupted = run_trial(config, lambda m, c: None)
    # the gate draws, weights, schedule and the loaders' shuffles all continue: the same run
    assert resumed.final["theta"] == uninterrupted.final["theta"]
    assert resumed.final["val_accuracy"] == uninterrupted.final["val_accuracy"]
    for a, b in zip(resumed.model.state_dict().values(),
                    uninterrupted.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "model.depht=3"], "model.depht"),
        (["--set", "optimizer.lr=-1"], "optimizer.lr"),
        (["--set", "method.spike_ratio=2"], "method.spike_ratio"),
        (["--set", "data.name=svhn"], "data.name"),
        (["--set", "model.name=resnet7"], "model.name"),
        (["--set", "epochs=many"], "epochs"),
        (["--set", "settle.epochs=1"], "settle.epochs"),
        (["--set", "settle.cooldown=-1"], "settle.cooldown"),
        (["--set", "noequals"], "--set"),
        (["--format", "tflite"], "--format tflite"),
        (["--set", "device=cuda:0"] if not torch.cuda.is_available() else ["--set", "seed=x"],
         "device" if not torch.cuda.is_available() else "seed"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(args, message, capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["train", DIGITS, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (out / "result.json").exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cli_train_writes_the_format_asked_for(fmt: str, tmp_path: Path, capsys) -> None:
    from layertune.formats import FORMATS, load_network

    assert main(["train", DIGITS, "--out", str(tmp_path), "--set", "epochs=1",
                 "--format", fmt]) == 0
    path = tmp_path / f"model{FORMATS[fmt]}"
    assert f"{path} ({fmt})" in capsys.readouterr().out
    assert not (tmp_path / "model.pt2").exists()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load_network(path)(x), load_compact(tmp_path / "model")(x),
                              atol=1e-5)


def test_bad_yaml_files(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    assert main(["train", str(broken)]) == 2
    assert "broken.yaml" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_a_diverging_trial_stops_with_a_clear_error(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["train", DIGITS, "--out", str(out), "--set", "optimizer.lr=1e6"]) == 1
    assert "training loss is nan in epoch 1" in capsys.readouterr().err
    assert not (out / "result.json").exists()


def test_console_script_runs() -> None:
    script = Path(sys.executable).parent / "layertune"  # what pip installed for [project.scripts]
    assert script.is_file(), f"no console script next to {sys.executable}"
    done = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True,
                          check=True)
    assert "--set" in done.stdout


def test_compact_of_finished_run_matches_deterministic_network() -> None:
    config = load_trial(DIGITS, {"epochs": 6})
    result = run_trial(config, lambda m, c: None)
    model = result.model.eval()
    model.set_gates([float(k) for k in result.keep])
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert (model(x) - compact(model, result.keep)(x)).abs().max() <= 1e-5
