"""--backend lirpa: the auto_LiRPA 0.3 compatibility patches, the ONNX rewrites, and cross-checks of auto_LiRPA's
bounds against the native engine on the zoo's architectures (equal IBP, CROWN equal without the IBP
intersection and never tighter than the native default, both sound against PGD)."""

from __future__ import annotations

import copy
import importlib
import sys

import numpy as np
import pytest
import torch

from robverify.backends import AttackConfig, get_backend
from robverify.backends import lirpa_compat
from robverify.backends.native import NativeBackend
from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.errors import RobverifyError
from robverify.ir.model import load_model
from robverify.runs.search import critical_epsilon
from robverify.spec import robustness_spec
from tests.helpers import pgd_row_points, to_onnx
from trainers.zoo import build_model

if lirpa_compat.installed_version() is None:  # installed by make install; one test below fakes its absence
    pytest.skip("auto_LiRPA is not installed", allow_module_level=True)
from robverify.backends.lirpa import LirpaBackend, lirpa_rows  # noqa: E402
from robverify.ir.rewrite import verifier_ready_onnx  # noqa: E402

SHAPE = (1, 12, 12)
N_CLASSES = 5
ARCHS = ("mlp", "cnn-small", "cnn-bn", "resnet-tiny")


def _zoo(arch: str, seed: int) -> torch.nn.Module:
    net = build_model(arch, SHAPE, N_CLASSES, mean=[0.13], std=[0.31], seed=seed).eval()
    if arch == "cnn-bn":  # non-trivial BatchNorm statistics
        gen = torch.Generator().manual_seed(seed)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory) -> dict:
    """(arch, seed) -> (module, LoadedModel) for two seeds of each architecture."""
    root = tmp_path_factory.mktemp("lirpa")
    out = {}
    for arch in ARCHS:
        for seed in (0, 1):
            net = _zoo(arch, seed)
            path = to_onnx(net, root / f"{arch}-{seed}.onnx", SHAPE)
            out[arch, seed] = (net, load_model(path))
    return out


def _spec(model, seed: int, eps: float = 0.02, n: int = 4):
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.rand((n, *SHAPE), generator=gen)
    label = model.predict(x)
    return robustness_spec(x, label, eps, N_CLASSES)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the bounds' scale."""
    return float((a.double() - b.double()).abs().max() / (1.0 + b.double().abs().max()))


# -- compatibility module ----------------------------------------------------------------------------------------


def test_patches_are_applied_for_0_3_only():
    lirpa_compat.import_auto_lirpa()
    if lirpa_compat.installed_version() == "0.3":
        assert {"numpy.lib.arraysetops", "torch._C.Node.__getitem__",
                "BoundedModule._named_members"} <= lirpa_compat.APPLIED
    assert lirpa_compat.needs_patches("0.3")
    assert not lirpa_compat.needs_patches("0.7.2")
    assert not lirpa_compat.needs_patches(None)


def test_newer_auto_lirpa_is_used_as_is(monkeypatch):
    lirpa_compat.import_auto_lirpa()  # the module is in sys.modules from here on

    def forbidden(*args):
        raise AssertionError("a patch was applied to a release that does not need it")

    monkeypatch.setattr(lirpa_compat, "installed_version", lambda: "0.7.2")
    for name in ("patch_numpy_arraysetops", "patch_set_opset_version", "patch_node_getitem", "patch_named_members"):
        monkeypatch.setattr(lirpa_compat, name, forbidden)
    monkeypatch.setattr(sys.modules["auto_LiRPA"], "__version__", "0.7.2")
    assert lirpa_compat.import_auto_lirpa() is sys.modules["auto_LiRPA"]


def test_arraysetops_shim_isin():
    lirpa_compat.patch_numpy_arraysetops()
    module = importlib.import_module("numpy.lib.arraysetops")
    assert module.isin(np.array([1, 2, 3]), [2]).tolist() == [False, True, False]


