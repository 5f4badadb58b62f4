"""GateCollapseScheduler driven by constructed result streams: each branch of the rule."""

from __future__ import annotations

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from layertune.scheduler import (
    STOP_REASON,
    STOPPED_BY,
    GateCollapseScheduler,
    RecordingASHA,
    StopReasonCallback,
)

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def trial(trial_id: str, **config) -> Trial:
    return Trial("__fake", trial_id=trial_id, config=config, stub=True)


def result(epoch: int, acc: float, active: int, undecided: int = 0, **extra) -> dict:
    return {"epoch": epoch, "val_accuracy": acc, "active_layers": active, "total_layers": 8,
            "undecided_layers": undecided, "collapsed": int(undecided == 0), **extra}


def feed(s: GateCollapseScheduler, t: Trial, r: dict) -> str:
    return s.on_trial_result(None, t, r)


def make(**kw) -> GateCollapseScheduler:
    defaults = dict(min_layers=1, chance_accuracy=0.1, chance_margin=0.05, grace_epochs=2,
                    margin=0.01, decide_by=4, reduction_factor=2.0, max_t=20)
    return GateCollapseScheduler(**{**defaults, **kw})


def test_collapse_to_too_few_sections_is_degenerate_at_once():
    s = make(min_layers=2)
    a = trial("a")
    assert feed(s, a, result(1, 0.8, 1)) == STOP
    assert s.stops["a"][STOPPED_BY] == "degenerate"
    assert "min_layers 2" in s.stops["a"][STOP_REASON]


def test_zero_sections_with_min_layers_1_and_0():
    s = make(min_layers=1)
    assert feed(s, trial("a"), result(1, 0.5, 0)) == STOP
    assert feed(s, trial("b"), result(1, 0.5, 1)) == CONTINUE
    # min_layers 0 (the default): no sections left is a point of the front like any other
    assert feed(GateCollapseScheduler(), trial("c"), result(1, 0.5, 0)) == CONTINUE


def test_near_chance_only_after_grace_epochs():
    s = make(grace_epochs=3)
    a = trial("a")
    assert feed(s, a, result(1, 0.12, 4)) == CONTINUE  # within grace
    assert feed(s, a, result(2, 0.14, 4)) == CONTINUE
    assert feed(s, a, result(3, 0.149, 4)) == STOP  # <= 0.1 + 0.05
    assert s.stops["a"][STOPPED_BY] == "degenerate"
    assert "chance" in s.stops["a"][STOP_REASON]


def test_above_chance_band_is_not_degenerate():
    s = make()
    assert feed(s, trial("a"), result(3, 0.16, 4)) == CONTINUE


def test_dominated_collapse_stops():
    s = make(margin=0.02)
    a, b = trial("a"), trial("b")
    assert feed(s, a, result(2, 0.90, 3)) == CONTINUE
    # b collapsed at epoch 2 with more sections and lower accuracy: dominated by a.
    assert feed(s, b, result(2, 0.85, 5)) == STOP
    assert s.stops["b"][STOPPED_BY] == "dominated"
    assert "trial a at epoch 2" in s.stops["b"][STOP_REASON]


def test_dominance_needs_the_margin_and_no_more_sections():
    s = make(margin=0.02)
    feed(s, trial("a"), result(2, 0.90, 3))
    assert feed(s, trial("b"), result(2, 0.89, 5)) == CONTINUE  # lead 0.01 < margin
    assert feed(s, trial("c"), result(2, 0.50, 2)) == CONTINUE  # fewer sections: not dominated
    assert feed(s, trial("d"), result(2, 0.80, 3)) == STOP  # same sections, 0.1 behind


def test_dominance_only_from_grace_epochs_on():
    # right after an early decision accuracy dips: a 1-section trial at 0.12 is behind a
    # 0-section one at 0.16, and ends far ahead of it
    s = make(grace_epochs=4, min_layers=0)
    zero, one = trial("zero"), trial("one")
    feed(s, zero, result(2, 0.16, 0))
    assert feed(s, one, result(2, 0.12, 1)) == CONTINUE
    feed(s, zero, result(4, 0.45, 0))
    assert feed(s, one, result(4, 0.40, 1)) == STOP  # still behind at grace: judged
    assert s.stops["one"][STOPPED_BY] == "dominated"


