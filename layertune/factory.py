"""The user's own network and data in a trial: ``model: {factory: "pkg.module:fn", kwargs}``
(README, "Your own model"; the rules in docs/design.md, "Where a new thing goes").

``trial_data`` and ``trial_model`` give a trial its data and network, built-in or from the
user's functions; ``check_factories`` calls the functions once on the driver, on the CPU, so
that a bad string, a function that raises or a result of the wrong shape is one line before Ray
starts; ``modules_to_ship`` names the user's modules that Ray's runtime environment sends to
every worker; ``rebuild`` makes a factory network again for its saved weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import ConfigError, DataConfig, FactoryConfig, TrialConfig
from .data import DataBundle, load_data
from .formats import input_dtype
from .models import build_model
from .sections import GatedNetwork

_SHAPES = ("a DataBundle, a tuple (train, val, num_classes, in_shape) or a dict with those "
           "keys (optional: test, num_train)")
_GATE_EXAMPLE = 8  # samples of the batch gate() checks the blocks on


class FactoryError(ValueError):
    """A factory cannot be imported or called, or returned the wrong thing (one line)."""


def resolve(target: str) -> Callable[..., Any]:
    """``"pkg.module:fn"`` -> the function; the current folder is searched first, as
    ``python -c "import pkg.module"`` would."""
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise FactoryError(f"{target}: no module {err.name!r} (looked in {os.getcwd()} and "
                           "the installed packages)") from None
    except Exception as err:
        raise FactoryError(f"{target}: importing {module_name} raised {_first_line(err)}") \
            from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise FactoryError(f"{target}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FactoryError(f"{target}: {attr} is a {type(obj).__name__}, not a function")
    return obj


def _call(config: FactoryConfig) -> Any:
    fn = resolve(config.factory)
    try:
        return fn(**config.kwargs)
    except Exception as err:
        raise FactoryError(f"{config.factory}(**{config.kwargs!r}) raised "
                           f"{_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# --- data ---------------------------------------------------------------------------------------


class _OnDevice:
    """The user's loader with each ``(x, y)`` batch moved to the training device."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def trial_data(config: TrialConfig, device: torch.device) -> DataBundle:
    """The trial's data: a built-in data set, or what its ``data.factory`` returns."""
    if isinstance(config.data, DataConfig):
        return load_data(config.data, config.seed, device)
    return user_data(config.data, device)


def user_data(config: FactoryConfig, device: torch.device) -> DataBundle:
    got = _call(config)
    if isinstance(got, DataBundle):
        parts = {"train": got.train, "val": got.val, "test": got.test,
                 "num_classes": got.num_classes, "in_shape": got.in_shape,
                 "num_train": got.num_train}
    elif isinstance(got, tuple) and len(got) == 4:
        parts = dict(zip(("train", "val", "num_classes", "in_shape"), got, strict=True))
    elif isinstance(got, dict) and {"train", "val", "num_classes", "in_shape"} <= set(got):
        parts = dict(got)
    else:
        raise FactoryError(f"{config.factory} returned {_describe(got)}; expected {_SHAPES}")
    classes, shape = parts["num_classes"], parts["in_shape"]
    if not isinstance(classes, int) or classes < 2:
        raise FactoryError(f"{config.factory}: num_classes must be an int >= 2 (got {classes!r})")
    if not isinstance(shape, tuple | list) or not shape or not all(
            isinstance(s, int) and s > 0 for s in shape):
        raise FactoryError(f"{config.factory}: in_shape must be one sample's shape, positive "
                           f"ints without the batch, e.g. (1, 28, 28) (got {shape!r})")
    for key in ("train", "val"):
        if not hasattr(parts[key], "__iter__") or not hasattr(parts[key], "__len__"):
            raise FactoryError(f"{config.factory}: {key} must be a loader of (x, y) batches "
                               f"with a len() (got {_describe(parts[key])})")
    num_train = parts.get("num_train") or _samples(parts["train"])
    if not num_train:
        raise FactoryError(f"{config.factory}: cannot count the training samples of "
                           f"{_describe(parts['train'])}; return num_train in a dict")
    test = parts.get("test")
    return DataBundle(_OnDevice(parts["train"], device), _OnDevice(parts["val"], device),
                      _OnDevice(test, device) if test is not None else None,
                      tuple(shape), classes, int(num_train))


def _samples(loader: Any) -> int | None:
    """Samples in a layertune ``TensorLoader`` or a torch ``DataLoader`` of a sized data set."""
    if hasattr(loader, "num_samples"):
        return int(loader.num_samples)
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


def _describe(obj: Any) -> str:
    if isinstance(obj, tuple | list):
        return f"a {type(obj).__name__} of {len(obj)}"
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))}"
    return f"a {type(obj).__name__}"


# --- the network --------------------------------------------------------------------------------


def trial_model(config: TrialConfig, data: DataBundle) -> nn.Module:
    """The trial's gated network: a built-in one, or what its ``model.factory`` returns."""
    if not isinstance(config.model, FactoryConfig):
        return build_model(config.model, data.in_shape, data.num_classes)
    x = next(iter(data.train))[0][:_GATE_EXAMPLE].cpu()
    return user_model(config.model, x, data.num_classes)


