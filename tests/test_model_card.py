"""Model card (robverify.formats.model_card): exact JSON round trip, numbers as numbers, strict reading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard, card_path_for


def _card() -> ModelCard:
    return ModelCard(
        architecture={
            "arch": "cnn-small",
            "options": {"channels": [16, 32], "hidden": 100, "activation": "relu"},
            "input_shape": [1, 28, 28],
            "n_classes": 5,
            "mean": [0.1307],
            "std": [0.3081],
        },
        task="mnist5k[5-9]",
        source_task="mnist5k[0-4]",
        strategy="finetune-last",
        training={"method": "pgd", "eps": 0.1, "epochs": 3, "lr": 0.001, "batch_size": 128, "blocks": 2},
        seed=3,
        clean_acc=0.9712,
        pgd_acc=0.8125,
        certified_acc=0.0,
        train_time_s=12.345678901234567,
        parent_hash="ab" * 32,
        similarity={"otdd": 1.25, "mmd": 0.031, "label_overlap": 0},
        trainable={"block1": 0, "block2": 0, "block3": 78500, "head": 505},
        onnx_sha256="cd" * 32,
        opset=17,
        parity_max_abs_diff=1.1920928955078125e-07,
    )


def test_round_trip_is_exact(tmp_path):
    card = _card()
    path = card.to_json(tmp_path / "model.json")
    assert path == tmp_path / "model.json"
    assert ModelCard.from_json(path) == card
    assert ModelCard.from_dict(card.to_dict()) == card


def test_defaults_round_trip(tmp_path):
    card = ModelCard(architecture={"arch": "mlp"}, task="digits")
    assert card.strategy is None and card.source_task is None and card.similarity == {}
    assert card.created and card.robverify_version
    card.to_json(tmp_path / "m.json")
    assert ModelCard.from_json(tmp_path / "m.json") == card


def test_numbers_stay_numbers(tmp_path):
    path = _card().to_json(tmp_path / "model.json")
    raw = json.loads(path.read_text())
    assert isinstance(raw["clean_acc"], float) and isinstance(raw["seed"], int) and isinstance(raw["opset"], int)
    assert isinstance(raw["training"]["eps"], float) and isinstance(raw["training"]["epochs"], int)
    assert all(isinstance(v, (int, float)) for v in raw["similarity"].values())
    assert all(isinstance(v, int) for v in raw["trainable"].values())
    assert raw["strategy"] == "finetune-last" and raw["certified_acc"] == 0.0


def test_numpy_scalars_are_stored_as_numbers(tmp_path):
    card = _card()
    card.clean_acc = np.float64(0.5)
    card.seed = np.int64(4)
    card.training["eps"] = np.float32(0.25)
    card.architecture["input_shape"] = (1, 28, 28)
    raw = json.loads(card.to_json(tmp_path / "m.json").read_text())
    assert raw["clean_acc"] == 0.5 and raw["seed"] == 4 and raw["training"]["eps"] == 0.25
    assert raw["architecture"]["input_shape"] == [1, 28, 28]


def test_non_finite_numbers_are_rejected(tmp_path):
    card = _card()
    card.pgd_acc = float("nan")
    with pytest.raises(RobverifyError, match="pgd_acc"):
        card.to_json(tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_unknown_key_is_rejected_by_name(tmp_path):
    data = _card().to_dict()
    data["learning_rate"] = 0.1
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RobverifyError, match="unknown key 'learning_rate'") as info:
        ModelCard.from_json(path)
    assert "\n" not in str(info.value)


def test_missing_required_key_is_rejected(tmp_path):
    data = _card().to_dict()
    del data["task"]
    with pytest.raises(RobverifyError, match="missing key 'task'"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize(
    "field,value",
    [("clean_acc", "0.9"), ("seed", 1.5), ("seed", True), ("opset", "17"), ("task", 3), ("training", []),
     ("similarity", {"otdd": "high"}), ("trainable", {"head": 1.5})],
)
def test_wrong_types_are_rejected(field, value):
    data = _card().to_dict()
    data[field] = value
    with pytest.raises(RobverifyError, match=field):
        ModelCard.from_dict(data)


def test_missing_file_and_bad_json_are_errors(tmp_path):
    with pytest.raises(RobverifyError, match="not found"):
        ModelCard.from_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RobverifyError, match="not valid JSON"):
        ModelCard.from_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(RobverifyError, match="JSON object"):
        ModelCard.from_json(bad)


def test_card_path_for():
    assert card_path_for(Path("/runs/a/model.onnx")) == Path("/runs/a/model.json")
    assert card_path_for(Path("net.pt")) == Path("net.json")
    assert card_path_for("runs/m.v2.onnx") == Path("runs/m.v2.json")


def test_module_does_not_import_torch():
    code = "import sys, robverify.formats.model_card; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
