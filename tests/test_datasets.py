"""Dataset registry: offline datasets load correctly, seeded splits, torchvision-layout files, clear errors."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from robverify.errors import RobverifyError
from trainers import datasets as D
from trainers.datasets import DATASETS, load_dataset, read_idx, stratified_split

SIZES = {"digits": 1797, "mnist5k": 5000, "fashion-mnist": 70000}


def _offline(name: str) -> str:
    if not DATASETS[name].offline:
        pytest.skip(f"{name} is not available offline here (apt-get install dataset-fashion-mnist)")
    return name


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 ``array`` as an IDX file (gzipped if the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_fake_mnist(folder: Path, stems: tuple[str, ...], n_classes: int, label_offset: int = 0,
                     gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Four small IDX files under ``folder``; returns (train images, train labels) as written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = []
    for i, n in enumerate((30, 20)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % n_classes + label_offset).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{stems[2 * i]}{suffix}", x)
        write_idx(folder / f"{stems[2 * i + 1]}{suffix}", y)
        written.append((x, y))
    return written[0]


EMNIST_STEMS = tuple(f"emnist-{{}}-{p}" for p in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                   "test-images-idx3-ubyte", "test-labels-idx1-ubyte"))


@pytest.fixture
def offline_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: sockets refuse and torchvision's download helpers fail at once."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.mnist as mnist
    import torchvision.datasets.svhn as svhn

    for module, attr in [(mnist, "download_and_extract_archive"), (cifar, "download_and_extract_archive"),
                         (svhn, "download_url")]:
        monkeypatch.setattr(module, attr, refuse)


# ------------------------------------------------------------------ offline datasets


@pytest.mark.parametrize("name", ["digits", "mnist5k", "fashion-mnist"])
def test_offline_dataset_loads(name: str) -> None:
    ds = load_dataset(_offline(name))
    info = DATASETS[name]
    assert ds.name == name and ds.n_classes == info.n_classes == len(ds.class_names)
    assert ds.input_shape == info.input_shape
    assert len(ds.y_train) + len(ds.y_test) == SIZES[name]
    for x, y in [(ds.x_train, ds.y_train), (ds.x_test, ds.y_test)]:
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert x.shape == (len(y), *info.input_shape)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert float(x.max()) > 0.9  # really scaled to [0, 1], not to [0, 1/255]
        assert set(y.tolist()) == set(range(info.n_classes))
    assert load_dataset(name) is ds  # cached in-process


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_seeded_split_is_stratified_80_20(name: str) -> None:
    ds = load_dataset(name, seed=0)
    counts = torch.bincount(ds.y_train, minlength=10) + torch.bincount(ds.y_test, minlength=10)
    expected_test = torch.round(counts.double() * 0.2).long()
    assert torch.equal(torch.bincount(ds.y_test, minlength=10), expected_test)


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_split_deterministic_per_seed(name: str) -> None:
    a = load_dataset(name, seed=0)
    D._load_cached.cache_clear()
    b = load_dataset(name, seed=0)
    assert a is not b
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = load_dataset(name, seed=1)
    assert not torch.equal(a.x_test, c.x_test)
    assert len(a.y_test) == len(c.y_test)


def test_stratified_split_indices() -> None:
    y = np.repeat(np.arange(10), [50, 51, 52, 53, 54, 55, 56, 57, 58, 59])
    tr, te = stratified_split(y, seed=3)
    tr2, te2 = stratified_split(y, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert not set(tr) & set(te)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(len(y)))
    for c in range(10):
        assert (y[te] == c).sum() == round(0.2 * (y == c).sum())
    tr3, te3 = stratified_split(y, seed=4)
    assert set(te3) != set(te)


def test_mnist5k_train_test_disjoint_by_content() -> None:
    ds = load_dataset("mnist5k")
    train = {row.numpy().tobytes() for row in ds.x_train.flatten(1)}
    assert not any(row.numpy().tobytes() in train for row in ds.x_test.flatten(1))


def test_seed_ignored_for_official_splits() -> None:
    if not DATASETS["fashion-mnist"].offline:
        pytest.skip("fashion-mnist not installed")
    assert load_dataset("fashion-mnist", seed=0) is load_dataset("fashion-mnist", seed=5)


def test_unknown_dataset() -> None:
    with pytest.raises(RobverifyError, match=r"unknown dataset 'mnsit': expected one of digits, mnist5k"):
        load_dataset("mnsit")


def test_offline_datasets_listed() -> None:
    names = D.offline_datasets()
    assert {"digits", "mnist5k"} <= set(names)
    assert "cifar10" not in names and "mnist" not in names


# ------------------------------------------------------------------ IDX files, torchvision layout


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, x)
    assert np.array_equal(read_idx(path), x)


def test_read_idx_rejects_garbage(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"not an idx file")
    with pytest.raises(RobverifyError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("kmnist", "KMNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_from_torchvision_layout(tmp_path: Path, name: str, folder: str) -> None:
    x, y = write_fake_mnist(tmp_path / folder / "raw", D._MNIST_STEMS, 10)
    ds = load_dataset(name, data_root=tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert torch.equal(ds.x_train[:, 0], torch.as_tensor(x, dtype=torch.float32) / 255)
    assert torch.equal(ds.y_train, torch.as_tensor(y, dtype=torch.long))


def test_fashion_mnist_from_flat_gz_folder(tmp_path: Path) -> None:
    """The Debian layout (four .gz files in one folder) also works as --data-root."""
    write_fake_mnist(tmp_path, D._MNIST_STEMS, 10, gz=True)
    ds = load_dataset("fashion-mnist", data_root=tmp_path)
    assert ds.class_names[0] == "T-shirt/top" and len(ds.y_test) == 20


@pytest.mark.parametrize("split,n_classes,offset", [("balanced", 47, 0), ("letters", 26, 1)])
def test_emnist_oriented_like_mnist(tmp_path: Path, split: str, n_classes: int, offset: int) -> None:
    stems = tuple(s.format(split) for s in EMNIST_STEMS)
    x, y = write_fake_mnist(tmp_path / "EMNIST" / "raw", stems, n_classes, label_offset=offset)
    ds = load_dataset(f"emnist-{split}", data_root=tmp_path)
    assert ds.n_classes == n_classes
    expected = torch.as_tensor(x.transpose(0, 2, 1), dtype=torch.float32) / 255
    assert torch.equal(ds.x_train[:, 0], expected)
    assert torch.equal(ds.y_train, torch.as_tensor(y, dtype=torch.long) - offset)
    if split == "letters":
        assert ds.class_names[0] == "a" and ds.class_names[-1] == "z"


def test_mnist_download_branch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files missing -> torchvision's download is tried; here a fake download writes the files."""
    import torchvision.datasets as tvd

    def fake_download(self: tvd.MNIST) -> None:
        write_fake_mnist(Path(self.raw_folder), D._MNIST_STEMS, 10)

    monkeypatch.setattr(tvd.MNIST, "download", fake_download)
    ds = load_dataset("mnist", data_root=tmp_path)
    assert len(ds.y_train) == 30


