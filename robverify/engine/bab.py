"""Complete verification by batched branch and bound on ReLU phases (beta-CROWN, Wang et al. 2021).

A spec of B samples is cut into *problems*, one per (sample, disjunct): the unsafe region is a union of
conjunctions, and the property holds iff every conjunction is unreachable. A problem is a single-conjunction
:class:`Spec` row block, padded to the widest disjunct with rows ``0 . y - 1e30`` (never the maximum).

A *domain* is (problem, fixed phases of some ReLUs). Its sound lower bound is the largest row bound of its
conjunction; it is discarded only when that bound is ``> 0`` or the domain is proved empty (a split neuron whose
sound box contradicts its phase). Split constraints act twice:

* boxes: the pre-activation box is intersected with ``z >= 0`` (active) or ``z <= 0`` (inactive) through
  ``_Propagator.tighten`` (bounds hook 1), together with the boxes inherited from the parent (sound for the
  child, a subset of the parent);
* Lagrange multipliers: for each split ``s z <= 0`` (``s = -phase``) the objective gains ``beta s z`` with
  ``beta >= 0`` (bounds hook 2: an additive coefficient on the pre-activation), which only lowers it on the
  domain; ``beta`` and the lower ReLU slopes ``alpha`` are optimised by projected Adam, warm-started from the
  parent.

Many domains, from any samples and disjuncts, are bounded in one engine call (stacked along the batch).
Branching: BaBSR-style intercept scores, refined by filtered smart branching (the best of a few candidates by
the bound of its two children). Several neurons per domain are split at once while the batch has room.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from robverify.engine.bounds import BoundOptions, _Propagator
from robverify.engine.intermediate import optimise_intermediate
from robverify.ir.graph import Graph
from robverify.ops import Relu
from robverify.ops.base import Box
from robverify.ops.linear import Linear, MatMulLeft
from robverify.spec import Spec

#: splittable layers from which children's intermediate boxes are recomputed by default (BabOptions.intermediate)
DEEP = 3
#: right-hand side of a padding row: its value ``-1e30`` never wins a conjunction's maximum
PAD = 1e30


@dataclass(frozen=True)
class BabOptions:
    """Knobs of :class:`ReluBab` (``batch``: domains bounded per engine call, the memory budget per call)."""

    batch: int = 256
    #: bytes the open domains may occupy; beyond that the search gives up (``unknown``)
    memory: int = 2**30
    steps: int = 15
    root_steps: int = 40
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    #: most neurons one domain is split on in one round (while the batch has room)
    max_splits: int = 5
    #: filtered smart branching: candidates per domain tried by their children's bound (0: BaBSR only)
    fsb_candidates: int = 3
    #: recompute the intermediate boxes of every child by CROWN (tighter, costly on wide nets); None: on for
    #: networks of at least :data:`DEEP` splittable layers, all fully connected (on mnistfc 256x4 it decides
    #: instances the parent's boxes leave open; on 2-layer MLPs and conv nets it halves the domains per second
    #: for little gain)
    intermediate: bool | None = None
    #: alpha-CROWN steps on the root's intermediate boxes (robverify.engine.intermediate; 0: CROWN's boxes)
    root_intermediate_steps: int = 20
    safety: float | None = None


@dataclass(frozen=True)
class Problems:
    """``spec``: P single-conjunction specs (``group`` all zeros, G rows each); ``owner`` ``[P]`` the sample
    (index into the original spec) each came from."""

    spec: Spec
    owner: Tensor


def split_disjuncts(spec: Spec) -> Problems:
    """One problem per (sample, disjunct) of ``spec`` (B samples, K disjuncts -> ``P = B*K``), rows padded."""
    group = spec.group.cpu()
    K = spec.n_groups
    members = [(group == k).nonzero().squeeze(1) for k in range(K)]
    G = max(int(m.numel()) for m in members)
    B, n_out = spec.C.shape[0], spec.C.shape[-1]
    C = spec.C.new_zeros(B, K, G, n_out)
    d = spec.d.new_full((B, K, G), PAD)
    for k, m in enumerate(members):
        m = m.to(spec.C.device)
        C[:, k, : m.numel()] = spec.C[:, m]
        d[:, k, : m.numel()] = spec.d[:, m]
    owner = torch.arange(B, device=spec.C.device).repeat_interleave(K)
    rep = lambda t: t.repeat_interleave(K, dim=0)  # noqa: E731
    zeros = torch.zeros(G, dtype=torch.long, device=spec.group.device)
    return Problems(Spec(rep(spec.x_lo), rep(spec.x_hi), C.reshape(B * K, G, n_out), d.reshape(B * K, G), zeros),
                    owner)


@dataclass(frozen=True)
class _Layer:
    """A splittable pre-activation node ``pre`` read only by the ReLU nodes ``relus``; its neurons occupy
    ``[offset, offset + size)`` of the flat neuron index."""

    pre: str
    relus: tuple[str, ...]
    shape: tuple[int, ...]
    offset: int
    size: int


@dataclass
class Domains:
    """A batch of M domains. ``problem`` ``[M]``; ``lb`` ``[M]`` sound lower bounds; ``phase`` ``[M, T]`` int8
    (+1 active, -1 inactive, 0 free) over the T splittable neurons; ``boxes``: node -> ``(lo, hi)``
    ``[M, *shape]`` sound for the domain; ``alpha``: ReLU node -> ``[M, G, *shape]``; ``beta`` ``[M, G, T]``;
    ``x_star`` ``[M, *input_shape]`` the minimiser of the domain's final linear bound (an attack seed)."""

    problem: Tensor
    lb: Tensor
    phase: Tensor
    boxes: dict[str, Box]
    alpha: dict[str, Tensor]
    beta: Tensor
    x_star: Tensor
    scores: Tensor | None = None
    #: ``[M]`` long: the shallowest layer (index into ``ReluBab.layers``) split since the boxes were last bounded
    fresh: Tensor | None = None

    def __len__(self) -> int:
        return int(self.problem.shape[0])

    def select(self, index: Tensor) -> "Domains":
        return Domains(self.problem[index], self.lb[index], self.phase[index],
                       {k: (lo[index], hi[index]) for k, (lo, hi) in self.boxes.items()},
                       {k: v[index] for k, v in self.alpha.items()}, self.beta[index], self.x_star[index],
                       None if self.scores is None else self.scores[index],
                       None if self.fresh is None else self.fresh[index])

    @staticmethod
    def cat(parts: list["Domains"]) -> "Domains":
        first = parts[0]
        scores = None if any(p.scores is None for p in parts) else torch.cat([p.scores for p in parts])
        fresh = None if any(p.fresh is None for p in parts) else torch.cat([p.fresh for p in parts])
        return Domains(torch.cat([p.problem for p in parts]), torch.cat([p.lb for p in parts]),
                       torch.cat([p.phase for p in parts]),
                       {k: (torch.cat([p.boxes[k][0] for p in parts]), torch.cat([p.boxes[k][1] for p in parts]))
                        for k in first.boxes},
                       {k: torch.cat([p.alpha[k] for p in parts]) for k in first.alpha},
                       torch.cat([p.beta for p in parts]), torch.cat([p.x_star for p in parts]), scores, fresh)

    def nbytes(self) -> int:
        tensors = [self.problem, self.lb, self.phase, self.beta, self.x_star, *self.alpha.values()]
        tensors += [t for box in self.boxes.values() for t in box]
        return sum(t.numel() * t.element_size() for t in tensors)


