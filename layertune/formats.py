"""A network as a file that a runtime loads without layertune: torch.export, ONNX, TorchScript.

``write_network`` writes one of ``FORMATS``, traced on an example batch with the batch size
dynamic, so the file runs on any batch size:

* ``export`` (default): ``torch.export.save`` of an ExportedProgram, ``.pt2``; load with
  ``torch.export.load(path).module()`` (or compile it with AOTInductor);
* ``onnx``: ``torch.onnx.export`` (the dynamo exporter, weights inside the one file), ``.onnx``;
  run with ``onnxruntime.InferenceSession(path)``, input ``input``, output ``logits``;
* ``torchscript``: ``torch.jit.script``, ``.pt``; ``torch.jit.load(path)``. torch deprecates
  TorchScript, so it is written only on request.

``save_mlflow_model`` writes the same network as an MLflow Model folder (``mlflow.pytorch``,
``.pt2`` inside, with a signature and an input example), which the MLflow record logs as a model.
Every file holds only torch operators and weights: no layertune class is pickled.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads FORMATS without it
    import torch
    from torch import Tensor, nn

FORMATS: dict[str, str] = {"export": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_FORMAT = "export"
INPUT, OUTPUT = "input", "logits"  # ONNX tensor names
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so the example batch must be >= 2


def check_format(fmt: str, path: str | Path | None = None) -> str:
    """The suffix of ``fmt``; ``ConfigError`` (one line) for an unknown format, or for a
    ``path`` whose suffix is another format's (``torch.export.save`` insists on ``.pt2``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: allowed: {', '.join(FORMATS)}")
    suffix = FORMATS[fmt]
    if path is not None and Path(path).suffix != suffix:
        p = Path(path)
        other = next((f" (or --format {n} for {s})" for n, s in FORMATS.items()
                      if s == p.suffix), "")
        raise ConfigError(f"-o {p}: --format {fmt} writes a {suffix} file; name it "
                          f"{p.with_suffix(suffix).name}{other}")
    return suffix


def example_input(in_shape: Sequence[int], batch: int = EXAMPLE_BATCH,
                  dtype: torch.dtype | None = None) -> Tensor:
    """A fixed pseudo-random batch of inputs of shape ``(batch, *in_shape)``; for an integer
    ``dtype`` (token ids) zeros, an index every embedding has."""
    import torch

    if dtype is not None and not dtype.is_floating_point:
        return torch.zeros(batch, *in_shape, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *in_shape, generator=generator)


def input_dtype(spec: dict) -> torch.dtype:
    """The dtype of a network's inputs: float32, or the one a factory's network recorded in its
    ``spec`` (``factory.user_model``; token ids are int64)."""
    import torch

    return getattr(torch, str(spec.get("in_dtype", "torch.float32")).removeprefix("torch."))


def _batch_dim() -> dict[int, object]:
    import torch

    return {0: torch.export.Dim("batch", min=1)}


def _write_export(net: nn.Module, x: Tensor, path: Path) -> None:
    import torch

    program = torch.export.export(net, (x,), dynamic_shapes=(_batch_dim(),))
    torch.export.save(program, str(path))


def _write_onnx(net: nn.Module, x: Tensor, path: Path) -> None:
    import torch

    # external_data=False: one self-contained file (the built-in networks are far below the
    # 2 GB protobuf limit); the dynamo exporter needs onnxscript.
    torch.onnx.export(net, (x,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_shapes=(_batch_dim(),), dynamo=True, external_data=False,
                      verbose=False)


def _write_torchscript(net: nn.Module, x: Tensor, path: Path) -> None:
    import torch

    with warnings.catch_warnings():  # torch deprecates TorchScript; written only on request
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(net).save(str(path))


_WRITERS: dict[str, Callable[[nn.Module, Tensor, Path], None]] = {
    "export": _write_export, "onnx": _write_onnx, "torchscript": _write_torchscript,
}


def write_network(net: nn.Module, in_shape: Sequence[int], path: str | Path,
                  fmt: str = DEFAULT_FORMAT, dtype: torch.dtype | None = None) -> Path:
    """Write ``net`` (in eval mode, on the CPU) as ``fmt`` to ``path``; returns the path.

    ``in_shape`` is one input without the batch dimension (``dtype``: float32 unless given);
    the batch size stays dynamic.
    """
    import torch

    check_format(fmt, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.cpu().eval()
    with torch.no_grad():
        _WRITERS[fmt](net, example_input(in_shape, dtype=dtype), path)
    return path


def load_network(path: str | Path) -> Callable[[Tensor], Tensor]:
    """What a deployment does with a written file, by its suffix (torch or onnxruntime alone)."""
    import torch

    path = Path(path)
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    if path.suffix == ".pt":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path))
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {INPUT: x.numpy()})[0])
    raise ValueError(f"{path}: not a written network (suffixes: {', '.join(FORMATS.values())})")


def save_mlflow_model(net: nn.Module, in_shape: Sequence[int], path: str | Path,
                      dtype: torch.dtype | None = None) -> Path:
    """``net`` as an MLflow Model folder at ``path`` (``mlflow.pytorch``, ``.pt2`` inside).

    The signature (float32 ``(-1, *in_shape)`` in, logits out) and the input example let
    ``mlflow models predict`` and the MLflow UI treat it as a model. The requirements are given
    (torch alone), because inferring them would load the model in a subprocess.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    net = net.cpu().eval()
    x = example_input(in_shape, dtype=dtype)
    with torch.no_grad():
        y = net(x)
    signature = infer_signature(x.numpy(), y.numpy())
    mlflow.pytorch.save_model(net, str(path), signature=signature, input_example=x.numpy(),
                              serialization_format="pt2",
                              pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return Path(path)
