"""Transfer strategies (trainers.strategies, trainers.pipeline.transfer_model) and `robverify train/transfer`:
frozen means frozen, LoRA merges into a plain network, cards match the exported weights, bad input exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from properties.onnx_export import onnx_sha256
from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard
from trainers.freezing import freeze, new_head
from trainers.lora import add_adapters
from trainers.pipeline import load_source, train_source, transfer_model
from trainers.strategies import STRATEGIES
from trainers.tasks import load_task
from helpers import single_thread  # noqa: F401,E402 (an autouse fixture: small models train fastest on one thread)

SOURCE_TASK, TARGET_TASK, EPS = "digits[0-4]", "digits[5-9]", 0.1


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A PGD-trained cnn-bn (BatchNorm in every block) on digits[0-4]."""
    out = tmp_path_factory.mktemp("source")
    train_source(SOURCE_TASK, "cnn-bn", "pgd", EPS, 2, out, progress=False, lr=3e-3, batch_size=32, attack_steps=5)
    return out


@pytest.fixture(scope="module")
def transferred(source, tmp_path_factory):
    """``transferred(strategy, **kw)`` -> output folder, each strategy trained once per module."""
    done: dict[tuple, Path] = {}

    def run(strategy: str, **kwargs) -> Path:
        key = (strategy, tuple(sorted(kwargs.items())))
        if key not in done:
            out = tmp_path_factory.mktemp(strategy)
            transfer_model(source, TARGET_TASK, strategy, out, epochs=1, progress=False, batch_size=32,
                           attack_steps=3, **kwargs)
            done[key] = out
        return done[key]

    return run


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _batchnorm_keys(folder: Path) -> set[str]:
    """State-dict entries of the BatchNorm layers (affine parameters, running statistics, counters)."""
    model, _, _ = load_source(folder)
    layers = {name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return {k for k in model.state_dict() if k.rsplit(".", 1)[0] in layers}


# ---------------------------------------------------------------- frozen means frozen


def test_linear_probe_changes_only_the_head(source, transferred):
    before, after = _weights(source), _weights(transferred("linear-probe"))
    body = {k for k in before if not k.startswith("head.")}
    assert not _changed({k: before[k] for k in body}, after)  # parameters and BatchNorm buffers, bit for bit
    assert after["head.weight"].shape == (5, 100)
    card = ModelCard.from_json(transferred("linear-probe") / "model.json")
    assert card.trainable == {"block1": 0, "block2": 0, "block3": 0, "head": 505}


def test_partial_ft_changes_only_the_last_k_blocks(source, transferred):
    before, after = _weights(source), _weights(transferred("partial-ft", blocks=1))
    changed = _changed({k: v for k, v in before.items() if not k.startswith("head.")}, after)
    assert changed and all(k.startswith("blocks.block3.") for k in changed)
    assert "blocks.block3.2.running_mean" in changed  # the trained block's BatchNorm does learn statistics
    two = _changed({k: v for k, v in before.items() if not k.startswith("head.")},
                   _weights(transferred("partial-ft", blocks=2)))
    assert any(k.startswith("blocks.block2.") for k in two) and not any(k.startswith("blocks.block1.") for k in two)


def test_bn_adapt_changes_only_batchnorm_state(source, transferred):
    before, after = _weights(source), _weights(transferred("bn-adapt"))
    changed = _changed({k: v for k, v in before.items() if not k.startswith("head.")}, after)
    assert changed and changed <= _batchnorm_keys(source), changed
    assert {"blocks.block1.1.running_mean", "blocks.block1.1.weight", "blocks.block3.2.running_var"} <= changed


def test_bn_adapt_needs_batchnorm(tmp_path):
    plain = tmp_path / "plain"
    train_source(SOURCE_TASK, "mlp", "standard", 0.0, 1, plain, progress=False)
    with pytest.raises(RobverifyError, match="bn-adapt needs BatchNorm layers; architecture mlp has none"):
        transfer_model(plain, TARGET_TASK, "bn-adapt", tmp_path / "out", progress=False)


def test_lora_exports_a_plain_network_equal_to_the_adapted_model(source, transferred):
    out = transferred("lora")
    model, card, _ = load_source(source)
    freeze(model)
    new_head(model, 5, seed=0)
    add_adapters(model, rank=4, seed=0)
    model.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["model"])  # the adapted model
    x = load_task(TARGET_TASK).x_test
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input": x.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-5)
    ops = lambda path: [n.op_type for n in onnx.load(str(path)).graph.node]  # noqa: E731
    assert ops(out / "model.onnx") == ops(source / "model.onnx")  # merged: no adapter nodes left
    changed = _changed(_weights(source), _weights(out))
    assert "blocks.block1.0.weight" in changed and "blocks.block1.0.bias" not in changed  # biases stay frozen
    trainable = ModelCard.from_json(out / "model.json").trainable
    assert trainable["block1"] == 4 * 16 + 4 * 16  # up [16, 4] + down [4, 1*4*4]