def test_dominance_compares_the_same_epoch_only():
    s = make()
    feed(s, trial("a"), result(2, 0.95, 2))
    assert feed(s, trial("b"), result(1, 0.60, 4)) == CONTINUE  # a has no epoch-1 result
    assert feed(s, trial("b"), result(2, 0.60, 4)) == STOP


def test_margin_zero_needs_strict_improvement():
    s = make(margin=0.0)
    feed(s, trial("a"), result(2, 0.9, 3))
    assert feed(s, trial("b"), result(2, 0.9, 3)) == CONTINUE  # a tie is not dominance
    assert feed(s, trial("c"), result(2, 0.9, 4)) == STOP


def test_a_trial_dominated_by_a_later_result_stops_at_its_next_result():
    s = make(margin=0.0)
    ahead, behind = trial("ahead"), trial("behind")
    assert feed(s, ahead, result(2, 0.90, 5)) == CONTINUE  # nothing else at epoch 2 yet
    assert feed(s, behind, result(2, 0.93, 3)) == CONTINUE  # dominates "ahead" at epoch 2
    assert feed(s, ahead, result(3, 0.99, 5)) == STOP
    assert s.stops["ahead"][STOPPED_BY] == "dominated"
    assert "trial behind at epoch 2" in s.stops["ahead"][STOP_REASON]
    assert "after ahead had run ahead" in s.stops["ahead"][STOP_REASON]
    assert s.stops["ahead"]["epoch"] == 3


def test_a_later_result_dominates_only_as_an_earlier_one_would():
    s = make(margin=0.02, grace_epochs=2)
    for name, (acc, active, undecided) in {"lead_too_small": (0.90, 5, 0),
                                           "shallower": (0.80, 2, 0),
                                           "undecided": (0.80, 5, 2)}.items():
        feed(s, trial(name), result(2, acc, active, undecided))
    feed(s, trial("early"), result(1, 0.50, 5))  # before grace_epochs
    feed(s, trial("later"), result(2, 0.91, 3))
    feed(s, trial("later"), result(1, 0.91, 3))
    for name in ("lead_too_small", "shallower", "undecided", "early"):
        assert feed(s, trial(name), result(3, 0.5, 5)) == CONTINUE, name


def test_a_later_dominance_never_stops_a_last_result():
    s = make(margin=0.0, max_t=3)
    feed(s, trial("a"), result(2, 0.90, 5))
    feed(s, trial("b"), result(2, 0.95, 3))
    assert feed(s, trial("a"), result(3, 0.99, 5)) == CONTINUE
    assert "a" not in s.stops


def test_the_stops_do_not_depend_on_which_trial_reported_an_epoch_first():
    results = {"a": [result(2, 0.90, 5), result(3, 0.99, 3)],
               "b": [result(2, 0.93, 3), result(3, 0.95, 3)]}
    stopped = []
    for first, second in (("a", "b"), ("b", "a")):
        s = make(margin=0.0)
        for epoch in range(2):
            for name in (first, second):
                if name not in s.stops:
                    feed(s, trial(name), results[name][epoch])
        stopped.append(set(s.stops))
    assert stopped == [{"a"}, {"a"}]


def test_results_after_the_epoch_a_trial_was_overtaken_judge_nobody():
    s = make(margin=0.0)
    feed(s, trial("ahead"), result(2, 0.90, 5))
    feed(s, trial("ahead"), result(3, 0.95, 5))
    feed(s, trial("overtaker"), result(2, 0.93, 3))
    # ahead's epoch-3 result (0.95, 5 sections) would dominate this one; it no longer counts
    assert feed(s, trial("third"), result(3, 0.94, 6)) == CONTINUE


def test_a_completed_result_dominates_the_trials_that_reported_before_it():
    s = make(margin=0.0)
    feed(s, trial("a"), result(2, 0.90, 5))
    s.on_trial_complete(None, trial("b"), result(2, 0.93, 3))
    assert feed(s, trial("a"), result(3, 0.99, 5)) == STOP


