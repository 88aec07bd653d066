"""A user's own test data for certify, sweep-epsilon and export-vnnlib (``--data``).

Accepted: ``FILE.npz`` with arrays ``x`` (images) and ``y`` (integer labels); ``FILE.npy`` with images only (each
sample is then checked against the model's own prediction on it: the robustness of the decision); a folder in
the ImageFolder layout (``FOLDER/<class>/<image>``, classes in sorted order, PNG/JPEG/BMP/GIF read as RGB, or as
grayscale when every image is); VNN-LIB robustness properties (a ``.vnnlib[.gz]`` file, a benchmark's
``instances.csv``, or a folder holding either), whose boxes embed the images (:mod:`trainers.property_data`). Images may be ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` (channels last
when the last axis has 1, 3 or 4 entries and the second does not); they are kept in their own value range, which
``--input-range`` states (default ``0,1``): eps and clipping are in that scale. Fitting the images to the model's
input layout is :func:`robverify.ir.model.inputs_for`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robverify.errors import RobverifyError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass(frozen=True)
class UserData:
    """``x`` ``[N, C, H, W]`` (or ``[N, D]`` for flat data) float32; ``y`` ``[N]`` long or None (unlabelled);
    ``classes``: class names where the source has them; ``name``: how runs call this data (``data:<file>``)."""

    x: Tensor
    y: Tensor | None
    classes: tuple[str, ...]
    name: str


def _channels_first(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 2:  # flat vectors
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            return np.transpose(x, (0, 3, 1, 2))
        return x
    raise RobverifyError(f"{where}: expected images [N, H, W], [N, C, H, W] or [N, H, W, C], got shape "
                         f"{list(x.shape)}")


def _from_arrays(x: np.ndarray, y: np.ndarray | None, where: str) -> tuple[Tensor, Tensor | None]:
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise RobverifyError(f"{where}: images must be real numbers, got dtype {x.dtype}")
    if len(x) == 0:
        raise RobverifyError(f"{where}: holds no images")
    x = _channels_first(np.asarray(x), where).astype(np.float32)
    if not np.isfinite(x).all():
        raise RobverifyError(f"{where}: images hold NaN or infinite values")
    labels = None
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise RobverifyError(f"{where}: {len(x)} images but {len(y)} labels")
        if not np.issubdtype(y.dtype, np.integer) and not (np.issubdtype(y.dtype, np.floating)
                                                          and np.all(np.mod(y, 1) == 0)):
            raise RobverifyError(f"{where}: labels must be integers, got dtype {y.dtype}")
        if (y < 0).any():
            raise RobverifyError(f"{where}: labels must be >= 0, got {int(y.min())}")
        labels = torch.as_tensor(y.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(x)), labels


def _read_folder(root: Path) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    from PIL import Image

    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    files = [(c, f) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise RobverifyError(f"{root}: no images found in class folders (expected {root}/<class>/<image>.png)")
    images = []
    for _, f in files:
        try:
            with Image.open(f) as img:
                images.append(img.convert("RGB") if img.mode not in ("L", "1") else img.convert("L"))
        except OSError as exc:
            raise RobverifyError(f"{f}: not a readable image ({exc})") from None
    sizes = {img.size for img in images}
    if len(sizes) > 1:
        raise RobverifyError(f"{root}: images of different sizes {sorted(sizes)[:3]}; resize them to one size")
    gray = all(img.mode == "L" for img in images)
    arrays = [np.asarray(img.convert("L") if gray else img.convert("RGB"), dtype=np.float32) / 255.0
              for img in images]
    x = np.stack(arrays)  # [N, H, W] or [N, H, W, 3]
    x = x[:, None] if gray else np.transpose(x, (0, 3, 1, 2))
    y = torch.tensor([classes.index(c) for c, _ in files], dtype=torch.long)
    return torch.from_numpy(np.ascontiguousarray(x)), y, classes


def load_user_data(path: str | Path, domain: tuple[float, float] = (0.0, 1.0)) -> UserData:
    """Read ``--data`` (see the module docstring); a one-line :class:`RobverifyError` for anything unreadable.
    ``domain``: the input range (only VNN-LIB boxes need it, to undo their clipping)."""
    from trainers.property_data import is_property_source, read_property_samples

    path = Path(path)
    name = f"data:{path.name}"
    if path.exists() and is_property_source(path):
        x, y, _ = read_property_samples(path, domain)
        return UserData(x, y, (), name)
    if path.is_dir():
        x, y, classes = _read_folder(path)
        return UserData(x, y, classes, name)
    if not path.is_file():
        raise RobverifyError(f"--data {path}: no such file or folder")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "x" not in archive.files:
                    raise RobverifyError(f"{path}: expected arrays 'x' (images) and 'y' (labels), found "
                                         f"{', '.join(archive.files) or 'none'}")
                x, y = _from_arrays(archive["x"], archive["y"] if "y" in archive.files else None, str(path))
        elif suffix == ".npy":
            x, y = _from_arrays(np.load(path, allow_pickle=False), None, str(path))
        else:
            raise RobverifyError(f"--data {path}: expected a .npz or .npy file or an image folder")
    except (OSError, ValueError) as exc:
        raise RobverifyError(f"{path}: not a readable NumPy file ({exc})") from None
    return UserData(x, y, (), name)


def parse_range(text: str | None) -> tuple[float, float]:
    """``LO,HI`` (finite, ``LO < HI``) -> ``(lo, hi)``; None -> ``(0, 1)``."""
    if text is None:
        return (0.0, 1.0)
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        raise RobverifyError(f"--input-range: expected LO,HI, got {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise RobverifyError(f"--input-range: expected finite LO < HI, got {text!r}")
    return (lo, hi)


def sample_data(data: UserData, n: int, seed: int = 0) -> tuple[Tensor, Tensor | None, Tensor]:
    """The first ``n`` samples of a seeded permutation (as :func:`trainers.tasks.sample_test`): x, y (or None),
    sample_id (index into the file)."""
    total = data.x.shape[0]
    if n < 1 or n > total:
        raise RobverifyError(f"{data.name}: asked for {n} samples, expected 1 to {total}")
    ids = torch.as_tensor(np.random.default_rng(seed).permutation(total)[:n], dtype=torch.long)
    return data.x[ids], None if data.y is None else data.y[ids], ids