# ---------------------------------------------------------------- every strategy, card contract


@pytest.mark.parametrize("strategy, kwargs, trained", [
    ("linear-probe-adv", {}, {"head"}),
    ("full-ft", {}, {"block1", "block2", "block3", "head"}),
    ("adv-ft", {"adv": "trades"}, {"block1", "block2", "block3", "head"}),
    ("partial-ft-adv", {"blocks": 2}, {"block2", "block3", "head"}),
    ("certified-ft", {"certified": "ibp"}, {"block1", "block2", "block3", "head"}),
    ("scratch", {}, {"block1", "block2", "block3", "head"}),
    ("scratch-adv", {}, {"block1", "block2", "block3", "head"}),
])
def test_strategy_card_is_complete_and_matches_the_export(source, transferred, strategy, kwargs, trained):
    out = transferred(strategy, **kwargs)
    card = ModelCard.from_json(out / "model.json")
    assert card.strategy == strategy and card.task == TARGET_TASK and card.source_task == SOURCE_TASK
    assert card.parent_hash == onnx_sha256(source / "model.onnx")
    assert card.onnx_sha256 == onnx_sha256(out / "model.onnx")
    assert card.eps == EPS and card.training["eps"] == EPS and card.training["epochs"] == 1
    assert {k for k, v in card.trainable.items() if v > 0} == trained
    for value in (card.clean_acc, card.pgd_acc, card.certified_acc, card.train_time_s):
        assert value is not None and value >= 0
    assert card.certified_acc <= card.pgd_acc <= card.clean_acc
    assert card.similarity and "label_overlap" in card.similarity  # robverify.analysis.similarity's scores
    if "adv" in kwargs:
        assert card.training["method"] == kwargs["adv"]
    if strategy == "certified-ft":
        assert card.training["method"] == "ibp" and "kappa_end" in card.training
    before = _weights(source)
    changed = _changed({k: v for k, v in before.items() if not k.startswith("head.")}, _weights(out))
    frozen_blocks = {"block1", "block2", "block3"} - trained
    assert not any(k.split(".")[1] in frozen_blocks for k in changed)


def test_rift_tunes_the_least_critical_layer_and_interpolates(source, transferred):
    out = transferred("rift")
    card = ModelCard.from_json(out / "model.json")
    scores = card.training["criticality"]
    layer = card.training["rift_layer"]
    assert set(scores) == {"blocks.block1.0", "blocks.block2.0", "blocks.block3.1"}
    assert scores[layer] == min(scores.values())
    assert 0.0 <= card.training["rift_alpha"] <= 1.0
    changed = _changed({k: v for k, v in _weights(source).items() if not k.startswith("head.")}, _weights(out))
    assert changed <= {f"{layer}.weight", f"{layer}.bias"}
    assert sum(v > 0 for v in card.trainable.values()) == 2  # the layer's block and the head


