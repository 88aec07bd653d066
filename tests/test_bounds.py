"""Soundness and oracle tests of the bound engine (:func:`robverify.engine.bounds.compute_bounds`).

Oracles, from cheapest to strongest:
* dense sampling of each input box (uniform points, random vertices, every vertex for tiny inputs) and PGD on
  every row from both sides, evaluated in float64: no row lower bound may exceed a value the row takes;
* closed forms: for a single linear layer every method is exact, ``m_j - eps * ||w_y - w_j||_1``;
* Marabou, a complete verifier, on tiny ReLU MLPs;
* the VNN-COMP 2021 ground truth on the mnistfc networks.

Bounds are checked on graphs read both from the live torch module (``from_module``) and from its ONNX export
(``from_onnx``); the two must agree.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from helpers import (  # noqa: F401 (single_thread: an autouse fixture)
    N_CLASSES, NET_KINDS, NET_SHAPES, linear_classifier, negated, random_boxes, relu_mlp, row_range,
    single_thread, tiny_net, to_onnx,
)
from robverify.engine.attacks import pgd_attack
from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.ir.graph import Graph
from robverify.ir.model import load_model
from robverify.ir.from_module import from_module
from robverify.ir.from_onnx import from_onnx
from robverify.spec import Method, Spec, robustness_spec

METHODS = tuple(Method)  # ibp, crown-ibp, crown, alpha-crown: cheapest (loosest) first
EPS = (0.01, 0.05, 0.2)
DEFAULT_SEEDS = (0,)
SLOW_SEEDS = tuple(range(1, 10))


def _case_params() -> list:
    params = [pytest.param(kind, seed, id=f"{kind}-s{seed}") for kind in NET_KINDS for seed in DEFAULT_SEEDS]
    params += [pytest.param(kind, seed, id=f"{kind}-s{seed}", marks=pytest.mark.slow)
               for kind in NET_KINDS for seed in SLOW_SEEDS]
    return params


CASES = _case_params()


# ------------------------------------------------------------------------------------------------ the cases


def two_sided_spec(x: Tensor, label: Tensor, eps: Tensor, seed: int, n_random: int = 2) -> tuple[Spec, int]:
    """Robustness rows plus ``n_random`` random linear rows (random ``d``), followed by all of them negated.

    Returns the spec and ``S``, the number of rows of one side: ``rows_lb[:, :S]`` are lower bounds of the rows
    and ``-rows_lb[:, S:]`` their upper bounds. Every row is its own disjunct.
    """
    base = robustness_spec(x, label, eps, N_CLASSES)
    gen = torch.Generator().manual_seed(seed + 77)
    B = x.shape[0]
    C_rand = torch.randn((B, n_random, N_CLASSES), generator=gen)
    d_rand = torch.randn((B, n_random), generator=gen) * 0.1
    C = torch.cat([base.C, C_rand], dim=1)
    d = torch.cat([base.d, d_rand], dim=1)
    S = C.shape[1]
    C2, d2 = torch.cat([C, -C], dim=1), torch.cat([d, -d], dim=1)
    return Spec(base.x_lo, base.x_hi, C2, d2, torch.arange(2 * S)), S


@dataclass
class Case:
    net: nn.Module
    graphs: dict[str, Graph]  # "module" / "onnx"
    spec: Spec                # two-sided, see two_sided_spec
    S: int
    rows: dict[tuple[str, Method], Tensor]  # (graph, method) -> rows_lb [B, 2S]
    oracle_min: Tensor        # [B, 2S] float64: smallest value each row was seen to take
    oracle_max: Tensor


_CACHE: dict[tuple[str, int], Case] = {}


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bounds_onnx")


def get_case(kind: str, seed: int, directory: Path) -> Case:
    """Build (once per module) the network, both graphs, the spec, the bounds of every method and the oracle."""
    key = (kind, seed)
    if key not in _CACHE:
        net = tiny_net(kind, seed)
        shape = NET_SHAPES[kind]
        path = to_onnx(net, directory / f"{kind}-{seed}.onnx", shape)
        graphs = {"module": from_module(net, shape), "onnx": from_onnx(path)}
        x, eps = random_boxes(shape, EPS, per_eps=2, seed=seed)
        with torch.no_grad():
            label = net(x).argmax(dim=1)
        spec, S = two_sided_spec(x, label, eps, seed)
        rows = {(name, m): compute_bounds(g, spec, m).rows_lb for name, g in graphs.items() for m in METHODS}
        lo, hi = row_range(net, graphs["module"], spec, seed=seed)
        _CACHE[key] = Case(net, graphs, spec, S, rows, lo, hi)
    return _CACHE[key]


def _assert_below(bound: Tensor, value: Tensor, what: str) -> None:
    """``bound <= value`` everywhere (float64), with a readable report of the worst violation."""
    gap = bound.double() - value.double()
    worst = float(gap.max())
    if worst > 0:
        b, s = divmod(int(gap.argmax()), gap.shape[1])
        pytest.fail(f"{what}: bound {float(bound[b, s]):.8g} exceeds a reached value {float(value[b, s]):.8g} "
                    f"(sample {b}, row {s}, by {worst:.3g})")


# ------------------------------------------------------------------------------------------------ soundness


@pytest.mark.parametrize("kind,seed", CASES)
def test_bounds_are_sound_against_sampling_and_pgd(onnx_dir, kind, seed):
    case = get_case(kind, seed, onnx_dir)
    # the oracle's min of a row is minus the max of its negation
    torch.testing.assert_close(case.oracle_min[:, :case.S], -case.oracle_max[:, case.S:])
    for (graph, method), rows_lb in case.rows.items():
        # lower bounds of the rows (first half) and, via -C, upper bounds (second half)
        _assert_below(rows_lb, case.oracle_min, f"{kind} seed {seed} {graph} graph, {method.value}")
        upper = -rows_lb[:, case.S:]
        _assert_below(case.oracle_max[:, :case.S], upper, f"{kind} seed {seed} {graph} graph, {method.value} (upper)")


@pytest.mark.parametrize("kind,seed", CASES)
def test_module_and_onnx_graphs_agree(onnx_dir, kind, seed):
    case = get_case(kind, seed, onnx_dir)
    x = case.spec.x_lo + torch.rand(case.spec.x_lo.shape) * (case.spec.x_hi - case.spec.x_lo)
    with torch.no_grad():
        expected = case.net(x)
        torch.testing.assert_close(case.graphs["module"](x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(case.graphs["onnx"](x), expected, rtol=0, atol=1e-5)
    for method in METHODS:
        a, b = case.rows[("module", method)], case.rows[("onnx", method)]
        # alpha-CROWN is an optimiser: float rounding of the two graphs (BatchNorm folded or not) steers its
        # iterates apart a little; the one-pass methods must agree to float rounding
        atol = 1e-4 if method is Method.ALPHA_CROWN else 1e-5
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{kind} seed {seed} {method.value}: {m}")


@pytest.mark.parametrize("kind,seed", CASES)
def test_tightness_order_sample_by_sample(onnx_dir, kind, seed):
    case = get_case(kind, seed, onnx_dir)
    for graph in ("module", "onnx"):
        for looser, tighter in zip(METHODS[:-1], METHODS[1:]):
            lo, hi = case.rows[(graph, looser)], case.rows[(graph, tighter)]
            bad = lo > hi
            assert not bool(bad.any()), (
                f"{kind} seed {seed} {graph}: {looser.value} {lo[bad][:4].tolist()} > {tighter.value} "
                f"{hi[bad][:4].tolist()}"
            )


@pytest.mark.parametrize("kind,seed", [p for p in CASES if p.values[1] in (0, 1, 2)])
def test_bounds_sound_without_interval_intersection(onnx_dir, kind, seed):
    """``intersect_ibp=False`` exposes each method's own bound (no max with the cheaper ones hides it)."""
    case = get_case(kind, seed, onnx_dir)
    opts = BoundOptions(intersect_ibp=False)
    for method in METHODS[1:]:
        rows_lb = compute_bounds(case.graphs["module"], case.spec, method, opts).rows_lb
        _assert_below(rows_lb, case.oracle_min, f"{kind} seed {seed} {method.value} without intersection")


