"""Tasks: a dataset, an optional class subset and optional transforms, written like ``mnist5k[5-9]+rot90``.

Grammar: ``DATASET[CLASSES]+TRANSFORM+TRANSFORM...`` where ``[CLASSES]`` and the transforms are optional,
CLASSES is a comma list of labels and ascending ranges (``0-2,7``). The kept classes are relabelled
0..k-1 in the order written; transforms apply left to right.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robverify.errors import RobverifyError
from trainers.datasets import DatasetInfo, dataset_info, load_dataset

Shape = tuple[int, int, int]


# ---------------------------------------------------------------- transforms


@dataclass(frozen=True)
class Transform:
    """An image transform: [N, C, H, W] in [0, 1] -> [N, C', H', W'] in [0, 1]."""

    name: str
    fn: Callable[[Tensor], Tensor]
    out_shape: Callable[[Shape], Shape]
    description: str
    channels_in: int | None = None  # required input channels, None for any


def _resize(size: int) -> Callable[[Tensor], Tensor]:
    def fn(x: Tensor) -> Tensor:
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return y.clamp_(0.0, 1.0)

    return fn


_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _same(s: Shape) -> Shape:
    return s


def _swap(s: Shape) -> Shape:
    return (s[0], s[2], s[1])


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in [
        Transform("rot90", lambda x: torch.rot90(x, 1, (2, 3)), _swap, "rotate 90 degrees counter-clockwise"),
        Transform("rot180", lambda x: torch.rot90(x, 2, (2, 3)), _same, "rotate 180 degrees"),
        Transform("rot270", lambda x: torch.rot90(x, 3, (2, 3)), _swap, "rotate 270 degrees counter-clockwise"),
        Transform("hflip", lambda x: x.flip(3), _same, "mirror left-right"),
        Transform("vflip", lambda x: x.flip(2), _same, "mirror top-bottom"),
        Transform("invert", lambda x: 1.0 - x, _same, "1 - x"),
        Transform("resize28", _resize(28), lambda s: (s[0], 28, 28), "bilinear resize to 28x28"),
        Transform("resize32", _resize(32), lambda s: (s[0], 32, 32), "bilinear resize to 32x32"),
        Transform("gray", lambda x: (x * _LUMA.to(x).view(1, 3, 1, 1)).sum(1, keepdim=True).clamp_(0.0, 1.0),
                  lambda s: (1, s[1], s[2]), "RGB to one luminance channel", channels_in=3),
        Transform("rgb", lambda x: x.repeat(1, 3, 1, 1), lambda s: (3, s[1], s[2]),
                  "one channel to three copies", channels_in=1),
    ]
}


def apply_transforms(x: Tensor, names: Iterable[str]) -> Tensor:
    """Apply the named transforms left to right to images [N, C, H, W] in [0, 1]."""
    for name in names:
        x = TRANSFORMS[name].fn(x)
    return x.contiguous()


# ---------------------------------------------------------------- task


