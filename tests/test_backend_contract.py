"""The backend contract, for every registered backend (``backend_names()``, so a backend registered later is
covered without touching this file; :func:`contract_helpers.options_for` gives each the options it needs).

(a) ``verify`` returns ``[B]`` bool ``verified`` and ``[B]`` float64 ``margin_lb``; ``falsify`` returns ``[B]``
    ``falsified``, ``x_adv`` ``[B, *input_shape]`` and ``[B]`` ``distance``, for batches smaller than, equal to and
    larger than ``batch_size``; a sample's answer does not depend on the batch it came in.
(b) A box with NaN never verifies; nor does a box on which the float32 network's outputs are NaN or inf.
(c) Every counterexample lies in its box and an onnxruntime session of the test's own says it is unsafe; no
    verified spec is refuted by a strong PGD run or by dense sampling (both judged by that session).
(d) ``run_certify`` and ``run_sweep`` write tidy tables that :func:`validate_table` accepts, one row per
    (sample, eps) and per sample.

Every case here once caught a real defect or guards a guarantee; a known violation would be a strict xfail naming
the code at fault. Everything is seeded and runs on CPU in a few seconds per backend. The
network has an image-shaped input (1x3x3), so that a backend that loses the input shape shows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contract_helpers import (BATCH_SIZE, INF_OUTPUT, INPUT_SHAPE, N_CLASSES, TRIGGER, build_backend, ort_outputs,
                              overflow_net, plain_net, sampled_violations, strong_pgd_violations, violations,
                              write_tool)
from helpers import single_thread, to_onnx  # noqa: F401 (single_thread: an autouse fixture)
from robverify.backends import BackendOptions, backend_names, get_backend
from robverify.backends.base import Backend
from robverify.errors import RobverifyError
from robverify.ir.model import load_model
from robverify.runs.jobs import Samples, run_certify, run_sweep
from robverify.runs.rundir import RunDir
from robverify.runs.schema import VERDICTS, SweepStatus, validate_table
from robverify.runs.sweep import BracketSearch, SweepSettings, search_for
from robverify.spec import Spec, robustness_spec

pytestmark = [pytest.mark.filterwarnings("ignore:Tensorflow parser"),
              pytest.mark.filterwarnings("ignore:AutoAttack not found"),
              pytest.mark.filterwarnings("ignore:AutoVerify not found")]

NAMES = backend_names()
#: per-sample radii of the contract batch: proved by CROWN (0, 2, 4, 6), refuted (1, 5, 7), and left open by CROWN
#: although no counterexample exists (3, 8: Marabou proves them)
EPS = (0.02, 0.2, 0.05, 0.28, 0.3, 0.3, 0.1, 0.4, 0.42)
BATCHES = (1, BATCH_SIZE, len(EPS))  # below, at and above batch_size (3 chunks)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(to_onnx(plain_net(), tmp_path_factory.mktemp("contract") / "plain.onnx", INPUT_SHAPE))


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> str:
    return write_tool(tmp_path_factory.mktemp("tool"))


@pytest.fixture(scope="module")
def backends(model, tool):
    """name -> the backend on the contract model, built once per module (auto_LiRPA's conversion takes seconds)."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_backend(name, model, tool)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def batch(model):
    """The contract batch: samples ``x`` ``[9, 1, 3, 3]``, their predicted labels and the spec at :data:`EPS`."""
    x = torch.rand((len(EPS), *INPUT_SHAPE), generator=torch.Generator().manual_seed(0))
    label = model.predict(x)
    return x, label, robustness_spec(x, label, torch.tensor(EPS), N_CLASSES)


@pytest.fixture(scope="module")
def outcomes(backends, batch):
    """name -> (verify, falsify, chunks) of the whole contract batch, computed once; ``chunks`` holds the batch
    sizes that ``verify`` passed to ``_bound`` and ``falsify`` to ``_candidates``."""
    x, _, spec = batch
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            backend = backends(name)
            chunks: dict[str, list[int]] = {"_bound": [], "_candidates": []}

            def spy(method: str):
                inner = getattr(backend, method)

                def call(sub: Spec):
                    chunks[method].append(sub.batch_size)
                    return inner(sub)

                return call

            try:
                backend._bound = spy("_bound")
                ver = backend.verify(spec)
                del backend._bound
                backend._candidates = spy("_candidates")
                fal = backend.falsify(spec, x)
            finally:
                vars(backend).pop("_bound", None)
                vars(backend).pop("_candidates", None)
            cache[name] = (ver, fal, chunks)
        return cache[name]

    return get


def _prefix(spec: Spec, n: int) -> Spec:
    return spec.select(torch.arange(n))


def test_every_backend_is_registered_under_its_own_name():
    assert "native" in NAMES and len(NAMES) == len(set(NAMES))
    for name in NAMES:
        assert get_backend(name).name == name  # the tidy table's backend column
    with pytest.raises(RobverifyError, match="unknown backend"):
        get_backend("no-such-backend")


# -- (a) shapes and chunking -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("name", NAMES)
def test_result_shapes_and_chunking(name, n, backends, outcomes, batch):
    x, _, spec = batch
    backend = backends(name)
    assert backend.batch_size == BATCH_SIZE
    full_v, full_f, chunks = outcomes(name)
    if n == len(EPS):
        ver, fal = full_v, full_f
        # a batch larger than batch_size reaches the backend's own methods in chunks of at most batch_size
        assert chunks["_bound"] == [4, 4, 1] and chunks["_candidates"] == [4, 4, 1], chunks
    else:
        ver, fal = backend.verify(_prefix(spec, n)), backend.falsify(_prefix(spec, n), x[:n])
    assert ver.verified.shape == (n,) and ver.verified.dtype == torch.bool
    assert ver.margin_lb.shape == (n,) and ver.margin_lb.dtype == torch.float64
    assert fal.falsified.shape == (n,) and fal.falsified.dtype == torch.bool
    assert tuple(fal.x_adv.shape) == (n, *INPUT_SHAPE)
    assert fal.distance.shape == (n,) and fal.distance.dtype == torch.float64
    assert not bool(torch.isnan(ver.margin_lb).any())
    assert not bool((ver.verified & fal.falsified).any()), "a spec both verified and falsified"
    # a bound > 0 proves; only a complete verifier may prove beyond it
    assert bool(ver.verified[ver.margin_lb > 0].all())
    proves_beyond_the_bound = type(backend)._complete is not Backend._complete  # complete verifiers, BaB
    if not proves_beyond_the_bound and backend.name != "verona":
        assert torch.equal(ver.verified, ver.margin_lb > 0)
    # distance: L-inf from the clean sample where falsified, inf elsewhere
    linf = (fal.x_adv.double() - x[:n].double()).flatten(1).abs().amax(dim=1)
    assert torch.equal(torch.isinf(fal.distance), ~fal.falsified)
    torch.testing.assert_close(fal.distance[fal.falsified], linf[fal.falsified])
    eps = torch.tensor(EPS[:n], dtype=torch.float64)
    assert bool((fal.distance[fal.falsified] <= eps[fal.falsified] + 1e-6).all())
    # the same sample gets the same answer in a batch of 1, of batch_size, or of several chunks
    assert torch.equal(ver.verified, full_v.verified[:n])
    torch.testing.assert_close(ver.margin_lb, full_v.margin_lb[:n], rtol=1e-5, atol=1e-6)


PROVED, REFUTED, OPEN = [0, 2, 4, 6], [1, 5, 7], [3, 8]


# Backend.falsify concatenates its chunks with torch.cat, which refuses an empty list (robverify/backends/base.py):
# reported, not fixed here. run_certify never asks for an empty batch; a library caller may.
@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_gives_empty_results(name, backends):
    x = torch.zeros((0, *INPUT_SHAPE))
    spec = robustness_spec(x, torch.zeros(0, dtype=torch.long), 0.1, N_CLASSES)
    ver = backends(name).verify(spec)
    assert ver.verified.shape == (0,) and ver.margin_lb.shape == (0,)
    fal = backends(name).falsify(spec, x)
    assert fal.falsified.shape == (0,) and tuple(fal.x_adv.shape) == (0, *INPUT_SHAPE) and fal.distance.shape == (0,)


def test_the_contract_batch_exercises_every_outcome(outcomes):
    """Every backend proves 0, 2, 4, 6 and refutes 1, 5, 7; CROWN leaves 3 and 8 open, which Marabou proves.
    Otherwise the other tests would pass vacuously."""
    for name in NAMES:
        ver, fal, _ = outcomes(name)
        assert ver.verified[PROVED].all() and fal.falsified[REFUTED].all(), (name, ver.verified, fal.falsified)
    if "native" in NAMES:
        ver, fal, _ = outcomes("native")
        assert not (ver.verified[OPEN] | fal.falsified[OPEN]).any()
    if "marabou" in NAMES:
        assert outcomes("marabou")[0].verified[OPEN].all()


# -- (b) NaN never verifies --------------------------------------------------------------------------------------


def test_a_box_with_nan_is_refused_where_it_is_built():
    x = torch.rand((2, *INPUT_SHAPE), generator=torch.Generator().manual_seed(0))
    x[1, 0, 1, 1] = math.nan
    with pytest.raises(RobverifyError, match="NaN"):
        robustness_spec(x, torch.tensor([0, 1]), 0.01, N_CLASSES)
    with pytest.raises(RobverifyError, match="eps must be a non-negative number"):
        robustness_spec(x[:1], torch.tensor([0]), math.nan, N_CLASSES)


@pytest.mark.parametrize("name", NAMES)
def test_a_box_made_nan_after_checking_never_verifies(name, backends, batch):
    """Tensors are mutable: a spec whose box turns NaN after its construction check is refused (RobverifyError)
    or left unverified and unfalsified; the other samples keep their answers."""
    x, label, _ = batch
    spec = robustness_spec(x[:3], label[:3], 0.02, N_CLASSES)
    spec.x_lo[1, 0, 2, 2] = math.nan
    spec.x_hi[1, 0, 2, 2] = math.nan
    backend = backends(name)
    try:
        verified = backend.verify(spec).verified
    except RobverifyError as err:
        assert "NaN" in str(err)
    else:
        assert not bool(verified[1])
    try:
        falsified = backend.falsify(spec, x[:3]).falsified
    except RobverifyError as err:
        assert "NaN" in str(err)
    else:
        assert not bool(falsified[1])


# A complete verifier reasons in real arithmetic, where the overflow networks are the plain one; robverify's
# judge (onnxruntime, float32) sees NaN / inf. Marabou's unsat is accepted without asking whether the float32
# network is finite on the box (robverify/backends/base.py, CompleteBackend.judge): reported, not fixed here.

def _overflow_case(kind: str, folder):
    """The overflow network of ``kind`` and three specs on it: 0, a box reaching past TRIGGER; 1, the single
    point past it (``x_0 = TRIGGER + 0.0005``); 2, a box far from it (a control that every backend verifies)."""
    model = load_model(to_onnx(overflow_net(kind), folder / f"{kind}.onnx", INPUT_SHAPE))
    x = torch.rand((3, *INPUT_SHAPE), generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, 0] = torch.tensor([TRIGGER - 0.004, TRIGGER + 0.0005, 0.5])
    label = plain_net()(x).argmax(dim=1)  # the real-valued network's classes
    spec = robustness_spec(x, label, torch.tensor([0.01, 0.0, 0.01]), N_CLASSES)
    y = ort_outputs(model.path, x)
    assert np.isfinite(y[[0, 2]]).all(), "the overflow network overflows at the box centres"
    if kind == "nan":
        assert np.isnan(y[1]).all(), "the overflow network computes finite outputs: the test shows nothing"
    else:
        assert np.isposinf(y[1, INF_OUTPUT]) and np.isfinite(np.delete(y[1], INF_OUTPUT)).all()
    return model, x, spec


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("name", NAMES)
def test_boxes_where_the_network_overflows_never_verify(name, kind, tmp_path, tool):
    model, x, spec = _overflow_case(kind, tmp_path)
    if kind == "inf":  # output INF_OUTPUT is +inf at the point: onnxruntime puts it in the unsafe region
        assert violations(model.path, spec, x)[1]
    verified = build_backend(name, model, tool).verify(spec).verified
    assert not bool(verified[0]) and not bool(verified[1]), verified
    assert bool(verified[2]), "the control sample far from the overflow is not verified"


def test_the_judge_accepts_a_counterexample_with_an_infinite_logit(tmp_path):
    """At the point of spec 1, onnxruntime's output INF_OUTPUT is +inf: the disjunct "y_INF_OUTPUT >= y_label"
    holds, whatever the other disjuncts say."""
    model, x, spec = _overflow_case("inf", tmp_path)
    one = spec.select(torch.tensor([1]))
    assert violations(model.path, one, x[1:2])[0]
    assert bool(model.confirm(one, x[1:2], torch.ones(1, dtype=torch.bool))[0])


# -- (c) counterexamples are real, proofs survive attacks ---------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_counterexamples_are_confirmed_and_proofs_are_not_refuted(name, model, outcomes, batch):
    x, _, spec = batch
    ver, fal, _ = outcomes(name)
    hit = violations(model.path, spec, fal.x_adv)
    lo, hi = spec.x_lo.double(), spec.x_hi.double()
    x32 = fal.x_adv.to(torch.float32).double()
    inside = ((x32 >= lo) & (x32 <= hi)).flatten(1).all(dim=1)
    assert bool(inside[fal.falsified].all()), "a counterexample outside its box"
    assert bool(torch.from_numpy(hit)[fal.falsified].all()), "a counterexample onnxruntime calls safe"
    proved = ver.verified.numpy()
    assert proved.any()
    refuted = strong_pgd_violations(model, spec) | sampled_violations(model.path, spec)
    assert not (refuted & proved).any(), f"verified specs refuted: {np.nonzero(refuted & proved)[0].tolist()}"
    # the oracle is not blind: it refutes what the backend falsified
    assert refuted[fal.falsified.numpy()].all()


# -- (d) tidy rows -----------------------------------------------------------------------------------------------

CERTIFY_EPS = (0.0, 0.3)
GRID = (0.0, 0.02, 0.05, 0.1, 0.12, 0.15, 0.2, 0.3, 0.4)


@pytest.fixture(scope="module")
def samples(model):
    """Five samples with ids 10..14; sample 12 carries a wrong label (a misclassified row)."""
    x = torch.rand((5, *INPUT_SHAPE), generator=torch.Generator().manual_seed(7))
    label = model.predict(x).clone()
    label[2] = (label[2] + 1) % N_CLASSES
    return Samples(x, label, torch.arange(10, 15), "contract", N_CLASSES)


def _refuted(model, tool, spec: Spec) -> np.ndarray:
    """``[B]`` bool: a counterexample is known, judged by the test's own onnxruntime session: strong PGD, dense
    sampling, and (where maraboupy is installed) Marabou's complete search."""
    refuted = strong_pgd_violations(model, spec) | sampled_violations(model.path, spec)
    if "marabou" in NAMES:
        try:
            marabou = build_backend("marabou", model, tool)
        except RobverifyError:  # maraboupy missing: the marabou tests above say so
            return refuted
        marabou.attack_first = False  # let Marabou search the counterexamples itself
        marabou.verify(spec)
        fal = marabou.falsify(spec, (spec.x_lo + spec.x_hi) / 2)
        refuted |= fal.falsified.numpy() & violations(model.path, spec, fal.x_adv)
    return refuted


def _open(tmp_path, command: str, key: list[str]) -> RunDir:
    return RunDir.open(tmp_path / command, command, {}, {"test": command}, key)


def _run_columns(table, backend, samples, method: str | None = None) -> None:
    assert set(table["backend"]) == {backend.name}
    assert set(table["method"]) == {method or backend.method.value}
    assert set(table["model"]) == {backend.model.name} and set(table["task"]) == {samples.task}
    assert table["run_id"].nunique() == 1
    assert bool(np.isfinite(table["time_s"]).all() and (table["time_s"] >= 0).all())
    labels = dict(zip(samples.sample_id.tolist(), samples.label.tolist()))
    assert all(labels[s] == lab for s, lab in zip(table["sample_id"], table["label"]))


@pytest.mark.parametrize("name", NAMES)
def test_certify_rows_are_tidy(name, tmp_path, backends, samples):
    backend = backends(name)
    table = validate_table(run_certify(_open(tmp_path, "certify", ["sample_id", "eps"]), backend, samples,
                                       CERTIFY_EPS, chunk=2), "certify")
    pairs = list(zip(table["sample_id"], table["eps"]))
    assert len(table) == 5 * len(CERTIFY_EPS) and len(set(pairs)) == len(pairs)
    assert set(pairs) == {(s, e) for s in range(10, 15) for e in CERTIFY_EPS}
    _run_columns(table, backend, samples)
    assert set(table["verdict"]) <= VERDICTS
    wrong = table["sample_id"] == 12
    assert set(table.loc[wrong, "verdict"]) == {"misclassified"} and table.loc[wrong, "margin_lb"].isna().all()
    right = table[~wrong]
    assert "misclassified" not in set(right["verdict"]) and right["margin_lb"].notna().all()
    assert (right.loc[right["margin_lb"] > 0, "verdict"] == "verified").all()
    assert (right.loc[right["eps"] == 0.0, "verdict"] == "verified").all()  # a point box: the clean margin
    assert {"verified", "falsified"} <= set(right["verdict"])


# --backend external is left out of the sweep: its bracket search asks the tool (a new Python process per
# query, ~0.5 s) for every spec the bound leaves open on every step, tens of seconds on this machine; its
# queries are exercised above and in tests/test_external_backend.py.
SWEEP_NAMES = [n for n in NAMES if n != "external"]


@pytest.mark.parametrize("name", SWEEP_NAMES)
def test_sweep_rows_are_tidy_and_sound(name, tmp_path, model, tool, backends, samples):
    backend = backends(name)
    table = validate_table(run_sweep(_open(tmp_path, "sweep", ["sample_id"]), backend, samples,
                                     SweepSettings(grid=GRID), chunk=2), "sweep")
    assert sorted(table["sample_id"]) == list(range(10, 15))
    _run_columns(table, backend, samples)
    assert set(table["status"]) <= {s.value for s in SweepStatus}
    wrong = table["sample_id"] == 12
    assert set(table.loc[wrong, "status"]) == {"misclassified"}
    right = table[~wrong].sort_values("sample_id")
    assert "misclassified" not in set(right["status"]) and (right["n_calls"] >= 1).all()
    assert all(lo in GRID for lo in right["eps_lo"])
    assert all(hi in GRID or hi == math.inf for hi in right["eps_hi"])
    assert (right["eps_lo"] < right["eps_hi"]).all()
    # eps_lo is a certificate: no counterexample is known at it
    idx = right["sample_id"].to_numpy() - 10
    spec = robustness_spec(samples.x[idx], samples.label[idx], torch.tensor(right["eps_lo"].to_numpy()).float(),
                           N_CLASSES)
    refuted = _refuted(model, tool, spec)
    assert not refuted.any(), right[refuted]


# VeronaBackend overrides _bound and _candidates but not _complete (robverify/backends/verona.py): as a plain
# backend (certify, run_sweep) its inner Marabou backend only contributes the CROWN pre-filter and is never
# asked. Reported, not fixed here.
def test_verona_wraps_its_verifier_completely(model, outcomes, batch):
    """``--backend verona --verifier marabou`` verifies what ``--backend marabou`` verifies, including the specs
    CROWN leaves open."""
    if "verona" not in NAMES or "marabou" not in NAMES:
        pytest.skip("needs the verona and marabou backends")
    x, _, spec = batch
    marabou = outcomes("marabou")[0].verified
    assert bool(marabou[OPEN].all()), marabou
    verona = get_backend("verona")(model, "crown", batch_size=BATCH_SIZE,
                                   options=BackendOptions(verifier="marabou", timeout=10.0))
    verified = verona.verify(spec).verified
    assert verona.inner.n_solves > 0, "Marabou was never asked"
    assert torch.equal(verified, marabou)


#: backends whose sweep is not the bracket search (``search_for``): VERONA's grid search for ``verona``
OWN_SEARCH = [n for n in SWEEP_NAMES if search_for(n).name != BracketSearch.name]


@pytest.mark.parametrize("name", OWN_SEARCH)
def test_own_epsilon_search_rows_are_tidy_and_sound(name, tmp_path, model, tool, backends, samples):
    """What ``sweep-epsilon --backend NAME`` runs when NAME brings its own epsilon search."""
    backend = backends(name)
    table = validate_table(search_for(name).sweep(_open(tmp_path, "own", ["sample_id"]), backend, samples,
                                                  SweepSettings(grid=GRID)), "sweep")
    assert sorted(table["sample_id"]) == list(range(10, 15))
    # VERONA's table names the verifier in the method column (native-crown), as tests/test_verona_backend.py asks
    _run_columns(table, backend, samples, method=getattr(backend, "verifier", None))
    wrong = table["sample_id"] == 12
    assert set(table.loc[wrong, "status"]) == {"misclassified"}
    right = table[~wrong].sort_values("sample_id")
    assert set(right["status"]) <= {s.value for s in SweepStatus} - {"misclassified"}
    certified = right[right["eps_lo"].notna()]
    assert len(certified) and all(lo in GRID for lo in certified["eps_lo"])
    assert (certified["eps_lo"] < certified["eps_hi"]).all()
    idx = certified["sample_id"].to_numpy() - 10
    spec = robustness_spec(samples.x[idx], samples.label[idx], torch.tensor(certified["eps_lo"].to_numpy()).float(),
                           N_CLASSES)
    assert not _refuted(model, tool, spec).any()