def test_rerun_with_the_same_arguments_reuses_the_checkpoint(source, transferred, tmp_path):
    first = transferred("linear-probe")
    again = tmp_path / "again"
    again.mkdir()
    (again / "checkpoint.pt").write_bytes((first / "checkpoint.pt").read_bytes())
    transfer_model(source, TARGET_TASK, "linear-probe", again, epochs=1, progress=False, batch_size=32, attack_steps=3)
    assert not _changed(_weights(first), _weights(again))
    assert ModelCard.from_json(again / "model.json").train_time_s == \
        pytest.approx(ModelCard.from_json(first / "model.json").train_time_s, abs=0.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "partial-ft"}, "needs --blocks K"),
    ({"strategy": "partial-ft", "blocks": 4}, "--blocks 4: expected 1 to 3"),
    ({"strategy": "full-ft", "blocks": 1}, "--blocks only applies to partial-ft"),
    ({"strategy": "fine-tune"}, "unknown strategy"),
    ({"strategy": "adv-ft", "eps": 2.0}, r"eps must be a number in \[0, 1\]"),
    ({"strategy": "full-ft", "task": "mnist5k[5-9]"}, r"has inputs \[1, 28, 28\] but the source model expects"),
])
def test_transfer_rejects_bad_input(source, tmp_path, kwargs, match):
    kwargs = {"task": TARGET_TASK, **kwargs}
    with pytest.raises(RobverifyError, match=match):
        transfer_model(source, kwargs.pop("task"), kwargs.pop("strategy"), tmp_path, progress=False, **kwargs)


def test_every_strategy_is_covered():
    tested = {"linear-probe", "partial-ft", "bn-adapt", "lora", "rift", "linear-probe-adv", "full-ft", "adv-ft",
              "partial-ft-adv", "certified-ft", "scratch", "scratch-adv",
              # tests/test_strategies_v2.py
              "rift-adv", "lora-adv", "lora-bn", "bn-adapt-adv", "twins", "autolora"}
    assert tested == set(STRATEGIES)


# ---------------------------------------------------------------- the command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "robverify.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_bad_inputs_exit_2_with_one_line(source, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["transfer", empty, "--task", TARGET_TASK, "--strategy", "full-ft", "--out", tmp_path / "o"], "holds no model"),
        (["transfer", source, "--task", TARGET_TASK, "--strategy", "partial-ft", "--out", tmp_path / "o"],
         "needs --blocks"),
        (["transfer", source, "--task", TARGET_TASK, "--strategy", "partial-ft", "--blocks", "5", "--out",
          tmp_path / "o"], "expected 1 to 3"),
        (["train", "--task", "digits", "--method", "pgd", "--eps", "-0.1", "--out", tmp_path / "t"], "in [0, 1]"),
        (["transfer", source, "--task", TARGET_TASK, "--strategy", "adv-ft", "--objective", "standard", "--out",
          tmp_path / "o"], "strategy adv-ft trains with an adversarial"),
        (["transfer", source, "--task", TARGET_TASK, "--strategy", "full-ft", "--rank", "8", "--out",
          tmp_path / "o"], "hyper-parameter rank does not apply to strategy full-ft"),
    ]
    for args, needle in cases:
        result = _cli(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, result.stderr)
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


@pytest.mark.slow
def test_cli_train_then_transfer_end_to_end(tmp_path):
    src = _cli("train", "--task", SOURCE_TASK, "--arch", "mlp", "--method", "crown-ibp", "--eps", "0.05",
               "--epochs", "2", "--lr", "0.003", "--batch-size", "32", "--out", tmp_path / "src")
    assert src.returncode == 0, src.stderr
    dst = _cli("transfer", tmp_path / "src", "--task", TARGET_TASK, "--strategy", "certified-ft", "--epochs", "1",
               "--out", tmp_path / "dst")
    assert dst.returncode == 0, dst.stderr
    assert "certified-ft on digits[5-9]" in dst.stdout
    card = ModelCard.from_json(tmp_path / "dst" / "model.json")
    assert card.eps == 0.05 and card.training["method"] == "crown-ibp"
    assert card.parent_hash == onnx_sha256(tmp_path / "src" / "model.onnx")
