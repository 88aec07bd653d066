"""Sound bounds on a spec's output rows: IBP, CROWN-IBP, CROWN and alpha-CROWN, batched over samples.

``compute_bounds(graph, spec, method)`` returns lower bounds of ``C . y(x) - d`` over each sample's input box.
A property is proved for a sample when its :meth:`Spec.property_margin` of these bounds is ``> 0``.

* IBP: interval arithmetic through every node; the spec's ``C`` is folded into the trailing affine nodes
  (each row bounded on the box before them: Gowal et al. 2018's elision of the last layer).
* CROWN-IBP: IBP boxes for intermediate nodes, one backward linear pass from the spec.
* CROWN: the inputs of nonlinear nodes are tightened by backward passes, only for the neurons the interval
  bounds leave unstable (and not where the interval image is already exact, e.g. the first affine layer), then
  the backward pass from the spec.
* alpha-CROWN: CROWN, then the lower ReLU slopes of the final pass are optimised per sample and spec row.

With ``intersect_ibp`` (default) each method's result is the elementwise maximum with the cheaper methods' (all
sound), so ``IBP <= CROWN-IBP <= CROWN <= alpha-CROWN`` holds sample by sample; refined boxes are intersected
with their interval boxes. A final safety margin covers floating-point rounding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from robverify.ir.graph import Graph, Node
from robverify.ir.layout import empty_bounds, fit_box, fit_spec
from robverify.ops import Relu
from robverify.ops.base import Box, LinearOp, flat_rows, memory_order
from robverify.ops.linear import Conv
from robverify.engine.allocator import reused_memory
from robverify.engine.patches import Patches, add_coefficients, patch_backward, worth_keeping
from robverify.spec import Method, Spec


@dataclass(frozen=True)
class BoundOptions:
    """Knobs of :func:`compute_bounds`."""

    intersect_ibp: bool = True
    alpha_steps: int = 20
    alpha_lr: float = 0.5
    #: elements of linear coefficients held at once by one backward pass (memory bound ~ 4 bytes each)
    budget: int = 2**24
    #: relative + absolute safety margin subtracted from every bound; None: 1e-5 (float32) / 1e-10 (float64)
    safety: float | None = None
    #: keep autograd through the bounds w.r.t. the graph's parameters (certified training)
    grad: bool = False
    #: refine the neurons of [C, H, W] layers with coefficients kept on their receptive fields while that is
    #: cheaper (robverify.engine.patches); False: dense rows over whole layers
    patches: bool = True
    #: ``time.perf_counter()`` after which alpha-CROWN stops optimising (keeping its best bound so far); None: no limit
    deadline: float | None = None


@dataclass(frozen=True)
class BoundResult:
    """``rows_lb`` ``[B, S]``: sound lower bounds of ``C . y - d``; ``margin_lb`` ``[B]``: the property margin
    (``> 0`` proves the spec for that sample)."""

    rows_lb: Tensor
    margin_lb: Tensor


def compute_bounds(graph: Graph, spec: Spec, method: Method | str = Method.CROWN,
                   options: BoundOptions | None = None) -> BoundResult:
    """Lower bounds of every spec row over the input boxes. Shapes: spec of batch B with S rows -> ``[B, S]``."""
    spec = fit_spec(graph, spec)  # boxes [B, *input_shape] or the natural batch (robverify.ir.layout), else an error
    if spec.batch_size == 0: return BoundResult(*empty_bounds(graph, spec))  # noqa: E701 (no boxes, no work)
    method = Method.parse(method)
    opts = options or BoundOptions()
    spec = spec.to(graph.device, graph.dtype)
    with torch.set_grad_enabled(opts.grad), reused_memory():
        prop = _Propagator(graph, spec.x_lo, spec.x_hi, opts)
        rows = prop.rows(spec, method)
    safety = opts.safety if opts.safety is not None else (1e-10 if rows.dtype == torch.float64 else 1e-5)
    rows = rows - safety * (1.0 + rows.abs())
    return BoundResult(rows, spec.property_margin(rows))


def interval_bounds(graph: Graph, x_lo: Tensor, x_hi: Tensor) -> Box:
    """IBP box of the output ``[B, *output_shape]``."""
    x_lo, x_hi = fit_box(graph, x_lo, x_hi)
    prop = _Propagator(graph, x_lo, x_hi, BoundOptions())
    prop.intervals(refine=False)
    return prop.boxes[graph.output]


_JACOBIAN_LIMIT = 2**25


def _jacobian(node: Node, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor] | None:
    """Dense rows ``[n_out, *in_shape]`` and bias ``[n_out]`` of a one-input affine node, cached on the op and
    recomputed when any of its tensors changes (in-place optimiser steps bump ``_version``)."""
    op = node.op
    if op.n_inputs != 1 or not op.mixing:
        return None
    n_out, n_in = math.prod(node.shape), math.prod(in_shape)
    if n_out * n_in > _JACOBIAN_LIMIT:
        return None
    tensors = [v for v in vars(op).values() if isinstance(v, Tensor)]
    key = tuple((id(t), t._version, t.dtype, t.device) for t in tensors)
    cached = getattr(op, "_jacobian_cache", None)
    if cached is not None and cached[0] == key and not torch.is_grad_enabled():
        return cached[1]
    like = tensors[0] if tensors else torch.zeros(())
    eye = torch.eye(n_out, dtype=like.dtype, device=like.device).reshape(n_out, *node.shape)
    (rows,) = op.vjp(eye, [in_shape])
    bias = op.bias_of(node.shape, [in_shape], like).reshape(-1) if op.has_bias() else like.new_zeros(n_out)
    result = (rows.reshape(n_out, *in_shape), bias.expand(n_out))
    if not torch.is_grad_enabled():
        op._jacobian_cache = (key, result)
    return result


def _exact_nodes(graph: Graph) -> set[str]:
    """Nodes whose interval box is exact: no nonlinearity, no sum of two paths, at most one mixing map."""
    info = {graph.input_name: (False, 0)}
    exact = set()
    for node in graph.nodes:
        ins = [info[i] for i in node.inputs]
        tainted = any(t for t, _ in ins) or not node.op.linear or node.op.n_inputs > 1
        mixing = sum(m for _, m in ins) + int(node.op.mixing)
        info[node.name] = (tainted, mixing)
        if not tainted and mixing <= 1:
            exact.add(node.name)
    return exact


def _input_images(graph: Graph) -> set[str]:
    """Nodes (and the input) whose box is exactly their set of values: reached from the input through
    one-input, non-mixing affine maps only (each element is an affine image of one input element)."""
    images = {graph.input_name}
    for node in graph.nodes:
        op = node.op
        if isinstance(op, LinearOp) and op.n_inputs == 1 and not op.mixing and node.inputs[0] in images:
            images.add(node.name)
    return images


def _row_elements(a: Tensor | Patches) -> int:
    return a.row_elements() if isinstance(a, Patches) else math.prod(a.shape[2:])


class _Propagator:
    """Holds the boxes of one batch and runs interval and backward passes over the graph."""

    def __init__(self, graph: Graph, x_lo: Tensor, x_hi: Tensor, opts: BoundOptions) -> None:
        self.graph, self.opts = graph, opts
        self.x_lo, self.x_hi = x_lo, x_hi
        self.boxes: dict[str, Box] = {graph.input_name: (x_lo, x_hi)}
        consumers = graph.consumers()
        self.relu_only: dict[str, bool] = {}
        for name, users in consumers.items():
            if name != graph.input_name and any(u.op.refine_inputs for u in users):
                self.relu_only[name] = all(isinstance(u.op, Relu) for u in users)
        self.exact = _exact_nodes(graph)
        self._ancestors: dict[str, list[Node]] = {}
        self._width: dict[str, int] = {}
        self.images = _input_images(graph)
        self._row_elements: dict[str, int] = {}  # per-row coefficient elements seen in a refinement pass
        #: BaB hook 1 (robverify.engine.bab): boxes ``(lo, hi)`` ``[B, *shape]`` intersected with the box of the
        #: named nonlinear-input nodes as soon as it is computed (a domain's inherited boxes and ReLU splits)
        self.tighten: dict[str, Box] = {}

    # -- passes ------------------------------------------------------------------------------------------------
    def intervals(self, refine: bool | frozenset[str]) -> None:
        """Fill ``boxes`` for every node in order; with ``refine``, tighten the inputs of nonlinear nodes (all of
        them, or those named in the set)."""
        for node in self.graph.nodes:
            box = node.op.interval(*(self.boxes[i] for i in node.inputs))
            box = self._tightened(node.name, box)
            wanted = refine if isinstance(refine, bool) else node.name in refine
            if wanted and node.name in self.relu_only and node.name not in self.exact:
                box = self._tightened(node.name, self.refine(node.name, box))
            self.boxes[node.name] = box

    def _tightened(self, name: str, box: Box) -> Box:
        """BaB hook 1: ``box`` intersected with ``tighten[name]`` (may leave ``lo > hi``: an infeasible domain)."""
        extra = self.tighten.get(name)
        if extra is None:
            return box
        return torch.maximum(box[0], extra[0]), torch.minimum(box[1], extra[1])

    def ancestors(self, name: str) -> list[Node]:
        if name not in self._ancestors:
            nodes = self.graph.ancestors(name)
            self._ancestors[name] = nodes
            sizes = [math.prod(self.graph.input_shape)] + [math.prod(n.shape) for n in nodes]
            self._width[name] = max(sizes)
        return self._ancestors[name]

    def backward_bound(self, start: str, A: Tensor | Patches, alphas: dict[str, Tensor] | None = None,
                       hook: Callable[[str, Tensor | None], Tensor | None] | None = None) -> Tensor:
        """Lower bound of ``A . value(start)`` over the input box: ``A`` ``[B, K, *shape]`` (or patches of K
        rows) -> ``[B, K]``. Patches stay patches while that is cheaper (:func:`worth_keeping`).

        BaB hook 2: ``hook(name, a)`` sees the dense coefficient ``a`` ``[B, K, *shape]`` (or None) of every node's
        value once all its consumers have contributed, and returns the coefficient to use instead (beta-CROWN adds
        ``beta * s`` to a split pre-activation's; branching reads a ReLU output's)."""
        coeffs: dict[str, Tensor | Patches] = {start: A}
        first = A.coef if isinstance(A, Patches) else A
        bias = first.new_zeros(first.shape[:2])
        widest = 0
        for node in reversed(self.ancestors(start)):
            a = coeffs.pop(node.name, None)
            if hook is not None:
                if isinstance(a, Patches):
                    a = a.to_dense(node.shape)
                a = hook(node.name, a)
            if a is None:
                continue
            if hook is None and not coeffs and node.name in self.images:
                # The box of an elementwise image of the input is exact: concretize here (same value).
                coeffs[node.name] = a
                break
            if isinstance(a, Patches) and not worth_keeping(a, node.shape):
                a = a.to_dense(node.shape)
            if hook is None and not coeffs and isinstance(a, Tensor) and isinstance(node.op, Conv) \
                    and node.inputs[0] in self.images:
                # The last map before an exact box: bounded over it without making the rows on the box's layer.
                got = node.op.box_lower_bound(a, *self.box_at(node.inputs[0]))
                if got is not None:
                    bias = bias + got + node.op.bias_term(a, [self.graph.shape_of(node.inputs[0])])
                    continue
            boxes = [self.boxes[i] for i in node.inputs]
            own_alpha = bool(alphas) and node.name in alphas  # optimised slopes: the dense rule reads them
            step = patch_backward(node.op, a, node.shape, boxes) if isinstance(a, Patches) and not own_alpha else None
            if step is None:
                if isinstance(a, Patches):
                    a = a.to_dense(node.shape)
                alpha = alphas.get(node.name) if alphas else None
                step = node.op.backward(a, boxes, alpha)
            grads, b = step
            bias = bias + b
            for i, g in zip(node.inputs, grads):
                coeffs[i] = add_coefficients(coeffs[i], g, self.graph.shape_of(i)) if i in coeffs else g
                widest = max(widest, _row_elements(coeffs[i]))
        self._last_row_elements = widest
        for name, a in coeffs.items():
            bias = bias + self.concretize(name, a)
        return bias

    def box_at(self, name: str) -> Box:
        """The box of node ``name``; the input's is read from x_lo / x_hi, which a caller may replace by tensors
        that track gradients."""
        return (self.x_lo, self.x_hi) if name == self.graph.input_name else self.boxes[name]

    def concretize(self, name: str, a: Tensor | Patches) -> Tensor:
        """Lower bound ``[B, K]`` of ``a . value(name)`` over ``name``'s box (exact for the input's images)."""
        lo, hi = self.box_at(name)
        if isinstance(a, Patches):
            return a.concretize((lo, hi))
        perm = memory_order(a)  # channels-last rows are read as they lie, the box laid out alike
        center = flat_rows(((lo + hi) / 2).unsqueeze(1), perm).transpose(1, 2)  # [B, n, 1]
        radius = flat_rows(((hi - lo) / 2).unsqueeze(1), perm).transpose(1, 2)
        a_flat = flat_rows(a, perm)
        return (a_flat @ center).squeeze(-1) - (a_flat.abs() @ radius).squeeze(-1)

    def refine(self, name: str, box: Box) -> Box:
        """Tighten ``box`` of node ``name`` by backward passes on its unstable neurons: upper bounds first; a
        neuron read by ReLUs only that they prove dead (``hi <= 0``) needs no lower bound (ReLU's relaxation
        and output box of a dead neuron do not depend on it)."""
        lo, hi = box
        B = lo.shape[0]
        shape = tuple(lo.shape[1:])
        lo, hi = lo.reshape(B, -1), hi.reshape(B, -1)
        mask = ((lo < 0) & (hi > 0)) if self.relu_only[name] else (hi > lo)
        hi = self._tighten(name, shape, mask, hi, -1.0)
        if self.relu_only[name]:
            mask = mask & (hi > 0)
        lo = self._tighten(name, shape, mask, lo, 1.0)
        return lo.reshape(B, *shape), hi.reshape(B, *shape)

    def _tighten(self, name: str, shape: tuple[int, ...], mask: Tensor, current: Tensor, sign: float) -> Tensor:
        """Lower bounds of ``sign * value(name)`` on the ``mask``-ed neurons ``[B, n]``, in chunks; returns
        ``current`` ``[B, n]`` (lower bounds for sign 1, upper bounds for -1) updated with them."""
        B, n = current.shape
        counts = mask.sum(dim=1)
        K = int(counts.max().item()) if B else 0
        if K == 0:
            return current
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :K]  # unstable first
        valid = torch.arange(K, device=current.device).unsqueeze(0) < counts.unsqueeze(1)
        node = self.graph.node(name)
        patches = self.opts.patches and len(shape) == 3
        jac = None
        if not patches and isinstance(node.op, LinearOp):
            jac = _jacobian(node, self.graph.shape_of(node.inputs[0]))
        self.ancestors(name)
        # Rows per chunk from the widest coefficients per row: the whole layer at first, then what patch
        # passes of this node were seen to hold.
        width = self._row_elements.get(name, self._width[name])
        start = 0
        while start < K:
            chunk = max(1, self.opts.budget // max(1, B * width))
            idx = order[:, start:start + chunk]
            ok = valid[:, start:start + chunk]
            k = idx.shape[1]
            start += k
            if patches:
                # Each neuron bounded on its receptive field while that is smaller (robverify.engine.patches).
                bound = self.backward_bound(name, Patches.one_hot(idx, shape, current, sign))
                width = self._row_elements[name] = max(1, self._last_row_elements)
            elif jac is not None:
                # One affine step by row lookup: rows of L for the chosen neurons.
                J, c = jac
                bound = self.backward_bound(node.inputs[0], sign * J[idx]) + sign * c[idx]  # J[idx]: [B, k, *in]
            else:
                A = current.new_zeros(B, k, n)
                A[torch.arange(B).unsqueeze(1), torch.arange(k, device=A.device).unsqueeze(0), idx] = sign
                bound = self.backward_bound(name, A.reshape(B, k, *shape))
            cur = current.gather(1, idx)
            new = sign * bound
            if self.opts.intersect_ibp:
                new = torch.maximum(cur, new) if sign > 0 else torch.minimum(cur, new)
            current = current.scatter(1, idx, torch.where(ok, new, cur))
        return current

    # -- methods -----------------------------------------------------------------------------------------------
    def ibp_rows(self, spec: Spec) -> Tensor:
        """Interval bounds of the spec rows with ``C`` folded into the trailing chain of one-input affine
        nodes (Gowal et al. 2018's elision): each row is bounded on the box of the chain's input, which is
        never looser than applying ``C`` to the output box (with ``intersect_ibp``, the best of both)."""
        A = spec.C.reshape(spec.C.shape[0], spec.C.shape[1], *self.graph.output_shape)
        bias = A.new_zeros(A.shape[:2])
        name = self.graph.output
        while name != self.graph.input_name:
            node = self.graph.node(name)
            if not (isinstance(node.op, LinearOp) and node.op.n_inputs == 1):
                break
            (A,), b = node.op.backward(A, [self.boxes[node.inputs[0]]])
            bias, name = bias + b, node.inputs[0]
        rows = self.concretize(name, A) + bias - spec.d
        if self.opts.intersect_ibp and name != self.graph.output:
            lo, hi = self.boxes[self.graph.output]
            lo, hi = lo.flatten(1).unsqueeze(-1), hi.flatten(1).unsqueeze(-1)
            rows = torch.maximum(rows, (spec.C.clamp(min=0) @ lo + spec.C.clamp(max=0) @ hi).squeeze(-1) - spec.d)
        return rows

    def spec_rows(self, spec: Spec, alphas: dict[str, Tensor] | None = None) -> Tensor:
        A = spec.C.reshape(spec.C.shape[0], spec.C.shape[1], *self.graph.output_shape)
        return self.backward_bound(self.graph.output, A, alphas) - spec.d

    def rows(self, spec: Spec, method: Method) -> Tensor:
        keep_best = self.opts.intersect_ibp
        self.intervals(refine=False)
        rows = self.ibp_rows(spec)
        if method == Method.IBP:
            return rows
        cibp = self.spec_rows(spec)
        rows = torch.maximum(rows, cibp) if keep_best else cibp
        if method == Method.CROWN_IBP:
            return rows
        if keep_best:
            # Samples CROWN-IBP already proves keep its bound; the costly passes run on the others only.
            open_ = (spec.property_margin(rows) <= 0).nonzero().squeeze(1)
            if open_.numel() == 0:
                return rows
            if open_.numel() < spec.batch_size:
                sub = _Propagator(self.graph, self.x_lo[open_], self.x_hi[open_], self.opts)
                sub_spec = spec.select(open_)
                sub.intervals(refine=False)
                return rows.index_put((open_,), sub.tighter_rows(sub_spec, method, rows[open_]))
        return self.tighter_rows(spec, method, rows)

    def tighter_rows(self, spec: Spec, method: Method, rows: Tensor) -> Tensor:
        """CROWN (and alpha-CROWN) rows given the cheaper ``rows``; interval boxes must be filled."""
        self.intervals(refine=True)
        crown = self.spec_rows(spec)
        if self.opts.intersect_ibp:
            rows = torch.maximum(torch.maximum(rows, crown), self.ibp_rows(spec))
        else:
            rows = crown
        if method == Method.CROWN:
            return rows
        return torch.maximum(rows, self.optimise_alpha(spec, rows))

    def optimise_alpha(self, spec: Spec, start: Tensor) -> Tensor:
        """alpha-CROWN on the final pass: Adam on the lower ReLU slopes, keeping the best bound per row."""
        S = spec.C.shape[1]
        alphas: dict[str, Tensor] = {}
        for node in self.ancestors(self.graph.output):
            if isinstance(node.op, Relu):
                lo, hi = self.boxes[node.inputs[0]]
                if ((lo < 0) & (hi > 0)).any():
                    init = Relu.default_alpha(lo, hi).unsqueeze(1).expand(-1, S, *lo.shape[1:])
                    alphas[node.name] = init.detach().clone().requires_grad_(True)
        best = start.detach().clone()
        if not alphas:
            return best
        params = list(alphas.values())
        optimiser = torch.optim.Adam(params, lr=self.opts.alpha_lr)
        for _ in range(self.opts.alpha_steps):
            if self.opts.deadline is not None and time.perf_counter() > self.opts.deadline:
                break
            with torch.enable_grad():
                rows = self.spec_rows(spec, alphas)
                best = torch.maximum(best, rows.detach())
                if bool((spec.property_margin(best) > 0).all()):
                    break
                grads = torch.autograd.grad(-rows.sum(), params)
            for p, g in zip(params, grads):
                p.grad = g
            optimiser.step()
            with torch.no_grad():
                for p in params:
                    p.clamp_(0.0, 1.0)
        with torch.no_grad():
            best = torch.maximum(best, self.spec_rows(spec, alphas))
        return best
