"""ONNX export (properties.onnx_export): every zoo model exports with onnxruntime parity and a dynamic batch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from properties.onnx_export import OPSET, ExportReport, export_onnx, onnx_sha256
from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard, card_path_for
from trainers.zoo import arch_config, build_model

# (arch, options, shapes where it makes sense)
ALL_SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32)]
CASES = [
    ("mlp", {}, ALL_SHAPES),
    ("mlp", {"activation": "sigmoid"}, ALL_SHAPES),
    ("mlp", {"activation": "tanh"}, ALL_SHAPES),
    ("cnn-small", {}, ALL_SHAPES),
    ("cnn-small", {"activation": "sigmoid"}, [(1, 8, 8)]),
    ("cnn-small", {"activation": "tanh"}, [(1, 8, 8)]),
    ("cnn-bn", {}, ALL_SHAPES),
    ("resnet-tiny", {}, ALL_SHAPES),
    ("resnet-tiny", {"n_blocks": 3}, ALL_SHAPES),
]
PARAMS = [
    pytest.param(arch, options, shape, id=f"{arch}{options or ''}-{'x'.join(map(str, shape))}")
    for arch, options, shapes in CASES
    for shape in shapes
]


def _model(arch: str, shape: tuple[int, int, int], **options) -> nn.Module:
    model = build_model(arch, shape, 10, mean=[0.4] * shape[0], std=[0.3] * shape[0], seed=0, **options)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.train()  # a few training-mode passes make the running statistics non-trivial
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(32, *shape) * 1.5)
    return model.eval()


def _dim0(value_info: onnx.ValueInfoProto) -> onnx.TensorShapeProto.Dimension:
    return value_info.type.tensor_type.shape.dim[0]


@pytest.mark.parametrize("arch,options,shape", PARAMS)
def test_export_matches_onnxruntime(tmp_path, arch, options, shape):
    model = _model(arch, shape, **options)
    path = tmp_path / "model.onnx"
    report = export_onnx(model, path, shape, n_parity=64)
    assert isinstance(report, ExportReport)
    assert report.path == path and report.opset == OPSET == 17
    assert report.max_abs_diff <= 1e-5
    assert report.sha256 == onnx_sha256(path)

    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert _dim0(proto.graph.input[0]).dim_param and _dim0(proto.graph.output[0]).dim_param
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == list(shape)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}

    # an independent check with fresh inputs and an odd batch size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(5, *shape)
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_export_writes_state_dict_and_card(tmp_path):
    model = _model("cnn-bn", (1, 8, 8))
    card = ModelCard(architecture=arch_config(model), task="digits", seed=0, training={"method": "standard"})
    path = tmp_path / "sub" / "net.onnx"
    report = export_onnx(model, path, (1, 8, 8), card=card)
    assert sorted(p.name for p in path.parent.iterdir()) == ["net.json", "net.onnx", "net.pt"]
    assert report.card_path == card_path_for(path) == path.parent / "net.json"
    assert report.state_dict_path == path.parent / "net.pt"

    loaded = ModelCard.from_json(report.card_path)
    assert loaded == card
    assert loaded.onnx_sha256 == onnx_sha256(path) and loaded.opset == OPSET
    assert loaded.parity_max_abs_diff == report.max_abs_diff

    state = torch.load(report.state_dict_path, weights_only=True)
    twin = build_model("cnn-bn", (1, 8, 8), 10, mean=[0.4], std=[0.3], seed=5)
    twin.load_state_dict(state)
    twin.eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(twin(x), model(x))


def test_export_leaves_model_mode_alone_and_is_quiet(tmp_path, capfd):
    model = _model("cnn-bn", (1, 8, 8)).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(model, tmp_path / "m.onnx", (1, 8, 8), n_parity=8)
    assert model.training
    assert not caught
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_export_is_reproducible(tmp_path):
    model = _model("mlp", (1, 8, 8))
    a = export_onnx(model, tmp_path / "a.onnx", (1, 8, 8), n_parity=8)
    b = export_onnx(model, tmp_path / "b.onnx", (1, 8, 8), n_parity=8)
    assert a.sha256 == b.sha256 and a.max_abs_diff == b.max_abs_diff


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory nobody can create files in, even root: a path below a regular file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    return blocker / "out"


def test_export_into_path_below_a_file_is_an_error(tmp_path):
    model = _model("mlp", (1, 8, 8))
    target = _unwritable_dir(tmp_path)
    with pytest.raises(RobverifyError, match="cannot write to") as info:
        export_onnx(model, target / "m.onnx", (1, 8, 8))
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_export_into_read_only_directory_is_an_error(tmp_path):
    model = _model("mlp", (1, 8, 8))
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        with pytest.raises(RobverifyError, match="cannot write to"):
            export_onnx(model, target / "m.onnx", (1, 8, 8))
        assert list(target.iterdir()) == []
    finally:
        target.chmod(0o700)


class _Cheat(nn.Module):
    """Computes something else while being exported: parity must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y + 1.0 if torch.onnx.is_in_onnx_export() else y


def test_parity_failure_is_an_error_and_leaves_nothing(tmp_path):
    card = ModelCard(architecture={}, task="t")
    with pytest.raises(RobverifyError, match=r"ONNX parity failed: max \|torch - onnxruntime\| = 1 > tol"):
        export_onnx(_Cheat(), tmp_path / "cheat.onnx", (4,), card=card)
    assert list(tmp_path.iterdir()) == []
    assert card.onnx_sha256 is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"input_shape": ()}, "input_shape"),
        ({"input_shape": (1, 0, 8)}, "input_shape"),
        ({"n_parity": 0}, "n_parity"),
        ({"tol": -1.0}, "tol"),
        ({"path_name": "model.pt"}, r"\.onnx"),
    ],
)
def test_bad_arguments_are_errors(tmp_path, kwargs, match):
    model = _model("mlp", (1, 8, 8))
    args = {"input_shape": (1, 8, 8), **kwargs}
    path = tmp_path / args.pop("path_name", "m.onnx")
    with pytest.raises(RobverifyError, match=match):
        export_onnx(model, path, args.pop("input_shape"), **args)
    assert list(tmp_path.iterdir()) == []


def test_onnx_sha256_of_missing_file_is_an_error(tmp_path):
    with pytest.raises(RobverifyError, match="cannot read"):
        onnx_sha256(tmp_path / "missing.onnx")