# ------------------------------------------------------------------ errors for missing files

EXPECTED = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "kmnist": "KMNIST/raw/train-images-idx3-ubyte",
    "fashion-mnist": "FashionMNIST/raw/train-images-idx3-ubyte",
    "emnist-balanced": "EMNIST/raw/emnist-balanced-train-images-idx3-ubyte",
    "emnist-letters": "EMNIST/raw/emnist-letters-train-images-idx3-ubyte",
    "cifar10": "cifar-10-batches-py/data_batch_1..5, test_batch",
    "cifar100": "cifar-100-python/train, test, meta",
    "svhn": "train_32x32.mat, test_32x32.mat",
}


def test_every_file_dataset_has_an_error_case() -> None:
    assert set(EXPECTED) == {n for n, info in DATASETS.items() if info.needs_root}


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "fashion-mnist"])
def test_needs_data_root(name: str) -> None:
    with pytest.raises(RobverifyError) as err:
        load_dataset(name)
    message = str(err.value)
    assert f"dataset {name!r} needs --data-root" in message and EXPECTED[name] in message
    assert "\n" not in message


def test_fashion_mnist_without_root_or_debian_package(tmp_path: Path) -> None:
    loader = D._mnist_family("fashion-mnist", "FashionMNIST", D.FASHION_NAMES, system_dir=tmp_path / "absent")
    with pytest.raises(RobverifyError, match="needs --data-root .*dataset-fashion-mnist.*FashionMNIST/raw/"):
        loader(None, 0)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_missing_root_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(RobverifyError) as err:
        load_dataset(name, data_root=tmp_path / "nope")
    message = str(err.value)
    assert "is not a directory" in message and EXPECTED[name] in message


@pytest.mark.parametrize("name", list(EXPECTED))
def test_root_without_files_and_no_network(tmp_path: Path, name: str, offline_network: None) -> None:
    with pytest.raises(RobverifyError) as err:
        load_dataset(name, data_root=tmp_path)
    message = str(err.value)
    assert "download failed" in message and EXPECTED[name] in message and str(tmp_path) in message
    assert "\n" not in message
