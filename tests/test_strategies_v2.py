"""Transfer strategies, issue 14: the objective as a setting (trainers.strategies), TWINS, AutoLoRa and LoRA+BN
(trainers.twins, trainers.autolora), training seeds (`--seeds`, study `[transfer] seeds`)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from robverify import cli
from robverify.app.study import _hash, parse_study, plan_study
from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard
from trainers.adversarial import pgd_examples
from trainers.autolora import fe_forward, natural_forward
from trainers.freezing import freeze, new_head
from trainers.loop import fit
from trainers.objectives import Hyper, TrainMethod
from trainers.pipeline import load_source, parse_seeds, seed_folders, train_source, transfer_model
from trainers.strategies import STRATEGIES, TransferContext, get_strategy
from trainers.tasks import load_task
from trainers.twins import TwinBatchNorm
from helpers import single_thread  # noqa: F401 (autouse: small models train fastest on one thread)

SOURCE_TASK, TARGET_TASK, EPS = "digits[0-4]", "digits[5-9]", 0.1
HYPER = {"batch_size": 32, "attack_steps": 3, "lr": 3e-3}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A PGD-trained cnn-bn on digits[0-4] (1 epoch)."""
    out = tmp_path_factory.mktemp("source")
    train_source(SOURCE_TASK, "cnn-bn", "pgd", EPS, 1, out, progress=False, **HYPER)
    return out


@pytest.fixture(scope="module")
def target():
    data = load_task(TARGET_TASK)
    return data.x_train[:256], data.y_train[:256]


def _prepare(source: Path, strategy: str, target, objective: str | None = None):
    """What transfer_model does before training: (plan, model, ctx, untouched source)."""
    src, _, _ = load_source(source)
    plan = get_strategy(strategy)
    params = Hyper.parse(HYPER)
    x, y = target
    ctx = TransferContext(source=src, x_source=x[:64], y_source=y[:64] % 5, x_val=x[:0], y_val=y[:0], eps=EPS,
                          hyper=params, blocks=None, seed=0, method=plan.method(params, objective), x_fit=x, y_fit=y)
    model = copy.deepcopy(src)
    freeze(model)
    new_head(model, 5, seed=0)
    plan.prepare(model, ctx)
    return plan, model, ctx, src


def _initial(source: Path, strategy: str, target) -> torch.nn.Module:
    """The exported form of the model before training (a separate copy: deepcopy of a parametrized module shares
    its class with the original, and removing a parametrization from one would break the other)."""
    plan, model, ctx, _ = _prepare(source, strategy, target)
    plan.finish(model, ctx)
    return model


def _train(plan, model, ctx) -> None:
    fit(model, ctx.x_fit, ctx.y_fit, plan.objective_for(ctx, 5), epochs=1, lr=ctx.hyper.lr,
        batch_size=ctx.hyper.batch_size, seed=0)


