"""The sweep: Pareto/hypervolume helpers, the Optuna searcher, and a real small sweep on CPU.

The real sweep (Ray Tune + Optuna + gate collapse, 8 trials of a small MLP on sklearn's digits,
2 at a time) runs once per module; its front is checked against a brute-force Pareto
computation over the trials that finished, read back from Ray's own ``result.json`` files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sqlite3
from pathlib import Path
from typing import get_args

import optuna
import pytest
import ray
from optuna.trial import TrialState
from ray_record import ray_reports
from sweep_files import digits_trial

from layertune.config import ConfigError, MethodConfig
from layertune.contract import REPEAT_OF
from layertune.front import dominates, format_table, hypervolume, pareto_front
from layertune.search import MAX_REPEATS, SweepSearch, close_running, open_storage
from layertune.space import DefineByRun, make_sampler, parse_space
from layertune.sweep import (
    add_sweep_arguments,
    check_resources,
    plan_sweep,
    run_sweep,
    summary,
    sweep_command,
)
from layertune.sweep.run import covering_text

ROOT = Path(__file__).resolve().parent.parent
OBJ = [("val_accuracy", "max"), ("active_layers", "min")]


# --- front ------------------------------------------------------------------------------------


def brute_front(rows: list[dict], objectives) -> set[int]:
    """Index i is on the front iff no row is at least as good everywhere and better somewhere."""
    def better_or_equal(a, b, key, mode):
        return a[key] >= b[key] if mode == "max" else a[key] <= b[key]

    def strictly(a, b, key, mode):
        return a[key] > b[key] if mode == "max" else a[key] < b[key]

    out = set()
    for i, r in enumerate(rows):
        beaten = any(
            all(better_or_equal(o, r, k, m) for k, m in objectives)
            and any(strictly(o, r, k, m) for k, m in objectives)
            for j, o in enumerate(rows) if j != i
        )
        if not beaten:
            out.add(i)
    return out


def test_pareto_front_matches_brute_force_on_random_sets():
    rng = random.Random(0)
    for _ in range(200):
        rows = [{"val_accuracy": rng.choice([0.5, 0.6, 0.7, 0.8, 0.9]),
                 "active_layers": rng.randint(0, 5), "flops": rng.randint(1, 4)}
                for _ in range(rng.randint(1, 12))]
        for objectives in (OBJ, OBJ + [("flops", "min")]):
            assert set(pareto_front(rows, objectives)) == brute_front(rows, objectives)


def test_pareto_front_keeps_ties_and_drops_non_finite():
    rows = [{"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 2.0},
            {"a": math.nan, "b": 0.0}]
    assert pareto_front(rows, [("a", "max"), ("b", "min")]) == [0, 1]
    assert dominates([0, 0], [0, 1]) and not dominates([0, 1], [0, 1])


def test_hypervolume_2d_by_hand():
    # max accuracy, min layers; reference (0.1, 9)
    rows = [{"val_accuracy": 0.9, "active_layers": 4}, {"val_accuracy": 0.6, "active_layers": 1}]
    # boxes: (0.9-0.1)*(9-4) = 4.0 ; (0.6-0.1)*(9-1) = 4.0 ; overlap (0.6-0.1)*(9-4) = 2.5
    assert hypervolume(rows, OBJ, [0.1, 9]) == pytest.approx(5.5)
    # a point no better than the reference adds nothing; a dominated one adds nothing
    rows += [{"val_accuracy": 0.05, "active_layers": 0}, {"val_accuracy": 0.5, "active_layers": 5}]
    assert hypervolume(rows, OBJ, [0.1, 9]) == pytest.approx(5.5)
    assert hypervolume([], OBJ, [0.1, 9]) == 0.0


def test_hypervolume_3d_against_a_grid_count():
    rng = random.Random(1)
    objectives = [("x", "min"), ("y", "min"), ("z", "max")]
    rows = [{"x": rng.randint(0, 9), "y": rng.randint(0, 9), "z": rng.randint(1, 10)}
            for _ in range(8)]
    ref = [10, 10, 0]
    count = sum(
        any(r["x"] <= x and r["y"] <= y and r["z"] >= z + 1 for r in rows)
        for x, y, z in itertools.product(range(10), range(10), range(10))
    )  # unit cells [x, x+1] x [y, y+1] x [z, z+1] dominated by some row
    assert hypervolume(rows, objectives, ref) == pytest.approx(count)


def test_format_table_aligns():
    text = format_table([{"a": 1, "b": "x"}, {"a": 22.5, "b": None}], ["a", "b"])
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"] and len(lines) == 4
    assert lines[2].startswith("   1") and lines[3].endswith("-")


# --- live view --------------------------------------------------------------------------------


def test_live_view_rows_and_progress(capsys):
    from ray.tune.experiment import Trial

    from layertune.sweep import SweepMonitor

    m = SweepMonitor(total=3, name="demo", interval=0.0)
    m.setup()
    a, b = (Trial("__fake", trial_id=i, config={"optimizer.lr": 0.1}, stub=True) for i in "ab")
    m.on_trial_start(iteration=1, trials=[a, b], trial=a)
    m.on_trial_result(iteration=2, trials=[a, b], trial=a, result={
        "epoch": 3, "val_accuracy": 0.75, "active_layers": 5, "total_layers": 8,
        "undecided_layers": 2, "theta": [0.5] * 8})
    m.on_trial_start(iteration=3, trials=[a, b], trial=b)
    b.run_metadata.last_result = {"epoch": 1, "val_accuracy": 0.1, "active_layers": 0,
                                  "total_layers": 8, "stopped_by": "degenerate",
                                  "stop_reason": "collapsed to 0"}
    m.on_trial_complete(iteration=4, trials=[a, b], trial=b)
    m.on_step_end(iteration=5, trials=[a, b])
    out = capsys.readouterr().out
    assert "trial b stopped by degenerate (collapsed to 0) at epoch 1" in out
    assert "sweep demo: 1/3 trials ended (1 stopped early, 0 failed), 1 running" in out
    row_a = next(line for line in out.splitlines() if line.startswith("a "))
    assert row_a.split() == ["a", "running", "3", "0.75", "5/8", "2"]
    assert "stopped: degenerate" in out
    assert [e[1:] for e in m.events] == [("a", 3)]


# --- the searcher, with real Optuna and sqlite storage ----------------------------------------


def make_searcher(tmp_path: Path, points: list[dict] | None = None) -> SweepSearch:
    space = parse_space({"parameters": {
        "optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1},
        "model.depth": {"type": "int", "low": 1, "high": 5, "cover": bool(points)}}}, "x")
    return SweepSearch(DefineByRun(space), metric=["val_accuracy", "active_layers"],
                       mode=["max", "min"], sampler=make_sampler(space.sampler),
                       study_name="s", storage=open_storage(tmp_path), points_to_evaluate=points)


def test_searcher_tells_optuna_complete_pruned_and_fail(tmp_path):
    s = make_searcher(tmp_path)
    for i in range(6):
        assert "optimizer.lr" in s.suggest(f"t{i}")
    ok = {"val_accuracy": 0.9, "active_layers": 3, "epoch": 5, "flops": 100}
    s.on_trial_complete("t0", result=ok)
    s.on_trial_complete("t1", result={**ok, "stopped_by": "dominated", "stop_reason": "x"})
    s.on_trial_complete("t2", result=ok, error=True)
    s.on_trial_complete("t3", result={**ok, "val_accuracy": math.nan})
    s.on_trial_complete("t4", result=None)  # removed before it ran
    assert close_running(open_storage(tmp_path), "s") == 1  # t5, never told
    s.on_trial_complete("t0", result=ok)  # a repeat is ignored
    study = optuna.load_study(study_name="s", storage=open_storage(tmp_path))
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL,
                      TrialState.PRUNED, TrialState.FAIL]
    assert study.trials[0].values == [0.9, 3.0]
    assert study.trials[0].user_attrs["flops"] == 100
    assert study.trials[1].user_attrs["stopped_by"] == "dominated"
    assert [t.number for t in study.best_trials] == [0]
    assert study.trials[5].user_attrs["stopped_by"] == "unfinished"


def test_a_restored_searcher_adopts_orphans_and_ignores_repeated_tells(tmp_path):
    """Trials asked for after Tune's last searcher snapshot come back with the same values."""
    s = make_searcher(tmp_path)
    s.suggest("t0")
    s.suggest("t1")
    s.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot; then the driver goes on...
    ok = {"val_accuracy": 0.9, "active_layers": 3, "epoch": 5}
    s.on_trial_complete("t1", result=ok)  # ...tells t1 ...
    orphan = s.suggest("t2")  # ... asks for t2, and is killed
    restored = make_searcher(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t2-again") == orphan
    restored.on_trial_complete("t1", result={**ok, "val_accuracy": 0.1})  # no second tell
    restored.on_trial_complete("t2-again", result=ok)
    study = optuna.load_study(study_name="s", storage=open_storage(tmp_path))
    assert len(study.trials) == 3
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.COMPLETE,
                                               TrialState.COMPLETE]
    assert study.trials[1].values == [0.9, 3.0]