class ReluBab:
    """Bounds and splits domains of the problems of one spec on one graph (see the module docstring)."""

    def __init__(self, graph: Graph, problems: Problems, options: BabOptions | None = None) -> None:
        self.graph, self.problems, self.opts = graph, problems, options or BabOptions()
        self.spec = problems.spec.to(graph.device, graph.dtype)
        self.bound_opts = BoundOptions(safety=self.opts.safety)
        probe = _Propagator(graph, self.spec.x_lo[:1], self.spec.x_hi[:1], self.bound_opts)
        on_path = {n.name for n in graph.ancestors(graph.output)}
        consumers = graph.consumers()
        #: nodes whose boxes a domain keeps: the inputs of nonlinear nodes
        self.kept = [name for name in probe.relu_only if name in on_path]
        self.relus = [n.name for n in graph.nodes if isinstance(n.op, Relu) and n.name in on_path]
        layers, offset = [], 0
        for name in self.kept:
            if probe.relu_only[name] and name != graph.input_name:
                shape = graph.shape_of(name)
                size = math.prod(shape)
                relus = tuple(u.name for u in consumers[name])
                layers.append(_Layer(name, relus, shape, offset, size))
                offset += size
        self.layers: list[_Layer] = layers
        self.n_neurons = offset
        self._starts = torch.tensor([layer.offset for layer in layers], dtype=torch.long, device=self.spec.x_lo.device)
        #: whether children's intermediate boxes are recomputed (``BabOptions.intermediate``, None resolved)
        dense = all(isinstance(graph.node(layer.pre).op, (Linear, MatMulLeft)) for layer in layers)
        self.refine_children = self.opts.intermediate if self.opts.intermediate is not None else (
            len(layers) >= DEEP and dense)
        self.G = self.spec.C.shape[1]
        #: ``time.perf_counter()`` after which the root's intermediate optimisation starts no further layer
        self.intermediate_deadline: float | None = None
        #: ``time.perf_counter()`` after which every optimisation stops at its best iterate so far (sound either way);
        #: the root's intermediate optimisation stops at ``intermediate_deadline`` (a share of the time)
        self.deadline: float | None = None

    # -- bounding ---------------------------------------------------------------------------------------------
    def root(self) -> Domains:
        """The unsplit domain of every problem, bounded by CROWN intermediate boxes and alpha optimisation."""
        P = self.spec.batch_size
        dev, dt = self.spec.x_lo.device, self.spec.x_lo.dtype
        empty = Domains(torch.arange(P, device=dev), torch.full((P,), -math.inf, dtype=dt, device=dev),
                        torch.zeros(P, self.n_neurons, dtype=torch.int8, device=dev), {}, {},
                        torch.zeros(P, self.G, self.n_neurons, dtype=dt, device=dev), self.spec.x_lo.clone())
        return self.bound(empty, self.opts.root_steps, refine=True)

    def bound(self, dom: Domains, steps: int, refine: bool | None = None) -> Domains:
        """Bound the domains ``dom`` (their ``boxes`` already carry the splits): returns them with ``lb``,
        boxes, optimised ``alpha``/``beta``, ``x_star`` and branching ``scores`` ``[M, T]`` filled in."""
        refine = self.refine_children if refine is None else refine
        N = len(dom)
        spec = self.spec.select(dom.problem)
        prop = _Propagator(self.graph, spec.x_lo, spec.x_hi, self.bound_opts)
        prop.tighten = dom.boxes
        with torch.no_grad():
            prop.intervals(refine=self._to_refine(dom) if refine and dom.boxes else refine)
        if refine and not dom.boxes and self.opts.root_intermediate_steps > 0:
            stops = [t for t in (self.intermediate_deadline, self.deadline) if t is not None]
            optimise_intermediate(prop, self.kept, self.opts.root_intermediate_steps,
                                  deadline=self.intermediate_deadline, stop=min(stops) if stops else None)
        boxes = {k: (prop.boxes[k][0].detach(), prop.boxes[k][1].detach()) for k in self.kept}
        empty = torch.zeros(N, dtype=torch.bool, device=spec.x_lo.device)
        for lo, hi in boxes.values():
            empty |= (lo > hi).flatten(1).any(1)
        A = spec.C.reshape(N, self.G, *self.graph.output_shape)
        alpha = {}
        for r in self.relus:
            lo, hi = prop.boxes[self.graph.node(r).inputs[0]]
            init = dom.alpha.get(r)
            if init is None:
                init = Relu.default_alpha(lo, hi).unsqueeze(1).expand(N, self.G, *lo.shape[1:])
            alpha[r] = init.detach().clone()
        beta = dom.beta.detach().clone()
        sign = -dom.phase.to(beta.dtype).unsqueeze(1)  # [N, 1, T]: s of the constraint s z <= 0
        alpha, beta, rows = self._optimise(prop, A, spec.d, alpha, beta, sign, steps)
        record: dict[str, Tensor] = {}
        prop.x_lo = spec.x_lo.clone().requires_grad_(True)
        prop.x_hi = spec.x_hi.clone().requires_grad_(True)
        with torch.enable_grad():
            final = prop.backward_bound(self.graph.output, A, alpha, self._hook(beta, sign, record)) - spec.d
            rows = torch.maximum(rows, final.detach())
            best_row = rows.argmax(1, keepdim=True)
            g_lo, g_hi = torch.autograd.grad(final.gather(1, best_row).sum(), [prop.x_lo, prop.x_hi])
        a_in = g_lo + g_hi  # the input coefficient of the chosen row's bound
        x_star = torch.where(a_in > 0, spec.x_lo, spec.x_hi)
        safety = self.bound_opts.safety if self.bound_opts.safety is not None else (
            1e-10 if rows.dtype == torch.float64 else 1e-5)
        rows = rows - safety * (1.0 + rows.abs())
        lb = rows.max(1).values
        lb = torch.where(empty | torch.isnan(lb), torch.where(empty, math.inf, -math.inf), lb)
        scores = self._scores(boxes, dom.phase, record, best_row)
        return Domains(dom.problem, lb, dom.phase, boxes, alpha, beta, x_star.detach(), scores)

    def _to_refine(self, dom: Domains) -> frozenset[str]:
        """The layers whose boxes a CROWN pass can tighten for split domains ``dom``: those after the shallowest
        layer split since their boxes were bounded (all when that is not recorded). A layer's CROWN box depends
        only on the boxes before it, and ``dom`` inherits boxes computed under the same splits up to that layer, so
        recomputing earlier layers gains nothing."""
        first = int(dom.fresh.min()) if dom.fresh is not None and len(dom) else -1
        return frozenset(layer.pre for layer in self.layers[first + 1:])

    def _hook(self, beta: Tensor, sign: Tensor, record: dict[str, Tensor] | None
              ) -> Callable[[str, Tensor | None], Tensor | None]:
        """Bounds hook 2: add ``beta * s`` to every split pre-activation's coefficient; record ReLU outputs'."""
        layers = {layer.pre: layer for layer in self.layers}
        relus = set(self.relus)
        N = beta.shape[0]

        def hook(name: str, a: Tensor | None) -> Tensor | None:
            layer = layers.get(name)
            if layer is not None:
                sl = slice(layer.offset, layer.offset + layer.size)
                term = (beta[:, :, sl] * sign[:, :, sl]).reshape(N, self.G, *layer.shape)
                a = term if a is None else a + term
            if record is not None and name in relus and a is not None:
                record[name] = a.detach()
            return a

        return hook

    def _optimise(self, prop: _Propagator, A: Tensor, d: Tensor, alpha: dict[str, Tensor], beta: Tensor,
                  sign: Tensor, steps: int) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Projected Adam on ``alpha`` (in [0, 1]) and ``beta`` (>= 0); keeps the best parameters per domain."""
        N = A.shape[0]
        best_rows = torch.full(d.shape, -math.inf, dtype=d.dtype, device=d.device)
        if steps <= 0:
            return alpha, beta, best_rows
        params = {k: v.requires_grad_(True) for k, v in alpha.items()}
        beta = beta.requires_grad_(True)
        groups = [{"params": list(params.values()), "lr": self.opts.lr_alpha}]
        if bool((sign != 0).any()):
            groups.append({"params": [beta], "lr": self.opts.lr_beta})
        optimiser = torch.optim.Adam(groups)
        best_alpha = {k: v.detach().clone() for k, v in params.items()}
        best_beta = beta.detach().clone()
        best_lb = torch.full((N,), -math.inf, dtype=d.dtype, device=d.device)
        view = lambda t: (-1,) + (1,) * (t.dim() - 1)  # noqa: E731
        for _ in range(steps):
            if self.deadline is not None and time.perf_counter() > self.deadline:
                break
            with torch.enable_grad():
                rows = prop.backward_bound(self.graph.output, A, params, self._hook(beta, sign, None)) - d
                lb = rows.detach().max(1).values
                better = lb > best_lb
                best_lb = torch.where(better, lb, best_lb)
                best_rows = torch.maximum(best_rows, rows.detach())
                for k, v in params.items():
                    best_alpha[k] = torch.where(better.view(view(v)), v.detach(), best_alpha[k])
                best_beta = torch.where(better.view(view(beta)), beta.detach(), best_beta)
                if bool((best_lb > 0).all()):
                    break
                open_ = (best_lb <= 0).to(rows.dtype).unsqueeze(1)
                loss = -(rows.clamp(min=-PAD / 2) * open_).sum()
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            with torch.no_grad():
                for v in params.values():
                    v.clamp_(0.0, 1.0)
                beta.clamp_(min=0.0)
        return best_alpha, best_beta, best_rows

    def _scores(self, boxes: dict[str, Box], phase: Tensor, record: dict[str, Tensor], row: Tensor) -> Tensor:
        """BaBSR-style score ``[M, T]`` of every free unstable neuron (``-inf`` elsewhere): the upper
        relaxation's intercept ``-l u / (u - l)`` weighted by the negative part of the ReLU output's
        coefficient in the chosen row's bound, plus a small width term that breaks ties."""
        N = phase.shape[0]
        parts = []
        for layer in self.layers:
            lo, hi = (t.reshape(N, -1) for t in boxes[layer.pre])
            lam = sum(record[r].gather(1, row.view(N, 1, *([1] * len(layer.shape))).expand(
                N, 1, *layer.shape)).reshape(N, -1) for r in layer.relus if r in record)
            if not isinstance(lam, Tensor):
                lam = torch.zeros_like(lo)
            free = (lo < 0) & (hi > 0) & (phase[:, layer.offset:layer.offset + layer.size] == 0)
            width = (hi - lo).clamp(min=1e-12)
            score = (-lam).clamp(min=0) * (-lo * hi / width) + 1e-4 * lam.abs() * width
            parts.append(torch.where(free, score, torch.full_like(score, -math.inf)))
        if not parts:
            return phase.new_zeros(N, 0, dtype=torch.float32)
        return torch.cat(parts, dim=1)

    # -- branching ----------------------------------------------------------------------------------------------
    def split(self, dom: Domains, neurons: Tensor, phases: Tensor) -> Domains:
        """Children: domain ``i`` with neuron ``neurons[i, j]`` fixed to ``phases[i, j]`` (+1/-1) for all j
        (``neurons`` ``[M, k]`` long flat indices, ``phases`` ``[M, k]`` int8), boxes tightened accordingly."""
        phase = dom.phase.clone()
        rows = torch.arange(len(dom), device=phase.device)
        boxes = {k: (lo.clone(memory_format=torch.contiguous_format), hi.clone(memory_format=torch.contiguous_format))
                 for k, (lo, hi) in dom.boxes.items()}
        for j in range(neurons.shape[1]):
            g, p = neurons[:, j], phases[:, j]
            phase[rows, g] = p
            for layer in self.layers:
                inside = (g >= layer.offset) & (g < layer.offset + layer.size)
                if not bool(inside.any()):
                    continue
                r = rows[inside]
                local = g[inside] - layer.offset
                lo, hi = boxes[layer.pre]
                flat_lo, flat_hi = lo.reshape(len(dom), -1), hi.reshape(len(dom), -1)
                cur_lo, cur_hi = flat_lo[r, local], flat_hi[r, local]
                flat_lo[r, local] = torch.where(p[inside] > 0, cur_lo.clamp(min=0.0), cur_lo)
                flat_hi[r, local] = torch.where(p[inside] < 0, cur_hi.clamp(max=0.0), cur_hi)
        fresh = (torch.searchsorted(self._starts, neurons, right=True) - 1).amin(1)  # shallowest layer split
        if dom.fresh is not None:
            fresh = torch.minimum(fresh, dom.fresh)
        return replace(dom, phase=phase, boxes=boxes, scores=None, fresh=fresh)

    def branch(self, dom: Domains, depth: int) -> Domains:
        """The ``2**depth`` children of each domain in ``dom`` (not yet bounded): split on its top ``depth``
        neurons by score; with ``depth == 1`` and FSB on, on the best candidate by its children's bound."""
        M = len(dom)
        scores = dom.scores
        k = min(depth, int((scores > -math.inf).sum(1).min().item()))
        if k == 0:
            raise ValueError("branch: every domain needs a free unstable neuron")
        top = scores.topk(k, dim=1).indices  # [M, k]
        if k == 1 and self.opts.fsb_candidates > 1:
            top = self._fsb(dom, scores)
        bits = torch.arange(2 ** k, device=top.device)
        signs = ((bits.unsqueeze(1) >> torch.arange(k, device=top.device)) & 1).to(torch.int8) * 2 - 1  # [2^k, k]
        rep = torch.arange(M, device=top.device).repeat_interleave(2 ** k)
        children = dom.select(rep)
        return self.split(children, top[rep], signs.repeat(M, 1))

    def _fsb(self, dom: Domains, scores: Tensor) -> Tensor:
        """Filtered smart branching: of the top candidates per domain by score, the one whose two children
        have the largest smaller bound (one unoptimised pass with the parent's alpha and beta). ``[M, 1]``."""
        M = len(dom)
        c = min(self.opts.fsb_candidates, int((scores > -math.inf).sum(1).min().item()))
        cand = scores.topk(c, dim=1).indices  # [M, c]
        rep = torch.arange(M, device=cand.device).repeat_interleave(2 * c)
        neurons = cand.repeat_interleave(2, dim=1).reshape(-1, 1)
        phases = torch.tensor([1, -1], dtype=torch.int8, device=cand.device).repeat(M * c).unsqueeze(1)
        trial = self.bound(self.split(dom.select(rep), neurons, phases), steps=0, refine=False)
        worst = trial.lb.reshape(M, c, 2).amin(2)
        pick = worst.argmax(1, keepdim=True)
        return cand.gather(1, pick)


