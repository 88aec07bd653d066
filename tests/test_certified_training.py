"""Certified training beyond CROWN-IBP (trainers.certified): SABR, MTL-IBP and IBP with Shi et al.'s
initialisation and regularisers. Closed-form checks of each loss, SABR's box as a property, the initialisation's
effect on interval widths measured across depth, each objective lowered by the shared training loop, hypers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import trainers.pipeline as pipeline
from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard
from robverify.ir.from_module import from_module
from trainers.adversarial import pgd_examples
from trainers.certified import (box_cross_entropy, ibp_initialise, interval_boxes, mtl_ibp_loss,
                                preactivation_boxes, relu_balance_loss, sabr_box, shi_regulariser, tightness_loss)
from trainers.loop import fit
from trainers.objectives import Hyper, TrainMethod, certified_loss, make_objective
from trainers.strategies import get_strategy
from trainers.tasks import load_task
from trainers.zoo import build_model
from helpers import single_thread  # noqa: F401 (autouse: one intra-op thread)

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    return load_task("digits[0-4]")


def _mlp(data, seed: int = 0, widths=(32, 32)):
    return build_model("mlp", data.input_shape, data.n_classes, mean=[0.3], std=[0.38], seed=seed,
                       widths=list(widths))


# ---------------------------------------------------------------- the losses in closed form


def test_mtl_ibp_is_the_convex_combination_of_pgd_and_ibp(digits):
    model = _mlp(digits).eval()
    x, y = digits.x_train[:32], digits.y_train[:32]
    torch.manual_seed(0)
    pgd = F.cross_entropy(model(pgd_examples(model, x, y, EPS, steps=3)), y)
    ibp = certified_loss(model, x, y, EPS, 5)
    torch.manual_seed(0)
    assert mtl_ibp_loss(model, x, y, EPS, 5, 0.0, steps=3).item() == pytest.approx(pgd.item(), abs=1e-6)
    assert mtl_ibp_loss(model, x, y, EPS, 5, 1.0, steps=3).item() == pytest.approx(ibp.item(), abs=1e-6)
    torch.manual_seed(0)
    mixed = mtl_ibp_loss(model, x, y, EPS, 5, 0.3, steps=3)
    assert mixed.item() == pytest.approx(0.7 * pgd.item() + 0.3 * ibp.item(), abs=1e-5)
    assert ibp.item() > pgd.item()  # the bound is looser than the attack


def test_sabr_with_lambda_one_is_ibp_and_smaller_boxes_are_tighter(digits):
    model = _mlp(digits).eval()
    x, y = digits.x_train[:32], digits.y_train[:32]
    lo, hi = sabr_box(model, x, y, EPS, 1.0, steps=3)
    assert torch.allclose(lo, (x - EPS).clamp(0, 1), atol=1e-6) and torch.allclose(hi, (x + EPS).clamp(0, 1), atol=1e-6)
    full = box_cross_entropy(model, lo, hi, y, 5)
    assert full.item() == pytest.approx(certified_loss(model, x, y, EPS, 5).item(), abs=1e-5)
    small = box_cross_entropy(model, *sabr_box(model, x, y, EPS, 0.4, steps=3), y, 5)
    assert F.cross_entropy(model(x), y).item() < small.item() < full.item()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.001, 0.6), lam=st.floats(0.01, 1.0))
def test_sabr_box_lies_in_the_eps_box_and_the_input_range(seed, eps, lam):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 3, 3, generator=gen)
    x[0] = 0.0  # pixels on the edges of the input range
    x[1] = 1.0
    y = torch.randint(0, 3, (6,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, 3))
    lo, hi = sabr_box(model, x, y, eps, lam, steps=2)
    lb, ub = torch.clamp(x - eps, 0.0, 1.0), torch.clamp(x + eps, 0.0, 1.0)
    assert bool((lb <= lo).all() and (lo <= hi).all() and (hi <= ub).all())
    assert bool((lo >= 0).all() and (hi <= 1).all())
    # as large as the paper's lambda * eps wherever the (clipped) eps-box leaves room for it
    radius = torch.minimum(torch.full_like(x, lam * eps), (ub - lb) / 2)
    assert torch.allclose(hi - lo, 2 * radius, atol=1e-6)


# ---------------------------------------------------------------- Shi et al.: initialisation and regularisers


def _widths(model: nn.Module, x: torch.Tensor, eps: float) -> list[float]:
    graph = from_module(model, tuple(x.shape[1:]))
    with torch.no_grad():
        pre = preactivation_boxes(graph, interval_boxes(graph, x - eps, x + eps))
    return [float(((hi - lo) / 2).mean()) for lo, hi in pre]


def test_ibp_init_keeps_interval_widths_level_across_depth():
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    for seed in range(2):
        model = build_model("mlp", (1, 8, 8), 5, mean=[0.0], std=[1.0], seed=seed, widths=[64] * 8)
        default = _widths(model, x, 0.01)
        assert ibp_initialise(model, seed) == 9  # 8 hidden layers and the head
        level = _widths(model, x, 0.01)
        assert default[-1] / default[0] > 30  # the default init: widths double or so per layer
        assert max(level) / min(level) < 2  # sigma = sqrt(2 pi) / fan_in: within a constant factor
        assert all(0.5 * 0.02 < w < 2 * 0.02 for w in level)  # ~ 2 x the input's half-width, as derived


def test_ibp_init_draws_the_stated_gaussian():
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Flatten(), nn.Linear(400, 500))
    ibp_initialise(model, seed=1)
    conv, linear = model[0], model[2]
    assert conv.weight.std().item() == pytest.approx((2 * torch.pi) ** 0.5 / 27, rel=0.05)
    assert linear.weight.std().item() == pytest.approx((2 * torch.pi) ** 0.5 / 400, rel=0.05)
    assert not conv.bias.any() and not linear.bias.any()


def _box(centre: list[float], half: float) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.tensor([centre])
    return c - half, c + half


def test_tightness_loss_closed_form():
    ref = torch.tensor(1.0)
    assert tightness_loss([_box([0.0, 1.0], 1.5), _box([2.0], 2.0)], ref).item() == 0.0  # r0 / r_i >= tau
    # one layer at r0 / r_i = 0.25: ReLU(0.5 - 0.25) / 0.5 = 0.5, averaged with a layer at 0
    assert tightness_loss([_box([0.0], 4.0), _box([0.0], 1.0)], ref).item() == pytest.approx(0.25)


def test_relu_balance_loss_closed_form():
    assert relu_balance_loss([_box([1.0, -1.0, 2.0, -2.0], 0.1)]).item() == pytest.approx(0.0)
    assert relu_balance_loss([_box([1.0, 1.0, 1.0], 0.1)]).item() == pytest.approx(2.0)  # nothing inactive
    # means 1 and 0.25 (ratio 0.25 -> 0.5), spreads balanced -> 0; averaged with a balanced layer
    unbalanced = _box([2.0, -0.5, 0.0], 0.1)
    value = relu_balance_loss([unbalanced, _box([1.0, -1.0], 0.1)]).item()
    c = torch.tensor([2.0, -0.5, 0.0])
    spread = (c - c.mean()) ** 2
    var_ratio = min(spread[0] / spread[1], spread[1] / spread[0]).item()
    expected = (0.5 + max(0.0, 0.5 - var_ratio) / 0.5) / 2
    assert value == pytest.approx(expected)


def test_shi_regulariser_is_zero_without_relus_and_positive_on_a_default_deep_net(digits):
    x = digits.x_train[:16]
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    assert shi_regulariser(linear, x, EPS).item() == 0.0
    deep = build_model("mlp", (1, 8, 8), 5, mean=[0.0], std=[1.0], seed=0, widths=[64] * 6)
    reg = shi_regulariser(deep, x, 0.01)
    reg.backward()
    assert reg.item() > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in deep.parameters())
    lo, hi = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    before = _tightness(deep, lo, hi)
    ibp_initialise(deep)
    assert before > 0.5 and _tightness(deep, lo, hi) < 0.25 * before  # widths ~ 2 r0: at the tolerance


def _tightness(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> float:
    graph = from_module(model, tuple(lo.shape[1:]))
    with torch.no_grad():
        pre = preactivation_boxes(graph, interval_boxes(graph, lo, hi))
        return tightness_loss(pre, ((hi - lo) / 2).mean()).item()  # mean 0, std 1: the input is the reference


def test_ibp_shi_adds_the_regulariser_only_while_eps_ramps(digits):
    model = _mlp(digits).eval()
    x, y = digits.x_train[:32], digits.y_train[:32]
    hyper = Hyper(warmup=0.2, ramp=0.4, ibp_reg=0.5)
    shi, ibp = make_objective("ibp-shi", EPS, 5, hyper), make_objective("ibp", EPS, 5, hyper)
    assert shi(model, x, y, 0.1).item() == ibp(model, x, y, 0.1).item()  # warmup: natural loss
    assert shi(model, x, y, 0.7).item() == ibp(model, x, y, 0.7).item()  # after the ramp: IBP alone
    eps = ibp.schedule(0.4)[0]  # half-way up the ramp: weight 0.5 * (1 - 1/2)
    expected = ibp(model, x, y, 0.4) + 0.25 * shi_regulariser(model, x, eps)
    assert shi(model, x, y, 0.4).item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- training through the loop


@pytest.mark.parametrize("method, progress", [("sabr", 1.0), ("mtl-ibp", 1.0), ("ibp-shi", 0.3)])
def test_each_objective_is_lowered_by_training(digits, method, progress):
    x, y = digits.x_train[:200], digits.y_train[:200]
    objective = make_objective(method, EPS, 5, Hyper(warmup=0.0, ramp=0.6, attack_steps=3, kappa_end=0.0))

    def value(model: nn.Module) -> float:
        torch.manual_seed(1)  # the same PGD starts before and after
        model.eval()
        with torch.no_grad() if method == "ibp-shi" else torch.enable_grad():
            return objective(model, x, y, progress).item()

    model = _mlp(digits)
    before = value(model)
    fit(model, x, y, objective, epochs=3, lr=3e-3, batch_size=50, seed=0)
    assert value(model) < 0.9 * before


def test_train_source_with_ibp_shi_records_its_hypers(tmp_path):
    path = pipeline.train_source("digits[0-4]", "mlp", "ibp-shi", EPS, 1, tmp_path, seed=2, progress=False,
                                 lr=3e-3, schedule="cosine")
    card = ModelCard.from_json(path.with_suffix(".json"))
    assert card.training["method"] == "ibp-shi" and card.training["ibp_init"] is True
    assert card.training["ibp_reg"] == 0.5 and card.training["schedule"] == "cosine"
    assert "sabr_lambda" not in card.training and 0 <= card.certified_acc <= card.clean_acc


# ---------------------------------------------------------------- hyper-parameters


def test_new_hypers_are_validated_and_recorded():
    for bad, match in [({"sabr_lambda": 0}, "sabr_lambda"), ({"sabr_lambda": 1.5}, "sabr_lambda"),
                       ({"mtl_alpha": 1.2}, "mtl_alpha"), ({"mtl_alpha": "x"}, "mtl_alpha"),
                       ({"ibp_reg": -1}, "ibp_reg"), ({"ibp_init": "yes"}, "ibp_init"),
                       ({"certified": "sabrx"}, "certified: expected one of ibp, crown-ibp, sabr, mtl-ibp, ibp-shi")]:
        with pytest.raises(RobverifyError, match=match):
            Hyper.parse(bad)
    hyper = Hyper.parse({"sabr_lambda": 0.6, "mtl_alpha": 0.1})
    assert hyper.for_method(TrainMethod.SABR)["sabr_lambda"] == 0.6
    assert hyper.for_method(TrainMethod.MTL_IBP)["mtl_alpha"] == 0.1 and \
        "kappa_end" not in hyper.for_method(TrainMethod.MTL_IBP)
    assert hyper.uses_ibp_init(TrainMethod.IBP_SHI) and not hyper.uses_ibp_init(TrainMethod.IBP)
    assert Hyper.parse({"ibp_init": True}).uses_ibp_init(TrainMethod.CROWN_IBP)
    for name in ("sabr", "mtl-ibp", "ibp-shi"):
        assert TrainMethod.parse(name).certified
        assert get_strategy("certified-ft").method(Hyper.parse({"certified": name})).value == name
