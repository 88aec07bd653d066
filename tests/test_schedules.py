"""Learning-rate schedules (trainers.schedules) and their use in trainers.loop.fit: closed forms, the constant
schedule leaving training untouched, exact resumption, and the one-line errors of Hyper and the command line."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from robverify.errors import RobverifyError
from trainers.loop import fit
from trainers.objectives import Hyper, TrainMethod, make_objective
from trainers.schedules import SSFD_PEAK, Schedule, lr_factor
from trainers.tasks import load_task
from trainers.zoo import build_model
from helpers import single_thread  # noqa: F401 (autouse: one intra-op thread)

LR = 3e-3


@pytest.fixture(scope="module")
def digits():
    return load_task("digits[0-4]")


def _model(data):
    return build_model("mlp", data.input_shape, data.n_classes, mean=[0.3], std=[0.38], seed=0, widths=[16])


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("schedule, expected", [
    ("constant", {0.0: 1.0, 0.3: 1.0, 0.99: 1.0}),
    ("cosine", {0.0: 1.0, 0.25: (1 + math.sqrt(0.5)) / 2, 0.5: 0.5, 0.75: (1 - math.sqrt(0.5)) / 2, 1.0: 0.0}),
    ("step", {0.0: 1.0, 0.4999: 1.0, 0.5: 0.1, 0.7: 0.1, 0.75: 0.01, 0.99: 0.01}),
    ("slow-start-fast-decay", {0.0: 0.0, SSFD_PEAK / 2: 0.5, SSFD_PEAK: 1.0,
                               (1 + SSFD_PEAK) / 2: 0.5, 1.0: 0.0}),
])
def test_schedule_closed_forms(schedule, expected):
    for progress, factor in expected.items():
        assert lr_factor(schedule, progress) == pytest.approx(factor, abs=1e-12), progress


def _recorded_lrs(monkeypatch) -> list[float]:
    """The learning rate of every Adam step taken from now on."""
    seen: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    return seen


@pytest.mark.parametrize("schedule", ["cosine", "step", "slow-start-fast-decay"])
def test_fit_sets_the_rate_of_every_step(digits, monkeypatch, schedule):
    seen = _recorded_lrs(monkeypatch)
    x, y = digits.x_train[:200], digits.y_train[:200]
    fit(_model(digits), x, y, make_objective("standard", 0.0, 5, Hyper()), epochs=2, lr=LR, batch_size=50,
        schedule=schedule)
    total = 8  # 2 epochs of 4 batches
    assert seen == [LR * lr_factor(schedule, step / total) for step in range(total)]


def test_constant_schedule_never_touches_the_rate(digits, monkeypatch):
    """``constant`` is today's training bit for bit: same weights as a call without a schedule, the rate never
    written (the schedule function is not even consulted)."""
    x, y = digits.x_train[:200], digits.y_train[:200]
    objective = make_objective("pgd", 0.1, 5, Hyper(attack_steps=2))
    plain = _model(digits)
    fit(plain, x, y, objective, epochs=2, lr=LR, batch_size=50)
    monkeypatch.setattr("trainers.loop.lr_factor", lambda *a: pytest.fail("constant consulted the schedule"))
    seen = _recorded_lrs(monkeypatch)
    constant = _model(digits)
    fit(constant, x, y, objective, epochs=2, lr=LR, batch_size=50, schedule="constant")
    assert seen == [LR] * 8
    assert _equal(_state(plain), _state(constant))


@pytest.mark.parametrize("schedule", ["cosine", "slow-start-fast-decay"])
def test_resumed_run_continues_the_schedule(digits, tmp_path, schedule):
    x, y = digits.x_train[:240], digits.y_train[:240]
    objective = make_objective("standard", 0.0, 5, Hyper())
    kwargs = dict(epochs=3, lr=LR, batch_size=60, seed=0, key="k", schedule=schedule)
    full = _model(digits)
    fit(full, x, y, objective, checkpoint=tmp_path / "a.pt", **kwargs)

    def interrupt(epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(digits), x, y, objective, checkpoint=tmp_path / "b.pt", after_epoch=interrupt, **kwargs)
    resumed = _model(digits)
    assert fit(resumed, x, y, objective, checkpoint=tmp_path / "b.pt", **kwargs).resumed_epochs == 2
    assert _equal(_state(full), _state(resumed))
    other = _model(digits)
    fit(other, x, y, objective, **{**kwargs, "schedule": "constant", "key": "c"})
    assert not _equal(_state(full), _state(other))  # the schedule did change the training


def test_hyper_parses_and_records_the_schedule():
    assert Hyper.parse({"schedule": "Cosine"}).schedule == "cosine"
    assert Hyper.parse({}).for_method(TrainMethod.PGD)["schedule"] == "constant"
    assert Schedule.parse("step") is Schedule.STEP
    with pytest.raises(RobverifyError, match="expected one of constant, cosine, step, slow-start-fast-decay"):
        Hyper.parse({"schedule": "nope"})
    with pytest.raises(RobverifyError, match="learning-rate schedule"):
        fit(torch.nn.Linear(2, 2), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long),
            lambda m, x, y, p: m(x).sum(), epochs=1, schedule="linear")


def test_cli_rejects_an_unknown_schedule_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "robverify.cli", "train", "--task", "digits[0-4]", "--arch", "mlp",
                             "--epochs", "1", "--out", str(tmp_path / "m"), "--schedule", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "schedule" in lines[0] and "slow-start-fast-decay" in lines[0], result.stderr
    assert not (tmp_path / "m" / "checkpoint.pt").exists()