def test_a_nan_result_after_being_overtaken_is_not_a_stop():
    s = make(margin=0.0)
    feed(s, trial("a"), result(2, 0.90, 5))
    feed(s, trial("b"), result(2, 0.93, 3))
    assert feed(s, trial("a"), result(3, float("nan"), 5)) == CONTINUE  # fails on its own


def test_a_scheduler_pickled_before_the_overtaking_rule_resumes():
    import pickle

    s = make(margin=0.0)
    feed(s, trial("a"), result(2, 0.90, 5))
    for name in ("_collapsed", "_dominated_later", "_ended"):
        del s.__dict__[name]  # as pickled by the code before them (Tuner.restore unpickles)
    resumed = pickle.loads(pickle.dumps(s))
    assert feed(resumed, trial("b"), result(2, 0.80, 6)) == STOP


def test_undecided_trial_runs_until_decide_by():
    s = make(decide_by=4)
    for i, acc in enumerate([0.9, 0.9, 0.9, 0.9], start=1):
        feed(s, trial("good"), result(i, acc, 8, undecided=3))
    low = trial("low")
    for epoch in (1, 2, 3):
        # undecided and far behind, even near chance: not judged before decide_by
        assert feed(s, low, result(epoch, 0.11, 8, undecided=2)) == CONTINUE
    assert feed(s, low, result(4, 0.11, 8, undecided=2)) == STOP
    assert s.stops["low"][STOPPED_BY] == "asha"


def test_asha_part_at_equal_depths_cuts_like_asha_and_keeps_the_rest():
    s = make(decide_by=2, reduction_factor=2.0)
    for name, acc in [("a", 0.5), ("b", 0.6), ("c", 0.7), ("d", 0.8)]:
        feed(s, trial(name), result(1, acc, 8, undecided=4))
        feed(s, trial(name), result(2, acc, 8, undecided=4))
    # each arrives above the median of those before it: nobody is cut
    assert s.stops == {}
    s2 = make(decide_by=2, reduction_factor=2.0)
    for name, acc in [("a", 0.8), ("b", 0.7), ("c", 0.6), ("d", 0.9)]:
        feed(s2, trial(name), result(2, acc, 8, undecided=4))
    # median cut: b (0.7 < 0.8) and c (0.6 < median of 0.8, 0.7) stop; d (0.9) continues
    assert set(s2.stops) == {"b", "c"}
    assert all(v[STOPPED_BY] == "asha" for v in s2.stops.values())


def test_asha_part_keeps_a_shallower_trial_that_deeper_ones_beat_on_accuracy():
    s = make(decide_by=2, reduction_factor=2.0)
    for name, acc in [("a", 0.9), ("b", 0.85)]:
        feed(s, trial(name), result(2, acc, 8, undecided=4))
    # pruning: less accurate than both, but with fewer sections nobody dominates it
    assert feed(s, trial("pruning"), result(2, 0.7, 5, undecided=3)) == CONTINUE
    # as deep as a and b and less accurate; as accurate as "pruning" and deeper: all 3 dominate
    assert feed(s, trial("deep"), result(2, 0.7, 8, undecided=3)) == STOP
    assert "3 of 3 trials" in s.stops["deep"][STOP_REASON]


def test_asha_part_needs_n_over_reduction_factor_dominating_trials():
    s = make(decide_by=2, reduction_factor=3.0)
    for name, (acc, active) in {"a": (0.9, 8), "b": (0.6, 2), "c": (0.5, 2)}.items():
        feed(s, trial(name), result(2, acc, active, undecided=1))
    # dominated by a only: 1 of 3, and 1 >= 3 / 3: cut
    assert feed(s, trial("x"), result(2, 0.8, 8, undecided=1)) == STOP
    s2 = make(decide_by=2, reduction_factor=3.0)
    for name, (acc, active) in {"a": (0.9, 8), "b": (0.6, 2), "c": (0.5, 2), "d": (0.4, 1)}.items():
        feed(s2, trial(name), result(2, acc, active, undecided=1))
    # 1 of 4 dominate it, fewer than 4 / 3: kept
    assert feed(s2, trial("x"), result(2, 0.8, 8, undecided=1)) == CONTINUE