@pytest.mark.parametrize("kind", ["mlp-relu", "cnn-maxpool-pad", "resnet-proj", "cnn-tanh"])
def test_float64_graph_bounds_sound_and_close(onnx_dir, kind):
    """A float64 model gives float64 bounds, sound to 1e-10. The graph is built from the float64 module: a float32
    graph cast to float64 keeps its float32-rounded BatchNorm fold, a function ~1e-7 away from the module's (the
    float32 safety margin covers that; the float64 one does not)."""
    case = get_case(kind, 0, onnx_dir)
    g64 = from_module(tiny_net(kind, 0).double(), NET_SHAPES[kind])
    for method in (Method.CROWN, Method.ALPHA_CROWN):
        rows64 = compute_bounds(g64, case.spec, method).rows_lb
        assert rows64.dtype == torch.float64
        _assert_below(rows64, case.oracle_min, f"{kind} float64 {method.value}")
        torch.testing.assert_close(rows64.float(), case.rows[("module", method)], rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["mlp-relu", "cnn-bn"])
def test_margin_lb_is_the_property_margin_of_rows(onnx_dir, kind):
    case = get_case(kind, 0, onnx_dir)
    result = compute_bounds(case.graphs["module"], case.spec, Method.CROWN)
    assert result.rows_lb.shape == (case.spec.batch_size, 2 * case.S)
    torch.testing.assert_close(result.margin_lb, case.spec.property_margin(result.rows_lb))


