"""The user's own network and data in trials (``model.factory``, ``data.factory``) and in
``layertune.sweep``: checked before Ray starts, trained, exported, and swept on two nodes with
the user's module shipped to the workers from a folder outside the package."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import ray
import torch
from ray_record import ray_reports

import layertune
from layertune.cli import main
from layertune.config import ConfigError, FactoryConfig, validate
from layertune.export import (
    BUNDLE_FILES,
    EXPORT_ERROR,
    compact,
    load_compact,
    save_bundle,
    save_compact,
)
from layertune.factory import check_factories, user_model
from layertune.selection import validation_accuracy
from layertune.tracking.artifacts import copy_model
from layertune.train import run_trial

USER_CODE = Path(__file__).resolve().parent / "user_code" / "digits_net.py"
SPACE = """\
parameters:
  model.kwargs.depth: {type: int, low: 2, high: 4}
sampler: {name: random, seed: 0}
"""


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """The user's module in a folder of its own (not the package, not the tests)."""
    folder = tmp_path / "user"
    folder.mkdir()
    shutil.copy(USER_CODE, folder / USER_CODE.name)
    return folder


def _trial(model: str, data: str = "{factory: 'digits_net:digits'}", epochs: int = 2) -> str:
    return f"model: {model}\ndata: {data}\nepochs: {epochs}\n"


