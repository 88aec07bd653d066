"""Branch and bound (robverify.engine.bab, input_split, complete): every domain bound is sound on the points of
its domain (dense sampling, phases checked on the concrete pre-activations); the verdicts never contradict
Marabou (a complete verifier) or the concrete counterexamples, and on tiny nets BaB decides what Marabou decides.

The default suite runs a seeded handful of queries (a few seconds); ``-m slow`` runs >= 500 Marabou queries."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from helpers import relu_mlp, tiny_net, to_onnx
from robverify.engine.bab import BabOptions, Domains, ReluBab, split_disjuncts
from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.engine.complete import CompleteOptions, complete_verify
from robverify.engine.falsify import diverse_pgd
from robverify.ir.model import load_model
from robverify.spec import Verdict, robustness_spec

pytestmark = pytest.mark.filterwarnings("ignore:Tensorflow parser")


def _model(tmp_path, kind: str, seed: int):
    if kind == "mlp":
        return load_model(to_onnx(relu_mlp(seed, (4, 8, 8, 3)), tmp_path / f"mlp{seed}.onnx", (4,)))
    if kind == "mlp-wide":
        return load_model(to_onnx(relu_mlp(seed, (6, 16, 16, 3)), tmp_path / f"wide{seed}.onnx", (6,)))
    if kind == "mlp-deep":  # three ReLU layers: children's intermediate boxes are recomputed by default
        return load_model(to_onnx(relu_mlp(seed, (6, 16, 16, 16, 3)), tmp_path / f"deep{seed}.onnx", (6,)))
    return load_model(to_onnx(tiny_net("cnn-relu", seed), tmp_path / f"cnn{seed}.onnx", (1, 6, 6)))


def _open_specs(model, n: int, eps_list, seed: int):
    """Robustness specs (one per sample and eps) that alpha-CROWN alone leaves open."""
    shape = model.graph.input_shape
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))
    label = model.predict(x)
    picked = []
    for eps in eps_list:
        spec = robustness_spec(x, label, eps, model.graph.n_outputs)
        margin = compute_bounds(model.graph, spec, "alpha-crown").margin_lb
        for i in (margin <= 0).nonzero().squeeze(1).tolist():
            picked.append(spec.select(torch.tensor([i])))
    if not picked:
        return None
    first = picked[0]
    from robverify.spec import Spec

    return Spec(torch.cat([p.x_lo for p in picked]), torch.cat([p.x_hi for p in picked]),
                torch.cat([p.C for p in picked]), torch.cat([p.d for p in picked]), first.group)


@pytest.mark.parametrize("kind", ["mlp-wide", "mlp-deep"])
def test_every_domain_bound_holds_on_the_points_of_its_domain(tmp_path, kind):
    """Children of three rounds (kept even when proved): their lb is <= every sampled point of the box whose
    pre-activations have the domain's phases; an empty-looking domain (lb inf) holds no such point. On the deep
    MLP the children's intermediate boxes are recomputed (after their shallowest new split)."""
    model = _model(tmp_path, kind, 3)
    spec = _open_specs(model, 6, (0.08, 0.15), seed=2)
    problems = split_disjuncts(spec)
    bab = ReluBab(model.graph, problems, BabOptions(batch=64, steps=10))
    assert bab.refine_children == (kind == "mlp-deep")
    dom = bab.root()
    checked = 0
    for _ in range(3):
        dom = dom.select((dom.scores > -torch.inf).any(1).nonzero().squeeze(1))
        dom = bab.bound(bab.branch(dom.select(torch.arange(min(len(dom), 16))), 2), steps=10)
        P = problems.spec
        lo, hi = P.x_lo[dom.problem], P.x_hi[dom.problem]
        gen = torch.Generator().manual_seed(0)
        pts = lo.unsqueeze(1) + torch.rand((len(dom), 1500, *lo.shape[1:]), generator=gen) * (hi - lo).unsqueeze(1)
        flat = pts.reshape(-1, *lo.shape[1:])
        values = model.graph.forward(flat, keep=True)
        inside = torch.ones(len(dom), 1500, dtype=torch.bool)
        for layer in bab.layers:
            z = values[layer.pre].reshape(len(dom), 1500, -1)
            ph = dom.phase[:, layer.offset:layer.offset + layer.size].unsqueeze(1)
            inside &= ((ph == 0) | ((ph > 0) & (z >= 0)) | ((ph < 0) & (z <= 0))).all(-1)
        y = values[model.graph.output].reshape(len(dom), 1500, -1).double()
        rows = torch.einsum("mgo,mpo->mpg", P.C[dom.problem].double(), y) - P.d[dom.problem].double().unsqueeze(1)
        value = rows.max(-1).values  # the conjunction's margin at each point
        value = torch.where(inside, value, torch.full_like(value, torch.inf)).amin(1)
        assert bool((dom.lb.double() <= value + 1e-5).all()), (dom.lb - value).max()
        checked += int(inside.any(1).sum())
        assert bool((dom.phase != 0).sum(1).min() >= 1)
    assert checked > 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_children_are_refined_after_their_shallowest_new_split_without_loss(tmp_path, seed):
    """Recomputing only the layers after a child's shallowest new split gives the boxes and bounds of recomputing
    every layer, and these are tighter than the inherited boxes alone (so the comparison has teeth)."""
    model = _model(tmp_path, "mlp-deep", seed)
    spec = _open_specs(model, 8, (0.1, 0.2), seed=seed + 10)
    bab = ReluBab(model.graph, split_disjuncts(spec), BabOptions(batch=64, steps=5))
    dom = bab.root()
    tighter = 0
    for _ in range(3):
        dom = dom.select((dom.scores > -torch.inf).any(1).nonzero().squeeze(1)[:16])
        kids = bab.branch(dom, 2)
        assert kids.fresh is not None and bool((kids.fresh < len(bab.layers)).all())
        fast = bab.bound(kids, steps=0)
        full = bab.bound(replace(kids, fresh=None), steps=0)
        plain = bab.bound(kids, steps=0, refine=False)
        for name, (lo, hi) in fast.boxes.items():
            assert torch.allclose(lo, full.boxes[name][0], atol=1e-5)
            assert torch.allclose(hi, full.boxes[name][1], atol=1e-5)
            tighter += int(((hi - lo) < (plain.boxes[name][1] - plain.boxes[name][0]) - 1e-4).sum())
        finite = torch.isfinite(full.lb)
        assert torch.equal(finite, torch.isfinite(fast.lb))
        assert torch.allclose(fast.lb[finite], full.lb[finite], atol=1e-4)
        dom = bab.bound(kids, steps=5)
    assert tighter > 0


