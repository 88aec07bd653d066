"""Model zoo (trainers.zoo) and the standard training loop (trainers.training)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from robverify.errors import RobverifyError
from robverify.ir.blocks import Normalize, Residual
from trainers.training import accuracy, train_standard
from trainers.zoo import (
    ALLOWED_LAYERS,
    ARCHITECTURES,
    BlockNet,
    arch_config,
    build_model,
    build_model_from_config,
)

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32)]

# (arch, options, expected block names)
VARIANTS = [
    ("mlp", {}, ["block1", "block2"]),
    ("mlp", {"widths": [32, 16, 8]}, ["block1", "block2", "block3"]),
    ("mlp", {"activation": "sigmoid"}, ["block1", "block2"]),
    ("mlp", {"activation": "tanh"}, ["block1", "block2"]),
    ("cnn-small", {}, ["block1", "block2", "block3"]),
    ("cnn-small", {"activation": "sigmoid"}, ["block1", "block2", "block3"]),
    ("cnn-small", {"activation": "tanh"}, ["block1", "block2", "block3"]),
    ("cnn-bn", {}, ["block1", "block2", "block3"]),
    ("resnet-tiny", {}, ["block1", "block2", "block3"]),
    ("resnet-tiny", {"n_blocks": 3}, ["block1", "block2", "block3", "block4"]),
]


def _build(arch: str, shape: tuple[int, int, int], **options) -> BlockNet:
    mean = [0.5] * shape[0]
    std = [0.25] * shape[0]
    return build_model(arch, shape, 10, mean=mean, std=std, seed=0, **options)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch,options,names", VARIANTS, ids=lambda v: str(v))
def test_builds_with_named_blocks_and_right_shapes(arch, options, names, shape):
    model = _build(arch, shape, **options)
    x = torch.rand(5, *shape)
    assert model(x).shape == (5, 10)
    assert model.block_names() == names
    feats = model.feature_extractor(x)
    assert feats.shape == (5, model.n_features)
    assert torch.equal(model.head(feats), model(x))
    assert isinstance(model.normalize, Normalize)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 10


@pytest.mark.parametrize("arch,options,names", VARIANTS, ids=lambda v: str(v))
def test_only_ir_layer_types(arch, options, names):
    model = _build(arch, (3, 32, 32), **options)
    for name, module in model.named_modules():
        if module is model:
            continue
        assert isinstance(module, ALLOWED_LAYERS), f"{name}: {type(module).__name__}"
        assert not getattr(module, "inplace", False), f"{name} is inplace"
    activation = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[options.get("activation", "relu")]
    assert any(isinstance(m, activation) for m in model.modules())


def test_cnn_small_is_cnn_4layer_on_mnist():
    model = _build("cnn-small", (1, 28, 28))
    b1, b2, b3 = (model.blocks[n] for n in model.block_names())
    assert (b1[0].in_channels, b1[0].out_channels, b1[0].kernel_size, b1[0].stride, b1[0].padding) == (
        1, 16, (4, 4), (2, 2), (1, 1)
    )
    assert (b2[0].in_channels, b2[0].out_channels, b2[0].kernel_size, b2[0].stride) == (16, 32, (4, 4), (2, 2))
    assert isinstance(b3[0], nn.Flatten) and b3[1].in_features == 32 * 7 * 7 and b3[1].out_features == 100
    assert model.head.in_features == 100


def test_cnn_bn_has_batchnorm_before_activation():
    model = _build("cnn-bn", (1, 8, 8))
    types = [[type(m) for m in model.blocks[n]] for n in model.block_names()]
    assert types[0] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert types[1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert types[2] == [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU]


def test_resnet_tiny_structure():
    model = _build("resnet-tiny", (3, 32, 32), n_blocks=3)
    first, down, third = (model.blocks[n][0] for n in ("block2", "block3", "block4"))
    assert all(isinstance(r, Residual) for r in (first, down, third))
    assert first.shortcut is None and third.shortcut is None
    assert isinstance(down.shortcut, nn.Conv2d) and down.shortcut.kernel_size == (1, 1)
    assert down.body[0].stride == (2, 2)
    assert isinstance(model.blocks["block4"][-2], nn.AvgPool2d)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())


def test_last_blocks_and_trainable_counts():
    model = _build("cnn-small", (1, 8, 8))
    assert model.last_blocks(0) == []
    assert model.last_blocks(2) == [model.blocks["block2"], model.blocks["block3"]]
    with pytest.raises(RobverifyError):
        model.last_blocks(4)
    counts = model.trainable_counts()
    assert list(counts) == ["block1", "block2", "block3", "head"]
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = _build("resnet-tiny", (1, 8, 8))
    assert torch.equal(torch.get_rng_state(), state)
    b = _build("resnet-tiny", (1, 8, 8))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("arch,options,names", VARIANTS, ids=lambda v: str(v))
def test_config_rebuilds_the_same_architecture(arch, options, names):
    model = _build(arch, (1, 8, 8), **options)
    config = json.loads(json.dumps(arch_config(model)))  # as it comes back from a model card
    assert config == arch_config(model)
    rebuilt = build_model_from_config(config, seed=1)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(4, 1, 8, 8)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))
    assert arch_config(rebuilt) == config


def test_unknown_architecture_lists_known_names():
    with pytest.raises(RobverifyError, match="mlp, cnn-small, cnn-bn, resnet-tiny"):
        build_model("vgg", (1, 28, 28), 10, mean=[0.0], std=[1.0])
    assert list(ARCHITECTURES) == ["mlp", "cnn-small", "cnn-bn", "resnet-tiny"]


@pytest.mark.parametrize(
    "arch,kwargs,match",
    [
        ("mlp", {"depth": 3}, "unknown option 'depth'"),
        ("mlp", {"widths": []}, "widths"),
        ("mlp", {"activation": "gelu"}, "activation"),
        ("resnet-tiny", {"n_blocks": 5}, "n_blocks"),
        ("resnet-tiny", {"n_blocks": True}, "n_blocks"),
        ("cnn-small", {"channels": [16]}, "channels"),
    ],
)
def test_bad_options_are_one_line_errors(arch, kwargs, match):
    with pytest.raises(RobverifyError, match=match) as info:
        build_model(arch, (1, 28, 28), 10, mean=[0.0], std=[1.0], **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "shape,n_classes,mean,std",
    [((28, 28), 10, [0.0], [1.0]), ((1, 28, 28), 1, [0.0], [1.0]), ((3, 8, 8), 10, [0.0, 0.0], [1.0, 1.0]),
     ((1, 8, 8), 10, [0.0], [0.0]), ((1, 2, 2), 10, [0.0], [1.0])],
)
def test_bad_shapes_and_statistics_are_errors(shape, n_classes, mean, std):
    with pytest.raises(RobverifyError):
        build_model("cnn-small", shape, n_classes, mean=mean, std=std)


def test_arch_config_rejects_foreign_models():
    with pytest.raises(RobverifyError):
        arch_config(nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return x, torch.tensor(data.target, dtype=torch.long)


@pytest.mark.parametrize("arch", ["mlp", "cnn-bn"])
def test_train_standard_is_deterministic_and_learns(digits, arch):
    x, y = digits
    x_train, y_train, x_test, y_test = x[:1200], y[:1200], x[1200:], y[1200:]
    models, reports = [], []
    for _ in range(2):
        model = build_model(arch, (1, 8, 8), 10, mean=[0.3], std=[0.4], seed=0)
        reports.append(train_standard(model, x_train, y_train, epochs=2, lr=3e-3, batch_size=64, seed=7))
        models.append(model)
    for (ka, va), (kb, vb) in zip(models[0].state_dict().items(), models[1].state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert reports[0]["final_loss"] == reports[1]["final_loss"]
    assert reports[0]["train_time_s"] > 0
    assert models[0].training  # mode restored
    assert accuracy(models[0], x_test, y_test) > 0.5  # chance is 0.1


def test_train_standard_other_seed_differs(digits):
    x, y = digits
    weights = []
    for seed in (0, 1):
        model = build_model("mlp", (1, 8, 8), 10, mean=[0.3], std=[0.4], seed=0)
        train_standard(model, x[:256], y[:256], epochs=1, seed=seed)
        weights.append(model.head.weight.detach().clone())
    assert not torch.equal(*weights)


def test_train_standard_nan_loss_is_a_clear_error(digits):
    x, y = digits
    model = build_model("mlp", (1, 8, 8), 10, mean=[0.3], std=[0.4], seed=0)
    x_bad = x[:64].clone()
    x_bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(RobverifyError, match="loss is nan"):
        train_standard(model, x_bad, y[:64], epochs=1)


def test_train_standard_rejects_bad_arguments(digits):
    x, y = digits
    model = build_model("mlp", (1, 8, 8), 10, mean=[0.3], std=[0.4], seed=0)
    with pytest.raises(RobverifyError, match="epochs"):
        train_standard(model, x, y, epochs=0)
    with pytest.raises(RobverifyError, match="lr"):
        train_standard(model, x, y, epochs=1, lr=-1.0)
    with pytest.raises(RobverifyError, match="shape"):
        train_standard(model, x, y[:10], epochs=1)


def test_train_standard_progress_bar_runs(digits):
    x, y = digits
    model = build_model("mlp", (1, 8, 8), 10, mean=[0.3], std=[0.4], seed=0)
    report = train_standard(model, x[:129], y[:129], epochs=1, batch_size=64, progress=True)
    assert report["final_loss"] > 0


def test_accuracy_restores_mode_and_counts(digits):
    x, y = digits
    model = build_model("cnn-bn", (1, 8, 8), 10, mean=[0.3], std=[0.4], seed=0)
    model.train()
    acc = accuracy(model, x[:100], y[:100], batch_size=33)
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = (model(x[:100]).argmax(1) == y[:100]).float().mean().item()
    assert acc == pytest.approx(expected)
