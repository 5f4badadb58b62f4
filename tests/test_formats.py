"""The compact network written for a runtime (torch.export, ONNX, TorchScript) runs without
layertune and gives the compact network's outputs, for every built-in architecture and for a
user's torchvision ResNet-18 gated by ``layertune.gate`` and stripped.

Each architecture is built small, its normalisation statistics and affine parameters made
non-trivial, some sections removed (projection skips among them), then written in each format.
One clean ``python -c`` process, in which importing layertune fails, loads every file with
torch or onnxruntime alone and runs batches of 1, 3 and 8; its outputs must agree with the
compact network's in layertune to ``TOL`` times the largest logit (float32: runtimes fuse
convolution and normalisation, which reorders the sums).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from layertune.config import ConfigError
from layertune.export import compact
from layertune.formats import FORMATS, check_format, example_input, write_network
from layertune.models import build_from_spec

TOL = 1e-5  # measured: at most 1e-6 (ONNX Runtime), 0 to 8e-7 (torch.export, TorchScript)
BATCHES = (1, 3, 8)
ARCHS = {  # small inputs and widths: the whole module runs in about a minute on 2 cores
    "mlp": {"name": "mlp", "depth": 3, "width": 16, "batchnorm": True, "in_shape": [1, 8, 8]},
    "cnn1d": {"name": "cnn1d", "depth": 4, "channels": 8, "in_shape": [1, 40]},
    "lenet5": {"name": "lenet5", "in_shape": [1, 12, 12]},
    "vgg16": {"name": "vgg16", "in_shape": [3, 32, 32]},
    "resnet20": {"name": "resnet20", "in_shape": [3, 16, 16]},
    "resnet18": {"name": "resnet18", "in_shape": [3, 32, 32]},
}
USER = {"torchvision_resnet18_gated": {"in_shape": [3, 32, 32]}}  # layertune.gate + strip
NETWORKS = {**ARCHS, **USER}

# Runs in a fresh interpreter: layertune is made unimportable first, so a file that needed one
# of its classes (a pickled module) would fail to load.
RUNNER = """
import json, sys
sys.modules["layertune"] = None
import onnxruntime, torch
manifest = json.load(open(sys.argv[1]))
inputs = torch.load(manifest["inputs"], weights_only=True)
outputs = {}
for path, arch in manifest["files"].items():
    if path.endswith(".pt2"):
        run = torch.export.load(path).module()
    elif path.endswith(".onnx"):
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        run = lambda x, s=session: torch.from_numpy(s.run(None, {"input": x.numpy()})[0])
    else:
        run = torch.jit.load(path)
    with torch.no_grad():
        outputs[path] = [run(x) for x in inputs[arch]]
torch.save(outputs, manifest["outputs"])
assert not [m for m in sys.modules if m.split(".")[0] == "layertune" and sys.modules[m]]
"""


def _non_trivial(net: torch.nn.Module, seed: int) -> None:
    """Random normalisation statistics and affine parameters (fresh ones are 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


def _keep(n: int) -> list[bool]:
    return [j == 0 or j % 2 == 1 for j in range(n)]  # removes 2, 4, ...: projections too


def _built_in_compact(spec: dict, seed: int) -> torch.nn.Module:
    model = build_from_spec({**spec, "num_classes": 10})
    _non_trivial(model, seed)
    return compact(model, _keep(len(model.sections)))


def _user_compact(spec: dict, seed: int) -> torch.nn.Module:
    """A user's torchvision network gated by ``layertune.gate``, its removed blocks stripped."""
    from torchvision.models import resnet18

    from layertune.gating import gate, strip

    net = resnet18(num_classes=10)
    _non_trivial(net, seed)
    gated = gate(net.eval(), example_input(spec["in_shape"], 2), log=lambda line: None)
    return strip(gated, _keep(len(gated.sections)))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict:
    """Every architecture in every format, run by the clean process; eager outputs alongside."""
    folder = tmp_path_factory.mktemp("formats")
    files, inputs, expected = {}, {}, {}
    for i, (arch, spec) in enumerate(NETWORKS.items()):
        net = _user_compact(spec, i) if arch in USER else _built_in_compact(spec, i)
        inputs[arch] = [example_input(spec["in_shape"], b) * 2 + 0.5 for b in BATCHES]
        with torch.no_grad():
            expected[arch] = [net(x) for x in inputs[arch]]
        for fmt, suffix in FORMATS.items():
            path = write_network(net, spec["in_shape"], folder / f"{arch}{suffix}", fmt)
            files[str(path)] = arch
    torch.save(inputs, folder / "inputs.pt")
    manifest = {"files": files, "inputs": str(folder / "inputs.pt"),
                "outputs": str(folder / "outputs.pt")}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-c", RUNNER, str(folder / "manifest.json")],
                          cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = torch.load(folder / "outputs.pt", weights_only=True)
    return {"folder": folder, "outputs": outputs, "expected": expected}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("arch", list(NETWORKS))
def test_written_network_runs_alone_and_matches(deployed, arch, fmt):
    path = str(deployed["folder"] / f"{arch}{FORMATS[fmt]}")
    got, want = deployed["outputs"][path], deployed["expected"][arch]
    assert [tuple(y.shape) for y in got] == [(b, 10) for b in BATCHES]  # the batch is dynamic
    for y, ref in zip(got, want, strict=True):
        scale = max(1.0, float(ref.abs().max()))
        assert float((y - ref).abs().max()) <= TOL * scale, (arch, fmt)


def test_default_format_is_torch_export():
    assert check_format("export") == ".pt2"


@pytest.mark.parametrize(("fmt", "path", "words"), [
    ("tflite", None, ["--format tflite", "export, onnx, torchscript"]),
    ("export", "model.pt", ["-o model.pt", ".pt2", "model.pt2", "--format torchscript"]),
    ("onnx", "model", ["-o model", "model.onnx"]),
])
def test_bad_format_or_suffix_is_one_line(fmt, path, words):
    with pytest.raises(ConfigError) as err:
        check_format(fmt, path)
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_each_network_is_one_file(deployed):
    """ONNX weights inside the .onnx (no external .onnx.data file to ship alongside)."""
    written = {p.name for p in deployed["folder"].iterdir()}
    assert written == {f"{a}{s}" for a in NETWORKS for s in FORMATS.values()} | {
        "inputs.pt", "outputs.pt", "manifest.json"}