def test_covered_values_come_first_once_each_and_a_restored_searcher_goes_on_with_the_rest(
        tmp_path):
    points = [{"model.depth": d} for d in (1, 5, 3, 2, 4)]
    s = make_searcher(tmp_path, points)
    first = [s.suggest(f"t{i}")["model.depth"] for i in range(2)]
    s.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot
    restored = make_searcher(tmp_path / "unused")  # as Tune.restore: a searcher, then its state
    restored.restore(str(tmp_path / "searcher.pkl"))
    rest = [restored.suggest(f"t{i}")["model.depth"] for i in range(2, 5)]
    assert first + rest == [1, 5, 3, 2, 4]
    assert 1 <= restored.suggest("t5")["model.depth"] <= 5  # then the sampler's
    study = optuna.load_study(study_name="s", storage=open_storage(tmp_path))
    assert len(study.trials) == 6


def test_a_proposal_equal_to_an_earlier_trial_is_pruned_as_a_repeat_and_another_is_asked(
        tmp_path):
    a = {"optimizer.lr": 0.05, "model.depth": 1}
    b = {"optimizer.lr": 0.02, "model.depth": 1}
    s = make_searcher(tmp_path, [a, dict(a), b])  # as NSGA-II's crossover copies a parent
    assert s.suggest("t0") == a
    assert s.suggest("t1") == b  # the copy of a is not handed out
    s.on_trial_complete("t1", result={"val_accuracy": 0.9, "active_layers": 1, "epoch": 5})
    study = optuna.load_study(study_name="s", storage=open_storage(tmp_path))
    assert [(t.state, t.user_attrs.get(REPEAT_OF)) for t in study.trials] == [
        (TrialState.RUNNING, None), (TrialState.PRUNED, 0), (TrialState.COMPLETE, None)]
    assert study.trials[2].user_attrs["ray_trial_id"] == "t1"


