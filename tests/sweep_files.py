"""The small sweep most sweep tests run: an MLP of 4 sections on sklearn's digits (a fraction
of a second per epoch), searched over the prior weight (``search_spaces/prior_weight.yaml``)."""

from __future__ import annotations

from pathlib import Path

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def digits_trial(epochs: int | str) -> str:
    return f"""\
data: {{name: digits, batch_size: 64, val_fraction: 0.2}}
model: {{name: mlp, depth: 4, width: 32}}
optimizer: {{lr: 0.05}}
epochs: {epochs}
seed: 0
"""


def prior_weight_space(*, seed: int = 0, more: str = "") -> str:
    """The shipped space with its sampler seeded ``seed``; ``more``: lines of other parameters."""
    text = (SPACES / "prior_weight.yaml").read_text()
    text = text.replace("seed: 0}", f"seed: {seed}}}")
    return text.replace("objectives:\n", "".join(
        f"  {line}\n" for line in more.splitlines()) + "objectives:\n")


def assert_refused(argv: list[str], words: list[str], capsys) -> None:
    """``layertune ARGV`` exits 2 with one line, ``error: ...``, naming each of ``words``, and
    starts no Ray."""
    import ray

    from layertune.cli import main

    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own checks (choices, types)
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    assert not ray.is_initialized()
