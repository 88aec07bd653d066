"""What is verified: per-sample input boxes and a linear output property.

A :class:`Spec` for a batch of B samples describes, per sample b, the input box ``[x_lo[b], x_hi[b]]`` and an
*unsafe* output region shaped like VNN-LIB's: a disjunction of conjunctions of linear constraints

    unsafe(y)  <=>  OR_k  AND_{s : group[s] == k}  C[b, s] . y <= d[b, s]

The property holds (``verified``) when no input in the box reaches the unsafe region. Local robustness around a
sample with label ``c`` is the special case: one group per other class ``j`` with the single row
``C = e_c - e_j, d = 0`` (unsafe if ``y_j >= y_c``), whose margin is ``y_c - y_j``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from robverify.enums import parse_enum
from robverify.errors import RobverifyError


class Verdict(str, enum.Enum):
    """Outcome of verifying one spec (one sample at one eps)."""

    VERIFIED = "verified"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"
    MISCLASSIFIED = "misclassified"
    TIMEOUT = "timeout"
    ERROR = "error"


class Method(str, enum.Enum):
    """Bound algorithm of the native engine, ordered by cost (and tightness)."""

    IBP = "ibp"
    CROWN_IBP = "crown-ibp"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"

    @classmethod
    def parse(cls, value: "str | Method") -> "Method":
        """Coerce a user string, with an ``expected X, got Y`` error."""
        return parse_enum(cls, value, "method")


@dataclass(frozen=True)
class Spec:
    """A batch of specs sharing one constraint structure.

    Attributes:
        x_lo, x_hi: ``[B, *input_shape]`` input box per sample.
        C: ``[B, S, n_out]`` linear constraint rows on the flattened output.
        d: ``[B, S]`` right-hand sides.
        group: ``[S]`` (long) disjunct index of each row, values ``0..n_groups-1``.
    """

    x_lo: Tensor
    x_hi: Tensor
    C: Tensor
    d: Tensor
    group: Tensor

    def __post_init__(self) -> None:
        if self.x_lo.shape != self.x_hi.shape:
            raise RobverifyError(f"spec box: x_lo {tuple(self.x_lo.shape)} and x_hi {tuple(self.x_hi.shape)} differ")
        if self.C.dim() != 3 or self.d.shape != self.C.shape[:2] or self.C.shape[0] != self.x_lo.shape[0]:
            raise RobverifyError(
                f"spec: expected C [B,S,n_out] and d [B,S] with B={self.x_lo.shape[0]}, "
                f"got C {tuple(self.C.shape)} and d {tuple(self.d.shape)}"
            )
        if self.group.shape != (self.C.shape[1],):
            raise RobverifyError(f"spec: group must have shape ({self.C.shape[1]},), got {tuple(self.group.shape)}")
        if torch.isnan(self.x_lo).any() or torch.isnan(self.x_hi).any():
            raise RobverifyError("spec box contains NaN")
        if (self.x_lo > self.x_hi).any():
            raise RobverifyError("spec box is empty: some lower bound exceeds its upper bound")

    @property
    def batch_size(self) -> int:
        return int(self.x_lo.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.group.max().item()) + 1 if self.group.numel() else 0

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Spec":
        dt = dtype or self.x_lo.dtype
        return Spec(
            self.x_lo.to(device, dt), self.x_hi.to(device, dt), self.C.to(device, dt), self.d.to(device, dt),
            self.group.to(device),
        )

    def select(self, index: Tensor) -> "Spec":
        """The sub-batch ``index`` (long ``[B']`` or bool ``[B]``)."""
        return Spec(self.x_lo[index], self.x_hi[index], self.C[index], self.d[index], self.group)

    def property_margin(self, rows: Tensor) -> Tensor:
        """Reduce per-row values ``C.y - d`` ``[B, S]`` to the property margin ``[B]``.

        A conjunction is violated at a point when all its rows are ``<= 0``; the point is a counterexample when
        some group is entirely ``<= 0``. The margin ``min_k max_{s in k} rows[:, s]`` is ``<= 0`` exactly then.
        Applied to *lower bounds* of the rows it gives a sound certificate: ``> 0`` proves the property.
        """
        n_groups = self.n_groups
        idx = self.group.to(rows.device).unsqueeze(0).expand_as(rows)
        per_group = torch.full((rows.shape[0], n_groups), -math.inf, dtype=rows.dtype, device=rows.device)
        per_group = per_group.scatter_reduce(1, idx, rows, reduce="amax", include_self=True)
        return per_group.min(dim=1).values

    def output_margin(self, y: Tensor) -> Tensor:
        """Property margin of concrete outputs ``y`` ``[B, n_out]``: ``<= 0`` means ``y`` is unsafe."""
        flat = y.reshape(y.shape[0], self.C.shape[2]).to(self.C.dtype)  # (-1 is ambiguous for an empty batch)
        # C * y with 0 * inf taken as 0: an infinite output counts only in the rows that name it
        terms = torch.where(self.C != 0, self.C * flat.unsqueeze(1), torch.zeros((), dtype=self.C.dtype))
        rows = terms.sum(dim=2) - self.d
        return self.property_margin(rows)


def robustness_spec(x: Tensor, label: Tensor, eps: Tensor | float, n_classes: int,
                    domain: tuple[float, float] = (0.0, 1.0), target: Tensor | None = None) -> Spec:
    """Local robustness specs: box ``clip(x ± eps, domain)``, unsafe if ``y_j >= y_label``.

    Args:
        x: ``[B, *input_shape]`` samples. label: ``[B]`` long. eps: scalar or ``[B]`` per-sample radius.
        target: optional ``[B]`` long; a targeted (one2one) spec with the single group ``y_target >= y_label``.
    Returns:
        Spec with ``S = n_classes - 1`` rows (untargeted) or 1 row (targeted).
    """
    B = x.shape[0]
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if torch.isnan(eps_t).any() or (eps_t < 0).any():
        raise RobverifyError(f"eps must be a non-negative number, got {eps_t.flatten()[:4].tolist()}")
    eps_b = eps_t.expand(B) if eps_t.dim() == 0 else eps_t.reshape(B)
    eps_b = eps_b.reshape(B, *([1] * (x.dim() - 1)))
    lo, hi = domain
    x_lo = torch.clamp(x - eps_b, lo, hi)
    x_hi = torch.clamp(x + eps_b, lo, hi)
    eye = torch.eye(n_classes, dtype=x.dtype, device=x.device)
    if target is None:
        others = torch.stack([torch.cat([torch.arange(c), torch.arange(c + 1, n_classes)]) for c in range(n_classes)])
        other = others.to(x.device)[label]  # [B, n-1]
        C = eye[label].unsqueeze(1) - eye[other]  # [B, n-1, n]
        group = torch.arange(n_classes - 1, device=x.device)
    else:
        C = (eye[label] - eye[target]).unsqueeze(1)
        group = torch.zeros(1, dtype=torch.long, device=x.device)
    d = torch.zeros(C.shape[:2], dtype=x.dtype, device=x.device)
    return Spec(x_lo, x_hi, C, d, group)