def test_asha_rungs_follow_the_reduction_factor():
    s = make(decide_by=2, reduction_factor=3.0, max_t=100)
    assert [e for e in range(1, 40) if s._rung(e) is not None] == [2, 6, 18]


def test_collapsed_trials_are_not_judged_by_asha():
    s = make(decide_by=2)
    feed(s, trial("a"), result(2, 0.9, 8, undecided=3))
    # collapsed with few sections and lower accuracy: not dominated (fewer sections), no ASHA
    assert feed(s, trial("b"), result(2, 0.7, 2)) == CONTINUE


def test_last_epoch_is_never_a_stop():
    s = make(max_t=3)
    feed(s, trial("a"), result(3, 0.95, 2))
    assert feed(s, trial("b"), result(3, 0.50, 4)) == CONTINUE  # would be dominated
    # a searched epochs in the trial's config wins over max_t
    feed(s, trial("c", epochs=5), result(2, 0.95, 2))
    assert feed(s, trial("d", epochs=2), result(2, 0.50, 4)) == CONTINUE
    assert feed(s, trial("e", epochs=5), result(2, 0.50, 4)) == STOP


def test_done_result_and_repeats_do_not_stop():
    s = make()
    feed(s, trial("a"), result(1, 0.9, 2))
    b = trial("b")
    assert feed(s, b, result(1, 0.5, 4, done=True)) == CONTINUE
    assert feed(s, b, result(1, 0.5, 4)) == CONTINUE  # the same epoch again


def test_stopped_trial_stays_stopped():
    s = make()
    a = trial("a")
    assert feed(s, a, result(1, 0.9, 0)) == STOP
    assert feed(s, a, result(2, 0.9, 3)) == STOP
    assert s.stops["a"]["epoch"] == 1


def test_results_without_the_metrics_are_ignored():
    s = make()
    assert feed(s, trial("a"), {"epoch": 1}) == CONTINUE
    assert feed(s, trial("a"), {"val_accuracy": 0.1, "active_layers": 0}) == CONTINUE


def test_stop_reason_callback_writes_into_the_result():
    s = make()
    a, b = trial("a"), trial("b")
    feed(s, a, result(1, 0.9, 0))
    cb = StopReasonCallback(s)
    stored = result(1, 0.9, 0)
    cb.on_trial_result(iteration=1, trials=[a], trial=a, result=stored)
    assert stored[STOPPED_BY] == "degenerate" and stored[STOP_REASON]
    other = result(1, 0.9, 3)
    cb.on_trial_result(iteration=1, trials=[b], trial=b, result=other)
    assert STOPPED_BY not in other


def test_scheduler_state_survives_save_and_restore(tmp_path):
    s = make()
    feed(s, trial("a"), result(1, 0.9, 0))
    s.save(str(tmp_path / "s.pkl"))
    s2 = make()
    s2.restore(str(tmp_path / "s.pkl"))
    assert s2.stops == s.stops


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        GateCollapseScheduler(reduction_factor=1.0)
    with pytest.raises(ValueError):
        GateCollapseScheduler(decide_by=0)


def test_recording_asha_records_its_stops_and_not_the_last_rung():
    s = RecordingASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=4,
                      grace_period=1, reduction_factor=2)
    trials = [trial(n) for n in "abcd"]
    for t in trials:
        s.on_trial_add(None, t)
    for t, acc in zip(trials, [0.9, 0.8, 0.7, 0.95], strict=True):
        s.on_trial_result(None, t, result(1, acc, 8, undecided=2))
    assert {k: v[STOPPED_BY] for k, v in s.stops.items()} == {"b": "asha", "c": "asha"}
    # reaching max_t is not a stop (stop_last_trials=False)
    assert s.on_trial_result(None, trials[3], result(4, 0.95, 8, undecided=2)) == CONTINUE