def _compact(classes: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 7, 5) -> '0-3,7,5': ascending runs of three or more become ranges."""
    parts, i = [], 0
    while i < len(classes):
        j = i
        while j + 1 < len(classes) and classes[j + 1] == classes[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{classes[i]}-{classes[j]}")
        else:
            parts.extend(str(c) for c in classes[i:j + 1])
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Task:
    """A dataset, an optional class subset (None: all classes, in order) and transforms (applied in order).

    Constructing a Task validates it against the dataset and transform registries (no data is loaded).
    """

    dataset: str
    classes: tuple[int, ...] | None = None
    transforms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        object.__setattr__(self, "transforms", tuple(self.transforms))
        _check(self.dataset, self.classes, self.transforms, f"task {str(self)!r}")

    def __str__(self) -> str:
        text = self.dataset
        if self.classes is not None:
            text += f"[{_compact(self.classes)}]"
        return text + "".join(f"+{t}" for t in self.transforms)

    @property
    def n_classes(self) -> int:
        """Number of classes after the subset."""
        return dataset_info(self.dataset).n_classes if self.classes is None else len(self.classes)

    @property
    def input_shape(self) -> Shape:
        """(C, H, W) of the images after the transforms, from the registry (no data is loaded)."""
        shape = dataset_info(self.dataset).input_shape
        for name in self.transforms:
            shape = TRANSFORMS[name].out_shape(shape)
        return shape


def _dataset_info(where: str, name: str) -> DatasetInfo:
    """The registry entry of ``name``, with ``where`` prefixed to the error message."""
    try:
        return dataset_info(name)
    except RobverifyError as exc:
        raise RobverifyError(f"{where}: {exc}") from None


def _check(dataset: str, classes: tuple[int, ...] | None, transforms: tuple[str, ...], where: str) -> None:
    """Validate a task against the registries; RobverifyError starting with ``where`` naming the bad part."""
    info = _dataset_info(where, dataset)
    if classes is not None:
        if not classes:
            raise RobverifyError(f"{where}: empty class list")
        bad = [c for c in classes if not 0 <= c < info.n_classes]
        if bad:
            raise RobverifyError(f"{where}: class {max(bad)} out of range 0-{info.n_classes - 1}")
        seen: set[int] = set()
        for c in classes:
            if c in seen:
                raise RobverifyError(f"{where}: class {c} listed twice")
            seen.add(c)
    shape = info.input_shape
    for name in transforms:
        if name not in TRANSFORMS:
            raise RobverifyError(f"{where}: unknown transform {name!r}: expected one of {', '.join(TRANSFORMS)}")
        t = TRANSFORMS[name]
        if t.channels_in is not None and shape[0] != t.channels_in:
            raise RobverifyError(f"{where}: transform {name!r} needs {t.channels_in}-channel images, "
                                 f"got {shape[0]}-channel images")
        shape = t.out_shape(shape)


_CLASS_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def _parse_classes(where: str, body: str) -> tuple[int, ...]:
    if not body.strip():
        raise RobverifyError(f"{where}: empty class list '[]'")
    classes: list[int] = []
    for item in body.split(","):
        item = item.strip()
        m = _CLASS_ITEM.match(item)
        if not m:
            what = "empty item" if not item else f"bad class {item!r}"
            raise RobverifyError(f"{where}: {what} in class list: expected labels or ranges like 0-4,7")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else int(m.group(2))
        if hi < lo:
            raise RobverifyError(f"{where}: bad range {item!r}: start is greater than end")
        classes.extend(range(lo, hi + 1))
    return tuple(classes)


def parse_task(text: str) -> Task:
    """Parse ``'mnist5k[0-2,7]+rot90+invert'``; RobverifyError naming the bad part."""
    text = text.strip()
    where = f"task {text!r}"
    if not text:
        raise RobverifyError("empty task: expected a task like mnist5k[0-4]+rot90")
    cut = min((i for i in (text.find("["), text.find("+")) if i >= 0), default=len(text))
    dataset, rest = text[:cut].strip(), text[cut:]
    if "]" in dataset:
        raise RobverifyError(f"{where}: unbalanced bracket: ']' without '['")
    if not dataset:
        raise RobverifyError(f"{where}: missing dataset name before {rest[0]!r}")
    _dataset_info(where, dataset)
    classes = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise RobverifyError(f"{where}: unbalanced bracket: '[' without ']'")
        body, rest = rest[1:end], rest[end + 1:]
        if "[" in body:
            raise RobverifyError(f"{where}: unbalanced bracket: nested '['")
        classes = _parse_classes(where, body)
    if "[" in rest or "]" in rest:
        raise RobverifyError(f"{where}: unbalanced bracket after the class list")
    transforms: tuple[str, ...] = ()
    rest = rest.strip()
    if rest:
        if not rest.startswith("+"):
            raise RobverifyError(f"{where}: unexpected {rest!r}: expected '+transform'")
        transforms = tuple(t.strip() for t in rest[1:].split("+"))
        if "" in transforms:
            raise RobverifyError(f"{where}: empty transform name (stray '+')")
    _check(dataset, classes, transforms, where)  # errors quote the text as the user wrote it
    return Task(dataset, classes, transforms)


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class TaskData:
    """A task's data. Images [N, C, H, W] float32 in [0, 1]; labels [N] long in 0..k-1, in the order of the
    task's class subset; ``source_labels[i]`` is the dataset label of new label i. Shared: do not modify."""

    task: Task
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple[str, ...]
    source_labels: tuple[int, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> Shape:
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


def load_task(task: Task | str, data_root: Path | str | None = None, seed: int = 0) -> TaskData:
    """Load a task's data (cached in-process); ``seed`` picks the split of datasets without an official one."""
    t = parse_task(task) if isinstance(task, str) else task
    info = dataset_info(t.dataset)
    root = None if data_root is None or not info.needs_root else Path(data_root).expanduser().resolve()
    return _load_task_cached(t, root, int(seed) if info.seeded_split else 0)


@lru_cache(maxsize=8)
def _load_task_cached(task: Task, root: Path | None, seed: int) -> TaskData:
    ds = load_dataset(task.dataset, root, seed)
    source = tuple(range(ds.n_classes)) if task.classes is None else task.classes
    lut = torch.full((ds.n_classes,), -1, dtype=torch.long)
    lut[torch.tensor(source)] = torch.arange(len(source))

    def subset(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if task.classes is not None:
            keep = lut[y] >= 0
            x, y = x[keep], y[keep]
        return apply_transforms(x, task.transforms), lut[y]

    x_train, y_train = subset(ds.x_train, ds.y_train)
    x_test, y_test = subset(ds.x_test, ds.y_test)
    names = tuple(ds.class_names[c] for c in source)
    return TaskData(task, x_train, y_train, x_test, y_test, names, source)


def sample_test(data: TaskData, n: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The first ``n`` test samples of a seeded permutation: x [n, C, H, W], y [n], sample_id [n] long
    (the index into ``data.x_test``). The same seed gives the same samples, and a larger n extends them."""
    total = len(data.y_test)
    if n < 1 or n > total:
        raise RobverifyError(f"task {str(data.task)!r}: asked for {n} test samples, expected 1 to {total}")
    ids = torch.as_tensor(np.random.default_rng(seed).permutation(total)[:n], dtype=torch.long)
    return data.x_test[ids], data.y_test[ids], ids
