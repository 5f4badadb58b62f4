"""In-epoch progress of ``layertune train``: silent for short epochs, a line every N seconds in
logs, a bar on a terminal; wired through a real epoch of a trial."""

from __future__ import annotations

import io
import re

import pytest

from layertune.cli import main
from layertune.config import load_trial
from layertune.progress import EpochProgress
from layertune.train import Trial

LINE = re.compile(r"epoch (\d+): (\d+)/(\d+) steps \((\d+) %\), (\d+) examples/s, ETA \d+m\d\ds")


def _run(progress: EpochProgress, steps: int = 10) -> str:
    progress.start(1, steps)
    for _ in range(steps):
        progress.update(32)
    progress.close()
    return progress.stream.getvalue()


def test_short_epochs_print_nothing() -> None:
    assert _run(EpochProgress(io.StringIO(), after=60.0, tty=False)) == ""
    assert _run(EpochProgress(io.StringIO(), after=60.0, tty=True)) == ""


def test_log_lines_count_steps_and_examples() -> None:
    lines = _run(EpochProgress(io.StringIO(), after=0.0, every=0.0, tty=False)).splitlines()
    assert len(lines) == 10  # every=0: one line per step
    parsed = [LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [int(m[2]) for m in parsed] == list(range(1, 11))
    assert parsed[-1][3] == "10" and parsed[-1][4] == "100"
    assert int(parsed[-1][5]) > 0


def test_a_terminal_gets_a_bar() -> None:
    out = _run(EpochProgress(io.StringIO(), after=0.0, tty=True))
    assert "epoch 1" in out and "step" in out and "examples/s" in out
    assert not LINE.search(out)  # the bar, not log lines


def test_a_real_epoch_reports_every_step_and_the_loader_length() -> None:
    trial = Trial(load_trial("trials/digits_mlp.yaml", {"epochs": 1}))
    progress = EpochProgress(io.StringIO(), after=0.0, every=0.0, tty=False)
    trial.train_epoch(progress)
    lines = progress.stream.getvalue().splitlines()
    steps = len(trial.data.train)
    assert len(lines) == steps
    last = LINE.fullmatch(lines[-1])
    assert last and int(last[2]) == int(last[3]) == steps


@pytest.mark.parametrize("value", ["0", "-5"])
def test_progress_every_must_be_positive(value: str, capsys) -> None:
    assert main(["train", "trials/digits_mlp.yaml", "--progress-every", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--progress-every" in err[0]
