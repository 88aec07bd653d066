"""Task images meet models of another layout: a channels-last model gets NCHW images transposed (not reshaped),
and gives the verdicts of its channels-first twin; flat inputs still get the images in their own order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import ChannelsLast, image_cnn, to_onnx
from robverify.backends import get_backend
from robverify.errors import RobverifyError
from robverify.ir.model import inputs_for, load_model
from robverify.spec import robustness_spec

pytestmark = pytest.mark.filterwarnings("ignore:Tensorflow parser")


@pytest.mark.parametrize("seed", [0, 1])
def test_channels_last_model_gives_the_verdicts_of_its_channels_first_twin(tmp_path, seed):
    net = image_cnn(seed)
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


# -- --data: a user's own files -----------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from helpers import digits_mlp  # noqa: E402
from trainers.tasks import load_task  # noqa: E402
from trainers.user_data import load_user_data, parse_range  # noqa: E402


def _digits_arrays(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    data = load_task("digits[0-4]")
    return data.x_test[:n].numpy(), data.y_test[:n].numpy()


def test_npz_npy_and_folder_round_trip(tmp_path):
    from PIL import Image

    x, y = _digits_arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    got = load_user_data(tmp_path / "d.npz")
    assert torch.equal(got.x, torch.from_numpy(x)) and torch.equal(got.y, torch.from_numpy(y).long())
    np.savez(tmp_path / "nhwc.npz", x=np.transpose(x, (0, 2, 3, 1)), y=y)  # channels last: read as NCHW
    assert torch.equal(load_user_data(tmp_path / "nhwc.npz").x, got.x)
    np.save(tmp_path / "d.npy", x[:, 0])  # [N, H, W], unlabelled
    flat = load_user_data(tmp_path / "d.npy")
    assert torch.equal(flat.x, got.x) and flat.y is None
    for i, (img, label) in enumerate(zip(x, y)):  # an ImageFolder of 8-bit grayscale PNGs
        folder = tmp_path / "imgs" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    images = load_user_data(tmp_path / "imgs")
    order = np.argsort([f"class{label}/{i:03d}" for i, label in enumerate(y)], kind="stable")
    assert images.classes == tuple(f"class{c}" for c in sorted(set(y.tolist())))
    np.testing.assert_allclose(images.x.numpy(), x[order], atol=0.5 / 255 + 1e-6)
    assert images.y.tolist() == [sorted(set(y.tolist())).index(c) for c in y[order]]


@pytest.mark.parametrize("make,message", [
    (lambda p: np.savez(p / "a.npz", images=np.zeros((2, 8, 8))), "expected arrays 'x'"),
    (lambda p: np.savez(p / "a.npz", x=np.zeros((2, 8, 8)), y=np.zeros(3)), "2 images but 3 labels"),
    (lambda p: np.savez(p / "a.npz", x=np.full((2, 8, 8), np.nan), y=np.zeros(2)), "NaN"),
    (lambda p: np.savez(p / "a.npz", x=np.zeros((2, 8, 8)), y=np.array([0.5, 1.0])), "integers"),
    (lambda p: (p / "a.npz").write_bytes(b"not numpy"), "not a readable NumPy file"),
    (lambda p: (p / "a.txt").write_text("x"), "expected a .npz or .npy"),
])
def test_bad_data_files_are_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(RobverifyError, match=message):
        load_user_data(path)


def test_input_range_is_parsed_and_checked():
    assert parse_range(None) == (0.0, 1.0) and parse_range("0,255") == (0.0, 255.0)
    for bad in ("1", "2,1", "a,b", "0,inf"):
        with pytest.raises(RobverifyError, match="--input-range"):
            parse_range(bad)


def test_certify_on_own_data_equals_certify_on_the_task(tmp_path):
    """The same images as an .npz (labels), and as a 0..255 .npy (labels from the model) for the same network
    reading 0..255 inputs: the verdicts of the task run (eps scaled by 255 for the second, clipped to 0..255); values
    outside the stated range are refused."""
    model = digits_mlp(tmp_path / "digits.onnx")
    model255 = digits_mlp(tmp_path / "digits255.onnx", input_scale=255.0)
    data = load_task("digits[0-4]")
    np.savez(tmp_path / "test.npz", x=data.x_test.numpy(), y=data.y_test.numpy())
    np.save(tmp_path / "test255.npy", data.x_test.numpy() * 255.0)
    cli = [sys.executable, "-m", "robverify.cli", "certify", "-n", "12"]

    def certify(out: str, *extra: str, net: Path = model) -> pd.DataFrame:
        task = [] if "--data" in extra else ["--task", "digits[0-4]"]
        done = subprocess.run([*cli, str(net), *task, "--out", str(tmp_path / out), *extra],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return pd.read_parquet(tmp_path / out / "results.parquet")

    task = certify("task", "--eps", "0.05")
    own = certify("own", "--eps", "0.05", "--data", str(tmp_path / "test.npz"))
    assert own["task"].iloc[0] == "data:test.npz"
    assert own["sample_id"].tolist() == task["sample_id"].tolist()
    assert own["verdict"].tolist() == task["verdict"].tolist()
    for eps in (0.05, 0.15):
        task = certify(f"task{eps}", "--eps", str(eps))
        scaled = certify(f"scaled{eps}", "--eps", str(eps * 255), "--data", str(tmp_path / "test255.npy"),
                         "--input-range", "0,255", net=model255)
        correct = (task["verdict"] != "misclassified").to_numpy()
        assert (scaled["verdict"].to_numpy()[correct] == task["verdict"].to_numpy()[correct]).all()
        assert (scaled["verdict"] != "misclassified").all()  # labelled by the model's own predictions
        np.testing.assert_allclose(scaled["margin_lb"].to_numpy()[correct], task["margin_lb"].to_numpy()[correct],
                                   rtol=1e-3, atol=1e-3)
    refused = subprocess.run([*cli, str(model255), "--eps", "1", "--data", str(tmp_path / "test255.npy")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--input-range" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    both = subprocess.run([*cli, str(model), "--eps", "0.1", "--task", "digits[0-4]", "--data",
                           str(tmp_path / "test.npz")], capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "exclude each other" in both.stderr