def test_root_bound_is_at_least_crown(tmp_path):
    model = _model(tmp_path, "mlp-wide", 1)
    spec = _open_specs(model, 8, (0.1,), seed=4)
    problems = split_disjuncts(spec)
    root = ReluBab(model.graph, problems).root()
    crown = compute_bounds(model.graph, problems.spec, "crown", BoundOptions(intersect_ibp=False)).rows_lb.max(1).values
    assert bool((root.lb >= crown - 1e-4).all())


def test_optimised_intermediate_boxes_contain_every_sampled_pre_activation(tmp_path):
    """alpha-CROWN intermediate boxes: inside CROWN's, and containing the pre-activations of sampled points."""
    from robverify.engine.bounds import _Propagator
    from robverify.engine.intermediate import optimise_intermediate

    model = _model(tmp_path, "mlp-wide", 5)
    x = torch.rand((4, 6), generator=torch.Generator().manual_seed(6))
    spec = robustness_spec(x, model.predict(x), 0.2, 3)
    prop = _Propagator(model.graph, spec.x_lo, spec.x_hi, BoundOptions())
    prop.intervals(refine=True)
    names = [n for n in prop.relu_only if n not in prop.exact]
    crown = {n: prop.boxes[n] for n in names}
    optimise_intermediate(prop, names, steps=15)
    pts = spec.x_lo.unsqueeze(1) + torch.rand((4, 3000, 6), generator=torch.Generator().manual_seed(7)) * (
        spec.x_hi - spec.x_lo).unsqueeze(1)
    values = model.graph.forward(pts.reshape(-1, 6), keep=True)
    tighter = 0.0
    for n in names:
        lo, hi = prop.boxes[n]
        z = values[n].reshape(4, 3000, -1)
        assert bool((z >= lo.reshape(4, 1, -1) - 1e-5).all() and (z <= hi.reshape(4, 1, -1) + 1e-5).all()), n
        assert bool((lo >= crown[n][0]).all() and (hi <= crown[n][1]).all())
        tighter += float((crown[n][1] - crown[n][0] - (hi - lo)).sum())
    assert tighter > 0


