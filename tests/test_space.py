"""Search-space YAML: the shipped files load; bad files give one line naming file and key."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest

from layertune.config import ConfigError, load_trial, validate
from layertune.space import (
    DefineByRun,
    SamplerConfig,
    check_parameters,
    covered_values,
    covering_points,
    load_space,
    make_sampler,
    max_epochs,
    parse_space,
    spread,
    trial_values,
)

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
TRIAL_FILES = Path(__file__).resolve().parent.parent / "trials"

# A trial config each shipped space is meant for (small, so validation is all that happens).
TRIALS = {
    "cnn1d": {"data": {"name": "mnist1d"}, "model": {"name": "cnn1d", "depth": 8}},
    "mlp": {"data": {"name": "digits"}, "model": {"name": "mlp", "depth": 4}},
    "lenet5": {"data": {"name": "mnist"}, "model": {"name": "lenet5"}},
    "vgg16": {"data": {"name": "cifar10"}, "model": {"name": "vgg16"}},
    "resnet": {"data": {"name": "cifar10"}, "model": {"name": "resnet20"}},
    "resnet20_depth": {"data": {"name": "mnist"}, "model": {"name": "resnet20"}},
    "default": {"data": {"name": "digits"}, "model": {"name": "mlp"}},
    "prior_weight": {"data": {"name": "digits"}, "model": {"name": "mlp"}},
}


def test_every_file_is_shipped():
    assert {p.stem for p in SPACES.glob("*.yaml")} >= set(TRIALS)


@pytest.mark.parametrize("name", sorted(TRIALS))
def test_shipped_spaces_load_and_fit_their_trials(name):
    space = load_space(SPACES / f"{name}.yaml")
    check_parameters(space, validate(TRIALS[name], "test"), f"{name}.yaml")
    assert space.metrics[0] == "val_accuracy" and space.modes[0] == "max"


def test_the_demo_space_fits_the_demo_trial():
    from layertune.config import load_trial

    trial = load_trial(SPACES.parent / "trials" / "mnist1d_cnn.yaml")
    check_parameters(load_space(SPACES / "cnn1d.yaml"), trial, "cnn1d.yaml")


def test_defaults():
    space = parse_space({"parameters": {"optimizer.lr": {"type": "float", "low": 0.01,
                                                          "high": 0.1}}}, "x.yaml")
    assert space.metrics == ["val_accuracy", "active_layers"]
    assert space.modes == ["max", "min"]
    assert space.sampler.name == "nsga2" and space.sampler.seed == 0


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


BAD = [
    # (yaml, words the one-line message must hold)
    ("parameters: {}\n", ["parameters"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.1, high: 0.01}\n",
     ["parameters.optimizer.lr", "below high"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0, high: 1, log: true}\n",
     ["parameters.optimizer.lr", "low > 0"]),
    ("parameters:\n  optimizer.lr: {type: real, low: 0, high: 1}\n",
     ["parameters.optimizer.lr", "float"]),
    ("parameters:\n  optimizer.lr: {low: 0, high: 1}\n", ["parameters.optimizer.lr", "type"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1, steps: 3}\n",
     ["parameters.optimizer.lr.steps", "unknown key"]),
    ("parameters:\n  model.width: {type: categorical, choices: []}\n",
     ["parameters.model.width.choices"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "objectives: [{metric: accuracy, mode: max}]\n", ["objectives.0.metric", "val_accuracy"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "objectives: [{metric: val_accuracy, mode: maximize}]\n", ["objectives.0.mode", "max"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "objectives: [{metric: flops, mode: min}, {metric: flops, mode: min}]\n",
     ["objectives", "twice"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "sampler: {name: cmaes}\n", ["sampler.name", "nsga2"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "sampler: {name: tpe, population_size: 8}\n", ["sampler", "nsga2"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "scheduler: {reduction_factor: 1}\n", ["scheduler.reduction_factor"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "scheduler: {settle_std: -0.01}\n", ["scheduler.settle_std"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "scheduler: {settle_epochs: 1}\n", ["scheduler.settle_epochs"]),
    ("parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 1}\n"
     "scheduler: {settle_cooldown: -1}\n", ["scheduler.settle_cooldown"]),
    ("parameters: [1, 2]\n", ["parameters"]),
    ("- just a list\n", ["(top level)"]),
    ("parameters: {a: [}\n", ["line"]),
]


@pytest.mark.parametrize(("text", "words"), BAD)
def test_bad_files_give_one_line_naming_file_and_key(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    for w in words:
        assert w in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("param", "words"),
    [
        ("method.no_such_knob: {type: float, low: 0.1, high: 1}", ["method.no_such_knob",
                                                                   "unknown key"]),
        ("method.spike_ratio: {type: float, low: 0.1, high: 2.0}", ["method.spike_ratio"]),
        ("model.width: {type: int, low: 8, high: 64}", ["model.width", "unknown key"]),
        ("optimizer.name: {type: categorical, choices: [sgd, lbfgs]}", ["optimizer.name",
                                                                        "lbfgs"]),
    ],
)
def test_keys_and_ranges_are_checked_against_the_trial_config(tmp_path, param, words):
    path = write(tmp_path, f"parameters:\n  {param}\n")
    trial = validate(TRIALS["cnn1d"], "t.yaml")  # cnn1d has no model.width
    with pytest.raises(ConfigError) as info:
        check_parameters(load_space(path), trial, str(path))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))
    for w in words:
        assert w in msg, msg


def test_define_by_run_suggests_every_parameter_in_range():
    space = parse_space({"parameters": {
        "optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
        "model.depth": {"type": "int", "low": 2, "high": 8, "step": 2},
        "optimizer.name": {"type": "categorical", "choices": ["sgd", "adamw"]},
    }}, "x.yaml")
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(space.sampler, seed=3))
    fn = DefineByRun(space)
    for _ in range(10):
        t = study.ask()
        fn(t)
        p = t.params
        assert 0.01 <= p["optimizer.lr"] <= 0.1
        assert p["model.depth"] in (2, 4, 6, 8)
        assert p["optimizer.name"] in ("sgd", "adamw")
        study.tell(t, [0.5, 3])


def test_random_sampler_with_a_seed_repeats_its_configurations():
    space = load_space(SPACES / "cnn1d.yaml")
    runs = []
    for _ in range(2):
        sampler = make_sampler(space.sampler.model_copy(update={"name": "random",
                                                                "population_size": None}), 7)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        params = []
        for i in range(4):
            t = study.ask()
            DefineByRun(space)(t)
            params.append(t.params)
            study.tell(t, [0.1 * i, 8 - i])
        runs.append(params)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("name, cls", [
    ("nsga2", optuna.samplers.NSGAIISampler),
    ("tpe", optuna.samplers.TPESampler),
    ("random", optuna.samplers.RandomSampler),
])
def test_each_name_gives_its_sampler_and_the_command_line_seed_wins(name, cls):
    def first_values(sampler: optuna.samplers.BaseSampler) -> list[float]:
        study = optuna.create_study(sampler=sampler)
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(3)]

    config = SamplerConfig(name=name, seed=1)
    assert isinstance(make_sampler(config), cls)
    assert first_values(make_sampler(config, seed=7)) == first_values(make_sampler(
        SamplerConfig(name=name, seed=7)))
    assert first_values(make_sampler(config, seed=7)) != first_values(make_sampler(config))


def test_nsga2_takes_the_population_size():
    from layertune.space import SamplerConfig

    sampler = make_sampler(SamplerConfig(name="nsga2", population_size=6))
    assert sampler._population_size == 6


def test_max_epochs_sees_a_searched_epochs():
    trial = validate({**TRIALS["cnn1d"], "epochs": 7}, "t")
    base = parse_space({"parameters": {"optimizer.lr": {"type": "float", "low": 0.01,
                                                         "high": 0.1}}}, "x")
    assert max_epochs(base, trial) == 7
    searched = parse_space({"parameters": {"epochs": {"type": "int", "low": 3, "high": 12}}},
                           "x")
    assert max_epochs(searched, trial) == 12


# --- cover: true: each value once, in the first trials ----------------------------------------


def test_spread_puts_both_ends_first_then_halves_the_widest_gap():
    assert spread(list(range(9))) == [0, 8, 4, 2, 6, 1, 3, 5, 7]
    for n in range(1, 20):
        order = spread(list(range(n)))
        assert sorted(order) == list(range(n))  # each value once
        if n > 1:
            assert order[:2] == [0, n - 1]
        for k in range(3, n + 1):  # every prefix leaves no gap wider than twice the best one
            taken = sorted(order[:k])
            widest = max(b - a for a, b in zip(taken, taken[1:], strict=False))
            assert widest <= 2 * -(-(n - 1) // (k - 1))


def test_covering_points_are_every_value_of_each_covered_parameter_combined():
    space = parse_space({"parameters": {
        "model.depth": {"type": "int", "low": 2, "high": 8, "step": 3, "cover": True},
        "optimizer.name": {"type": "categorical", "choices": ["sgd", "adamw"], "cover": True},
        "optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1},
        "method.prior_scale": {"type": "int", "low": 1, "high": 3},
    }}, "x.yaml")
    points = covering_points(space)
    assert points == [{"model.depth": d, "optimizer.name": o}
                      for d in (2, 8, 5) for o in ("sgd", "adamw")]
    assert covering_points(parse_space({"parameters": {"model.depth": {
        "type": "int", "low": 2, "high": 8}}}, "x.yaml")) == []


def test_cover_on_a_float_is_refused_with_one_line(tmp_path):
    path = write(tmp_path, "parameters:\n  optimizer.lr: {type: float, low: 0.01, high: 0.1, "
                           "cover: true}\n")
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert str(err.value) == f"{path}: parameters.optimizer.lr.cover: unknown key"


def test_the_demo_space_covers_every_depth_first():
    space = load_space(SPACES / "cnn1d.yaml")
    depths = [p["method.decide_sections"] for p in covering_points(space)]
    assert sorted(depths) == list(range(9))


def test_a_sweep_of_fewer_trials_covers_evenly_spaced_values_both_ends_kept():
    space = parse_space({"parameters": {
        "method.decide_sections": {"type": "int", "low": 0, "high": 9, "cover": True}}}, "x")
    depths = [p["method.decide_sections"] for p in covering_points(space, samples=4)]
    assert depths == [0, 9, 3, 6]  # spread order: every prefix spans the range
    assert [p["method.decide_sections"] for p in covering_points(space, samples=2)] == [0, 9]
    assert len(covering_points(space, samples=30)) == 10  # more trials: every value once


def test_several_covered_parameters_take_the_first_combinations_of_the_spread_order():
    space = parse_space({"parameters": {
        "a": {"type": "int", "low": 0, "high": 1, "cover": True},
        "b": {"type": "categorical", "choices": ["x", "y"], "cover": True}}}, "x")
    assert covering_points(space, samples=3) == covering_points(space)[:3]


def test_a_covered_categorical_keeps_its_listed_order_whatever_its_types():
    space = parse_space({"parameters": {"model.width": {
        "type": "categorical", "choices": ["auto", 16, 32, 64, 128], "cover": True}}}, "x")
    assert covered_values(space, samples=3) == {"model.width": ["auto", 32, 128]}
    assert covered_values(space) == {"model.width": ["auto", 16, 32, 64, 128]}


def test_covering_trials_take_the_trial_configs_other_values_where_the_space_allows_them():
    space = parse_space({"parameters": {
        "method.decide_sections": {"type": "int", "low": 0, "high": 8, "cover": True},
        "optimizer.lr": {"type": "float", "low": 0.02, "high": 0.1, "log": True},
        "optimizer.momentum": {"type": "float", "low": 0.0, "high": 0.5},  # trial's 0.9: out
        "epochs": {"type": "int", "low": 10, "high": 30, "step": 4}},  # trial's 20: off step
    }, "x.yaml")
    trial = load_trial(TRIAL_FILES / "mnist1d_cnn.yaml")
    assert trial.optimizer.lr == 0.05 and trial.optimizer.momentum == 0.9
    points = covering_points(space, samples=3, trial=trial)
    assert points == [{"method.decide_sections": d, "optimizer.lr": 0.05} for d in (0, 8, 4)]
    # the sampler draws what the trial config cannot give, and everything with cover_others
    assert covering_points(space.model_copy(update={"cover_others": "sampler"}), samples=3,
                           trial=trial) == covering_points(space, samples=3)
    assert trial_values(space, trial) == {"optimizer.lr": 0.05}


def test_a_categorical_takes_the_trial_configs_value_only_if_it_is_one_of_the_choices():
    trial = load_trial(TRIAL_FILES / "mnist1d_cnn.yaml")
    listed = parse_space({"parameters": {
        "optimizer.name": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "method.decide_sections": {"type": "int", "low": 0, "high": 2, "cover": True}}}, "x")
    assert trial_values(listed, trial) == {"optimizer.name": "sgd"}
    unlisted = parse_space({"parameters": {
        "optimizer.name": {"type": "categorical", "choices": ["adamw"]}}}, "x")
    assert trial_values(unlisted, trial) == {}


@pytest.mark.parametrize("name", ["nsga2", "tpe", "random"])
def test_every_sampler_survives_a_pickle_round_trip_as_tunes_snapshot_takes_it(name):
    sampler = make_sampler(SamplerConfig(name=name))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("d", 0, 8)), n_trials=3)
    copy = pickle.loads(pickle.dumps(sampler))
    assert type(copy) is type(sampler)
    study.sampler = copy
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("d", 0, 8)), n_trials=2)
    assert len(study.trials) == 5
