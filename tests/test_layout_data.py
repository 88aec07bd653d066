"""Task images meet models of another layout: a channels-last model gets NCHW images transposed (not reshaped),
and gives the verdicts of its channels-first twin; flat inputs still get the images in their own order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import to_onnx
from robverify.backends import get_backend
from robverify.errors import RobverifyError
from robverify.ir.model import inputs_for, load_model
from robverify.spec import robustness_spec

pytestmark = pytest.mark.filterwarnings("ignore:Tensorflow parser")


class ChannelsLast(nn.Module):
    """The same network taking ``[N, H, W, C]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16, 3)).eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_channels_last_model_gives_the_verdicts_of_its_channels_first_twin(tmp_path, seed):
    net = _cnn(seed)
    first = load_model(to_onnx(net, tmp_path / "nchw.onnx", (3, 6, 6)))
    last = load_model(to_onnx(ChannelsLast(net), tmp_path / "nhwc.onnx", (6, 6, 3)))
    x = torch.rand((12, 3, 6, 6), generator=torch.Generator().manual_seed(seed))
    moved, record = inputs_for(last, x)
    assert record == {"from": [3, 6, 6], "to": [6, 6, 3], "layout": "NCHW->NHWC"}
    assert torch.equal(moved, x.permute(0, 2, 3, 1))
    label = first.predict(x)
    assert torch.equal(last.predict(moved), label)
    for eps in (0.005, 0.02, 0.05):
        a = get_backend("native")(first, "crown").verify(robustness_spec(x, label, eps, 3))
        b = get_backend("native")(last, "crown").verify(robustness_spec(moved, label, eps, 3))
        assert torch.equal(a.verified, b.verified)
        torch.testing.assert_close(a.margin_lb, b.margin_lb, rtol=1e-4, atol=1e-5)
    # a reshape would have scrambled the channels: the predictions would differ
    assert not torch.equal(last.predict(x.reshape(12, 6, 6, 3)), label)


def test_flat_inputs_keep_reshaping_and_misfits_are_refused(tmp_path):
    torch.manual_seed(0)
    flat = load_model(to_onnx(nn.Sequential(nn.Linear(12, 3)).eval(), tmp_path / "flat.onnx", (12,)))
    x = torch.rand(4, 3, 2, 2)
    moved, record = inputs_for(flat, x)
    assert torch.equal(moved, x.reshape(4, 12)) and record == {"from": [3, 2, 2], "to": [12]}
    with pytest.raises(RobverifyError, match="do not fit"):
        inputs_for(flat, torch.rand(4, 3, 2, 3))
