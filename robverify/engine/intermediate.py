"""alpha-CROWN on intermediate boxes: tighter pre-activation boxes for the root of branch and bound.

CROWN bounds an intermediate neuron with CROWN's fixed lower ReLU slopes. Here the unstable neurons of each
nonlinear input, in topological order, are bounded from both sides by backward passes whose ReLU slopes (one set
per bounded row) are optimised by projected Adam; every iterate is a sound bound, the best is intersected into the
box, and later layers are bounded with the tightened earlier boxes.
"""

from __future__ import annotations

import math
import time

import torch

from robverify.engine.bounds import _Propagator
from robverify.ops import Relu


def optimise_intermediate(prop: _Propagator, names: list[str], steps: int = 20, lr: float = 0.1,
                          max_rows: int = 2048, deadline: float | None = None, stop: float | None = None) -> None:
    """Tighten ``prop.boxes[name]`` ``[B, *shape]`` in place for every ``name`` in ``names`` (topological order,
    boxes already filled by ``prop.intervals``). Layers with more than ``max_rows`` unstable neurons in a sample
    are left as they are (the cost grows with the rows); after ``deadline`` (``time.perf_counter()``) no further
    layer is started, after ``stop`` no further step is made (every iterate is sound: the best so far is kept)."""
    for name in names:
        if deadline is not None and time.perf_counter() > deadline:
            return
        if name in prop.exact:
            continue
        lo, hi = prop.boxes[name]
        B, shape = lo.shape[0], tuple(lo.shape[1:])
        n = math.prod(shape)
        mask = ((lo < 0) & (hi > 0)).reshape(B, n)
        counts = mask.sum(1)
        K = int(counts.max().item()) if B else 0
        if K == 0 or 2 * K > max_rows:
            continue
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :K]
        valid = torch.arange(K, device=lo.device).unsqueeze(0) < counts.unsqueeze(1)
        A = lo.new_zeros(B, 2 * K, n)
        rows = torch.arange(K, device=lo.device).unsqueeze(0).expand(B, K)
        batch = torch.arange(B, device=lo.device).unsqueeze(1)
        A[batch, rows, order] = 1.0
        A[batch, rows + K, order] = -1.0
        A = A.reshape(B, 2 * K, *shape)
        alphas = {}
        for node in prop.ancestors(name):
            if isinstance(node.op, Relu):
                r_lo, r_hi = prop.boxes[node.inputs[0]]
                init = Relu.default_alpha(r_lo, r_hi).unsqueeze(1).expand(B, 2 * K, *r_lo.shape[1:])
                alphas[node.name] = init.detach().clone().requires_grad_(True)
        if not alphas:
            continue
        optimiser = torch.optim.Adam(list(alphas.values()), lr=lr)
        best = torch.full((B, 2 * K), -math.inf, dtype=lo.dtype, device=lo.device)
        for _ in range(steps):
            if stop is not None and time.perf_counter() > stop:
                break
            with torch.enable_grad():
                bound = prop.backward_bound(name, A, alphas)
                best = torch.maximum(best, bound.detach())
                loss = -bound.sum()
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            with torch.no_grad():
                for a in alphas.values():
                    a.clamp_(0.0, 1.0)
        with torch.no_grad():
            best = torch.maximum(best, prop.backward_bound(name, A, alphas))
        flat_lo, flat_hi = lo.reshape(B, n).clone(), hi.reshape(B, n).clone()
        cur_lo, cur_hi = flat_lo.gather(1, order), flat_hi.gather(1, order)
        lower = torch.where(valid, torch.maximum(cur_lo, best[:, :K]), cur_lo)
        upper = torch.where(valid, torch.minimum(cur_hi, -best[:, K:]), cur_hi)
        flat_lo = flat_lo.scatter(1, order, lower)
        flat_hi = flat_hi.scatter(1, order, upper)
        prop.boxes[name] = (flat_lo.reshape(B, *shape).detach(), flat_hi.reshape(B, *shape).detach())