def test_a_space_with_no_new_configuration_left_runs_a_repeat_after_all(tmp_path):
    space = parse_space({"parameters": {"model.depth": {"type": "categorical",
                                                        "choices": [1]}}}, "x")
    s = SweepSearch(DefineByRun(space), metric=["val_accuracy", "active_layers"],
                    mode=["max", "min"], sampler=make_sampler(space.sampler),
                    study_name="s", storage=open_storage(tmp_path))
    assert s.suggest("t0") == s.suggest("t1") == s.suggest("t2") == {"model.depth": 1}
    study = optuna.load_study(study_name="s", storage=open_storage(tmp_path))
    assert len(study.trials) == 3 + MAX_REPEATS  # the repeats pruned stop at MAX_REPEATS


# --- bad input: one line, exit code 2, before Ray starts --------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_sweep_arguments(p)
    return p.parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["nope.yaml", "--space", "search_spaces/cnn1d.yaml"], ["nope.yaml", "not found"]),
        (["trials/mnist1d_cnn.yaml", "--space", "nope.yaml"], ["nope.yaml"]),
        (["trials/mnist1d_cnn.yaml", "--space", "search_spaces/mlp.yaml"],
         ["mlp.yaml", "model.width", "unknown key"]),
        (["trials/mnist1d_cnn.yaml", "--space", "search_spaces/cnn1d.yaml", "--samples", "0"],
         ["--samples"]),
        (["trials/mnist1d_cnn.yaml", "--space", "search_spaces/cnn1d.yaml",
          "--cpus-per-trial", "0"], ["--cpus-per-trial"]),
        (["trials/mnist1d_cnn.yaml", "--space", "search_spaces/cnn1d.yaml",
          "--gpus-per-trial", "1.5"], ["--gpus-per-trial"]),
        (["trials/mnist1d_cnn.yaml", "--space", "search_spaces/cnn1d.yaml", "--name", "a/b"],
         ["--name"]),
    ],
)
def test_bad_input_exits_2_with_one_line(monkeypatch, capsys, argv, words):
    monkeypatch.chdir(ROOT)
    assert not ray.is_initialized()
    assert sweep_command(parse(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    for w in words:
        assert w in err, err
    assert not ray.is_initialized()


def test_a_gpu_request_without_gpus_fails_before_any_trial(monkeypatch, capsys, tmp_path):
    """The real path: a local Ray sized to this machine (no GPU here), then one line, exit 2."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(ROOT)
    argv = ["trials/mnist1d_cnn.yaml", "--space", "search_spaces/cnn1d.yaml",
            "--gpus-per-trial", "0.5", "--storage", str(tmp_path / "g")]
    assert sweep_command(parse(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --gpus-per-trial 0.5: the Ray cluster has no GPU")
    assert "\n" not in err
    assert not (tmp_path / "g" / "tune").exists() and not ray.is_initialized()


def test_resource_check_per_node():
    plan = plan_sweep(ROOT / "trials" / "mnist1d_cnn.yaml", ROOT / "search_spaces" / "cnn1d.yaml",
                      gpus_per_trial=0.25, cpus_per_trial=4, name="r")
    check_resources(plan, [{"CPU": 8, "GPU": 1}])
    with pytest.raises(ConfigError, match="no GPU"):
        check_resources(plan, [{"CPU": 8}, {"CPU": 16}])
    with pytest.raises(ConfigError, match="no Ray node has that much"):
        check_resources(plan, [{"CPU": 2, "GPU": 1}, {"CPU": 16}])  # none has both


@pytest.mark.parametrize(("samples", "words"), [
    (16, "the first 9 trials cover every value of method.decide_sections at the trial "
         "config's optimizer.lr 0.05"),
    (4, "the first 4 trials cover 4 of the 9 values, evenly spaced (method.decide_sections "
        "0 3 5 8; --samples 9 covers them all) at the trial config's optimizer.lr 0.05"),
])
def test_the_banner_says_what_the_trials_cover(samples, words):
    plan = plan_sweep(ROOT / "trials" / "mnist1d_cnn.yaml", ROOT / "search_spaces" / "cnn1d.yaml",
                      samples=samples, name="c")
    assert words in covering_text(plan)


# --- a real sweep -----------------------------------------------------------------------------

TRIAL = digits_trial(epochs=5)

# Every gate mode of the trial config is sampled; one of them has no sections at all, which gate
# collapse stops at its first epoch (degenerate), so the PRUNED path runs whatever the training
# does. margin 1 and decide_by 5 switch the other two branches off so that the finished set
# cannot come out empty.
GATE_MODES = list(get_args(MethodConfig.model_fields["gates"].annotation))
SPACE = f"""\
parameters:
  method.gates: {{type: categorical, choices: {json.dumps(GATE_MODES)}, cover: true}}
  method.prior_weight: {{type: float, low: 0.03, high: 3.0, log: true}}
  optimizer.lr: {{type: float, low: 0.02, high: 0.2, log: true}}
objectives:
  - {{metric: val_accuracy, mode: max}}
  - {{metric: active_layers, mode: min}}
sampler: {{name: random, seed: 3}}
scheduler: {{min_layers: 1, margin: 1.0, decide_by: 5, chance_margin: 0.0}}
"""

SAMPLES = 8


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "trial.yaml").write_text(TRIAL)
    (folder / "space.yaml").write_text(SPACE)
    # One declared GPU (none is present; torch falls back to the CPU): two trials share it,
    # which runs the fractional GPU and CPU requests through Ray's scheduling.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        plan = plan_sweep(folder / "trial.yaml", folder / "space.yaml", samples=SAMPLES,
                          name="t", storage=folder / "run", max_concurrent=2,
                          cpus_per_trial=0.5, gpus_per_trial=0.5)
        result = run_sweep(plan, interval=5)
        yield plan, result
    finally:
        ray.shutdown()


def test_sweep_ran_every_trial_two_at_a_time(sweep):
    plan, result = sweep
    trials = ray_reports(plan.folder)
    assert len(trials) == SAMPLES == len(result.trials)
    assert all(r["status"] in ("done", "stopped") for r in result.trials), result.trials
    spans = [(r["started_s"], r["ended_s"]) for r in result.trials]
    overlap = [sum(s < end <= e for s, e in spans) for _, end in spans]
    assert max(overlap) == 2  # two at a time, sharing the one GPU at 0.5 each


def test_each_ended_trial_keeps_only_its_last_checkpoint(sweep):
    plan, _ = sweep
    for trial_id, rows in ray_reports(plan.folder).items():
        kept = sorted(p.name for p in (plan.folder / "tune" / f"trial_{trial_id}").glob(
            "checkpoint_*"))
        assert kept == [f"checkpoint_{len(rows) - 1:06d}"], trial_id


def test_front_is_the_brute_force_front_of_the_finished_trials(sweep):
    plan, result = sweep
    trials = ray_reports(plan.folder)
    last = {tid: rows[-1] for tid, rows in trials.items()}
    finished = [r for r in last.values() if not r.get("stopped_by")]
    stopped = {tid for tid, r in last.items() if r.get("stopped_by")}
    assert finished, "no trial finished"
    assert all(r["epoch"] == 5 for r in finished)
    expected = {finished[i]["trial_id"] for i in brute_front(finished, OBJ)}
    assert {r["ray_trial"] for r in result.front} == expected
    assert not stopped & {r["ray_trial"] for r in result.front}
    for row in result.front:  # the front's values are the trials' last results
        assert row["val_accuracy"] == last[row["ray_trial"]]["val_accuracy"]
        assert row["active_layers"] == last[row["ray_trial"]]["active_layers"]
    # Optuna agrees: its own Pareto front over COMPLETE trials
    study = optuna.load_study(study_name="t", storage=open_storage(plan.folder))
    assert {t.user_attrs["ray_trial_id"] for t in study.best_trials} == expected


def test_stopped_trials_carry_the_reason_and_are_pruned_in_optuna(sweep):
    plan, result = sweep
    last = {tid: rows[-1] for tid, rows in ray_reports(plan.folder).items()}
    stopped = {tid: r for tid, r in last.items() if r.get("stopped_by")}
    first = {tid: rows[0] for tid, rows in ray_reports(plan.folder).items()}
    # a trial that collapsed to no sections in epoch 1 is stopped right there as degenerate
    empty = {t for t, r in first.items() if r["collapsed"] == 1 and r["active_layers"] < 1}
    assert empty, "the seed should sample the gate mode without sections"
    for t in empty:
        assert stopped[t]["stopped_by"] == "degenerate" and stopped[t]["epoch"] == 1
    for r in stopped.values():
        assert r["stopped_by"] in ("degenerate", "dominated", "asha") and r["stop_reason"]
    study = optuna.load_study(study_name="t", storage=open_storage(plan.folder))
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_ray) == set(last)
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    for tid, t in by_ray.items():
        if tid in stopped:
            assert t.state == TrialState.PRUNED
            assert t.user_attrs["stopped_by"] == stopped[tid]["stopped_by"]
        else:
            assert t.state == TrialState.COMPLETE
            assert t.values == [last[tid]["val_accuracy"], last[tid]["active_layers"]]


def test_the_first_trials_cover_each_gate_mode_once(sweep):
    plan, _ = sweep
    study = optuna.load_study(study_name="t", storage=open_storage(plan.folder))
    trials = sorted(study.trials, key=lambda t: t.number)
    assert sorted(t.params["method.gates"] for t in trials[:len(GATE_MODES)]) == \
        sorted(GATE_MODES)


def test_records_on_disk(sweep):
    plan, result = sweep
    front = json.loads((plan.folder / "front.json").read_text())
    assert [r["ray_trial"] for r in front["front"]] == [r["ray_trial"] for r in result.front]
    assert (plan.folder / "front.csv").read_text().startswith("trial,ray_trial,")
    with sqlite3.connect(plan.folder / "mlflow.db") as db:
        runs = db.execute("select count(*) from runs").fetchone()[0]
    assert runs == SAMPLES + 1  # the sweep run and one nested run per trial
    text = summary(result)
    assert "Pareto front" in text and str(plan.folder / "optuna.db") in text


def test_more_than_a_node_has_fails_before_any_trial(sweep, tmp_path):
    plan, _ = sweep
    for kwargs in ({"cpus_per_trial": 64}, {"gpus_per_trial": 2}):
        big = plan_sweep(plan.trial_path, plan.space_path, samples=2, name="c",
                         storage=tmp_path / "c", **kwargs)
        with pytest.raises(ConfigError, match="no Ray node has that much"):
            run_sweep(big)
        assert not (tmp_path / "c" / "tune").exists()


def test_a_sweep_is_never_overwritten_and_resuming_a_finished_one_runs_nothing(sweep, tmp_path):
    import shutil

    plan, first = sweep
    folder = tmp_path / "run"
    shutil.copytree(plan.folder, folder)
    kwargs = {"samples": SAMPLES, "name": "t", "storage": folder, "max_concurrent": 2,
              "cpus_per_trial": 0.5, "gpus_per_trial": 0.5}
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        plan_sweep(plan.trial_path, plan.space_path, **kwargs)
    with pytest.raises(ConfigError, match="differs from what sweep t started with"):
        plan_sweep(plan.trial_path, plan.space_path, resume=True, overrides={"epochs": 3},
                   **kwargs)
    # a sweep started by an earlier layertune, whose search space had no cover_others yet
    record = json.loads((folder / "sweep.json").read_text())
    del record["space"]["cover_others"]
    (folder / "sweep.json").write_text(json.dumps(record))
    again = plan_sweep(plan.trial_path, plan.space_path, resume=True, **kwargs)
    result = run_sweep(again, live=False)
    study = optuna.load_study(study_name="t", storage=open_storage(folder))
    assert len(study.trials) == SAMPLES and not result.interrupted
    assert result.trials == []  # every trial had ended: none ran again
    assert [r["ray_trial"] for r in result.front] == [r["ray_trial"] for r in first.front]
    assert len(ray_reports(folder)) == SAMPLES


def test_every_command_the_summary_prints_runs(sweep, tmp_path):
    """What a user copies from the end of a sweep works: the read-back commands for real, the
    servers (``ui``, optuna-dashboard) in their ``--help`` form."""
    import shlex
    import subprocess
    import sys

    _, result = sweep
    commands = [shlex.split(line.strip().strip("()")) for line in summary(result).splitlines()
                if line.strip().strip("(").startswith(("layertune ", "optuna-dashboard "))]
    assert {c[0] for c in commands} == {"layertune", "optuna-dashboard"}
    assert {c[1] for c in commands if c[0] == "layertune"} == {"front", "export", "ui"}
    bin_dir = Path(sys.executable).parent
    running = []  # all at once: each is mostly its imports
    for command in commands:
        serves = command[0] == "optuna-dashboard" or command[1] == "ui"
        argv = [str(bin_dir / command[0]), *command[1:], *(["--help"] if serves else [])]
        running.append((command, subprocess.Popen(argv, cwd=tmp_path, text=True,
                                                  stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE)))
    for command, proc in running:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (command, err[-2000:])
