"""The backend contract. The base class owns the guarantees (shapes, non-finite bounds never verify,
counterexamples re-checked in onnxruntime, distances measured); a backend implements ``_bound`` and may
offer its own candidate counterexamples through ``_candidates``.

Complete verifiers (Marabou, any VNN-COMP tool) subclass :class:`CompleteBackend`: they implement ``_query``,
one spec at a time, and the base class decides what an answer is worth. A spec is verified only by a sound bound
``> 0`` or by the verifier's ``unsat``; a ``sat`` counts only once its counterexample is confirmed by onnxruntime;
an ``unsat`` contradicted by a confirmed PGD counterexample is recorded as an error, never as verified."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch
from torch import Tensor

from robverify.engine.attacks import pgd_attack
from robverify.engine.bounds import compute_bounds, interval_bounds
from robverify.ir.layout import fit_batch_of, fit_spec, in_layout_of
from robverify.ir.model import LoadedModel
from robverify.spec import Method, Spec, Verdict

log = logging.getLogger(__name__)


def distribution_version(name: str) -> str | None:
    """The installed version of the distribution ``name`` (e.g. ``"maraboupy"``), None when it is absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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
    query of complete verifiers: bab, marabou, external, verona). A backend that needs one and lacks it raises
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


@dataclass(frozen=True)
class Decision:
    """What a deciding backend (:meth:`Backend.decide`) made of B specs: ``verdict`` (list of :class:`Verdict`:
    verified by a sound search, falsified with a confirmed ``x_adv`` ``[B, *input_shape]``, else timeout /
    unknown), ``domains`` ``[B]`` (long) and ``seconds`` ``[B]`` (float64) spent on each."""

    verdict: list[Verdict]
    x_adv: Tensor
    domains: Tensor
    seconds: Tensor


