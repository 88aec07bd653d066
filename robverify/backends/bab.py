"""``--backend bab`` (``--method bab``): robverify's own complete verifier (batched branch and bound with beta-CROWN,
input splitting for few inputs, diversified attacks; :mod:`robverify.engine.complete`).

``verify``: the native bound with ``--method`` first; the specs it leaves open go, all in one batch, to
:func:`~robverify.engine.complete.complete_verify` with ``--timeout`` seconds per spec (default 10). A spec is
verified only when branch and bound discarded every domain by a sound bound; its counterexamples (already
confirmed by onnxruntime) are remembered and offered again by ``falsify``, which re-checks them. In a sweep the
bracket search runs on the bound alone, then :meth:`BabBackend.decide` closes the open brackets with
``--timeout`` seconds per sample (:func:`robverify.runs.search.close_brackets`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robverify.backends.base import AttackConfig, Backend, BackendOptions, Decision, FalsifyResult
from robverify.engine.bounds import compute_bounds
from robverify.engine.complete import CompleteOptions, complete_verify
from robverify.engine.falsify import diverse_pgd
from robverify.ir.layout import fit_batch_of, fit_spec
from robverify.ir.model import LoadedModel
from robverify.spec import Method, Spec, Verdict


@dataclass(frozen=True)
class BabRecord:
    """One spec that branch and bound handled: its ``verdict``, ``reason``, ``domains`` bounded and ``seconds``."""

    verdict: Verdict
    reason: str
    domains: int
    seconds: float


class BabBackend(Backend):
    """Complete verification in the native engine; ``options.timeout`` seconds per open spec (default 10; in a
    sweep, per sample over all its searches)."""

    name = "bab"
    decides = True
    default_timeout = 10.0
    #: diversified PGD of :meth:`hunt`: copies per spec and steps
    hunt_restarts = 32
    hunt_steps = 100

    def __init__(self, model: LoadedModel, method: Method | str = Method.CROWN, *, batch_size: int = 256,
                 attack: AttackConfig | None = None, options: BackendOptions | None = None) -> None:
        super().__init__(model, method, batch_size=batch_size, attack=attack, options=options)
        self.timeout = float(self.options.timeout) if self.options.timeout is not None else self.default_timeout
        self.records: list[BabRecord] = []

    def _bound(self, spec: Spec) -> Tensor:
        return compute_bounds(self.model.graph, spec, self.method).margin_lb

    def _search(self, spec: Spec, budget: float | Tensor) -> Decision:
        result = complete_verify(self.model, spec, timeout=budget, options=CompleteOptions(seed=self.attack.seed))
        for i, verdict in enumerate(result.verdict):
            if verdict is Verdict.FALSIFIED:
                self._remember(spec, i, result.x_adv[i])
            self.records.append(BabRecord(verdict, result.reason[i], int(result.domains[i]),
                                          float(result.seconds[i])))
        return Decision(result.verdict, result.x_adv, result.domains.long(), result.seconds.double())

    def _complete(self, spec: Spec, margin_lb: Tensor) -> Tensor:
        decision = self._search(spec, self.timeout)
        return torch.tensor([v is Verdict.VERIFIED for v in decision.verdict], dtype=torch.bool)

    @property
    def sample_budget(self) -> float:
        return self.timeout

    def decide(self, spec: Spec, budget: Tensor) -> Decision:
        """Branch and bound (with its attacks) on each spec within ``budget`` ``[B]`` seconds; counterexamples
        are confirmed by onnxruntime inside the search and come back in the model's input layout."""
        if spec.batch_size == 0:
            return Decision([], spec.x_lo.detach().cpu(), torch.zeros(0, dtype=torch.long),
                            torch.zeros(0, dtype=torch.float64))
        return self._search(spec, budget.to(torch.float64).cpu())

    def hunt(self, spec: Spec, x_ref: Tensor) -> FalsifyResult:
        """Diversified PGD (:func:`~robverify.engine.falsify.diverse_pgd`, ``hunt_restarts`` copies of
        ``hunt_steps`` steps per spec, all in one batch); candidates re-checked in onnxruntime."""
        given = spec.x_lo
        spec = fit_spec(self.model.graph, spec)
        x_ref = fit_batch_of(self.model.graph, x_ref, spec.batch_size, "reference batch x_ref")
        if spec.batch_size == 0:
            return self._confirmed(spec, x_ref, spec.x_lo.clone(), torch.zeros(0, dtype=torch.bool), given)
        graph = self.model.graph
        result = diverse_pgd(graph, spec.to(graph.device, graph.dtype), restarts=self.hunt_restarts,
                             steps=self.hunt_steps, seed=self.attack.seed)
        x_adv = result.x_adv.to(spec.x_lo.dtype).cpu()
        x_adv = torch.minimum(torch.maximum(x_adv, spec.x_lo.cpu()), spec.x_hi.cpu())
        return self._confirmed(spec, x_ref, x_adv, result.found, given)