def test_diverse_pgd_candidates_are_confirmed_when_found(tmp_path):
    model = _model(tmp_path, "mlp", 0)
    x = torch.rand((16, 4), generator=torch.Generator().manual_seed(5))
    spec = robustness_spec(x, model.predict(x), 0.3, 3)
    result = diverse_pgd(model.graph, spec, restarts=4, steps=20, seed=1)
    assert bool(result.found.any())
    strict = result.found & (result.margin < -1e-4)
    assert bool(model.confirm(spec, result.x_adv, strict)[strict].all())


# ------------------------------------------------------------------------------------------- against Marabou


def _marabou_answers(model, spec) -> list[str]:
    """Marabou's raw answer per spec: 'sat', 'unsat' or 'timeout'/'unknown'."""
    from robverify.backends import BackendOptions, get_backend

    backend = get_backend("marabou")(model, "crown", options=BackendOptions(timeout=30))
    out = []
    for i in range(spec.batch_size):
        answer = backend._query(spec.select(torch.tensor([i])))
        out.append({Verdict.VERIFIED: "unsat", Verdict.FALSIFIED: "sat"}.get(answer.verdict, "timeout"))
    return out


def _compare(model, spec, mode: str, timeout: float) -> tuple[int, int]:
    """Run BaB and Marabou on every spec; no contradiction allowed; returns (decided by Marabou, agreed)."""
    result = complete_verify(model, spec, timeout=timeout, options=CompleteOptions(mode=mode))
    truth = _marabou_answers(model, spec)
    decided = agreed = 0
    for i, (ours, theirs) in enumerate(zip(result.verdict, truth)):
        assert not (ours is Verdict.VERIFIED and theirs == "sat"), (i, result.reason[i])
        if ours is Verdict.FALSIFIED:
            one = spec.select(torch.tensor([i]))
            assert bool(model.confirm(one, result.x_adv[i:i + 1], torch.ones(1, dtype=torch.bool))[0])
            assert theirs != "unsat", (i, "confirmed counterexample where Marabou says unsat")
        if theirs in ("sat", "unsat"):
            decided += 1
            agreed += (ours is Verdict.VERIFIED) == (theirs == "unsat") and ours in (Verdict.VERIFIED,
                                                                                        Verdict.FALSIFIED)
    return decided, agreed


_QUICK = [("mlp", 0, "relu"), ("mlp", 1, "input"), ("mlp-wide", 2, "relu"), ("cnn", 0, "relu")]


@pytest.mark.parametrize("kind,seed,mode", _QUICK)
def test_bab_agrees_with_marabou_where_crown_fails(tmp_path, kind, seed, mode):
    pytest.importorskip("maraboupy")
    model = _model(tmp_path, kind, seed)
    spec = _open_specs(model, 6, (0.05, 0.1, 0.2) if kind != "cnn" else (0.2,), seed=seed + 10)
    if spec is None:
        pytest.skip("alpha-CROWN proves every spec of this seed")
    decided, agreed = _compare(model, spec, mode, timeout=5.0)
    assert decided >= 1
    assert agreed == decided, (agreed, decided)