class Backend(ABC):
    """Verifies (``verify``) and falsifies (``falsify``) batches of specs on one model."""

    name: ClassVar[str]
    #: True for a backend that decides specs beyond its bound within a time budget (:meth:`decide`): a sweep then
    #: runs the bracket search on the bound alone (:meth:`bounds_only`) and spends the budget inside open brackets
    decides: ClassVar[bool] = False

    def __init__(self, model: LoadedModel, method: Method | str = Method.CROWN, *, batch_size: int = 256,
                 attack: AttackConfig | None = None, options: BackendOptions | None = None) -> None:
        self.model = model
        self.options = options or BackendOptions()
        self.method = Method.parse(method)
        self.batch_size = batch_size
        self.attack = attack or AttackConfig()
        self._known: dict[bytes, Tensor] = {}  # counterexamples confirmed outside PGD, by spec content
        self._bounds_only = False

    @contextlib.contextmanager
    def bounds_only(self) -> Iterator[None]:
        """Within the block, :meth:`verify` answers by the sound bound alone (no complete search)."""
        before, self._bounds_only = self._bounds_only, True
        try:
            yield
        finally:
            self._bounds_only = before

    def decide(self, spec: Spec, budget: Tensor) -> Decision:
        """Decide each spec within ``budget`` ``[B]`` seconds (backends with ``decides``)."""
        raise NotImplementedError(f"backend {self.name} does not decide specs beyond its bound")

    def hunt(self, spec: Spec, x_ref: Tensor) -> FalsifyResult:
        """A costlier search for counterexamples than :meth:`falsify` (backends with ``decides``), run inside open
        brackets before the complete search; same contract as :meth:`falsify`."""
        raise NotImplementedError(f"backend {self.name} does not decide specs beyond its bound")

    @property
    def sample_budget(self) -> float:
        """Seconds per sample a deciding backend spends inside a sweep's open brackets (backends with ``decides``)."""
        raise NotImplementedError(f"backend {self.name} does not decide specs beyond its bound")

    def provenance(self) -> dict[str, str | None]:
        """The verifier libraries (name -> installed version) or external tools this backend used, for run.json.
        robverify's own engine and torch are recorded with every run anyway: the base class names none."""
        return {}

    @staticmethod
    def _spec_key(spec: Spec, i: int) -> bytes:
        """Identity of sample ``i`` of ``spec`` (its box, rows and groups), independent of device and dtype."""
        digest = hashlib.sha1()
        for t in (spec.x_lo[i], spec.x_hi[i], spec.C[i], spec.d[i], spec.group):
            digest.update(t.detach().to("cpu", torch.float64 if t.is_floating_point() else torch.long)
                          .contiguous().numpy().tobytes())
        return digest.digest()

    def _remember(self, spec: Spec, i: int, x: Tensor) -> None:
        """Keep a counterexample ``x`` ``[*input_shape]`` of sample ``i`` for :meth:`falsify` to offer."""
        self._known[self._spec_key(spec, i)] = x.detach().to("cpu", torch.float32).reshape(spec.x_lo.shape[1:])

    @abstractmethod
    def _bound(self, spec: Spec) -> Tensor:
        """Sound lower bound of the property margin ``[B]`` for a batch of at most ``batch_size`` specs."""

    def _candidates(self, spec: Spec) -> tuple[Tensor, Tensor]:
        """Candidate counterexamples ``(x [B, *in], found [B])``; default: PGD on the graph IR."""
        result = pgd_attack(self.model.graph, spec, steps=self.attack.steps, restarts=self.attack.restarts,
                            seed=self.attack.seed)
        return result.x_adv, result.found

    def _complete(self, spec: Spec, margin_lb: Tensor) -> Tensor:
        """Proofs beyond the bound for the specs it left open (``margin_lb`` ``[B]`` ``<= 0``): ``[B]`` bool, True
        only where a complete verifier answered ``unsat``. Default: none."""
        return torch.zeros(spec.batch_size, dtype=torch.bool)

    def verify(self, spec: Spec) -> VerifyResult:
        """``verified`` where the sound bound is ``> 0`` or (complete backends) the verifier proved the spec;
        ``margin_lb`` stays the bound, so a proved spec may carry ``margin_lb <= 0``. Boxes in either layout of
        :mod:`robverify.ir.layout`; a spec that does not fit the model is a RobverifyError."""
        spec = fit_spec(self.model.graph, spec)
        margins = []
        for start in range(0, spec.batch_size, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, spec.batch_size), device=spec.x_lo.device)
            margin = self._bound(spec.select(index)).detach().to("cpu", torch.float64).reshape(-1)
            if margin.shape[0] != index.shape[0]:
                raise RuntimeError(f"backend {self.name} returned {margin.shape[0]} bounds for {index.shape[0]}")
            margins.append(margin)
        margin_lb = torch.cat(margins) if margins else torch.zeros(0, dtype=torch.float64)
        margin_lb = torch.where(torch.isnan(margin_lb), torch.full_like(margin_lb, -torch.inf), margin_lb)
        verified = margin_lb > 0
        open_ = (~verified).nonzero().squeeze(1)
        if open_.numel() and not self._bounds_only:
            proved = self._complete(spec.select(open_.to(spec.x_lo.device)), margin_lb[open_])
            verified[open_] = proved.detach().cpu().bool().reshape(-1)
        return VerifyResult(verified, margin_lb)

    def falsify(self, spec: Spec, x_ref: Tensor) -> FalsifyResult:
        """Search counterexamples and keep those onnxruntime confirms. ``x_ref`` ``[B, *in]``: the clean
        samples, for the distance. Either layout of :mod:`robverify.ir.layout`; ``x_adv`` comes back in the
        layout of ``spec``'s boxes."""
        given = spec.x_lo
        spec = fit_spec(self.model.graph, spec)
        x_ref = fit_batch_of(self.model.graph, x_ref, spec.batch_size, "reference batch x_ref")
        xs, found = [], []
        for start in range(0, spec.batch_size, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, spec.batch_size), device=spec.x_lo.device)
            x, f = self._candidates(spec.select(index))
            xs.append(x.detach().cpu())
            found.append(f.detach().cpu())
        x_adv = torch.cat(xs) if xs else spec.x_lo.detach().cpu().clone()  # (an empty batch)
        found = torch.cat(found) if found else torch.zeros(0, dtype=torch.bool)
        if self._known:
            for i in (~found).nonzero().squeeze(1).tolist():
                known = self._known.get(self._spec_key(spec, i))
                if known is not None:
                    x_adv[i] = known.to(x_adv.dtype)
                    found[i] = True
        return self._confirmed(spec, x_ref, x_adv, found, given)

    def _confirmed(self, spec: Spec, x_ref: Tensor, x_adv: Tensor, found: Tensor, given: Tensor) -> FalsifyResult:
        """Candidates ``x_adv`` ``[B, *in]`` (``found`` ``[B]``) of ``spec`` (in the model's layout) re-checked in
        onnxruntime, with their L-inf distances from ``x_ref``; ``x_adv`` back in the layout of ``given``."""
        x_adv = x_adv.detach().cpu()
        confirmed = self.model.confirm(spec, x_adv, found.detach().cpu())
        dist = (x_adv.double() - x_ref.detach().cpu().double()).flatten(1).abs().amax(dim=1)
        distance = torch.where(confirmed, dist, torch.full_like(dist, torch.inf))
        return FalsifyResult(confirmed, in_layout_of(x_adv, given), distance)


@dataclass(frozen=True)
class QueryAnswer:
    """A complete verifier's answer to one spec: ``verdict`` VERIFIED (unsat), FALSIFIED (sat, with ``x``
    ``[*input_shape]``, not yet confirmed), TIMEOUT, UNKNOWN or ERROR; ``reason`` says why for the last three."""

    verdict: Verdict
    x: Tensor | None = None
    reason: str = ""


