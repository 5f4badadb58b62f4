"""Trial.step never waits for the device except where the design says (docs/algorithm.md,
"Gate gradient and update"): the calls that copy a tensor's value to Python are counted on the
Tensor class while 20 real steps run, each with the function that made it."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from layertune.config import load_trial
from layertune.train import Trial
from layertune.transfer import Handoff

# each of these copies a value to the host, so on a GPU it waits for the queue to drain
# (``.numpy()``, which the gate step uses on its host state, refuses device tensors outright)
SYNCING = ("item", "tolist", "cpu", "__float__", "__bool__", "__int__", "__index__")
# the one the design names: z drawn on the host from the host's theta (a CPU tensor always)
ALLOWED = {("tolist", "GateController.set_draw")}


def _caller(frame) -> str:
    """``Class.method`` of a frame (``co_qualname`` is Python 3.11+; the project takes 3.10)."""
    owner = frame.f_locals.get("self")
    name = frame.f_code.co_name
    return f"{type(owner).__name__}.{name}" if owner is not None else name


def _count_syncs(monkeypatch: pytest.MonkeyPatch, calls: Counter) -> None:
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            calls[(_name, _caller(sys._getframe(1)))] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)


# (gates, gate_every): draws and gate steps in the 20 counted steps, after one warm-up step
# that draws. gate_every 8: draws at counted steps 8 and 16; gate steps for the warm-up's and
# those two (each applied one step later).
CASES = {"learning": (False, 1, 20, 20), "learning, gate_every 8": (False, 8, 2, 3),
         "fixed": (True, 8, 0, 0)}


@pytest.mark.parametrize("case", CASES)
def test_trial_step_makes_no_synchronising_call_but_the_named_one(monkeypatch, case) -> None:
    decided, gate_every, draws, gate_steps = CASES[case]
    config = load_trial("trials/digits_mlp.yaml",
                        {"epochs": 2, "method.gate_every": gate_every})
    trial = Trial(config)
    batches = [b for _, b in zip(range(20), trial.data.train, strict=False)] * 2
    trial.step(*batches[0])  # warm-up outside the count
    if decided:
        trial.pruner.decide_by(lambda z: float(sum(z)))  # gates fixed: only the prior acts
    steps = trial.gates.steps
    calls: Counter = Counter()
    _count_syncs(monkeypatch, calls)
    for x, y in batches[:20]:
        trial.step(x, y)
    monkeypatch.undo()
    assert set(calls) <= ALLOWED, dict(calls)
    assert calls[("tolist", "GateController.set_draw")] == draws
    # the gate steps did happen (one behind): the gate state moved
    assert trial.gates.steps - steps == gate_steps


def test_the_handoff_returns_what_was_sent_one_swap_earlier() -> None:
    handoff = Handoff()
    assert handoff.swap(torch.tensor([1.0]), "first") is None
    host, tag = handoff.swap(torch.tensor([2.0]), "second")
    assert tag == "first" and host.tolist() == [1.0]
    host, tag = handoff.swap(None)  # what Pruner.settle does
    assert tag == "second" and host.tolist() == [2.0]
    assert handoff.swap(None) is None