BAD = {
    "no colon": (_trial("{factory: digits_net.net}"), ["model.factory", "pkg.module:function"]),
    "no such module": (_trial("{factory: 'nosuch:net'}"), ["model.factory", "'nosuch'"]),
    "no such function": (_trial("{factory: 'digits_net:nett'}"),
                         ["model.factory", "no attribute 'nett'"]),
    "factory raises": (_trial("{factory: 'digits_net:broken'}"),
                       ["model.factory", "RuntimeError: no weights here"]),
    "unknown keyword": (_trial("{factory: 'digits_net:net', kwargs: {depht: 2}}"),
                        ["model.factory", "depht"]),
    "not a network": (_trial("{factory: 'digits_net:not_a_network'}"),
                      ["model.factory", "nn.Module"]),
    "wrong number of classes": (_trial("{factory: 'digits_net:net', kwargs: {classes: 3}}"),
                                ["model.factory", "(2, 3)", "(2, 10)"]),
    "data of the wrong shape": (_trial("{factory: 'digits_net:net'}",
                                       "{factory: 'digits_net:two_loaders'}"),
                                ["data.factory", "a tuple of 2", "num_classes"]),
    "batches unlike in_shape": (_trial("{factory: 'digits_net:net'}",
                                       "{factory: 'digits_net:digits', kwargs: "
                                       "{in_shape: [8, 8]}}"),
                                ["data.factory", "(64, 64)", "(8, 8)"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_factory_is_one_line_exit_2_before_ray(case, user_folder, monkeypatch, capsys):
    text, words = BAD[case]
    (user_folder / "trial.yaml").write_text(text)
    (user_folder / "space.yaml").write_text(SPACE)
    monkeypatch.chdir(user_folder)  # `layertune sweep` imports the factories from here
    monkeypatch.setattr(sys, "path", list(sys.path))
    code = main(["sweep", "trial.yaml", "--space", "space.yaml", "--name", "bad"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: trial.yaml: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    assert not ray.is_initialized() and not (user_folder / "layertune-runs").exists()


def test_trial_of_factories_trains_and_exports_the_users_network(user_folder, monkeypatch,
                                                                 tmp_path):
    monkeypatch.syspath_prepend(str(user_folder))
    config = validate({"model": {"factory": "digits_net:net", "kwargs": {"depth": 3}},
                       "data": {"factory": "digits_net:digits"}, "epochs": 1,
                       "method": {"prior_weight": 50.0, "theta_lr": 1.0}}, "test")
    reports: list[dict] = []
    result = run_trial(config, lambda m, _: reports.append(m))
    assert reports[-1]["total_layers"] == 3 and 0 <= reports[-1]["active_layers"] <= 3
    assert reports[-1]["flops"] > 0 and reports[-1]["val_accuracy"] > 0.1
    paths = save_compact(result.model, result.keep, tmp_path / "net" / "model")
    rebuilt = load_compact(tmp_path / "net" / "model")  # the factory called again
    assert type(rebuilt).__name__ == "Net"  # the user's own class, removed blocks deleted
    x = torch.randn(4, 64)
    program = torch.export.load(paths["network"]).module()
    assert torch.allclose(rebuilt(x), program(x), atol=1e-5)
    assert sum(not isinstance(b, torch.nn.Identity) for b in rebuilt.blocks) == sum(result.keep)


def test_export_rechecks_on_the_split_the_trial_validated_on(user_folder, monkeypatch):
    # a data factory that splits with torch's global generator: seeded as the trial seeded it
    monkeypatch.syspath_prepend(str(user_folder))
    config = validate({"model": {"factory": "digits_net:net"}, "epochs": 1, "seed": 3,
                       "data": {"factory": "digits_net:digits", "kwargs": {"split_seed": None}}},
                      "test")
    result = run_trial(config, lambda m, _: None)
    torch.manual_seed(1234)  # whatever ran before in the exporting process
    net = compact(result.model, result.keep)
    assert validation_accuracy(net, config) == pytest.approx(result.final["val_accuracy"])


def test_sweep_takes_module_level_functions_only():
    with pytest.raises(ConfigError, match="top level of a module"):
        layertune.sweep(lambda: None, {"name": "digits"}, {"parameters": {}})



def test_sweep_of_a_module_outside_the_package_runs_on_two_nodes(cluster, user_folder,
                                                                 monkeypatch, tmp_path):
    # The driver imports the module from its folder; the workers (cwd and script folder on
    # their path, as Ray sets it) find it only because it is shipped with the job.
    monkeypatch.syspath_prepend(str(user_folder))
    monkeypatch.chdir(tmp_path)
    import digits_net

    storage = tmp_path / "sweep"
    result = layertune.sweep(digits_net.net, digits_net.digits, SPACE_DICT,
                             data_kwargs={"batch_size": 128}, trial={"epochs": 1}, samples=2,
                             name="user", storage=storage, address=cluster[0].address,
                             max_concurrent=2, scheduler="fifo")
    reports = ray_reports(storage)
    assert len(reports) == 2 and all(rows and rows[-1]["epoch"] == 1 for rows in
                                     reports.values())
    assert len({rows[-1]["node_id"] for rows in reports.values()}) == 2  # both nodes
    assert result.front and not result.interrupted
    record = json.loads((storage / "sweep.json").read_text())
    assert record["trial"]["model"] == {"factory": "digits_net:net", "kwargs": {}}
    # the MLflow record holds each trial's compact network, the user's class inside
    client = mlflow.MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("user").experiment_id],
                              "tags.`layertune.kind` = 'trial'")
    assert len(runs) == 2 and all(r.data.tags["compact_model"].startswith("models:/")
                                  for r in runs)
    # export rebuilds the knee's network through the factory and re-checks it on its data
    out = tmp_path / "net.pt2"
    assert main(["export", "user", "--storage", str(storage), "--knee", "-o", str(out)]) == 0
    assert torch.export.load(out).module()(torch.randn(3, 64)).shape == (3, 10)


SPACE_DICT = {"parameters": {"model.kwargs.depth": {"type": "int", "low": 2, "high": 4}},
              "sampler": {"name": "random", "seed": 0}}


def test_a_token_model_trains_counts_flops_and_exports_with_integer_inputs(monkeypatch,
                                                                           tmp_path):
    """The example's decoder-only transformer as factories: int64 inputs, a target per
    position; FLOPs, per-position accuracy and the written network follow."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "examples"))
    seq = 16
    config = validate({
        "model": {"factory": "char_transformer:CharTransformer",
                  "kwargs": {"depth": 2, "dim": 16, "heads": 2, "seq": seq}},
        "data": {"factory": "char_transformer:text_data",
                 "kwargs": {"megabytes": 0.01, "seq": seq, "batch_size": 32}},
        "epochs": 1, "optimizer": {"name": "adamw", "lr": 0.003}}, "test")
    assert check_factories(config, "test") == 256  # the driver's check passes
    reports: list[dict] = []
    result = run_trial(config, lambda m, _: reports.append(m))
    assert reports[-1]["flops"] > 0 and 0.0 < reports[-1]["val_accuracy"] < 1.0
    paths = save_compact(result.model, result.keep, tmp_path / "lm" / "model")
    tokens = torch.randint(0, 256, (3, seq))
    rebuilt = load_compact(tmp_path / "lm" / "model")
    program = torch.export.load(paths["network"]).module()
    assert torch.allclose(rebuilt(tokens), program(tokens), atol=1e-5)


def test_a_network_torch_export_cannot_trace_keeps_its_weights_and_says_why(user_folder,
                                                                            monkeypatch,
                                                                            tmp_path):
    monkeypatch.syspath_prepend(str(user_folder))
    net = user_model(FactoryConfig(factory="digits_net:branchy"), torch.randn(4, 64), 10)
    save_bundle(net, [True, False], {"epochs": 1}, tmp_path / "checkpoint")
    why = (tmp_path / "checkpoint" / EXPORT_ERROR).read_text()
    assert why.startswith("digits_net:branchy: the compact network cannot be written")
    # the trial's run gets the weights and the reason, and no MLflow model
    dest = tmp_path / "model"
    assert not copy_model(ray.tune.Checkpoint.from_directory(tmp_path / "checkpoint"), dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*BUNDLE_FILES, EXPORT_ERROR])


def test_baseline_of_a_factory_model_is_one_line_exit_2(user_folder, monkeypatch, capsys):
    (user_folder / "trial.yaml").write_text(_trial("{factory: 'digits_net:net'}"))
    monkeypatch.chdir(user_folder)
    assert main(["baseline", "trial.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "factory digits_net:net: no from-scratch grid" in err and "\n" not in err, err