def bab_round(bab: ReluBab, open_: Domains) -> tuple[Domains, Domains, Tensor]:
    """One round: pop the lowest-bound domains that fit a batch, split each on up to ``max_splits`` neurons
    (as many as the batch has room for), bound the children, keep those with ``lb <= 0``.

    Returns ``(open, stuck, bounded)``: the new open set, the popped domains that have no free unstable
    neuron left (their bound cannot improve by splitting; they stay undecided) and the problem ``[n]`` of each
    child bounded."""
    batch = bab.opts.batch
    order = open_.lb.argsort()
    n_par = min(len(open_), max(1, batch // 2))
    pick, rest = order[:n_par], order[n_par:]
    parents = open_.select(pick)
    free = (parents.scores > -math.inf).sum(1)
    stuck = parents.select((free == 0).nonzero().squeeze(1))
    parents = parents.select((free > 0).nonzero().squeeze(1))
    parts = [open_.select(rest)] if rest.numel() else []
    bounded = open_.problem[:0]
    if len(parents):
        depth = 1
        while depth < bab.opts.max_splits and len(parents) * 2 ** (depth + 1) <= batch:
            depth += 1
        children = bab.bound(bab.branch(parents, depth), bab.opts.steps)
        bounded = children.problem
        keep = (children.lb <= 0).nonzero().squeeze(1)
        parts.append(children.select(keep))
    new = Domains.cat(parts) if parts else open_.select(rest)
    return new, stuck, bounded
