"""Trial configuration: the YAML schema, validated by pydantic, and ``--set`` overrides.

Every error becomes one line ``FILE: KEY: what is allowed`` (``ConfigError``) before any
work starts.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """Bad input: the message is one line naming the file, the key and what is allowed."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data -----------------------------------------------------------------------------------

DatasetName = Literal["mnist", "mnist1d", "digits", "cifar10", "cifar100", "imagenet", "synthetic"]


class DataConfig(_Strict):
    name: DatasetName
    root: str | None = Field(None, description="folder with the data set (torchvision layout)")
    batch_size: int = Field(128, gt=0)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    num_samples: int | None = Field(None, gt=0, description="mnist1d: samples generated")
    augment: bool = Field(True, description="random crop and flip for CIFAR/ImageNet")
    num_workers: int = Field(4, ge=0, description="loader processes for folder data sets")
    synthetic_shape: tuple[int, ...] = Field((3, 32, 32), description="synthetic: input shape")
    synthetic_classes: int = Field(10, gt=1)
    synthetic_samples: int = Field(2048, gt=0)


# --- models ---------------------------------------------------------------------------------


class MLPConfig(_Strict):
    name: Literal["mlp"]
    depth: int = Field(12, gt=0, description="gated sections")
    width: int = Field(300, gt=0)
    batchnorm: bool = False


class CNN1dConfig(_Strict):
    name: Literal["cnn1d"]
    depth: int = Field(8, gt=0, description="gated sections")
    channels: int = Field(32, gt=0)
    kernel_size: int = Field(5, gt=0)


class LeNet5Config(_Strict):
    name: Literal["lenet5"]


class VGG16Config(_Strict):
    name: Literal["vgg16"]
    head: Literal["cifar", "imagenet"] = "cifar"


class ResNetConfig(_Strict):
    name: Literal[
        "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "resnet34",
        "resnet50",
    ]
    blocks_per_stage: int | None = Field(
        None, ge=1, description="CIFAR ResNets: basic blocks in each of the 3 stages instead "
        "of the name's n = (depth - 2) / 6 (the from-scratch grid trains every n)",
    )

    @model_validator(mode="after")
    def _blocks_for_cifar_only(self) -> ResNetConfig:
        if self.blocks_per_stage is not None and self.name in ("resnet18", "resnet34",
                                                               "resnet50"):
            raise ValueError("blocks_per_stage is for the CIFAR ResNets (resnet20..resnet110)")
        return self


ModelConfig = Annotated[
    MLPConfig | CNN1dConfig | LeNet5Config | VGG16Config | ResNetConfig,
    Field(discriminator="name"),
]


# --- the user's own network and data (layertune/factory.py) ---------------------------------


class FactoryConfig(_Strict):
    """``model:`` or ``data:`` given by a function of the user's: ``factory(**kwargs)``.

    A model factory returns an ``nn.Module`` (a ``GatedNetwork``, ``layertune.gate``'s result,
    or a network that layertune gates as ``gate`` does); a data factory returns a ``DataBundle``,
    ``(train, val, num_classes, in_shape)`` or a dict of those keys (docs/design.md).
    """

    factory: str = Field(description="pkg.module:function, importable from the current folder")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keywords of the call")

    @field_validator("factory")
    @classmethod
    def _module_colon_function(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value):
            raise ValueError("expected 'pkg.module:function'")
        return value


_FACTORY_TAG, _BUILTIN_TAG = "factory", "builtin"


def _kind(value: Any) -> str:
    """The tag of a ``model:`` / ``data:`` section: one that names a factory, or built-in."""
    named = "factory" in value if isinstance(value, dict) else isinstance(value, FactoryConfig)
    return _FACTORY_TAG if named else _BUILTIN_TAG


# --- method and optimiser -------------------------------------------------------------------


class MethodConfig(_Strict):
    """docs/algorithm.md sections 2-4 and their departures; names as in section 5."""

    prior_scale: float = Field(1.0, gt=0.0, description="sigma: slab scale relative to He init")
    spike_ratio: float = Field(0.1, gt=0.0, lt=1.0, description="rho: spike / slab scale")
    hyperprior_strength: float = Field(1.0, gt=0.0, description="h: flattening of the penalty")
    prior_weight: float = Field(1.0, ge=0.0, description="lambda: prior against data")
    theta_lr: float = Field(0.05, gt=0.0, description="eta_theta: gate learning rate")
    theta_init: float = Field(1.0, gt=0.0, le=1.0, description="theta_0")
    theta_averaging: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="beta: gate steps use an exponential average of the gradient (0: plain SGD)",
    )
    estimator: Literal["first_order", "exact"] = "first_order"
    decide_at_end: bool = Field(
        True, description="after the last epoch, set gates still inside (0, 1) to the vertex "
        "where J is lower (exact loss difference on training data plus the prior)",
    )
    prune_patience: int = Field(50, ge=1, description="steps theta=0 and R1>R0 must hold")
    prior_every: int = Field(
        8, ge=1, description="steps between the prior's weight steps (each one prior_every "
        "times as long) and refreshes of its rent: fewer small kernels per step "
        "(docs/algorithm.md, departure 10)",
    )
    gate_every: int = Field(
        8, ge=1, description="minibatches per gate draw: one draw of z is held for gate_every "
        "minibatches and the gate gradient of the first one makes a gate step gate_every "
        "times as long: fewer small kernels per step (docs/algorithm.md, departure 11); 1: a "
        "draw and a gate step on each minibatch",
    )
    decide_at: int = Field(
        0, ge=0, description="epoch after which the structure is decided once by the loss "
        "budget and the gates are fixed, the rest of training trains the compact network "
        "(docs/algorithm.md, 'Early decision'); 0: the gates learn until the end",
    )
    decide_tolerance: float = Field(
        0.7, ge=0.0, le=1.0, description="loss budget: the share of the training-loss reduction "
        "that all sections together buy which the removed sections may give up",
    )
    decide_sections: int | None = Field(
        None, ge=0, description="early decision: keep exactly this many sections (those whose "
        "removal alone raises the loss most) instead of the loss budget; a sweep searching it "
        "gets a point at every depth; a trial takes 0, or all sections, before its first step",
    )
    decide_batches: int = Field(
        10, ge=1, description="training minibatches the early decision measures the loss on",
    )
    recalibrate_bn: bool = Field(
        False, description="before each evaluation, recompute BatchNorm running statistics "
        "from recalibrate_batches training minibatches of the network evaluated",
    )
    recalibrate_batches: int = Field(20, ge=1, description="minibatches of a recalibration")
    ema_decay: float = Field(
        0.0, ge=0.0, lt=1.0, description="evaluate and deliver an exponential moving average "
        "of the weights with this decay per step, from the step the structure is fixed on "
        "(the early decision, or the first step with gates fixed); smooths the compact "
        "network's re-learning (docs/algorithm.md, 'Averaged weights'); 0: the trained weights",
    )
    gates: Literal["learned", "fixed", "removed"] = Field(
        "learned", description="fixed: every gate at 1 (baseline); removed: no sections at all"
    )


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    step_epochs: tuple[int, ...] = Field((), description="step schedule: epochs where lr x 0.1")

    @model_validator(mode="after")
    def _momentum_for_sgd_only(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0.0):
            raise ValueError("nesterov needs name: sgd and momentum > 0")
        return self


