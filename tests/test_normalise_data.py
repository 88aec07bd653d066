"""Normalisation outside the model (--mean/--std) and VNN-LIB boxes as data.

Oracles: a twin network with the normalisation as its own first layer (same brackets), onnxruntime on the written
file against the formula, images round-tripped through export-vnnlib, and the VNN-COMP 2021 ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from torch import nn

from helpers import ChannelsLast, image_cnn, to_onnx
from robverify.app.commands import sweep_epsilon
from robverify.backends import BackendOptions
from robverify.errors import RobverifyError
from robverify.ir.blocks import Normalize
from robverify.ir.normalise_input import parse_channel_values, per_element, with_normalisation
from robverify.runs.sweep import SweepSettings
from trainers.property_data import read_property_samples

pytestmark = pytest.mark.filterwarnings("ignore:Tensorflow parser")

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.2, 0.3)
CLI = [sys.executable, "-m", "robverify.cli"]


def _sweep(model: Path, data: Path, out: Path, **extra) -> pd.DataFrame:
    _, table = sweep_epsilon(model, settings=SweepSettings.parse(1e-4, None, 1.0), task=None, n=10, method="crown",
                             backend="native", out=out, seed=0, device="cpu", data_root=None, batch_size=64,
                             options=BackendOptions(), data=data, **extra)
    return table.sort_values("sample_id").reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_std_outside_gives_the_brackets_of_the_model_with_the_layer_inside(tmp_path, seed):
    """A network without normalisation, verified with --mean/--std, against its twin whose first layer is the
    zoo's Normalize; also the channels-last twin of the bare network (mean/std follow the transpose)."""
    body = image_cnn(seed)
    inside = to_onnx(nn.Sequential(Normalize(MEAN, STD), body).eval(), tmp_path / "inside.onnx", (3, 6, 6))
    bare = to_onnx(body, tmp_path / "bare.onnx", (3, 6, 6))
    last = to_onnx(ChannelsLast(body).eval(), tmp_path / "last.onnx", (6, 6, 3))
    gen = torch.Generator().manual_seed(seed)
    np.save(tmp_path / "x.npy", torch.rand((10, 3, 6, 6), generator=gen).numpy())
    ref = _sweep(inside, tmp_path / "x.npy", tmp_path / "ref")
    for name, model in (("bare", bare), ("last", last)):
        got = _sweep(model, tmp_path / "x.npy", tmp_path / name, mean=",".join(map(str, MEAN)),
                     std=",".join(map(str, STD)))
        assert got["status"].tolist() == ref["status"].tolist()
        np.testing.assert_allclose(got["eps_lo"], ref["eps_lo"], atol=2e-4)
        if name == "bare":
            np.testing.assert_allclose(got["eps_hi"], ref["eps_hi"], atol=2e-4)
        else:  # the attack's random starts are drawn in the model's own layout: other points, other upper ends
            assert (got["eps_hi"] >= ref["eps_lo"]).all()
    # without --mean/--std the bare network is another function: its brackets differ
    plain = _sweep(bare, tmp_path / "x.npy", tmp_path / "plain")
    assert not np.allclose(plain["eps_lo"], ref["eps_lo"], atol=2e-4)
    meta = json.loads((tmp_path / "bare" / "run.json").read_text())
    assert meta["arguments"]["mean"] == ",".join(map(str, MEAN))
    assert (tmp_path / "bare" / "model_normalised.onnx").is_file()