def test_point_boxes_are_tight(onnx_dir):
    """eps = 0: every method's bound is the value itself, up to the safety margin."""
    net = tiny_net("cnn-maxpool-overlap", 3)
    graph = from_module(net, NET_SHAPES["cnn-maxpool-overlap"])
    x = torch.rand(4, *NET_SHAPES["cnn-maxpool-overlap"])
    with torch.no_grad():
        y = net(x)
    spec = robustness_spec(x, y.argmax(1), 0.0, N_CLASSES)
    exact = spec.output_margin(y)
    for method in METHODS:
        margin = compute_bounds(graph, spec, method).margin_lb
        assert bool((margin <= exact + 1e-6).all())
        torch.testing.assert_close(margin, exact, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["mlp-bn", "cnn-maxpool-pad", "resnet-proj", "cnn-sigmoid"])
def test_small_memory_budget_gives_the_same_bounds(onnx_dir, kind):
    """A tiny ``budget`` splits every refinement into many chunks; the bounds must not change."""
    case = get_case(kind, 0, onnx_dir)
    for method in (Method.CROWN, Method.ALPHA_CROWN):
        rows = compute_bounds(case.graphs["module"], case.spec, method, BoundOptions(budget=8)).rows_lb
        torch.testing.assert_close(rows, case.rows[("module", method)], rtol=0, atol=1e-6)


def test_bounds_with_grad_match_and_reach_the_module_parameters(onnx_dir):
    """``grad=True`` (certified training): the same values, differentiable w.r.t. the module's own weights."""
    case = get_case("cnn-bn", 0, onnx_dir)
    net = case.net
    for method in (Method.IBP, Method.CROWN_IBP, Method.CROWN):
        net.zero_grad()
        # folded BatchNorm tensors are built with the graph: a new graph per backward pass, as documented
        graph = from_module(net, NET_SHAPES["cnn-bn"])
        rows = compute_bounds(graph, case.spec, method, BoundOptions(grad=True)).rows_lb
        torch.testing.assert_close(rows.detach(), case.rows[("module", method)], rtol=0, atol=1e-6)
        rows[:, :case.S].sum().backward()
        grad = net[0].weight.grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


# ------------------------------------------------------------------------------------------------ closed form


HUGE = (-1e6, 1e6)


def _linear_oracle(layer: nn.Linear, x: Tensor, label: Tensor) -> dict[str, Tensor]:
    """Per sample and other class j (in spec row order), float64: the clean margin ``m`` = y_label - y_j and the
    exact radius coefficient ``l1`` = ||w_y - w_j||_1."""
    W, b = layer.weight.detach().double(), layer.bias.detach().double()
    n = W.shape[0]
    logits = x.double() @ W.T + b
    others = torch.stack([torch.tensor([j for j in range(n) if j != int(y)]) for y in label])
    m = logits.gather(1, label.unsqueeze(1)) - logits.gather(1, others)
    l1 = (W[label].unsqueeze(1) - W[others]).abs().sum(-1)
    return {"m": m, "l1": l1}