@pytest.mark.slow
def test_bab_never_contradicts_marabou_on_500_queries(tmp_path):
    pytest.importorskip("maraboupy")
    total = decided_all = agreed_all = 0
    seed = 0
    while total < 500 and seed < 200:
        kind = ("mlp", "mlp-wide", "cnn")[seed % 3]
        model = _model(tmp_path, kind, seed)
        eps_list = (0.02, 0.05, 0.1, 0.2, 0.3) if kind != "cnn" else (0.01, 0.02, 0.05, 0.1)
        spec = _open_specs(model, 10, eps_list, seed=seed + 100)
        seed += 1
        if spec is None:
            continue
        mode = "input" if kind == "mlp" and seed % 2 else "relu"
        decided, agreed = _compare(model, spec, mode, timeout=10.0)
        total += spec.batch_size
        decided_all += decided
        agreed_all += agreed
    print(f"{total} queries, Marabou decided {decided_all}, BaB agreed on {agreed_all}")
    assert total >= 500
    assert agreed_all >= 0.95 * decided_all


def test_marabou_queries_do_not_inherit_the_rows_of_earlier_queries(tmp_path):
    """The oracle itself: maraboupy's addInequality keeps a row in the network's equations unless it is a property
    row, so every query once carried all earlier rows and, after one unsat, every later query answered unsat."""
    pytest.importorskip("maraboupy")
    from robverify.backends import BackendOptions, get_backend

    backend = get_backend("marabou")(_model(tmp_path, "mlp", 1), "crown", options=BackendOptions(timeout=20))
    lo, hi, e0 = [0.0] * 4, [1.0] * 4, [1.0, 0.0, 0.0]
    assert backend._solve(lo, hi, [(e0, -1e6), ([-c for c in e0], -1e6)])[0] == "unsat"  # y0 <= -1e6, y0 >= 1e6
    assert backend._solve(lo, hi, [])[0] == "sat"
    assert backend._solve(lo, hi, [(e0, 1e6)])[0] == "sat"


def test_bab_backend_decides_what_the_bound_leaves_open(tmp_path):
    """``--backend bab`` through the Backend contract (what certify and sweep-epsilon call): verified and
    falsified never overlap, every falsified is confirmed, and it proves at least what the native bound proves."""
    from robverify.backends import BackendOptions, get_backend

    model = _model(tmp_path, "mlp", 0)
    x = torch.rand((8, 4), generator=torch.Generator().manual_seed(21))
    spec = robustness_spec(x, model.predict(x), 0.1, 3)
    backend = get_backend("bab")(model, "crown", options=BackendOptions(timeout=5))
    native = get_backend("native")(model, "crown").verify(spec).verified
    verified = backend.verify(spec).verified
    falsified = backend.falsify(spec, x).falsified
    assert not bool((verified & falsified).any())
    assert bool((verified | falsified).all()), [(r.verdict, r.reason) for r in backend.records]
    assert bool((verified | ~native).all())
    assert len(backend.records) == int((~native).sum()) > 0