def _pgd_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy under PGD (the adversarial objective), seeded, eval mode."""
    model.eval()
    torch.manual_seed(0)
    x_adv = pgd_examples(model, x, y, EPS, steps=5)
    with torch.no_grad():
        return float(F.cross_entropy(model(x_adv), y))


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------- TWINS


def test_twins_trains_shared_weights_and_both_affines_and_keeps_the_pretrained_statistics(source, target):
    plan, model, ctx, src = _prepare(source, "twins", target)
    twins = {n: m for n, m in model.named_modules() if isinstance(m, TwinBatchNorm)}
    assert set(twins) == {"blocks.block1.1", "blocks.block2.1", "blocks.block3.2"}
    # the paper: every weight is shared and trains; each branch has its own (trainable) BatchNorm affine
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    assert {f"blocks.block1.1.{b}.{p}" for b in ("frozen", "adaptive") for p in ("weight", "bias")} <= _trainable(model)
    x, y = target
    initial = _initial(source, "twins", target)
    _train(plan, model, ctx)
    source_state = src.state_dict()
    for name, twin in twins.items():  # the Frozen Net's statistics are the pre-trained ones, bit for bit
        assert torch.equal(twin.frozen.running_mean, source_state[f"{name}.running_mean"])
        assert torch.equal(twin.frozen.running_var, source_state[f"{name}.running_var"])
    assert not torch.equal(twins["blocks.block1.1"].adaptive.running_mean, source_state["blocks.block1.1.running_mean"])
    plan.finish(model, ctx)  # the Adaptive Net: a plain BlockNet again
    assert not any(isinstance(m, TwinBatchNorm) for m in model.modules())
    assert set(model.state_dict()) == set(src.state_dict())
    assert _pgd_loss(model, x, y) < _pgd_loss(initial, x, y)


def test_twins_needs_batchnorm_and_an_attack(tmp_path, source):
    plain = tmp_path / "plain"
    train_source(SOURCE_TASK, "mlp", "pgd", EPS, 1, plain, progress=False, batch_size=64, attack_steps=2)
    with pytest.raises(RobverifyError, match="^strategy twins needs BatchNorm layers; architecture mlp has none"):
        transfer_model(plain, TARGET_TASK, "twins", tmp_path / "out", progress=False)
    with pytest.raises(RobverifyError, match="strategy twins trains with an adversarial .* objective standard does"):
        transfer_model(source, TARGET_TASK, "twins", tmp_path / "out", objective="standard", progress=False)


# ---------------------------------------------------------------- AutoLoRa


def test_autolora_routes_the_natural_loss_to_lora_and_exports_the_feature_extractor(source, target):
    plan, model, ctx, src = _prepare(source, "autolora", target)
    names = {n for n, _ in model.named_parameters()}
    lora = {n for n in names if n.endswith((".up", ".down"))}
    assert lora and _trainable(model) == names  # the paper: FE (all weights), head and LoRA branch all train
    x, y = target
    # the natural loss reaches the LoRA factors and the head only; the FE branch ignores the LoRA delta
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".up"):
                p.normal_()
    F.cross_entropy(natural_forward(model, x[:32]), y[:32]).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == lora | {"head.weight", "head.bias"}
    model.zero_grad(set_to_none=True)
    F.cross_entropy(fe_forward(model, x[:32]), y[:32]).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert not got & lora and "blocks.block1.0.parametrizations.weight.original" in got

    plan, model, ctx, src = _prepare(source, "autolora", target)
    initial = _initial(source, "autolora", target)
    _train(plan, model, ctx)
    fe = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".original")}
    plan.finish(model, ctx)  # the LoRA branch is dropped: the FE branch's weights are exported
    state = model.state_dict()
    assert set(state) == set(src.state_dict())
    assert all(torch.equal(state[n.replace(".parametrizations.weight.original", ".weight")], v) for n, v in fe.items())
    assert _pgd_loss(model, x, y) < _pgd_loss(initial, x, y)


def test_autolora_takes_pgd_only(source, tmp_path):
    with pytest.raises(RobverifyError, match=r"strategy autolora trains with the PGD objective \(pgd\); objective "
                                             r"trades does not apply"):
        transfer_model(source, TARGET_TASK, "autolora", tmp_path, objective="trades", progress=False)


# ---------------------------------------------------------------- LoRA + BatchNorm


def test_lora_bn_trains_adapters_batchnorm_and_head_only(source, target):
    plan, model, ctx, src = _prepare(source, "lora-bn", target)
    bn = {"blocks.block1.1", "blocks.block2.1", "blocks.block3.2"}
    expected = ({n for n, _ in model.named_parameters() if n.endswith((".up", ".down"))}
                | {f"{m}.{p}" for m in bn for p in ("weight", "bias")} | {"head.weight", "head.bias"})
    assert _trainable(model) == expected
    assert ctx.method is TrainMethod.PGD  # FullLoRA-AT trains adversarially by default
    x, y = target
    initial = _initial(source, "lora-bn", target)
    _train(plan, model, ctx)
    state, source_state = model.state_dict(), src.state_dict()
    for name in ("blocks.block1.0", "blocks.block2.0", "blocks.block3.1"):  # frozen weights and biases, bit for bit
        assert torch.equal(state[f"{name}.parametrizations.weight.original"], source_state[f"{name}.weight"])
        assert torch.equal(state[f"{name}.bias"], source_state[f"{name}.bias"])
    assert not torch.equal(state["blocks.block1.1.weight"], source_state["blocks.block1.1.weight"])
    plan.finish(model, ctx)
    assert set(model.state_dict()) == set(source_state)
    assert _pgd_loss(model, x, y) < _pgd_loss(initial, x, y)


# ---------------------------------------------------------------- adversarial variants of lora, bn-adapt


@pytest.mark.parametrize("strategy", ["lora-adv", "bn-adapt-adv"])
def test_adversarial_variants_train_their_part_with_pgd_and_keep_the_rest(source, target, strategy):
    """lora-adv: adapters + head; bn-adapt-adv: BatchNorm affine + head; both with PGD (the strategy's kind), the
    frozen weights bit-identical to the source, and a lower PGD cross-entropy than the untrained start."""
    plan, model, ctx, src = _prepare(source, strategy, target)
    assert ctx.method is TrainMethod.PGD
    head = {"head.weight", "head.bias"}
    bn = {f"{m}.{p}" for m in ("blocks.block1.1", "blocks.block2.1", "blocks.block3.2") for p in ("weight", "bias")}
    adapters = {n for n, _ in model.named_parameters() if n.endswith((".up", ".down"))}
    expected = (adapters | head) if strategy == "lora-adv" else (bn | head)
    assert _trainable(model) == expected and (adapters if strategy == "lora-adv" else bn)
    x, y = target
    initial = _initial(source, strategy, target)
    _train(plan, model, ctx)
    state, source_state = model.state_dict(), src.state_dict()
    for name in ("blocks.block1.0", "blocks.block2.0", "blocks.block3.1"):
        weight = f"{name}.parametrizations.weight.original" if strategy == "lora-adv" else f"{name}.weight"
        assert torch.equal(state[weight], source_state[f"{name}.weight"])
        assert torch.equal(state[f"{name}.bias"], source_state[f"{name}.bias"])
    plan.finish(model, ctx)
    assert set(model.state_dict()) == set(source_state)
    assert _pgd_loss(model, x, y) < _pgd_loss(initial, x, y)


def test_rift_adv_trains_one_layer_adversarially(source, tmp_path):
    """rift-adv: the least PGD-critical layer and the head train (PGD); every other source weight is untouched."""
    out = transfer_model(source, TARGET_TASK, "rift-adv", tmp_path / "r", epochs=1, progress=False, **HYPER)
    card = ModelCard.from_json(out.with_suffix(".json"))
    layer = card.training["rift_layer"]
    tuned, _, _ = load_source(out.parent)
    tuned_state = tuned.state_dict()
    src, _, _ = load_source(source)
    changed = {k.rsplit(".", 1)[0] for k, v in src.state_dict().items()
               if not k.startswith("head.") and k in tuned_state and not torch.equal(v, tuned_state[k])}
    assert card.training["method"] == "pgd"
    assert changed <= {layer}, (changed, layer)


def test_cli_refuses_combinations_that_make_no_sense_in_one_line(source, tmp_path):
    import subprocess
    import sys

    for args, words in ((["--strategy", "adv-ft", "--objective", "standard"], "objective standard does not apply"),
                        (["--strategy", "full-ft", "--rank", "4"], "rank does not apply"),
                        (["--strategy", "full-ft", "--schedule", "sometimes"], "schedule"),
                        (["--strategy", "twins", "--objective", "crown-ibp"], "twins")):
        result = subprocess.run([sys.executable, "-m", "robverify.cli", "transfer", str(source), "--task",
                                 TARGET_TASK, "--out", str(tmp_path / "x"), "--epochs", "1", *args],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "x" / "model.onnx").exists()


# ---------------------------------------------------------------- the objective as a setting


def test_an_explicit_objective_trains_and_is_recorded(source, tmp_path):
    out = transfer_model(source, TARGET_TASK, "linear-probe", tmp_path / "lp", epochs=1, objective="trades",
                         progress=False, **HYPER)
    card = ModelCard.from_json(out.with_suffix(".json"))
    assert card.training["method"] == "trades" and "trades_beta" in card.training
    out = transfer_model(source, TARGET_TASK, "rift-adv", tmp_path / "rift", epochs=1, progress=False, **HYPER)
    card = ModelCard.from_json(out.with_suffix(".json"))
    assert card.training["method"] == "pgd" and card.training["rift_score"] == "pgd_acc"


@pytest.mark.parametrize("strategy, kwargs, match", [
    ("adv-ft", {"objective": "standard"}, r"^strategy adv-ft trains with an adversarial \(attack-based\) objective "
                                          r"\(pgd, trades.*\); objective standard does not apply$"),
    ("certified-ft", {"objective": "pgd"}, "^strategy certified-ft trains with a certified objective"),
    ("lora-adv", {"objective": "crown-ibp"}, "^strategy lora-adv trains with an adversarial"),
    ("full-ft", {"objective": "magic"}, "training method"),
    ("full-ft", {"rank": 8}, "^hyper-parameter rank does not apply to strategy full-ft; it applies to lora, "),
    ("full-ft", {"adv": "trades"}, "^hyper-parameter adv does not apply to strategy full-ft"),
    ("adv-ft", {"objective": "pgd", "adv": "trades"}, "^hyper-parameter adv does not apply to strategy adv-ft "
                                                      r"\(with --objective pgd"),
    ("lora", {"blocks": 1}, "^--blocks only applies to partial-ft and partial-ft-adv, not to lora$"),
    ("full-ft", {"objective": "pgd", "eps": 0.0}, "^strategy full-ft trains with pgd and needs a radius"),
])
def test_options_that_do_not_apply_are_errors(source, tmp_path, strategy, kwargs, match):
    with pytest.raises(RobverifyError, match=match) as err:
        transfer_model(source, TARGET_TASK, strategy, tmp_path, progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "model.onnx").exists()


def test_every_strategy_states_its_objective():
    for plan in STRATEGIES.values():
        method = plan.method(Hyper())
        assert plan.accepts.test(method), plan.name
    assert {"lora-adv", "rift-adv", "bn-adapt-adv", "twins", "autolora", "lora-bn"} <= set(STRATEGIES)
    assert get_strategy("adv-ft").method(Hyper(adv="trades")) is TrainMethod.TRADES
    assert get_strategy("full-ft").method(Hyper(), "crown-ibp") is TrainMethod.CROWN_IBP


# ---------------------------------------------------------------- seeds


def test_parse_seeds_and_folders(tmp_path):
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "1,1", "a", "-1", "1,,2"):
        with pytest.raises(RobverifyError, match="--seeds: expected distinct non-negative integers"):
            parse_seeds(bad)
    assert seed_folders(tmp_path, [3]) == [(3, tmp_path)]
    assert seed_folders(tmp_path, [0, 1]) == [(0, tmp_path / "seed-0"), (1, tmp_path / "seed-1")]


def test_cli_seeds_run_once_per_seed_into_sub_folders(monkeypatch, tmp_path):
    calls = []

    def fake(*args, **kw):
        calls.append((args, kw))
        out = Path(args[3])
        out.mkdir(parents=True)
        ModelCard(architecture={"arch": "mlp"}, task="t", strategy="full-ft", seed=kw["seed"], clean_acc=1.0,
                  pgd_acc=0.5, certified_acc=0.25, eps=0.1, train_time_s=1.0).to_json(out / "model.json")
        return out / "model.onnx"

    monkeypatch.setattr("trainers.pipeline.transfer_model", fake)
    result = CliRunner().invoke(cli.app, ["transfer", str(tmp_path / "src"), "--task", "t", "--strategy", "full-ft",
                                          "--out", str(tmp_path / "o"), "--seeds", "0,2", "--objective", "pgd"])
    assert result.exit_code == 0, result.output
    assert [(a[3], kw["seed"], kw["objective"]) for a, kw in calls] == [
        (tmp_path / "o" / "seed-0", 0, "pgd"), (tmp_path / "o" / "seed-2", 2, "pgd")]
    assert "(seed 2)" in result.stdout
    result = CliRunner().invoke(cli.app, ["train", "--task", "t", "--seeds", "1,x", "--out", str(tmp_path / "t")])
    assert isinstance(result.exception, RobverifyError) and "--seeds" in str(result.exception)


def test_model_card_without_seed_still_loads():
    data = ModelCard(architecture={"arch": "mlp"}, task="t").to_dict()
    del data["seed"]
    assert ModelCard.from_dict(data).seed == 0


STUDY = """
[study]
seed = 0
[source]
task = "digits[0-4]"
[transfer]
targets = ["digits[5-9]"]
strategies = ["full-ft", "lora"]
hyper = {{ rank = 2 }}
{extra}
"""


def test_study_seeds_give_one_transfer_and_sweep_per_seed_and_leave_other_studies_keys(tmp_path):
    plain = plan_study(parse_study(STUDY.format(extra=""), tmp_path / "s.toml"), tmp_path)
    transfers = [s for s in plain if s.kind == "transfer"]
    source_key = plain[0].key
    old = {"kind": "transfer", "source": source_key, "task": "digits[5-9]", "strategy": "full-ft", "epochs": 2,
           "blocks": None, "eps": None, "seed": 0, "hyper": {"rank": 2}}
    assert transfers[0].key == _hash(old)  # the inputs of a study without seeds are what they were
    seeded = plan_study(parse_study(STUDY.format(extra="seeds = [0, 1, 2]\nobjective = \"pgd\""),
                                    tmp_path / "s.toml"), tmp_path)
    transfers = [s for s in seeded if s.kind == "transfer"]
    sweeps = [s for s in seeded if s.kind == "sweep"]
    assert len(transfers) == 6 and len(sweeps) == 7  # + the source's sweep
    assert sorted(s.inputs["seed"] for s in transfers) == [0, 0, 1, 1, 2, 2]
    assert len({s.folder for s in transfers}) == 6 and all(s.inputs["objective"] == "pgd" for s in transfers)
    with pytest.raises(RobverifyError, match="seeds must be a non-empty list of distinct"):
        parse_study(STUDY.format(extra="seeds = [1, 1]"), tmp_path / "s.toml")
    with pytest.raises(RobverifyError, match=r"s.toml:\d+: strategy adv-ft trains with .*; objective ibp does not apply$"):
        plan_study(parse_study(STUDY.format(extra='strategies = ["adv-ft"]\nobjective = "ibp"').replace(
            'strategies = ["full-ft", "lora"]\n', ""), tmp_path / "s.toml"), tmp_path)
