"""Search spaces: which trial-config keys Optuna searches, the objectives, the sampler.

A search-space YAML (``search_spaces/*.yaml``)::

    parameters:                      # dotted keys of the trial config
      method.prior_scale: {type: float, low: 0.1, high: 10, log: true}
      model.depth: {type: int, low: 4, high: 16}
      optimizer.name: {type: categorical, choices: [sgd, adamw]}
      method.decide_sections: {type: int, low: 0, high: 8, cover: true}  # each value once first
    objectives:                      # default: val_accuracy max, active_layers min
      - {metric: val_accuracy, mode: max}
      - {metric: active_layers, mode: min}
    sampler: {name: nsga2, seed: 0}  # nsga2 | tpe | random
    cover_others: trial              # covering trials' other parameters: trial | sampler
    scheduler: {decide_by: 6}        # optional: settings of the early gate collapse rule
                                     # (and settle_std: trials end once their accuracy settles)

Every error is one line ``FILE: KEY: what is allowed`` (``ConfigError``), raised before any
work starts; ``check_parameters`` also applies the space's extreme values to the trial config,
so a key the trial config does not have (or a range it refuses) fails here too.
"""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .config import ConfigError, SettleConfig, TrialConfig, read_yaml
from .contract import OBJECTIVE_METRICS

Metric = Literal[OBJECTIVE_METRICS]  # a tuple subscript is the list of allowed values
Scalar = bool | int | float | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got low {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log: true and step cannot be combined")
        return self


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)
    cover: bool = Field(False, description="the first trials take each value once")

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got low {self.low})")
        if self.log and self.step != 1:
            raise ValueError("log: true needs step 1")
        return self


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)
    cover: bool = Field(False, description="the first trials take each choice once")


Parameter = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Objective(_Strict):
    metric: Metric
    mode: Literal["max", "min"]


class SamplerConfig(_Strict):
    name: Literal["nsga2", "tpe", "random"] = "nsga2"
    seed: int | None = 0
    population_size: int | None = Field(None, ge=2, description="nsga2: trials per generation")

    @model_validator(mode="after")
    def _population_for_nsga2(self) -> SamplerConfig:
        if self.population_size is not None and self.name != "nsga2":
            raise ValueError("population_size applies to name: nsga2 only")
        return self


class CollapseSettings(_Strict):
    """Settings of ``GateCollapseScheduler`` (see its docstring).

    ``--scheduler asha`` uses ``decide_by`` as its grace period and ``reduction_factor``.
    ``settle_std``, ``settle_epochs`` and ``settle_cooldown`` are not the scheduler's: under
    either scheduler they become each trial's own ``settle`` rule (``settle()``,
    ``layertune.settle``).
    """

    min_layers: int = Field(
        0, ge=0, description="fewer active sections at collapse: degenerate (0: off)"
    )
    chance_accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="accuracy of guessing; default 1 / classes"
    )
    chance_margin: float = Field(0.05, ge=0.0, le=1.0, description="'near chance' band")
    margin: float = Field(0.01, ge=0.0, le=1.0, description="accuracy lead that dominates")
    decide_by: int | None = Field(None, ge=1, description="epochs undecided trials may run")
    grace_epochs: int = Field(2, ge=1, description="the first epoch at which accuracy may stop "
                              "a collapsed trial (near chance or dominated)")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA rung spacing and cut")
    settle_std: float = Field(
        0.0, ge=0.0, le=1.0, description="a trial ends once the validation accuracies of its "
        "last settle_epochs epochs (structure fixed, from grace_epochs on) have a standard "
        "deviation below this (0: every trial runs its epochs; docs/algorithm.md, 'Settled "
        "trials')",
    )
    settle_epochs: int = Field(3, ge=2, description="epochs whose accuracies settle_std compares")
    settle_cooldown: int = Field(2, ge=0, description="epochs a settled trial trains on, its "
                                 "learning rate falling linearly to 0, before it ends")

    def settle(self) -> SettleConfig:
        """The trials' own stopping rule (``TrialConfig.settle``) these settings ask for."""
        return SettleConfig(std=self.settle_std, epochs=self.settle_epochs,
                            from_epoch=self.grace_epochs, cooldown=self.settle_cooldown)


