"""Devices: ``--device auto`` falls back to the CPU; on a CUDA machine the engine's bounds, search and attack
agree with the CPU's (the ``gpu`` tests skip where CUDA is absent)."""

from __future__ import annotations

import pytest
import torch

from helpers import single_thread, tiny_net, to_onnx  # noqa: F401 (single_thread: an autouse fixture)
from robverify.backends.native import NativeBackend
from robverify.engine.bounds import compute_bounds
from robverify.errors import RobverifyError
from robverify.devices import resolve_device
from robverify.ir.model import load_model
from robverify.runs.search import critical_epsilon
from robverify.spec import robustness_spec

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here")


def test_auto_device_is_cuda_only_where_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(RobverifyError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RobverifyError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("kind", ["cnn-relu", "cnn-bn", "resnet", "cnn-maxpool", "mlp-sigmoid"])
def test_cuda_bounds_match_cpu_bounds(tmp_path, kind):
    from helpers import NET_SHAPES

    shape = NET_SHAPES[kind]
    path = to_onnx(tiny_net(kind, 0), tmp_path / f"{kind}.onnx", shape)
    cpu, gpu = load_model(path, "cpu"), load_model(path, "cuda")
    x = torch.rand((16, *shape), generator=torch.Generator().manual_seed(0))
    label = cpu.predict(x)
    spec = robustness_spec(x, label, torch.linspace(0.0, 0.2, 16), 3, (0.0, 1.0))
    for method in ["ibp", "crown-ibp", "crown", "alpha-crown"]:
        a = compute_bounds(cpu.graph, spec, method).rows_lb
        b = compute_bounds(gpu.graph, spec.to("cuda"), method).rows_lb.cpu()
        assert torch.allclose(a, b, atol=1e-4 * a.abs().max().clamp(min=1.0), rtol=0), (method, (a - b).abs().max())


@pytest.mark.gpu
@cuda
def test_cuda_search_brackets_are_sound_on_cpu(tmp_path):
    path = to_onnx(tiny_net("cnn-relu", 1), tmp_path / "cnn.onnx", (1, 6, 6))
    gpu = load_model(path, "cuda")
    x = torch.rand((24, 1, 6, 6), generator=torch.Generator().manual_seed(1))
    label = gpu.predict(x)
    result = critical_epsilon(NativeBackend(gpu, "crown"), x, label, 3, tol=1e-3)  # samples stay on the CPU, as in jobs
    cpu = NativeBackend(load_model(path, "cpu"), "crown")
    ok = ~torch.isnan(result.eps_lo)
    spec = robustness_spec(x[ok], label[ok], result.eps_lo[ok].float(), 3, (0.0, 1.0))
    assert bool(cpu.verify(spec).verified.all())