def test_node_getitem_reads_attributes():
    lirpa_compat.patch_node_getitem()
    graph = torch.jit.trace(lambda x: x * 2.5, torch.zeros(2)).graph
    consts = [n for n in graph.nodes() if n.kind() == "prim::Constant" and n.hasAttribute("value")]
    assert consts, "the traced graph holds a constant node"
    assert any(torch.is_tensor(n["value"]) and float(n["value"]) == 2.5 for n in consts)


def test_set_opset_version_sets_exporter_global():
    lirpa_compat.patch_set_opset_version()
    import torch.onnx.symbolic_helper as helper

    settings = lirpa_compat._exporter_globals()
    before = settings.export_onnx_opset_version
    try:
        helper._set_opset_version(12)
        assert settings.export_onnx_opset_version == 12
    finally:
        settings.export_onnx_opset_version = before


def test_named_members_accepts_remove_duplicate(zoo_models):
    lirpa = lirpa_compat.import_auto_lirpa()
    net, _ = zoo_models["resnet-tiny", 0]
    bounded = lirpa.BoundedModule(copy.deepcopy(net), torch.zeros(1, *SHAPE), device="cpu")
    names = [name for name, _ in bounded.named_parameters(remove_duplicate=True)]
    assert len(names) == len(set(names)) > 0
    before = lirpa.BoundedModule._named_members
    lirpa_compat.patch_named_members(lirpa.BoundedModule)  # idempotent
    assert lirpa.BoundedModule._named_members is before


def test_missing_auto_lirpa_is_one_clear_line(monkeypatch, zoo_models):
    import importlib.util

    monkeypatch.setattr(lirpa_compat, "installed_version", lambda: None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "auto_LiRPA" else real(name, *a))
    with pytest.raises(RobverifyError) as err:
        get_backend("lirpa")(zoo_models["mlp", 0][1], "crown")
    message = str(err.value)
    assert "\n" not in message and "pip install" in message and "auto-lirpa" in message


