"""The backend contract. The base class owns the guarantees (shapes, non-finite bounds never verify,
counterexamples re-checked in onnxruntime, distances measured); a backend implements ``_bound`` and may
offer its own candidate counterexamples through ``_candidates``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robverify.attacks import pgd_attack
from robverify.model import LoadedModel
from robverify.spec import Method, Spec


@dataclass(frozen=True)
class AttackConfig:
    """PGD settings of the falsifier shared by all backends."""

    steps: int = 40
    restarts: int = 3
    seed: int = 0


@dataclass(frozen=True)
class BackendOptions:
    """Settings that only some backends read: ``verifier`` (the verifier inside ``--backend verona``),
    ``verifier_cmd`` (the VNN-COMP ``run_instance.sh`` of ``--backend external``) and ``timeout`` (seconds per
    query of complete verifiers: marabou, external, verona). A backend that needs one and lacks it raises
    :class:`RobverifyError`."""

    verifier: str | None = None
    verifier_cmd: str | None = None
    timeout: float | None = None

    def fingerprint(self) -> dict:
        """The options that are set, for the run directory's fingerprint."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class VerifyResult:
    """``verified`` ``[B]`` bool; ``margin_lb`` ``[B]`` sound lower bound of the property margin."""

    verified: Tensor
    margin_lb: Tensor


@dataclass(frozen=True)
class FalsifyResult:
    """``falsified`` ``[B]`` bool (re-checked in onnxruntime); ``x_adv`` ``[B, *input_shape]``; ``distance``
    ``[B]`` L-inf distance of the counterexample from the box centre reference ``x`` (inf where none)."""

    falsified: Tensor
    x_adv: Tensor
    distance: Tensor


class Backend(ABC):
    """Verifies (``verify``) and falsifies (``falsify``) batches of specs on one model."""

    name: ClassVar[str]

    def __init__(self, model: LoadedModel, method: Method | str = Method.CROWN, *, batch_size: int = 256,
                 attack: AttackConfig | None = None, options: BackendOptions | None = None) -> None:
        self.model = model
        self.options = options or BackendOptions()
        self.method = Method.parse(method)
        self.batch_size = batch_size
        self.attack = attack or AttackConfig()

    @abstractmethod
    def _bound(self, spec: Spec) -> Tensor:
        """Sound lower bound of the property margin ``[B]`` for a batch of at most ``batch_size`` specs."""

    def _candidates(self, spec: Spec) -> tuple[Tensor, Tensor]:
        """Candidate counterexamples ``(x [B, *in], found [B])``; default: PGD on the graph IR."""
        result = pgd_attack(self.model.graph, spec, steps=self.attack.steps, restarts=self.attack.restarts,
                            seed=self.attack.seed)
        return result.x_adv, result.found

    def verify(self, spec: Spec) -> VerifyResult:
        margins = []
        for start in range(0, spec.batch_size, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, spec.batch_size), device=spec.x_lo.device)
            margin = self._bound(spec.select(index)).detach().to("cpu", torch.float64).reshape(-1)
            if margin.shape[0] != index.shape[0]:
                raise RuntimeError(f"backend {self.name} returned {margin.shape[0]} bounds for {index.shape[0]}")
            margins.append(margin)
        margin_lb = torch.cat(margins) if margins else torch.zeros(0, dtype=torch.float64)
        margin_lb = torch.where(torch.isnan(margin_lb), torch.full_like(margin_lb, -torch.inf), margin_lb)
        return VerifyResult(margin_lb > 0, margin_lb)

    def falsify(self, spec: Spec, x_ref: Tensor) -> FalsifyResult:
        """Search counterexamples and keep those onnxruntime confirms. ``x_ref`` ``[B, *in]``: the clean
        samples, for the distance."""
        xs, found = [], []
        for start in range(0, spec.batch_size, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, spec.batch_size), device=spec.x_lo.device)
            x, f = self._candidates(spec.select(index))
            xs.append(x.detach().cpu())
            found.append(f.detach().cpu())
        x_adv = torch.cat(xs)
        confirmed = self.model.confirm(spec, x_adv, torch.cat(found))
        dist = (x_adv.double() - x_ref.detach().cpu().double()).flatten(1).abs().amax(dim=1)
        distance = torch.where(confirmed, dist, torch.full_like(dist, torch.inf))
        return FalsifyResult(confirmed, x_adv, distance)