DEFAULT_OBJECTIVES = (
    Objective(metric="val_accuracy", mode="max"),
    Objective(metric="active_layers", mode="min"),
)


class SearchSpace(_Strict):
    parameters: dict[str, Parameter] = Field(min_length=1)
    objectives: list[Objective] = Field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    sampler: SamplerConfig = SamplerConfig()
    cover_others: Literal["trial", "sampler"] = Field(
        "trial", description="the covering trials' other parameters: the trial config's "
        "values where the space allows them, or the sampler's draws")
    scheduler: CollapseSettings = CollapseSettings()

    @field_validator("objectives")
    @classmethod
    def _distinct_objectives(cls, objectives: list[Objective]) -> list[Objective]:
        if not objectives:
            raise ValueError("list at least one {metric, mode}")
        names = [o.metric for o in objectives]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"metric {name} is listed twice")
        return objectives

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]


# --- loading ----------------------------------------------------------------------------------


def _format(err: ValidationError, source: str) -> str:
    errors = err.errors()
    # A misspelt key also makes its intended key "missing": name the misspelling.
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in e["loc"]]
    if len(loc) > 2 and loc[0] == "parameters" and loc[2] in ("float", "int", "categorical"):
        loc.pop(2)  # the discriminator tag pydantic inserts
    key = ".".join(loc) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] in ("union_tag_invalid", "literal_error"):
        msg = msg.replace("Input tag", "value").replace("Input should be", "allowed:")
    elif e["type"] == "union_tag_not_found":
        msg = "needs type: float, int or categorical"
    got = e.get("input")
    if e["type"] not in ("missing", "extra_forbidden", "value_error") and not isinstance(
        got, dict
    ):
        msg += f" (got {got!r})"
    return f"{source}: {key}: {msg}"


def parse_space(raw: Any, source: str) -> SearchSpace:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping with a parameters: key")
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_space(path: str | Path) -> SearchSpace:
    return parse_space(read_yaml(path), str(path))


def _extreme(p: FloatParam | IntParam | CategoricalParam, end: int) -> Any:
    if isinstance(p, CategoricalParam):
        return p.choices[min(end, len(p.choices) - 1)]
    if isinstance(p, IntParam):
        return p.low if end == 0 else p.low + (p.high - p.low) // p.step * p.step
    return p.low if end == 0 else p.high


