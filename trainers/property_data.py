"""Samples recovered from VNN-LIB robustness properties: a VNN-COMP benchmark's boxes as ``--data``.

VNN-COMP benchmarks embed their test images in the properties: each file is the box ``[x - eps, x + eps]`` (clipped
to the input range) around one image, with the unsafe region "some other class scores at least as high as the
label". :func:`read_property_samples` turns such files back into images and labels:

- the label is the output that every row of the unsafe region favours against another one (rows
  ``Y_label - Y_j <= 0``); a property of any other form is refused;
- the radius is half the widest side of the box; a side narrower than ``2 eps`` was clipped, and the image value is
  ``hi - eps`` where the box touches the input range's lower end, ``lo + eps`` where it touches the upper end, the
  midpoint otherwise (a box clipped anywhere else, e.g. to per-channel ranges of normalised inputs, is refused:
  one scalar input range is read);
- files around the same image (the same sample at several radii) give one sample.

Inputs are flat ``[D]`` (the model input's own element order); fitting them to the model is
:func:`robverify.ir.model.inputs_for`'s job (a reshape in that order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robverify.errors import RobverifyError
from robverify.formats.vnnlib_read import read_vnnlib

__all__ = ["is_property_source", "property_files", "read_property_samples"]

PROPERTY_SUFFIXES = (".vnnlib", ".vnnlib.gz")
#: two images closer than this (max abs difference) are the same sample
SAME_IMAGE = 1e-6


def _is_property(path: Path) -> bool:
    return path.name.lower().endswith(PROPERTY_SUFFIXES)


def is_property_source(path: Path) -> bool:
    """A property file, an ``instances.csv``, or a folder holding either at its top level."""
    if path.is_dir():
        return (path / "instances.csv").is_file() or any(_is_property(p) for p in path.iterdir() if p.is_file())
    return _is_property(path) or path.name == "instances.csv"


def property_files(path: Path) -> list[Path]:
    """The property files of ``path``: itself, the vnnlib column of an ``instances.csv`` (in its order, each file
    once), or a folder's ``instances.csv`` if it has one, else its ``*.vnnlib[.gz]`` files in sorted order."""
    if path.is_file() and _is_property(path):
        return [path]
    csv = path / "instances.csv" if path.is_dir() else path
    if csv.is_file():
        from properties.benchmark import read_instances

        files = list(dict.fromkeys(vnnlib for _, vnnlib, _ in read_instances(csv.parent)))
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and _is_property(p))
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise RobverifyError(f"{csv}: property file {missing[0]} does not exist")
    if not files:
        raise RobverifyError(f"{path}: no VNN-LIB properties found")
    return files


def _label(C: Tensor, where: Path) -> int:
    """The output every row ``C[s]`` favours: rows ``Y_label - Y_j <= 0`` (one +1 and one -1 each)."""
    plus = (C == 1).sum(dim=1) == 1
    minus = (C == -1).sum(dim=1) == 1
    if C.shape[0] == 0 or not bool((plus & minus & ((C != 0).sum(dim=1) == 2)).all()):
        raise RobverifyError(f"{where}: not a robustness property (rows Y_label - Y_j <= 0); cannot read a label")
    labels = (C == 1).to(torch.int64).argmax(dim=1).unique()
    if labels.numel() != 1:
        raise RobverifyError(f"{where}: its rows favour several outputs {labels.tolist()}; cannot read a label")
    return int(labels.item())


def _centre(lo: Tensor, hi: Tensor, domain: tuple[float, float], where: Path) -> Tensor:
    """Image [D] inside the box ``[lo, hi]`` [D] that was clipped to ``domain``."""
    tol = 1e-6 * max(1.0, abs(domain[0]), abs(domain[1]))  # boxes are written rounded outward (float32 and 64)
    eps = float((hi - lo).max()) / 2
    x = (lo + hi) / 2
    clipped = (hi - lo) < 2 * eps - tol
    at_lo = clipped & (lo <= domain[0] + tol)
    at_hi = clipped & ~at_lo & (hi >= domain[1] - tol)
    if bool((clipped & ~at_lo & ~at_hi).any()):
        raise RobverifyError(f"{where}: the box is clipped at values other than the input range {domain[0]:g},"
                             f"{domain[1]:g} (per-channel ranges are not read); state the range with --input-range")
    x = torch.where(at_lo, hi - eps, x)
    return torch.where(at_hi, lo + eps, x)


def read_property_samples(path: Path, domain: tuple[float, float]) -> tuple[Tensor, Tensor, list[str]]:
    """Images ``[N, D]`` float32, labels ``[N]`` long and the first file of each sample, from the properties of
    ``path`` (see :func:`property_files`); ``domain``: the input range the boxes were clipped to."""
    images: list[Tensor] = []
    labels: list[int] = []
    names: list[str] = []
    for file in property_files(path):
        for prop in read_vnnlib(file):
            x = _centre(prop.x_lo, prop.x_hi, domain, file)
            label = _label(prop.C, file)
            same = [k for k, seen in enumerate(images) if seen.shape == x.shape
                    and float((seen - x).abs().max()) <= SAME_IMAGE]
            if same:
                if labels[same[0]] != label:
                    raise RobverifyError(f"{file}: the image of {names[same[0]]} with another label "
                                         f"({label} vs {labels[same[0]]})")
                continue
            if images and x.shape != images[0].shape:
                raise RobverifyError(f"{file}: {x.numel()} inputs, {names[0]} has {images[0].numel()}")
            images.append(x)
            labels.append(label)
            names.append(file.name)
    x = torch.stack(images).to(torch.float32)
    if not bool(np.isfinite(x.numpy()).all()):
        raise RobverifyError(f"{path}: a property box is unbounded; it holds no image")
    return x, torch.tensor(labels, dtype=torch.long), names
