"""Tasks: parsing, canonical strings, validation messages, transforms, class subsets, test sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robverify.errors import RobverifyError
from trainers.datasets import DATASETS, load_dataset
from trainers.tasks import TRANSFORMS, Task, apply_transforms, load_task, parse_task, sample_test

CANONICAL = [
    "digits",
    "mnist5k[0-4]",
    "mnist5k[5-9]+rot90",
    "mnist5k[5-9]+invert",
    "mnist5k[5-9]+rot90+invert",
    "digits[0-9]+resize28",
    "mnist5k[0,2,4]",
    "mnist5k[0-2,7]",
    "mnist5k[7,2]",
    "mnist5k[0,1]",
    "fashion-mnist[0-4]+hflip",
    "emnist-letters[0-25]+rot90+rot90",
    "cifar10[0-2]+gray+resize28",
    "cifar100[99]",
    "svhn+resize28",
    "mnist5k+rgb+resize32",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_strings_round_trip(text: str) -> None:
    task = parse_task(text)
    assert str(task) == text
    assert parse_task(str(task)) == task


def test_parse_fields() -> None:
    assert parse_task("mnist5k[0-2,7]+rot90+invert") == Task("mnist5k", (0, 1, 2, 7), ("rot90", "invert"))
    assert parse_task("digits") == Task("digits")
    assert parse_task("digits").classes is None and parse_task("digits").transforms == ()


@pytest.mark.parametrize("text,canonical", [
    (" mnist5k [ 0-1 , 3 ] + rot90 ", "mnist5k[0,1,3]+rot90"),
    ("mnist5k[0,1,2,3]", "mnist5k[0-3]"),
    ("mnist5k[0-2,3-4,9]", "mnist5k[0-4,9]"),
    ("mnist5k[3-3]", "mnist5k[3]"),
    ("mnist5k[9,0-2]", "mnist5k[9,0-2]"),
])
def test_compaction(text: str, canonical: str) -> None:
    assert str(parse_task(text)) == canonical


def test_task_properties_from_registry() -> None:
    assert parse_task("digits[0-4]+resize28").input_shape == (1, 28, 28)
    assert parse_task("digits[0-4]+resize28").n_classes == 5
    assert parse_task("cifar10+gray").input_shape == (1, 32, 32)
    assert parse_task("mnist5k+rgb").input_shape == (3, 28, 28)
    assert parse_task("cifar100").n_classes == 100


@st.composite
def tasks(draw: st.DrawFn) -> Task:
    name = draw(st.sampled_from(sorted(DATASETS)))
    n = DATASETS[name].n_classes
    classes = draw(st.none() | st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True).map(tuple))
    channels = DATASETS[name].input_shape[0]
    transforms = []
    for t in draw(st.lists(st.sampled_from(sorted(TRANSFORMS)), max_size=5)):
        needed = TRANSFORMS[t].channels_in
        if needed is None or needed == channels:
            transforms.append(t)
            channels = TRANSFORMS[t].out_shape((channels, 28, 28))[0]
    return Task(name, classes, tuple(transforms))


@settings(max_examples=200, deadline=None)
@given(tasks())
def test_round_trip_property(task: Task) -> None:
    text = str(task)
    assert parse_task(text) == task
    assert str(parse_task(text)) == text
    assert task.n_classes == (DATASETS[task.dataset].n_classes if task.classes is None else len(task.classes))


@pytest.mark.parametrize("text,message", [
    ("mnsit[0-4]", "task 'mnsit[0-4]': unknown dataset 'mnsit': expected one of digits, mnist5k"),
    ("mnist5k[0-12]", "task 'mnist5k[0-12]': class 12 out of range 0-9"),
    ("digits[10]", "class 10 out of range 0-9"),
    ("mnist5k[4-2]", "bad range '4-2'"),
    ("mnist5k+rot91", "unknown transform 'rot91': expected one of rot90"),
    ("mnist5k[0-4]+rot90+blur", "unknown transform 'blur'"),
    ("mnist5k[0-4", "unbalanced bracket: '[' without ']'"),
    ("mnist5k0-4]", "unbalanced bracket: ']' without '['"),
    ("mnist5k[0-4]]", "unbalanced bracket"),
    ("mnist5k[[0-4]]", "unbalanced bracket"),
    ("mnist5k[]", "empty class list"),
    ("mnist5k[ ]", "empty class list"),
    ("mnist5k[1,2,1]", "class 1 listed twice"),
    ("mnist5k[0-3,2]", "class 2 listed twice"),
    ("mnist5k[0,,1]", "empty item in class list"),
    ("mnist5k[a-b]", "bad class 'a-b'"),
    ("mnist5k[-1]", "bad class '-1'"),
    ("mnist5k[0-4]+", "empty transform name"),
    ("mnist5k++rot90", "empty transform name"),
    ("mnist5k[0-4]rot90", "unexpected 'rot90'"),
    ("[0-4]", "missing dataset name"),
    ("mnist5k+gray", "transform 'gray' needs 3-channel images"),
    ("cifar10+rgb", "transform 'rgb' needs 1-channel images"),
    ("", "empty task"),
])
def test_bad_task_strings(text: str, message: str) -> None:
    with pytest.raises(RobverifyError) as err:
        parse_task(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_task_constructor_validates() -> None:
    with pytest.raises(RobverifyError, match="class 11 out of range"):
        Task("mnist5k", (1, 11))
    with pytest.raises(RobverifyError, match="unknown dataset"):
        Task("nope")
    with pytest.raises(RobverifyError, match="unknown transform"):
        Task("digits", None, ("spin",))
    with pytest.raises(RobverifyError, match="empty class list"):
        Task("digits", ())


# ------------------------------------------------------------------ transforms


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 1, 5, 7, generator=torch.Generator().manual_seed(0))


def test_rot90_four_times_is_identity(images: torch.Tensor) -> None:
    once = apply_transforms(images, ["rot90"])
    assert once.shape == (3, 1, 7, 5)
    assert torch.equal(apply_transforms(images, ["rot90"] * 4), images)
    assert torch.equal(apply_transforms(images, ["rot90", "rot270"]), images)
    assert torch.equal(apply_transforms(images, ["rot90", "rot90"]), apply_transforms(images, ["rot180"]))


def test_flips_and_invert_are_involutions(images: torch.Tensor) -> None:
    for name in ("hflip", "vflip", "invert"):
        assert torch.allclose(apply_transforms(images, [name, name]), images)
    assert torch.equal(apply_transforms(images, ["invert"]), 1 - images)
    assert torch.equal(apply_transforms(images, ["hflip"])[..., 0], images[..., -1])
    assert torch.equal(apply_transforms(images, ["vflip"])[..., 0, :], images[..., -1, :])


def test_gray_and_rgb(images: torch.Tensor) -> None:
    rgb = apply_transforms(images, ["rgb"])
    assert rgb.shape == (3, 3, 5, 7)
    assert torch.allclose(apply_transforms(rgb, ["gray"]), images, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_shapes_and_range(name: str) -> None:
    t = TRANSFORMS[name]
    channels = t.channels_in or 1
    x = torch.rand(2, channels, 8, 6, generator=torch.Generator().manual_seed(1))
    y = t.fn(x)
    assert tuple(y.shape[1:]) == t.out_shape((channels, 8, 6))
    assert y.dtype == torch.float32 and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_resize28_on_digits() -> None:
    data = load_task("digits[0-9]+resize28")
    assert data.x_train.shape[1:] == (1, 28, 28) and data.input_shape == (1, 28, 28)
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    assert float(data.x_train.max()) > 0.9


# ------------------------------------------------------------------ task data


def test_class_subset_relabels() -> None:
    ds = load_dataset("mnist5k")
    data = load_task("mnist5k[5-9]")
    assert data.source_labels == (5, 6, 7, 8, 9) and data.class_names == ("5", "6", "7", "8", "9")
    assert data.n_classes == 5 and set(data.y_train.tolist()) == set(range(5))
    source = torch.tensor(data.source_labels)[data.y_test]
    keep = ds.y_test >= 5
    assert torch.equal(source, ds.y_test[keep])
    assert torch.equal(data.x_test, ds.x_test[keep])


def test_class_subset_in_written_order() -> None:
    ds = load_dataset("mnist5k")
    data = load_task(parse_task("mnist5k[7,2]"))
    assert data.source_labels == (7, 2) and data.class_names == ("7", "2")
    assert torch.equal(data.x_train[data.y_train == 0], ds.x_train[ds.y_train == 7])
    assert torch.equal(data.x_train[data.y_train == 1], ds.x_train[ds.y_train == 2])


def test_full_task_equals_dataset() -> None:
    ds = load_dataset("digits", seed=2)
    data = load_task("digits", seed=2)
    assert torch.equal(data.x_train, ds.x_train) and torch.equal(data.y_test, ds.y_test)
    assert data.source_labels == tuple(range(10)) and data.task == Task("digits")


def test_transforms_applied_in_order() -> None:
    plain = load_task("mnist5k[5-9]")
    both = load_task("mnist5k[5-9]+rot90+invert")
    assert torch.equal(both.x_test, 1 - torch.rot90(plain.x_test, 1, (2, 3)))
    assert torch.equal(both.y_test, plain.y_test)


def test_load_task_cached_and_seeded() -> None:
    assert load_task("mnist5k[0-4]") is load_task(parse_task("mnist5k[0-4]"))
    assert not torch.equal(load_task("mnist5k[0-4]", seed=1).y_test, load_task("mnist5k[0-4]").y_test)


def test_sample_test() -> None:
    data = load_task("digits[0-4]")
    x, y, ids = sample_test(data, 10, seed=0)
    assert x.shape == (10, 1, 8, 8) and y.shape == (10,) and ids.dtype == torch.long
    assert torch.equal(x, data.x_test[ids]) and torch.equal(y, data.y_test[ids])
    assert len(set(ids.tolist())) == 10
    x2, y2, ids2 = sample_test(data, 10, seed=0)
    assert torch.equal(ids, ids2)
    assert torch.equal(sample_test(data, 4, seed=0)[2], ids[:4])  # a larger n extends a smaller one
    assert not torch.equal(sample_test(data, 10, seed=1)[2], ids)
    all_ids = sample_test(data, len(data.y_test))[2]
    assert sorted(all_ids.tolist()) == list(range(len(data.y_test)))


@pytest.mark.parametrize("n", [0, -1, 10_000])
def test_sample_test_bad_n(n: int) -> None:
    data = load_task("digits[0-4]")
    with pytest.raises(RobverifyError, match=r"task 'digits\[0-4\]': asked for .* test samples, expected 1 to \d+"):
        sample_test(data, n)