@pytest.mark.parametrize("seed", range(5))
def test_linear_classifier_bounds_match_closed_form(tmp_path, seed):
    """No clipping (huge domain): every method is exact, ``m_j - eps ||w_y - w_j||_1`` (IBP too: it folds the
    spec into the last linear layer; without folding it would be ``m_j - eps (||w_y||_1 + ||w_j||_1)``). Both sides
    (lower and, through -C, upper)."""
    net = linear_classifier(seed, n_in=5, n_classes=4)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((6, 5), generator=gen)
    eps = torch.tensor([0.0, 0.01, 0.05, 0.2, 0.7, 3.0])
    label = torch.randint(0, 4, (6,), generator=gen)  # any label: the formula does not need a correct one
    spec = robustness_spec(x, label, eps, 4, domain=HUGE)
    oracle = _linear_oracle(net[0], x, label)
    m, e = oracle["m"], eps.double().unsqueeze(1)
    graphs = [from_module(net, (5,)), from_onnx(to_onnx(net, tmp_path / "linear.onnx", (5,)))]
    for graph in graphs:
        for method in METHODS:
            l1 = oracle["l1"]
            lower_exact, upper_exact = m - e * l1, m + e * l1
            scale = torch.maximum(m.abs(), e * l1).clamp(min=1.0)
            lower = compute_bounds(graph, spec, method).rows_lb.double()
            upper = -compute_bounds(graph, negated(spec), method).rows_lb.double()
            assert bool((lower <= lower_exact).all()) and bool((upper >= upper_exact).all()), (
                f"{graph.source} {method.value}: bound beyond the exact value")
            assert bool(((lower_exact - lower) <= 1e-4 * scale).all()), (
                f"{graph.source} {method.value}: {lower.tolist()} vs exact {lower_exact.tolist()}")
            assert bool(((upper - upper_exact) <= 1e-4 * scale).all()), (
                f"{graph.source} {method.value}: {upper.tolist()} vs exact {upper_exact.tolist()}")


@pytest.mark.parametrize("seed,n_classes", [(0, 2), pytest.param(0, 4, marks=pytest.mark.slow),
                                            pytest.param(1, 2, marks=pytest.mark.slow),
                                            pytest.param(1, 4, marks=pytest.mark.slow)])