# -- ONNX rewrites -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cnn-small", "cnn-bn"])
def test_rewritten_onnx_matches_runtime(arch, zoo_models, tmp_path):
    import onnx
    import onnxruntime as ort

    _, model = zoo_models[arch, 0]
    rewritten = verifier_ready_onnx(model.path)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Div" not in ops and "Identity" not in ops
    path = tmp_path / "rewritten.onnx"
    onnx.save(rewritten, str(path))
    x = np.random.default_rng(0).random((6, *SHAPE), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(ours, model.runtime.logits(x), rtol=1e-5, atol=1e-5)


# -- cross-checks against the native engine ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", ["onnx", "zoo"])
def test_ibp_equals_native(arch, seed, source, zoo_models):
    net, model = zoo_models[arch, seed]
    backend = LirpaBackend(model, "ibp", module=net if source == "zoo" else None)
    spec = _spec(model, seed)
    native = compute_bounds(model.graph, spec, "ibp", BoundOptions(safety=0.0)).rows_lb
    # Both fold C into the last layer; both are at least as tight as an interval of the output box.
    folded = lirpa_rows(backend.bounded, spec, "ibp")
    assert _rel(folded, native) <= 1e-5
    box = lirpa_rows(backend.bounded, spec, "ibp", with_c=False)
    assert bool((native >= box - 1e-5 * (1 + box.abs())).all())


# auto_LiRPA's CROWN on resnet-tiny takes ~10 s a call: those cases run with the slow tests
CROWN_CASES = [(a, s) if a != "resnet-tiny" else pytest.param(a, s, marks=pytest.mark.slow)
               for a in ARCHS for s in (0, 1)]


@pytest.mark.parametrize(("arch", "seed"), CROWN_CASES)
def test_crown_matches_native(arch, seed, zoo_models):
    _, model = zoo_models[arch, seed]
    backend = LirpaBackend(model, "crown")
    spec = _spec(model, seed, n=2 if arch == "resnet-tiny" else 4)
    lirpa = lirpa_rows(backend.bounded, spec, "crown")
    plain = compute_bounds(model.graph, spec, "crown", BoundOptions(intersect_ibp=False, safety=0.0)).rows_lb
    assert _rel(lirpa, plain) <= 1e-5
    best = compute_bounds(model.graph, spec, "crown", BoundOptions(safety=0.0)).rows_lb
    # The native default keeps CROWN-IBP rows for samples CROWN-IBP proves; elsewhere it is never looser.
    open_ = spec.property_margin(best) <= 0
    scale = 1.0 + lirpa.abs().max()
    gap = lirpa[open_] - best[open_]
    assert gap.numel() == 0 or float(gap.max() / scale) <= 1e-5, "native CROWN looser than auto_LiRPA's"
    assert not bool(((spec.property_margin(lirpa) > 0) & open_).any()), "auto_LiRPA proves what native does not"
    cibp = compute_bounds(model.graph, spec, "crown-ibp", BoundOptions(intersect_ibp=False, safety=0.0)).rows_lb
    assert _rel(lirpa_rows(backend.bounded, spec, "crown-ibp"), cibp) <= 1e-5


@pytest.mark.parametrize("arch", ["mlp", pytest.param("cnn-small", marks=pytest.mark.slow)])
def test_alpha_crown_native_not_looser(arch, zoo_models):
    _, model = zoo_models[arch, 0]
    backend = LirpaBackend(model, "alpha-crown")
    spec = _spec(model, 0, n=2)
    lirpa = lirpa_rows(backend.bounded, spec, "alpha-crown")
    native = compute_bounds(model.graph, spec, "alpha-crown", BoundOptions(safety=0.0)).rows_lb
    assert float((lirpa - native).max() / (1.0 + lirpa.abs().max())) <= 1e-5


@pytest.mark.parametrize("arch", [*ARCHS[:3], pytest.param("resnet-tiny", marks=pytest.mark.slow)])
def test_bounds_sound_against_pgd(arch, zoo_models):
    net, model = zoo_models[arch, 1]
    spec = _spec(model, 1, eps=0.05, n=2)
    points = pgd_row_points(model.graph, spec)  # [B, S, *in]: the attack's minimiser of every row
    B, S = spec.C.shape[:2]
    with torch.no_grad():
        y = copy.deepcopy(net).double()(points.reshape(B * S, *SHAPE)).reshape(B, S, -1)
    attained = torch.einsum("bso,bso->bs", spec.C.double(), y) - spec.d.double()
    for method in ("ibp", "crown"):
        lirpa = LirpaBackend(model, method)._bound(spec)
        native = NativeBackend(model, method)._bound(spec)
        margin_attained = spec.property_margin(attained)
        assert bool((lirpa.double() <= margin_attained + 1e-6).all())
        assert bool((native.double() <= margin_attained + 1e-6).all())


def test_backend_plugs_into_grid_search(zoo_models):
    _, model = zoo_models["mlp", 0]
    gen = torch.Generator().manual_seed(7)
    x = torch.rand((4, *SHAPE), generator=gen)
    label = model.predict(x)
    grid = [i / 50 for i in range(0, 6)]
    attack = AttackConfig(steps=10, restarts=1)
    lirpa = critical_epsilon(get_backend("lirpa")(model, "crown", attack=attack), x, label, N_CLASSES, grid=grid)
    native = critical_epsilon(NativeBackend(model, "crown", attack=attack), x, label, N_CLASSES, grid=grid)
    # Native CROWN is never looser: every eps auto_LiRPA verifies, the native engine verifies too.
    assert bool((lirpa.eps_lo <= native.eps_lo + 1e-12).all())
    assert torch.equal(lirpa.eps_hi, native.eps_hi)  # the same PGD falsifies
    assert bool((lirpa.eps_lo < lirpa.eps_hi).all())
