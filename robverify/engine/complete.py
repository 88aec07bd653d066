"""Complete verification of a batch of specs: bounds, then branch and bound and attacks until decided or out of time.

:func:`complete_verify` cuts the specs into problems (sample, disjunct), bounds them, and runs ReLU-split branch
and bound (:mod:`robverify.engine.bab`) or, for networks with at most ``input_split_max`` inputs, input-split
branch and bound (:mod:`robverify.engine.input_split`), with the diversified falsifier
(:mod:`robverify.engine.falsify`) on the start and, every few rounds, seeded from the hardest domains.

Verdicts per sample: ``verified`` only when every problem of the sample ran out of domains, each discarded by a
sound bound ``> 0`` (or proved empty); ``falsified`` only with a counterexample that onnxruntime confirms against
``exact`` (:meth:`LoadedModel.confirm`); ``timeout`` when the sample's time share ran out; ``unknown`` when the
memory budget is exhausted or domains are left that no split can refine and no counterexample was found.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from robverify.engine.bab import BabOptions, Domains, ReluBab, bab_round, split_disjuncts
from robverify.engine.falsify import diverse_pgd
from robverify.engine.input_split import Boxes, bound_boxes, input_split_round
from robverify.ir.layout import fit_spec
from robverify.ir.model import LoadedModel
from robverify.spec import Method, Spec, Verdict


@dataclass(frozen=True)
class CompleteOptions:
    """``mode``: ``auto`` (input splitting for at most ``input_split_max`` inputs, else ReLU splitting),
    ``relu`` or ``input``; ``attack_every``: rounds between attacks seeded from the hardest domains."""

    mode: str = "auto"
    input_split_max: int = 10
    bab: BabOptions = field(default_factory=BabOptions)
    attack_every: int = 5
    attack_seeds: int = 32
    attack_restarts: int = 8
    attack_steps: int = 50
    input_method: Method = Method.CROWN
    seed: int = 0


@dataclass(frozen=True)
class CompleteResult:
    """Per sample (B): ``verdict`` (list of :class:`Verdict`), ``x_adv`` ``[B, *input_shape]`` (the confirmed
    counterexample where falsified), ``domains`` ``[B]`` domains bounded, ``seconds`` ``[B]`` time attributed
    (each round's time shared by the domains of each sample in it), ``reason`` per sample; ``mode`` used."""

    verdict: list[Verdict]
    x_adv: Tensor
    domains: Tensor
    seconds: Tensor
    reason: list[str]
    mode: str


class _Ledger:
    """Per-sample state: status, counterexamples, effort, time shares."""

    def __init__(self, B: int, x_ref: Tensor) -> None:
        self.status: list[Verdict | None] = [None] * B
        self.reason = [""] * B
        self.x_adv = x_ref.detach().cpu().clone()
        self.domains = torch.zeros(B, dtype=torch.long)
        self.seconds = torch.zeros(B, dtype=torch.float64)
        self.stuck = torch.zeros(B, dtype=torch.bool)

    def open(self, b: int) -> bool:
        return self.status[b] is None

    def charge(self, owners: Tensor, seconds: float) -> None:
        """Share ``seconds`` among the samples of the domains ``owners`` ``[n]`` (by their count)."""
        if owners.numel() == 0:
            return
        counts = torch.bincount(owners.cpu(), minlength=len(self.status)).double()
        self.domains += counts.long()
        self.seconds += seconds * counts / counts.sum()


def complete_verify(model: LoadedModel, spec: Spec, *, attack: Spec | None = None, exact: Spec | None = None,
                    timeout: float | Tensor = 30.0, deadline: float | None = None,
                    options: CompleteOptions | None = None) -> CompleteResult:
    """Decide every sample of ``spec`` within ``timeout`` seconds each (a number, or ``[B]`` one per sample) and
    before ``deadline`` (``time.perf_counter()``) for all.

    Args:
        spec: B specs on the graph, bounded as given (float32 boxes rounded outward for files).
        attack: the same specs with the boxes counterexamples are searched in (default ``spec``).
        exact: the specs counterexamples are confirmed against by onnxruntime (default ``spec``).
    """
    opts = options or CompleteOptions()
    graph = model.graph
    spec = fit_spec(graph, spec)  # boxes [B, *input_shape] (natural batches accepted), rows on the model's outputs
    attack = spec if attack is None else fit_spec(graph, attack)
    exact = spec if exact is None else fit_spec(graph, exact)
    B = spec.batch_size
    limit = torch.as_tensor(timeout, dtype=torch.float64).cpu().expand(B).clone()
    ledger = _Ledger(B, (attack.x_lo + attack.x_hi) / 2)
    start = time.perf_counter()
    total = float(limit.sum())
    end = start + total if deadline is None else min(deadline, start + total)
    mode = opts.mode
    if mode == "auto":
        mode = "input" if graph.n_inputs <= opts.input_split_max else "relu"

    def confirm(owners: Tensor, xs: Tensor) -> None:
        """Re-check candidates ``xs`` ``[n, *input_shape]`` of samples ``owners`` in onnxruntime."""
        keep = [i for i, b in enumerate(owners.tolist()) if ledger.open(b)]
        if not keep:
            return
        idx = torch.tensor(keep, dtype=torch.long)
        own = owners.cpu()[idx]
        xs = torch.minimum(torch.maximum(xs.detach().cpu()[idx].to(attack.x_lo.dtype), attack.x_lo.cpu()[own]),
                           attack.x_hi.cpu()[own])
        ok = model.confirm(exact.select(own.to(exact.x_lo.device)), xs, torch.ones(len(keep), dtype=torch.bool))
        for i in ok.nonzero().squeeze(1).tolist():
            b = int(own[i])
            if ledger.open(b):
                ledger.status[b], ledger.reason[b] = Verdict.FALSIFIED, "counterexample confirmed by onnxruntime"
                ledger.x_adv[b] = xs[i].to(ledger.x_adv.dtype)

    def attack_from(owners: Tensor, starts: Tensor | None, seed: int) -> None:
        """Diversified PGD in the attack boxes of samples ``owners`` (copy 0 from ``starts``)."""
        began = time.perf_counter()
        sub = attack.select(owners.to(attack.x_lo.device))
        result = diverse_pgd(graph, sub, restarts=opts.attack_restarts, steps=opts.attack_steps, starts=starts,
                             seed=seed)
        confirm(owners, result.x_adv)
        ledger.seconds[owners.cpu()] += (time.perf_counter() - began) / max(1, owners.numel())

    attack_from(torch.arange(B), None, opts.seed)
    problems = split_disjuncts(spec.to(graph.device, graph.dtype))
    owner = problems.owner.cpu()
    if mode == "input":
        bounder = None
        began = time.perf_counter()
        first = torch.arange(problems.spec.batch_size, device=problems.spec.x_lo.device)
        open_: Domains | Boxes = bound_boxes(graph, problems.spec, first, problems.spec.x_lo, problems.spec.x_hi,
                                             opts.input_method)
    else:
        bounder = ReluBab(graph, problems, opts.bab)
        began = time.perf_counter()
        bounder.intermediate_deadline = began + 0.25 * max(0.0, end - began)
        bounder.deadline = end
        open_ = bounder.root()
    ledger.charge(owner, time.perf_counter() - began)
    rounds = 0
    while True:
        keep = torch.tensor([ledger.open(int(owner[p])) for p in open_.problem.cpu().tolist()], dtype=torch.bool)
        open_ = open_.select((keep & (open_.lb.cpu() <= 0)).nonzero().squeeze(1).to(open_.lb.device))
        alive = set(int(owner[p]) for p in open_.problem.cpu().tolist())
        for b in range(B):
            if ledger.open(b) and b not in alive:
                if ledger.stuck[b]:
                    ledger.status[b] = Verdict.UNKNOWN
                    ledger.reason[b] = "domains left with every unstable ReLU fixed and no counterexample"
                else:
                    ledger.status[b] = Verdict.VERIFIED
                    ledger.reason[b] = f"every domain bounded > 0 ({mode} split)"
            elif ledger.open(b) and float(ledger.seconds[b]) > float(limit[b]):
                ledger.status[b], ledger.reason[b] = Verdict.TIMEOUT, f"time share {float(limit[b]):g} s spent"
        if len(open_) == 0 or all(s is not None for s in ledger.status):
            break
        if time.perf_counter() > end:
            for b in range(B):
                if ledger.open(b):
                    ledger.status[b], ledger.reason[b] = Verdict.TIMEOUT, "time limit reached"
            break
        if (open_.nbytes() if bounder is not None else len(open_) * 64 * graph.n_inputs) > opts.bab.memory:
            for b in alive:
                if ledger.open(b):
                    ledger.status[b], ledger.reason[b] = Verdict.UNKNOWN, "memory budget of open domains spent"
            break
        rounds += 1
        if rounds % opts.attack_every == 0:
            hardest = open_.select(open_.lb.argsort()[: opts.attack_seeds])
            starts = hardest.x_star if isinstance(hardest, Domains) else (hardest.lo + hardest.hi) / 2
            confirm(owner[hardest.problem.cpu()], starts)
            attack_from(owner[hardest.problem.cpu()], starts, opts.seed + rounds)
        began = time.perf_counter()
        if bounder is None:
            open_, bounded = input_split_round(graph, problems.spec, open_, opts.bab.batch, opts.input_method)
        else:
            open_, stuck, bounded = bab_round(bounder, open_)
            if len(stuck):
                _settle_stuck(bounder, stuck, owner, ledger, confirm, attack_from, opts.seed + rounds)
        ledger.charge(owner[bounded.cpu()], time.perf_counter() - began)
    verdict = [s if s is not None else Verdict.UNKNOWN for s in ledger.status]
    return CompleteResult(verdict, ledger.x_adv, ledger.domains, ledger.seconds, ledger.reason, mode)


def _settle_stuck(bounder: ReluBab, stuck: Domains, owner: Tensor, ledger: _Ledger, confirm, attack_from,
                  seed: int) -> None:
    """Domains with every unstable ReLU fixed: the network is affine there. Re-bound with CROWN intermediate
    boxes and a long beta optimisation; what stays ``<= 0`` is attacked from its linear bound's minimiser; a
    domain that survives both leaves its sample undecidable by this search (``unknown`` at the end)."""
    again = bounder.bound(stuck, steps=100, refine=True)
    left = again.select((again.lb <= 0).nonzero().squeeze(1))
    if len(left) == 0:
        return
    owners = owner[left.problem.cpu()]
    confirm(owners, left.x_star)
    attack_from(owners, left.x_star, seed)
    for b in owners.tolist():
        if ledger.open(b):
            ledger.stuck[b] = True