def test_linear_classifier_critical_epsilon_matches_closed_form(tmp_path, seed, n_classes):
    """``eps_lo`` is the exact critical eps ``min_j m_j / ||w_y - w_j||_1`` within ``tol`` with every method (IBP
    folds the spec into the linear layer, so it is exact here too). ``eps_hi`` never undercuts the
    exact value; with two classes PGD reaches the worst vertex, so it matches within ``tol`` too (with more
    classes PGD may settle at the vertex of the wrong class: a gap, not an error). The status says whether the
    bracket is within ``tol``."""
    from robverify.backends.native import NativeBackend
    from robverify.runs.search import critical_epsilon

    net = linear_classifier(seed + 10, n_in=5, n_classes=n_classes)
    model = load_model(to_onnx(net, tmp_path / "linear.onnx", (5,)))
    x = torch.rand((8, 5), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        label = net(x).argmax(1)
    oracle = _linear_oracle(net[0], x, label)
    eps_star = (oracle["m"] / oracle["l1"]).amin(dim=1)
    assert bool((eps_star > 0).all())
    # float32 bounds lose ~1e-4 of eps to the safety margin: a tol well above that makes "exact" reachable
    tol = 1e-3
    slack = 1e-5 * (1 + eps_star)   # rounding: neither end may be on the wrong side of eps* by more
    near = tol + 2e-4               # how close each end must come
    eps_max = float(eps_star.max()) * 2 + 0.1
    for method in METHODS:
        backend = NativeBackend(model, method)
        result = critical_epsilon(backend, x, label, n_classes, tol=tol, eps_max=eps_max, domain=HUGE)
        lo_star = eps_star
        assert bool((result.eps_lo <= lo_star + slack).all()), (method, result.eps_lo, lo_star)
        assert bool(((result.eps_lo - lo_star).abs() <= near).all()), (method, result.eps_lo, lo_star)
        assert bool((result.eps_hi >= eps_star - slack).all()), (method, result.eps_hi, eps_star)
        assert bool((result.n_calls >= 1).all())
        width = result.eps_hi - result.eps_lo
        for i, status in enumerate(result.status):
            assert status in ("exact", "gap"), (method, i, status)
            assert (status == "exact") == bool(width[i] <= tol + 1e-12), (method, i, status, float(width[i]))
        if n_classes == 2:
            assert bool(((result.eps_hi - eps_star).abs() <= near).all()), (method, result.eps_hi, eps_star)


# ------------------------------------------------------------------------------------------------ Marabou


def _marabou(onnx_path: Path, vnnlib_path: Path) -> tuple[str, list[float]]:
    """Marabou's answer and, for ``sat``, its input assignment (flattened)."""
    from maraboupy import Marabou

    network = Marabou.read_onnx(str(onnx_path))
    options = Marabou.createOptions(verbosity=0, timeoutInSeconds=20)
    answer, values, _ = network.solve(propertyFilename=str(vnnlib_path), options=options, verbose=False)
    inputs = [values[int(v)] for v in network.inputVars[0].reshape(-1)] if answer == "sat" else []
    return answer, inputs


def _marabou_robustness(onnx_path: Path, directory: Path, x: Tensor, label: int, eps: float, n_classes: int
                        ) -> tuple[str, list[list[float]]]:
    """Local robustness by Marabou, one targeted (single-constraint) query per other class: ``sat`` if any is.

    One query per class instead of the one2any file: maraboupy 2.0 answered ``sat`` to a disjunction
    ``(or (and (>= Y_1 Y_0)) (and (>= Y_2 Y_0)))`` whose disjuncts it each proved ``unsat``, with an assignment
    that satisfies neither (outputs ``[0.065, -0.092, 0.036]`` for label 0: a 4-8-8-3 ReLU MLP, torch seed 0,
    eps 0.1; the CLI answers the same). Single-constraint queries have been reliable.
    """
    from robverify.formats.vnnlib_write import write_robustness_vnnlib

    answers, witnesses = [], []
    for target in range(n_classes):
        if target == label:
            continue
        prop = write_robustness_vnnlib(directory / f"target{target}.vnnlib", x, label, eps, n_classes, target=target)
        answer, inputs = _marabou(onnx_path, prop)
        answers.append(answer)
        if answer == "sat":
            witnesses.append(inputs)
    if "sat" in answers:
        return "sat", witnesses
    return ("unsat" if all(a == "unsat" for a in answers) else "unknown"), []


MARABOU_NETS = [(1, (4, 8, 8, 3)), (4, (4, 8, 8, 3)), (0, (5, 8, 6, 3))]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Tensorflow parser")
@pytest.mark.parametrize("seed,widths", MARABOU_NETS, ids=[f"s{s}-{'-'.join(map(str, w))}" for s, w in MARABOU_NETS])
def test_native_verdicts_agree_with_marabou(tmp_path, seed, widths):
    """Marabou (complete): no native method verifies what Marabou falsifies; no confirmed PGD counterexample
    where Marabou proves the property. Marabou's own counterexamples are re-checked in onnxruntime."""
    pytest.importorskip("maraboupy")
    net = relu_mlp(seed, widths)
    path = to_onnx(net, tmp_path / "mlp.onnx", (widths[0],))
    model = load_model(path)
    n_classes = widths[-1]
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((10, widths[0]), generator=gen)
    with torch.no_grad():
        label = net(x).argmax(1)
    eps_values = (0.03, 0.1, 0.25, 0.5)
    pairs = [(i, eps_values[(i + k) % 4]) for i in range(10) for k in range(2)]  # 20 (sample, eps) pairs
    xs = torch.stack([x[i] for i, _ in pairs])
    labels = torch.stack([label[i] for i, _ in pairs])
    eps = torch.tensor([e for _, e in pairs])
    spec = robustness_spec(xs, labels, eps, n_classes)
    verified = {m: compute_bounds(model.graph, spec, m).margin_lb > 0 for m in METHODS}
    attack = pgd_attack(model.graph, spec, steps=50, restarts=3)
    confirmed = model.confirm(spec, attack.x_adv, attack.found)
    answers = []
    for k, (i, e) in enumerate(pairs):
        answer, witnesses = _marabou_robustness(path, tmp_path, x[i], int(label[i]), e, n_classes)
        answers.append(answer)
        assert answer in ("sat", "unsat"), f"pair {k}: Marabou answered {answer}"
        if answer == "sat":
            for m in METHODS:
                assert not bool(verified[m][k]), f"pair {k} (eps {e}): {m.value} verified, Marabou found sat"
            # Marabou's counterexamples lie on the decision boundary: re-check with a tolerance
            x_cex = torch.tensor(witnesses[0], dtype=torch.float64).reshape(1, -1)
            assert bool(((x_cex >= spec.x_lo[k].double() - 1e-6) & (x_cex <= spec.x_hi[k].double() + 1e-6)).all())
            y = torch.from_numpy(model.runtime.logits(x_cex.float()))
            assert float(spec.select(torch.tensor([k])).output_margin(y)) <= 1e-4, f"pair {k}: bogus witness"
        if bool(confirmed[k]):
            assert answer != "unsat", f"pair {k} (eps {e}): PGD counterexample confirmed, Marabou says unsat"
    # the pairs are informative: both answers occur, CROWN proves some unsat ones, PGD finds some sat ones
    assert {"sat", "unsat"} <= set(answers), answers
    assert bool(verified[Method.ALPHA_CROWN].any()) and bool(confirmed.any())


# ------------------------------------------------------------------------------------------------ VNN-COMP


def _ground_truth(benchmark: str, consensus: str) -> list[tuple[str, str]]:
    from conftest import SHARED

    table = SHARED / "vnncomp2021" / "ground_truth.csv"
    if not table.is_file():
        return []
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(r["onnx"], r["vnnlib"]) for r in rows if r["benchmark"] == benchmark and r["consensus"] == consensus]