@dataclass(frozen=True)
class QueryRecord:
    """What the base class made of one answer: the final ``verdict`` and ``reason`` (kept in ``records``)."""

    verdict: Verdict
    reason: str
    seconds: float


class CompleteBackend(Backend):
    """A backend around a complete verifier asked one spec at a time.

    ``verify``: the native bound with ``method`` first (a sound pre-filter; its margin is the reported
    ``margin_lb``), then, for the specs it left open, PGD (when ``attack_first``) and ``_query``. Each answer is
    judged here: ``sat`` needs a counterexample that onnxruntime confirms (then :meth:`falsify` offers it);
    ``unsat`` is cross-checked with PGD when the attack did not run first, and a confirmed counterexample
    turns it into an ``error`` (the verifier contradicted a concrete witness). ``records`` keeps one
    :class:`QueryRecord` per query; ``contradictions`` counts the unsat answers PGD refuted.
    """

    #: run PGD before asking the verifier (skips queries the attack settles)
    attack_first: ClassVar[bool] = True
    #: seconds per query when the options give none
    default_timeout: ClassVar[float] = 60.0

    def __init__(self, model: LoadedModel, method: Method | str = Method.CROWN, *, batch_size: int = 256,
                 attack: AttackConfig | None = None, options: BackendOptions | None = None) -> None:
        super().__init__(model, method, batch_size=batch_size, attack=attack, options=options)
        self.timeout = float(self.options.timeout) if self.options.timeout is not None else self.default_timeout
        self.records: list[QueryRecord] = []
        self.contradictions = 0

    def _bound(self, spec: Spec) -> Tensor:
        return compute_bounds(self.model.graph, spec, self.method).margin_lb

    @abstractmethod
    def _query(self, spec: Spec) -> QueryAnswer:
        """Ask the verifier about a spec with a batch of one, within ``self.timeout`` seconds."""

    def _confirmed_attack(self, spec: Spec) -> Tensor:
        """``[B]`` bool: PGD found a counterexample that onnxruntime confirms (remembered for ``falsify``)."""
        x, found = self._candidates(spec)
        confirmed = self.model.confirm(spec, x, found)
        for i in confirmed.nonzero().squeeze(1).tolist():
            self._remember(spec, i, x[i])
        return confirmed

    def _complete(self, spec: Spec, margin_lb: Tensor) -> Tensor:
        proved = torch.zeros(spec.batch_size, dtype=torch.bool)
        attacked = self._confirmed_attack(spec) if self.attack_first else proved.clone()
        for i in range(spec.batch_size):
            start = time.perf_counter()
            if bool(attacked[i]):
                self.records.append(QueryRecord(Verdict.FALSIFIED, "PGD counterexample, verifier not asked", 0.0))
                continue
            one = spec.select(torch.tensor([i], device=spec.x_lo.device))
            answer = self.judge(one, self._query(one))
            self.records.append(QueryRecord(answer.verdict, answer.reason, time.perf_counter() - start))
            proved[i] = answer.verdict is Verdict.VERIFIED
        return proved

    def _finite_outputs(self, one: Spec) -> bool:
        """True when interval bounds of every float32 output over the box are finite: a verifier reasoning in real
        arithmetic says nothing about a network whose float32 evaluation may overflow to inf / NaN there."""
        lo, hi = interval_bounds(self.model.graph, one.x_lo.to(self.model.graph.device, self.model.graph.dtype),
                                 one.x_hi.to(self.model.graph.device, self.model.graph.dtype))
        return bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())

    def judge(self, one: Spec, answer: QueryAnswer) -> QueryAnswer:
        """The answer as it counts: sat only with a confirmed counterexample, unsat only if PGD cannot refute it."""
        if answer.verdict is Verdict.FALSIFIED:
            if answer.x is None:
                return QueryAnswer(Verdict.ERROR, None, "sat without a counterexample")
            x = answer.x.detach().to("cpu", torch.float32).reshape(1, *one.x_lo.shape[1:])
            if bool(self.model.confirm(one, x, torch.ones(1, dtype=torch.bool))[0]):
                self._remember(one, 0, x[0])
                return QueryAnswer(Verdict.FALSIFIED, x[0], answer.reason)
            return QueryAnswer(Verdict.UNKNOWN, None, "sat, but onnxruntime does not confirm the counterexample")
        if answer.verdict is Verdict.VERIFIED and not self._finite_outputs(one):
            return QueryAnswer(Verdict.UNKNOWN, None, "unsat in real arithmetic, but the float32 network's outputs "
                               "are not bounded (overflow) on this box")
        if answer.verdict is Verdict.VERIFIED and not self.attack_first and bool(self._confirmed_attack(one)[0]):
            self.contradictions += 1
            reason = "the verifier answered unsat, but PGD found a counterexample confirmed by onnxruntime"
            log.warning("backend %s: %s", self.name, reason)
            return QueryAnswer(Verdict.ERROR, None, reason)
        return answer
