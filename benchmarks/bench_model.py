"""The benchmarks' shared model: cnn-small (1x28x28, 10 classes) trained 2 epochs on mnist5k[0-9] (standard
training, seed 0) and exported to ONNX, so that every benchmark bounds the same network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def bench_cnn_small(folder: Path) -> tuple[Any, Path]:
    """Train the benchmark model and export it to ``folder/cnn_small.onnx``: ``(task data, onnx path)``."""
    from properties.onnx_export import export_onnx
    from trainers.tasks import load_task
    from trainers.training import train_standard
    from trainers.zoo import build_model

    torch.manual_seed(0)
    data = load_task("mnist5k[0-9]")
    net = build_model("cnn-small", data.input_shape, 10, mean=[0.13], std=[0.31], seed=0)
    train_standard(net, data.x_train, data.y_train, epochs=2, seed=0)
    return data, export_onnx(net, Path(folder) / "cnn_small.onnx", data.input_shape).path