def test_certify_table_says_how_each_verdict_was_decided(tmp_path):
    """certify rows: ``bound`` where the bound is positive, ``attack`` / ``bab`` for re-checked counterexamples and
    BaB proofs (with its domains and seconds), and the verdicts are those of native CROWN plus more decided ones."""
    import numpy as np

    from robverify.backends import BackendOptions, get_backend
    from robverify.runs.jobs import Samples, certify_chunk

    model = _model(tmp_path, "mlp", 0)
    x = torch.rand((16, 4), generator=torch.Generator().manual_seed(21))
    samples = Samples(x, model.predict(x), torch.arange(16), "random", 3)
    bab = certify_chunk(get_backend("bab")(model, "crown", options=BackendOptions(timeout=5)), samples, run_id="r",
                        eps=(0.1, 0.2))
    native = certify_chunk(get_backend("native")(model, "crown"), samples, run_id="r", eps=(0.1, 0.2))
    assert set(bab["decided_by"]) <= {"bound", "attack", "bab", "none"} and (bab["decided_by"] == "bab").any()
    assert (bab.loc[bab["decided_by"] == "bound", "margin_lb"] > 0).all()
    by_bab = bab["decided_by"] == "bab"
    assert (bab.loc[by_bab, "domains"] > 0).all() and (bab.loc[by_bab, "bab_s"] > 0).all()
    assert (bab.loc[~by_bab, "domains"] == 0).all()
    assert (native["decided_by"] != "bab").all() and (native["domains"] == 0).all()
    # same bound: the same bound-decided rows; bab only adds decisions
    np.testing.assert_array_equal(bab["decided_by"] == "bound", native["decided_by"] == "bound")
    assert (bab.loc[native["verdict"] == "verified", "verdict"] == "verified").all()
    assert (bab.loc[native["verdict"] == "falsified", "verdict"] == "falsified").all()
    assert (bab["verdict"] == "unknown").sum() < (native["verdict"] == "unknown").sum()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("kind,mode", [("mlp-wide", "relu"), ("cnn", "relu"), ("mlp", "input")])
def test_cuda_bab_gives_the_cpu_verdicts(tmp_path, kind, mode):
    """The same code on CUDA: the same decided verdicts as on the CPU (never verified on one, falsified on the other)."""
    path = {"mlp": "mlp0.onnx", "mlp-wide": "wide0.onnx", "cnn": "cnn0.onnx"}[kind]
    cpu = _model(tmp_path, kind, 0)
    gpu = load_model(tmp_path / path, "cuda")
    spec = _open_specs(cpu, 6, (0.05, 0.1, 0.2), seed=3)
    if spec is None:
        pytest.skip("alpha-CROWN proves every spec of this seed")
    a = complete_verify(cpu, spec, timeout=10.0, options=CompleteOptions(mode=mode)).verdict
    b = complete_verify(gpu, spec.to("cuda"), timeout=10.0, options=CompleteOptions(mode=mode)).verdict
    decided = (Verdict.VERIFIED, Verdict.FALSIFIED)
    assert all(x == y for x, y in zip(a, b) if x in decided and y in decided), (a, b)


# ------------------------------------------------------------------------------ against VNN-COMP 2021 mnistfc


def _mnistfc(vnncomp_dir, onnx: str, vnnlib: str, cache: dict):
    import csv
    import math

    from robverify.formats.vnnlib_read import read_vnnlib

    if onnx not in cache:
        cache[onnx] = load_model(vnncomp_dir / "mnistfc" / onnx)
    model = cache[onnx]
    shape = model.graph.input_shape
    props = read_vnnlib(vnncomp_dir / "mnistfc" / vnnlib, n_inputs=math.prod(shape), n_outputs=model.graph.n_outputs)
    with open(vnncomp_dir / "ground_truth.csv", newline="") as handle:
        truth = {(r["onnx"], r["vnnlib"]): r["consensus"] for r in csv.DictReader(handle)}
    return model, props[0], truth.get((onnx, vnnlib), "-")


def _check_mnistfc(vnncomp_dir, onnx, vnnlib, timeout, cache) -> Verdict:
    model, prop, truth = _mnistfc(vnncomp_dir, onnx, vnnlib, cache)
    shape = model.graph.input_shape
    spec, exact = prop.to_spec(shape, torch.float32), prop.to_spec(shape, torch.float64)
    result = complete_verify(model, spec, exact=exact, timeout=timeout)
    verdict = result.verdict[0]
    assert not (verdict is Verdict.VERIFIED and truth == "sat"), (onnx, vnnlib, result.reason)
    if verdict is Verdict.FALSIFIED:
        assert bool(model.confirm(exact, result.x_adv, torch.ones(1, dtype=torch.bool))[0])
        assert truth != "unsat", (onnx, vnnlib, "confirmed counterexample where the consensus is unsat")
    return verdict