class SettleConfig(_Strict):
    """When a trial may end before ``epochs`` (``layertune.settle``; docs/algorithm.md,
    "Settled trials"). Off unless ``std`` > 0; a sweep sets it from its search space."""

    std: float = Field(
        0.0, ge=0.0, le=1.0, description="end once the validation accuracies of the last "
        "`epochs` epochs, the structure fixed in each, have a standard deviation below this "
        "(0: run every epoch)",
    )
    epochs: int = Field(3, ge=2, description="epochs whose accuracies are compared")
    from_epoch: int = Field(1, ge=1, description="the first epoch at which a trial may settle")
    cooldown: int = Field(2, ge=0, description="epochs trained after settling, the learning "
                          "rate falling linearly to 0 (0: end at the settled epoch)")


class TrialConfig(_Strict):
    data: Annotated[Annotated[DataConfig, Tag(_BUILTIN_TAG)]
                    | Annotated[FactoryConfig, Tag(_FACTORY_TAG)], Discriminator(_kind)]
    model: Annotated[Annotated[ModelConfig, Tag(_BUILTIN_TAG)]
                     | Annotated[FactoryConfig, Tag(_FACTORY_TAG)], Discriminator(_kind)]
    method: MethodConfig = MethodConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    epochs: int = Field(20, gt=0)
    settle: SettleConfig = SettleConfig()
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    bf16: bool = Field(False, description="bf16 autocast (GPU)")
    channels_last: bool = Field(False, description="channels_last memory format (GPU, 2-d convs)")

    @model_validator(mode="after")
    def _decision_inside_training(self) -> TrialConfig:
        if self.method.decide_at >= self.epochs:
            raise ValueError(f"method.decide_at ({self.method.decide_at}) must be below epochs "
                             f"({self.epochs}); 0 lets the gates learn until the end")
        return self

    def with_overrides(self, overrides: dict[str, Any], source: str = "--set") -> TrialConfig:
        return validate(apply_overrides(self.model_dump(mode="json"), overrides), source)


def _format(err: ValidationError, source: str) -> str:
    errors = err.errors()
    # A misspelt key also makes its intended key "missing": name the misspelling.
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in e["loc"]]
    kind = loc.pop(1) if len(loc) > 1 and loc[0] in ("model", "data") else None  # its tag
    if kind == _BUILTIN_TAG and loc[0] == "model" and len(loc) > 1 \
            and e["type"] != "union_tag_invalid" and not loc[1].startswith("name"):
        loc.pop(1)  # and the built-in model's name tag
    key = ".".join(loc) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "union_tag_invalid":
        tags = e.get("ctx", {}).get("expected_tags", "")
        loc.append(e.get("ctx", {}).get("discriminator", "'name'").strip("'"))
        key = ".".join(loc)
        msg = f"unknown {loc[0]} {e['ctx']['tag']!r}; allowed: {tags}"
        return f"{source}: {key}: {msg}"
    elif e["type"] == "literal_error":
        msg = msg.replace("Input tag", "value").replace("Input should be", "allowed:")
    elif e["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:  # a check across keys names its keys itself
            return f"{source}: {msg}"
    got = e.get("input")
    if e["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict):
        msg += f" (got {got!r})"
    return f"{source}: {key}: {msg}"


def validate(raw: Any, source: str) -> TrialConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of keys to values")
    try:
        return TrialConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(parse)"
        raise ConfigError(
            f"{path}: {where}: not valid YAML ({getattr(err, 'problem', err)})"
        ) from None


def load_trial(path: str | Path, overrides: dict[str, Any] | None = None) -> TrialConfig:
    raw = read_yaml(path)
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: (top level): expected a mapping of keys to values")
        raw = apply_overrides(raw, overrides)
        return validate(raw, f"{path} (with --set)")
    return validate(raw, str(path))


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["optimizer.lr=0.1", "method.gates=false"]`` -> {dotted key: YAML-parsed value}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. optimizer.lr=0.1")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys in a copy of ``raw``; a key that is not in the schema fails validation."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return out
