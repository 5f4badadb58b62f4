"""The early structure decision: which sections a trial keeps, decided once, from the loss.

docs/algorithm.md, "Early decision". The rule needs only ``loss_of(z)``, the training loss of
the deterministic network with gates ``z``; ``Trial`` measures it on a few fixed minibatches.
"""

from __future__ import annotations

from collections.abc import Callable


def loss_budget(loss_of: Callable[[list[float]], float], keep: list[float],
                tolerance: float) -> list[float]:
    """The sections to keep: remove the cheapest ones while the loss stays within budget.

    With ``L_all`` the loss of the network ``keep`` (gates at 0 or 1) and ``L_none`` that with
    every section removed, the budget is ``L_all + tolerance * (L_none - L_all)``: the share
    ``tolerance`` of the loss reduction that all sections together buy may be given up. Kept
    sections are ranked once by the loss without each of them alone, then removed in that
    order as long as the loss without all removed so far stays below the budget; the first one
    that does not fit, and every later one, is kept. Returns the new gates (0 or 1).
    """
    gates = list(keep)
    base = loss_of(gates)
    budget = base + tolerance * max(loss_of([0.0] * len(gates)) - base, 0.0)
    alone = _loss_without_each(loss_of, gates)
    for rank, i in enumerate(sorted(alone, key=alone.get)):
        gates[i] = 0.0
        loss = alone[i] if rank == 0 else loss_of(gates)  # the first was measured alone
        if not loss < budget:
            gates[i] = 1.0
            break
    return gates


def most_useful(loss_of: Callable[[list[float]], float], keep: list[float],
                sections: int) -> list[float]:
    """The ``sections`` kept sections whose removal alone would raise the loss most; the rest
    go. A sweep that searches this count gets a point at every depth (``method.decide_sections``);
    the ranking is the loss budget's."""
    gates = list(keep)
    if nothing_to_rank(gates, sections):  # none or all: no loss to measure
        return gates if sections else [0.0] * len(gates)
    alone = _loss_without_each(loss_of, gates)
    for i in sorted(alone, key=alone.get)[:len(alone) - sections]:
        gates[i] = 0.0
    return gates


def nothing_to_rank(keep: list[float], sections: int | None) -> bool:
    """Whether the depth target ``sections`` keeps none or all of the kept sections: then
    ``most_useful`` is known before any training (``Trial`` decides it before the first step)."""
    return sections is not None and (sections == 0 or sections >= keep.count(1.0))


def _loss_without_each(loss_of: Callable[[list[float]], float],
                       gates: list[float]) -> dict[int, float]:
    """Kept section -> the loss with that section alone removed."""
    alone = {}
    for i, g in enumerate(gates):
        if g == 1.0:
            without = list(gates)
            without[i] = 0.0
            alone[i] = loss_of(without)
    return alone