def _midpoint(p: FloatParam | IntParam | CategoricalParam) -> Any:
    if isinstance(p, CategoricalParam):
        return p.choices[len(p.choices) // 2]
    if isinstance(p, IntParam):
        return p.low + (p.high - p.low) // 2 // p.step * p.step
    return math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2


def check_parameters(space: SearchSpace, trial: TrialConfig, source: str) -> None:
    """Apply the space's low, middle and high values (and every choice) to the trial config.

    Raises ``ConfigError`` naming the space file and the key when the trial config has no such
    key or refuses a value in the range.
    """
    params = space.parameters
    probes = [{k: _extreme(p, 0) for k, p in params.items()},
              {k: _midpoint(p) for k, p in params.items()},
              {k: _extreme(p, 1) for k, p in params.items()}]
    mid = probes[1]
    for key, p in params.items():
        if isinstance(p, CategoricalParam):
            probes += [{**mid, key: c} for c in p.choices]
    for probe in probes:
        trial.with_overrides(probe, source=f"{source} (parameters)")


def _values(p: IntParam | CategoricalParam) -> list[Any]:
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    return list(range(p.low, p.high + 1, p.step))


def spread(values: list[Any]) -> list[Any]:
    """``values`` reordered so that every prefix spans them: both ends, then the middle of the
    widest gap left, and so on (0..8: 0 8 4 2 6 1 3 5 7)."""
    if len(values) <= 2:
        return list(values)
    order, gaps = [0, len(values) - 1], [(0, len(values) - 1)]
    while gaps:
        low, high = max(gaps, key=lambda g: g[1] - g[0])  # the first widest
        gaps.remove((low, high))
        if high - low > 1:
            mid = (low + high) // 2
            order.append(mid)
            gaps += [(low, mid), (mid, high)]
    return [values[i] for i in order]


def covering_points(space: SearchSpace, samples: int | None = None,
                    trial: TrialConfig | None = None) -> list[dict[str, Any]]:
    """The first trials of a sweep: every value (every combination, when several parameters
    have ``cover: true``) once, spread out. A sweep of fewer ``samples`` takes the first
    ``samples`` of them, and where one parameter is covered, evenly spaced values of it
    (``covered_values``). Given the ``trial`` config (and ``cover_others: trial``, the
    default), the other parameters take its values where the space allows them
    (``trial_values``); the sampler chooses the rest.

    Why: a sampler draws a depth at random, so 16 draws over 9 depths miss some and repeat
    others, and the front has holes where a from-scratch grid has points; and a covering trial
    with a learning rate drawn at random decides a point of the front by that draw, where the
    trial config's is the recipe the user would train each depth with (docs/algorithm.md,
    "Covering the depths").
    """
    covered = covered_values(space, samples)
    fixed = trial_values(space, trial) if trial is not None else {}
    points = [dict(zip(covered, combo, strict=True)) | fixed
              for combo in itertools.product(*(spread(v) for v in covered.values()))
              ] if covered else []
    return points if samples is None else points[:samples]


def trial_values(space: SearchSpace, trial: TrialConfig) -> dict[str, Any]:
    """The trial config's value of each searched, not covered, parameter that the space
    could propose itself (inside a number's range and on its step; one of the choices): what
    the covering trials take, none with ``cover_others: sampler``."""
    if space.cover_others == "sampler":
        return {}
    config = trial.model_dump()
    values = {}
    for key, p in space.parameters.items():
        if getattr(p, "cover", False):
            continue
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if _allows(p, value):
            values[key] = value
    return values


def _allows(p: FloatParam | IntParam | CategoricalParam, value: Any) -> bool:
    if isinstance(p, CategoricalParam):
        return any(type(value) is type(c) and value == c for c in p.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(p, IntParam) and not isinstance(value, int):
        return False
    if not p.low <= value <= p.high:
        return False
    if p.step is None:
        return True
    steps = (value - p.low) / p.step
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def covered_values(space: SearchSpace, samples: int | None = None) -> dict[str, list[Any]]:
    """Each ``cover: true`` parameter's values in their listed order. With one such parameter
    and fewer ``samples`` than values: evenly spaced ones, both ends kept (4 of 0..9: 0, 3, 6,
    9, a from-scratch grid's depths, where the spread order's first four are 0, 9, 4, 6)."""
    covered = {k: _values(p) for k, p in space.parameters.items()
               if not isinstance(p, FloatParam) and p.cover}
    if samples is not None and len(covered) == 1:
        key, values = next(iter(covered.items()))
        if samples < len(values):
            last = len(values) - 1
            covered[key] = [values[0]] if samples <= 1 else [
                values[round(i * last / (samples - 1))] for i in range(samples)]
    return covered


def max_epochs(space: SearchSpace, trial: TrialConfig) -> int:
    """The most epochs any trial of the sweep can run (``epochs`` may be searched)."""
    p = space.parameters.get("epochs")
    if p is None:
        return trial.epochs
    if isinstance(p, CategoricalParam):
        return int(max(p.choices))
    return int(p.high)


# --- Optuna -----------------------------------------------------------------------------------


class DefineByRun:
    """Optuna define-by-run function for ``OptunaSearch``: one ``suggest_*`` per parameter.

    A class (not a closure) so that Ray can pickle the searcher into its experiment state.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.parameters = dict(space.parameters)

    def __call__(self, trial: optuna.Trial) -> None:
        for key, p in self.parameters.items():
            if isinstance(p, FloatParam):
                trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                trial.suggest_int(key, p.low, p.high, log=p.log, step=p.step)
            else:
                trial.suggest_categorical(key, p.choices)


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that Tune can snapshot with the searcher: Optuna 5.1 gives its genetic samplers
    a ``threading.Lock`` (``_thread_lock``), which pickle refuses; the copy gets a new one."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def make_sampler(config: SamplerConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler; ``seed`` (the command line's) wins over the file's."""
    seed = config.seed if seed is None else seed
    if config.name == "nsga2":
        kwargs = {"population_size": config.population_size} if config.population_size else {}
        return PicklableNSGAIISampler(seed=seed, **kwargs)
    if config.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)