def _mnistfc_sat_params() -> list:
    """Every mnistfc instance whose consensus is sat: the first of each network by default, the rest slow."""
    params, seen = [], set()
    for onnx_name, vnnlib_name in _ground_truth("mnistfc", "sat"):
        marks = [pytest.mark.slow] if onnx_name in seen else []
        seen.add(onnx_name)
        params.append(pytest.param(onnx_name, vnnlib_name, marks=marks,
                                   id=f"{onnx_name.removesuffix('.onnx')}-{vnnlib_name.removesuffix('.vnnlib')}"))
    return params or [pytest.param("", "", marks=pytest.mark.skip(reason="no VNN-COMP ground truth here"))]


_VNNCOMP_GRAPHS: dict[str, Graph] = {}


@pytest.mark.parametrize("onnx_name,vnnlib_name", _mnistfc_sat_params())
def test_mnistfc_sat_instances_are_never_verified(vnncomp_dir, onnx_name, vnnlib_name):
    """The competition's tools found counterexamples: no sound method may prove these properties."""
    from robverify.formats.vnnlib_read import read_vnnlib

    if onnx_name not in _VNNCOMP_GRAPHS:
        _VNNCOMP_GRAPHS[onnx_name] = from_onnx(vnncomp_dir / "mnistfc" / onnx_name)
    graph = _VNNCOMP_GRAPHS[onnx_name]
    props = read_vnnlib(vnncomp_dir / "mnistfc" / vnnlib_name)
    assert props
    for prop in props:
        spec = prop.to_spec(graph.input_shape)
        for method in METHODS:
            margin = compute_bounds(graph, spec, method).margin_lb
            assert not bool((margin > 0).any()), f"{onnx_name} {vnnlib_name}: {method.value} verified a sat instance"


@pytest.mark.slow
def test_mnistfc_unsat_instances_are_partly_verified_and_never_attacked(vnncomp_dir):
    """The sat test above is not vacuous: CROWN proves most of the 256x2 network's unsat instances; and PGD
    never finds a confirmed counterexample where the competition's consensus is unsat."""
    from robverify.formats.vnnlib_read import read_vnnlib
    from robverify.ir.runtime import OnnxRuntimeModel

    path = vnncomp_dir / "mnistfc" / "mnist-net_256x2.onnx"
    graph = from_onnx(path)
    runtime = OnnxRuntimeModel(path, graph.input_shape, graph.dynamic_batch)
    instances = [v for o, v in _ground_truth("mnistfc", "unsat") if o == path.name]
    specs = [read_vnnlib(vnncomp_dir / "mnistfc" / v)[0].to_spec(graph.input_shape) for v in instances]
    verified = [bool(compute_bounds(graph, spec, Method.CROWN).margin_lb > 0) for spec in specs]
    assert sum(verified) >= len(instances) // 2, verified
    for name, spec in zip(instances, specs):
        attack = pgd_attack(graph, spec)
        y = torch.from_numpy(runtime.logits(attack.x_adv))
        assert not bool(attack.found & (spec.output_margin(y) <= 0)), f"{name}: counterexample to an unsat instance"


def test_mnistfc_sat_instances_exist(vnncomp_dir):
    assert len(_ground_truth("mnistfc", "sat")) >= 10


def test_vnncomp_test_sat_instance_is_not_verified(vnncomp_dir):
    from robverify.formats.vnnlib_read import read_vnnlib

    instances = _ground_truth("test", "sat")
    assert instances
    for onnx_name, vnnlib_name in instances:
        graph = from_onnx(vnncomp_dir / "test" / onnx_name)
        for prop in read_vnnlib(vnncomp_dir / "test" / vnnlib_name):
            spec = prop.to_spec(graph.input_shape)
            for method in METHODS:
                assert not bool((compute_bounds(graph, spec, method).margin_lb > 0).any()), (onnx_name, method)