_MNISTFC_QUICK = [("mnist-net_256x2.onnx", "prop_5_0.03.vnnlib", Verdict.VERIFIED),
                  ("mnist-net_256x2.onnx", "prop_0_0.05.vnnlib", Verdict.FALSIFIED)]
_MNIST_MODELS: dict = {}


@pytest.mark.parametrize("onnx,vnnlib,expected", _MNISTFC_QUICK)
def test_mnistfc_instances_alpha_crown_leaves_open_are_decided(vnncomp_dir, onnx, vnnlib, expected):
    """Two mnistfc instances where alpha-CROWN's margin is <= 0 and PGD (40 x 3) finds nothing."""
    model, prop, _ = _mnistfc(vnncomp_dir, onnx, vnnlib, _MNIST_MODELS)
    spec = prop.to_spec(model.graph.input_shape, torch.float32)
    assert float(compute_bounds(model.graph, spec, "alpha-crown").margin_lb[0]) <= 0
    assert _check_mnistfc(vnncomp_dir, onnx, vnnlib, 30.0, _MNIST_MODELS) is expected


def _all_mnistfc() -> list:
    import csv
    from pathlib import Path

    table = Path(__file__).resolve().parents[2] / "shared" / "vnncomp2021" / "mnistfc" / "mnistfc_instances.csv"
    if not table.is_file():
        return []
    with open(table, newline="") as handle:
        return [pytest.param(o.strip(), v.strip(), id=f"{o.strip()}-{v.strip()}") for o, v, _ in csv.reader(handle)]


@pytest.mark.slow
@pytest.mark.parametrize("onnx,vnnlib", _all_mnistfc())
def test_mnistfc_bab_never_contradicts_the_ground_truth(vnncomp_dir, onnx, vnnlib):
    _check_mnistfc(vnncomp_dir, onnx, vnnlib, 10.0, _MNIST_MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("onnx,vnnlib", [("mnist-net_256x4.onnx", "prop_1_0.05.vnnlib"),
                                         ("mnist-net_256x6.onnx", "prop_3_0.05.vnnlib")])
def test_verify_finds_the_counterexamples_plain_pgd_misses(vnncomp_dir, onnx, vnnlib):
    """Two sat instances a 2025 BaB tool decided with a diversified multi-restart attack: ``robverify verify``
    finds them within 60 s (in branch and bound, 13 s each measured on 1 thread), confirmed by onnxruntime."""
    from robverify.engine.answer import answer_instance
    from robverify.formats.vnncomp_result import Result

    model, prop, truth = _mnistfc(vnncomp_dir, onnx, vnnlib, _MNIST_MODELS)
    assert truth == "sat"
    answer = answer_instance(model, vnncomp_dir / "mnistfc" / vnnlib, timeout=60.0)
    assert answer.result is Result.SAT, answer
    shape = model.graph.input_shape
    x = answer.x.reshape(1, *shape)
    assert bool(model.confirm(prop.to_spec(shape, torch.float64), x, torch.ones(1, dtype=torch.bool))[0])


def test_complete_verify_refuses_specs_that_do_not_fit_the_model(tmp_path):
    from robverify.errors import RobverifyError

    model = _model(tmp_path, "mlp", 0)
    x = torch.rand((2, 4), generator=torch.Generator().manual_seed(0))
    with pytest.raises(RobverifyError, match="spec rows act on 5 outputs, but the model has 3"):
        complete_verify(model, robustness_spec(x, torch.zeros(2, dtype=torch.long), 0.1, 5), timeout=1.0)
    with pytest.raises(RobverifyError, match="does not fit|input"):
        complete_verify(model, robustness_spec(torch.rand(2, 5), torch.zeros(2, dtype=torch.long), 0.1, 3),
                        timeout=1.0)
