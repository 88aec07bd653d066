"""Model zoo: small image classifiers built from named blocks that the verifier's graph IR understands.

Every model is a :class:`BlockNet`: ``head(blockK(...block1(normalize(x))))``. Transfer strategies address
"the last k blocks" (:meth:`BlockNet.last_blocks`) and "the head" by name; the model card stores
:func:`arch_config` so that :func:`build_model_from_config` rebuilds the same architecture.

Layer types are restricted to what :mod:`robverify.ir.graph` reads: :class:`~robverify.ir.blocks.Normalize`,
:class:`~robverify.ir.blocks.Residual`, ``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm1d/2d``, ``nn.ReLU``,
``nn.Sigmoid``, ``nn.Tanh``, ``nn.Flatten``, ``nn.AvgPool2d``, ``nn.MaxPool2d`` and ``nn.Sequential``.

Registered architectures (:data:`ARCHITECTURES`) and their options:

``mlp``
    ``widths`` (default ``(100, 100)``): one block ``Linear + act`` per hidden layer (block1 starts with the
    ``Flatten``); ``activation`` (``relu``, ``sigmoid``, ``tanh``).
``cnn-small``
    The "cnn_4layer" of the verification literature: ``Conv(C,16,4,s2,p1)+act`` (block1),
    ``Conv(16,32,4,s2,p1)+act`` (block2), ``Flatten+Linear(->100)+act`` (block3), head ``Linear(100, n)``.
    Options ``channels`` (default ``(16, 32)``), ``hidden`` (default 100), ``activation``.
``cnn-bn``
    ``cnn-small`` with ``BatchNorm2d`` after each conv and ``BatchNorm1d`` after the linear layer (before the
    activation). Options ``channels``, ``hidden``, ``activation``.
``resnet-tiny``
    Stem ``Conv3x3(C->width)+ReLU`` (block1), then ``n_blocks`` (2-4, default 2) residual blocks
    ``Sequential(Residual(Conv3x3, ReLU, Conv3x3; shortcut), ReLU)``; the second one downsamples (stride 2,
    twice the channels, 1x1-conv shortcut). The last block ends with ``AvgPool2d`` over the whole map and
    ``Flatten``. Options ``n_blocks``, ``width`` (default 16).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from robverify.errors import RobverifyError
from robverify.ir.blocks import Normalize, Residual

__all__ = [
    "ARCHITECTURES",
    "ALLOWED_LAYERS",
    "BlockNet",
    "arch_config",
    "build_model",
    "build_model_from_config",
]

#: Module types a zoo model may contain (the graph IR reads exactly these).
ALLOWED_LAYERS: tuple[type[nn.Module], ...] = (
    Normalize,
    Residual,
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Flatten,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Sequential,
    nn.ModuleDict,
)

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


class BlockNet(nn.Module):
    """``head(blocks(normalize(x)))`` with the blocks held by name (``block1``, ``block2``, ...).

    ``config`` is the :func:`arch_config` dictionary the model was built from (None for a hand-made one).
    """

    def __init__(
        self,
        normalize: Normalize,
        blocks: "OrderedDict[str, nn.Module] | Sequence[nn.Module]",
        head: nn.Linear,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(blocks, Mapping):
            blocks = OrderedDict((f"block{i + 1}", b) for i, b in enumerate(blocks))
        self.normalize = normalize
        self.blocks = nn.ModuleDict(blocks)
        self.head = head
        self.config = config

    def ir_sequence(self) -> list[tuple[str, nn.Module]]:
        """The forward order as named modules, read by :func:`robverify.ir.from_module.from_module`."""
        return [("normalize", self.normalize), *self.blocks.items(), ("head", self.head)]

    def block_names(self) -> list[str]:
        """Names of the blocks in forward order (the head is not a block)."""
        return list(self.blocks.keys())

    def feature_extractor(self, x: Tensor) -> Tensor:
        """Everything but the head: ``[N, C, H, W] -> [N, features]``."""
        z = self.normalize(x)
        for block in self.blocks.values():
            z = block(z)
        return z

    def last_blocks(self, k: int) -> list[nn.Module]:
        """The last ``k`` blocks in forward order (``0 <= k <= len(blocks)``)."""
        n = len(self.blocks)
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
            raise RobverifyError(f"last_blocks: expected k between 0 and {n} (the model's blocks), got {k!r}")
        return list(self.blocks.values())[n - k :]

    def trainable_counts(self) -> dict[str, int]:
        """Number of trainable parameters per block and of the head (for the model card)."""
        counts = {
            name: sum(p.numel() for p in block.parameters() if p.requires_grad)
            for name, block in self.blocks.items()
        }
        counts["head"] = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        return counts

    @property
    def n_features(self) -> int:
        """Width of the feature vector the head reads."""
        return self.head.in_features

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.feature_extractor(x))


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Arch:
    """A registered architecture: its options with their defaults, and its block builder.

    ``build(input_shape, options) -> (blocks, n_features)``.
    """

    defaults: dict[str, Any]
    build: Callable[[tuple[int, int, int], dict[str, Any]], tuple[list[nn.Module], int]]


def _int_tuple(name: str, value: Any, *, min_len: int = 1, max_len: int | None = None) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RobverifyError(f"option {name}: expected a list of positive integers, got {value!r}")
    items = list(value)
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad or len(items) < min_len or (max_len is not None and len(items) > max_len):
        size = f"{min_len}" if max_len == min_len else f"at least {min_len}"
        raise RobverifyError(f"option {name}: expected {size} positive integer(s), got {value!r}")
    return items


def _pos_int(name: str, value: Any, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        expected = f"an integer between {lo} and {hi}" if hi is not None else f"an integer >= {lo}"
        raise RobverifyError(f"option {name}: expected {expected}, got {value!r}")
    return value


def _activation(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in _ACTIVATIONS:
        raise RobverifyError(f"option activation: expected one of {', '.join(_ACTIVATIONS)}, got {value!r}")
    return value.lower()


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "widths": lambda v: _int_tuple("widths", v),
    "channels": lambda v: _int_tuple("channels", v, min_len=2, max_len=2),
    "hidden": lambda v: _pos_int("hidden", v),
    "activation": _activation,
    "n_blocks": lambda v: _pos_int("n_blocks", v, 2, 4),
    "width": lambda v: _pos_int("width", v),
}


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


# --------------------------------------------------------------------------------------------- builders


def _mlp(shape: tuple[int, int, int], opts: dict[str, Any]) -> tuple[list[nn.Module], int]:
    act = _ACTIVATIONS[opts["activation"]]
    blocks: list[nn.Module] = []
    fan_in = math.prod(shape)
    for i, width in enumerate(opts["widths"]):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(fan_in, width), act()]
        blocks.append(nn.Sequential(*layers))
        fan_in = width
    return blocks, fan_in


def _cnn(shape: tuple[int, int, int], opts: dict[str, Any], *, batchnorm: bool) -> tuple[list[nn.Module], int]:
    act = _ACTIVATIONS[opts["activation"]]
    c, h, w = shape
    blocks: list[nn.Module] = []
    for out_c in opts["channels"]:
        h, w = _conv_out(h, 4, 2, 1), _conv_out(w, 4, 2, 1)
        if h < 1 or w < 1:
            raise RobverifyError(f"input shape {list(shape)} is too small for the two stride-2 convolutions")
        layers: list[nn.Module] = [nn.Conv2d(c, out_c, 4, stride=2, padding=1)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(out_c))
        layers.append(act())
        blocks.append(nn.Sequential(*layers))
        c = out_c
    hidden = opts["hidden"]
    layers = [nn.Flatten(), nn.Linear(c * h * w, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers.append(act())
    blocks.append(nn.Sequential(*layers))
    return blocks, hidden


def _conv3x3(in_c: int, out_c: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_c, out_c, 3, stride=stride, padding=1)


def _resnet(shape: tuple[int, int, int], opts: dict[str, Any]) -> tuple[list[nn.Module], int]:
    c, h, w = shape
    width = opts["width"]
    layers: list[list[nn.Module]] = [[_conv3x3(c, width), nn.ReLU()]]
    in_c = width
    for i in range(opts["n_blocks"]):
        stride, out_c = (2, 2 * width) if i == 1 else (1, in_c)
        body = nn.Sequential(_conv3x3(in_c, out_c, stride), nn.ReLU(), _conv3x3(out_c, out_c))
        shortcut = nn.Conv2d(in_c, out_c, 1, stride=stride) if (stride != 1 or out_c != in_c) else None
        layers.append([Residual(body, shortcut), nn.ReLU()])
        h, w = _conv_out(h, 3, stride, 1), _conv_out(w, 3, stride, 1)
        in_c = out_c
    layers[-1] += [nn.AvgPool2d(kernel_size=(h, w)), nn.Flatten()]  # global average pool, IR-readable
    return [nn.Sequential(*block) for block in layers], in_c


#: Registered architectures: name -> option defaults and block builder.
ARCHITECTURES: dict[str, _Arch] = {
    "mlp": _Arch({"widths": [100, 100], "activation": "relu"}, _mlp),
    "cnn-small": _Arch(
        {"channels": [16, 32], "hidden": 100, "activation": "relu"},
        lambda s, o: _cnn(s, o, batchnorm=False),
    ),
    "cnn-bn": _Arch(
        {"channels": [16, 32], "hidden": 100, "activation": "relu"},
        lambda s, o: _cnn(s, o, batchnorm=True),
    ),
    "resnet-tiny": _Arch({"n_blocks": 2, "width": 16}, _resnet),
}


# --------------------------------------------------------------------------------------------- public API


def _input_shape(value: Any) -> tuple[int, int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise RobverifyError(f"input_shape: expected (channels, height, width), got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise RobverifyError(f"input_shape: expected three positive integers, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _stats(name: str, value: Any, channels: int) -> list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RobverifyError(f"{name}: expected a list of {channels} numbers (one per channel), got {value!r}")
    items = list(value)
    if len(items) not in (1, channels) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in items
    ):
        raise RobverifyError(f"{name}: expected 1 or {channels} finite numbers (one per channel), got {value!r}")
    if name == "std" and any(v <= 0 for v in items):
        raise RobverifyError(f"std: expected positive numbers, got {value!r}")
    return [float(v) for v in items]


def build_model(
    arch: str,
    input_shape: tuple[int, int, int],
    n_classes: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int | None = None,
    **options: Any,
) -> BlockNet:
    """Build a zoo model for inputs ``[N, *input_shape]`` in ``[0, 1]`` and ``n_classes`` logits.

    ``mean``/``std`` (one value per channel, or one for all) go into the :class:`Normalize` first layer.
    ``options`` are the architecture's options (see the module docstring); unknown names are an error.
    ``seed``: initialise the weights from this seed without touching the global RNG (None: global RNG).
    """
    if arch not in ARCHITECTURES:
        raise RobverifyError(f"unknown architecture: expected one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    spec = ARCHITECTURES[arch]
    shape = _input_shape(input_shape)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise RobverifyError(f"n_classes: expected an integer >= 2, got {n_classes!r}")
    mean_l, std_l = _stats("mean", mean, shape[0]), _stats("std", std, shape[0])
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise RobverifyError(
            f"unknown option {unknown[0]!r} for architecture {arch}: expected one of {', '.join(spec.defaults)}"
        )
    opts = {name: _VALIDATORS[name](options.get(name, default)) for name, default in spec.defaults.items()}
    config = {
        "arch": arch,
        "options": opts,
        "input_shape": list(shape),
        "n_classes": n_classes,
        "mean": mean_l,
        "std": std_l,
    }

    def make() -> BlockNet:
        blocks, n_features = spec.build(shape, opts)
        return BlockNet(Normalize(mean_l, std_l), blocks, nn.Linear(n_features, n_classes), config)

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def arch_config(model: nn.Module) -> dict[str, Any]:
    """The JSON-ready dictionary (arch, options, input_shape, n_classes, mean, std) a zoo model was built from."""
    config = getattr(model, "config", None)
    if not isinstance(model, BlockNet) or config is None:
        raise RobverifyError(f"arch_config: expected a model built by trainers.zoo.build_model, got {type(model).__name__}")
    return {
        "arch": config["arch"],
        "options": {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in config["options"].items()},
        "input_shape": list(config["input_shape"]),
        "n_classes": config["n_classes"],
        "mean": list(config["mean"]),
        "std": list(config["std"]),
    }


_CONFIG_KEYS = ("arch", "options", "input_shape", "n_classes", "mean", "std")


def build_model_from_config(config: Mapping[str, Any], *, seed: int | None = None) -> BlockNet:
    """Rebuild (freshly initialised) the architecture that :func:`arch_config` describes."""
    if not isinstance(config, Mapping):
        raise RobverifyError(f"architecture config: expected a mapping, got {type(config).__name__}")
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise RobverifyError(f"architecture config: missing key {missing[0]!r}")
    unknown = sorted(set(config) - set(_CONFIG_KEYS))
    if unknown:
        raise RobverifyError(f"architecture config: unknown key {unknown[0]!r}")
    options = config["options"]
    if not isinstance(options, Mapping):
        raise RobverifyError(f"architecture config: options must be a mapping, got {options!r}")
    return build_model(
        config["arch"],
        config["input_shape"],
        config["n_classes"],
        mean=config["mean"],
        std=config["std"],
        seed=seed,
        **dict(options),
    )