def test_written_model_computes_the_normalised_network(tmp_path):
    body = image_cnn(3)
    bare = to_onnx(body, tmp_path / "bare.onnx", (3, 6, 6))
    mean = per_element(MEAN, (3, 6, 6), "--mean")
    std = per_element(STD, (3, 6, 6), "--std")
    path = with_normalisation(bare, mean, std, tmp_path / "normalised.onnx")
    x = np.random.default_rng(0).random((5, 3, 6, 6), dtype=np.float32)
    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = body((torch.from_numpy(x) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_bad_mean_std_are_one_line_errors(tmp_path):
    assert parse_channel_values("0.5", "--mean") == (0.5,)
    for text, what in (("a,b", "--mean"), ("0.1,nan", "--mean"), ("0.2,0", "--std")):
        with pytest.raises(RobverifyError):
            parse_channel_values(text, what)
    with pytest.raises(RobverifyError, match="3 channel"):
        per_element((0.1, 0.2), (3, 4, 4), "--mean")
    bare = to_onnx(image_cnn(0), tmp_path / "bare.onnx", (3, 6, 6))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((4, 3, 6, 6), dtype=np.float32))
    for extra, message in ((["--mean", "0.1,0.2"], "channel"), (["--std", "-1"], "> 0")):
        done = subprocess.run([*CLI, "certify", str(bare), "--eps", "0.01", "--data", str(tmp_path / "x.npy"),
                               "-n", "4", "--out", str(tmp_path / "r"), *extra],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "r").exists()


def test_exported_benchmark_read_back_as_data_gives_the_images_and_labels(tmp_path):
    """export-vnnlib writes boxes around images (clipped at 0 and 1); reading them back as --data recovers each
    image once (two radii per sample) and its label, for a CIFAR-shaped network."""
    body = image_cnn(5)
    model = to_onnx(body, tmp_path / "cnn.onnx", (3, 6, 6))
    rng = np.random.default_rng(5)
    x = rng.random((30, 3, 6, 6), dtype=np.float32)
    x[:, 0, 0, :] = 0.0  # clipped below
    x[:, 1, 2, :] = 1.0  # clipped above
    x[:, 2, 3, 3] = 0.01  # clipped below, not at the range's end
    with torch.no_grad():
        y = body(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    done = subprocess.run([*CLI, "export-vnnlib", str(model), "--eps", "0.02", "--eps", "0.05", "--data",
                           str(tmp_path / "data.npz"), "-n", "6", "--out", str(tmp_path / "bench")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    images, labels, names = read_property_samples(tmp_path / "bench", (0.0, 1.0))
    assert images.shape == (6, 108) and len(names) == 6
    flat = x.reshape(30, -1)
    for image, label in zip(images.numpy(), labels.tolist()):
        k = int(np.abs(flat - image).max(axis=1).argmin())
        np.testing.assert_allclose(image, flat[k], atol=1e-6)
        assert label == y[k]
    # and as --data of certify: every sample correctly classified (the labels are the exported ones)
    done = subprocess.run([*CLI, "certify", str(model), "--eps", "0.02", "--data", str(tmp_path / "bench"), "-n", "6",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert (table["verdict"] != "misclassified").all()


def test_non_robustness_property_is_refused(tmp_path):
    text = ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
            "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n(assert (>= Y_0 0.5))\n")
    (tmp_path / "p.vnnlib").write_text(text)
    with pytest.raises(RobverifyError, match="not a robustness property"):
        read_property_samples(tmp_path / "p.vnnlib", (0.0, 1.0))


def test_vnncomp_mnistfc_properties_as_data(tmp_path, vnncomp_dir):
    """The 15 MNIST images embedded in the mnistfc properties (two radii each): the network classifies each as
    its property's label, and certify at 0.03 never verifies an instance the ground truth calls sat."""
    folder = vnncomp_dir / "mnistfc"
    images, labels, names = read_property_samples(folder, (0.0, 1.0))
    assert images.shape == (15, 784)
    done = subprocess.run([*CLI, "certify", str(folder / "mnist-net_256x2.onnx"), "--eps", "0.03", "--data",
                           str(folder), "-n", "15", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert (table["verdict"] != "misclassified").all()
    truth = pd.read_csv(vnncomp_dir / "ground_truth.csv")
    truth = truth[(truth["onnx"] == "mnist-net_256x2.onnx")].set_index("vnnlib")["consensus"]
    for sid, verdict in zip(table["sample_id"], table["verdict"]):
        prop = names[int(sid)].replace("0.05", "0.03")
        if verdict == "verified":
            assert truth[prop] != "sat"
        if verdict == "falsified":
            assert truth[prop] != "unsat"
    assert (table["verdict"] == "verified").sum() >= 5


@pytest.mark.parametrize("benchmark", ["cifar2020", "oval21", "eran"])
def test_vnncomp_cifar_models_on_their_own_images(tmp_path, vnncomp_dir, benchmark):
    """A VNN-COMP 2021 CIFAR benchmark, where ../shared holds one: certify its first network on its own
    embedded images end to end (skipped here otherwise)."""
    folder = vnncomp_dir / benchmark
    if not folder.is_dir():
        pytest.skip(f"../shared/vnncomp2021/{benchmark} is not present")
    model = sorted(folder.rglob("*.onnx"))[0]
    props = folder / "vnnlib" if (folder / "vnnlib").is_dir() else folder
    done = subprocess.run([*CLI, "certify", str(model), "--eps", str(2 / 255), "--data", str(props), "-n", "3",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_parquet(tmp_path / "run" / "results.parquet")) == 3


def test_box_clipped_off_the_input_range_is_refused(tmp_path):
    lines = ["(declare-const X_0 Real)", "(declare-const X_1 Real)", "(declare-const Y_0 Real)",
             "(declare-const Y_1 Real)", "(assert (>= X_0 0.2))", "(assert (<= X_0 0.4))", "(assert (>= X_1 0.25))",
             "(assert (<= X_1 0.35))", "(assert (>= Y_1 Y_0))"]
    (tmp_path / "p.vnnlib").write_text("\n".join(lines) + "\n")
    with pytest.raises(RobverifyError, match="--input-range"):
        read_property_samples(tmp_path / "p.vnnlib", (0.0, 1.0))
    images, labels, _ = read_property_samples(tmp_path / "p.vnnlib", (0.0, 0.35))
    np.testing.assert_allclose(images.numpy(), [[0.3, 0.35]], atol=1e-7)
    assert labels.tolist() == [0]