def user_model(config: FactoryConfig, example: Tensor, num_classes: int,
               log: Callable[[str], None] = print) -> nn.Module:
    """``factory(**kwargs)``: a ``GatedNetwork`` or ``layertune.gate``'s result as it is, any
    other network gated by ``gate`` (every block of a kind it knows) on ``example``. Its
    ``spec`` names the factory, which ``rebuild`` calls again."""
    from .gating import GatedModel, gate

    net = _call(config)
    if not isinstance(net, nn.Module):
        raise FactoryError(f"{config.factory} returned {_describe(net)}; expected a torch "
                           "nn.Module (your network, or layertune.gate's result)")
    if not isinstance(net, GatedNetwork | GatedModel):
        net = gate(net, example, log=log)
    net.spec = {"factory": config.factory, "kwargs": config.kwargs,
                "in_shape": list(example.shape[1:]), "in_dtype": str(example.dtype),
                "num_classes": num_classes}
    return net


def rebuild(spec: dict) -> nn.Module:
    """The gated network a factory ``spec`` (a ``net.spec``) names, freshly built."""
    example = torch.zeros((2, *spec["in_shape"]), dtype=input_dtype(spec))
    config = FactoryConfig(factory=spec["factory"], kwargs=spec.get("kwargs", {}))
    return user_model(config, example, int(spec["num_classes"]), log=lambda _: None)


# --- before Ray starts --------------------------------------------------------------------------


def check_factories(trial: TrialConfig, source: str) -> int | None:
    """Call the trial's factories once here, on the CPU, and check what they return: the first
    training batch fits ``in_shape`` and the classes, the network maps it to ``num_classes``
    logits and its FLOPs can be counted. Returns the number of classes (None without
    factories); ``ConfigError`` naming ``source`` and the key otherwise."""
    from .flops import flop_table
    from .gating import GatingError

    if not any(isinstance(c, FactoryConfig) for c in (trial.data, trial.model)):
        return None
    cpu = torch.device("cpu")
    key = "data.factory" if isinstance(trial.data, FactoryConfig) else "data"
    torch.manual_seed(trial.seed)
    try:
        data = trial_data(trial, cpu)
        x, y = next(iter(data.train))
    except Exception as err:  # the user's code may raise anything
        raise ConfigError(f"{source}: {key}: {_reason(err, 'loading the first batch')}") \
            from None
    if tuple(x.shape[1:]) != data.in_shape or y.shape[:1] != x.shape[:1] \
            or y.is_floating_point():
        raise ConfigError(f"{source}: {key}: a training batch is x {tuple(x.shape)}, y "
                          f"{tuple(y.shape)} {y.dtype}; expected x (batch, *{data.in_shape}) "
                          "and y (batch,) of class indices, or (batch, positions) of them")
    if int(y.min()) < 0 or int(y.max()) >= data.num_classes:
        raise ConfigError(f"{source}: {key}: a training batch has class indices "
                          f"{int(y.min())}..{int(y.max())}, but num_classes is "
                          f"{data.num_classes}")
    key = "model.factory" if isinstance(trial.model, FactoryConfig) else "model"
    try:
        net = trial_model(trial, data).eval()
        with torch.no_grad():
            out = net(x[:2])
        flop_table(net, data.in_shape)
    except (FactoryError, GatingError) as err:
        raise ConfigError(f"{source}: {key}: {err}") from None
    except Exception as err:
        raise ConfigError(f"{source}: {key}: {_reason(err, 'a forward pass on two samples')}") \
            from None
    want = (len(x[:2]), data.num_classes, *y.shape[1:])  # F.cross_entropy's layout
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, Tensor) else _describe(out)
        raise ConfigError(f"{source}: {key}: the network maps a batch of {len(x[:2])} to "
                          f"{got}; expected logits {want}")
    return data.num_classes


def _reason(err: BaseException, doing: str) -> str:
    return str(err) if isinstance(err, FactoryError) else f"{doing} raised {_first_line(err)}"


def modules_to_ship(trial: TrialConfig) -> list[str]:
    """Where the trial's factory modules live (a package's folder or a module's file), for
    Ray's ``runtime_env={"py_modules": ...}``: the top-level module of each, unless it is
    installed (site-packages, the standard library) or layertune itself."""
    installed = [Path(p).resolve() for p in (*site.getsitepackages(), site.getusersitepackages(),
                                             sysconfig.get_paths()["stdlib"])]
    out: list[str] = []
    for c in (trial.model, trial.data):
        if not isinstance(c, FactoryConfig):
            continue
        resolve(c.factory)  # imported, so its top-level module can be found
        top = c.factory.partition(":")[0].split(".")[0]
        spec = importlib.util.find_spec(top)
        if top == "layertune" or spec is None:
            continue
        places = list(spec.submodule_search_locations or [spec.origin])
        if len(places) != 1 or places[0] is None:
            continue
        path = Path(places[0]).resolve()
        if not any(path.is_relative_to(p) for p in installed) and str(path) not in out:
            out.append(str(path))
    return out
