"""Loading networks into the graph IR (:func:`robverify.ir.from_onnx.from_onnx`): third-party VNN-COMP files,
every zoo architecture (compared with :func:`robverify.ir.from_module.from_module` of the same model), and the
errors for files the IR cannot read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from helpers import NET_KINDS, NET_SHAPES, random_boxes, single_thread, tiny_net, to_onnx  # noqa: F401 (fixture)
from properties.onnx_export import export_onnx
from robverify.engine.bounds import compute_bounds
from robverify.errors import RobverifyError
from robverify.ir.graph import Graph
from robverify.ir.model import load_model
from robverify.ir.from_module import from_module
from robverify.ir.from_onnx import SUPPORTED_OPS, from_onnx
from robverify.spec import Method, robustness_spec
from trainers.zoo import build_model

# ------------------------------------------------------------------------------------------------ helpers


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _runtime_logits(path: Path, graph: Graph, x: torch.Tensor) -> np.ndarray:
    """onnxruntime's outputs ``[N, n_out]`` for per-sample inputs ``x`` ``[N, *graph.input_shape]``, feeding the
    model's own input layout (a batch for a dynamic batch dimension, else one sample at a time)."""
    session = _session(path)
    name = session.get_inputs()[0].name
    arr = x.numpy().astype(np.float32)
    if graph.dynamic_batch:
        return session.run(None, {name: arr})[0].reshape(arr.shape[0], -1).astype(np.float64)
    return np.stack([session.run(None, {name: a})[0].reshape(-1) for a in arr]).astype(np.float64)


def _inputs(shape: tuple[int, ...], seed: int, n: int = 16) -> torch.Tensor:
    """Half uniform in [0, 1], half wider normal values (to leave the range the loader's own check uses)."""
    gen = torch.Generator().manual_seed(seed)
    uniform = torch.rand((n // 2, *shape), generator=gen)
    normal = torch.randn((n - n // 2, *shape), generator=gen) * 2
    return torch.cat([uniform, normal])


def _vnncomp_models(root: Path) -> list[Path]:
    return sorted(root.rglob("*.onnx"))


# ------------------------------------------------------------------------------------------------ VNN-COMP


def test_vnncomp_networks_load_and_match_onnxruntime(vnncomp_dir):
    paths = _vnncomp_models(vnncomp_dir)
    assert len(paths) >= 8  # mnistfc: 3 networks, test: 5
    for i, path in enumerate(paths):
        graph = from_onnx(path)  # checks itself against onnxruntime on inputs in [0, 1]
        assert graph.onnx_path == str(path)
        x = _inputs(graph.input_shape, seed=i)
        with torch.no_grad():
            ours = graph(x).double().numpy()
        theirs = _runtime_logits(path, graph, x)
        assert ours.shape == theirs.shape
        scale = 1.0 + np.abs(theirs).max()
        assert np.abs(ours - theirs).max() <= 1e-5 * scale, f"{path.name}: IR differs from onnxruntime"


def test_vnncomp_mnistfc_shapes(vnncomp_dir):
    for depth in (2, 4, 6):
        graph = from_onnx(vnncomp_dir / "mnistfc" / f"mnist-net_256x{depth}.onnx")
        assert graph.input_shape == (1, 784, 1)
        assert not graph.dynamic_batch
        assert graph.n_inputs == 784 and graph.n_outputs == 10


def test_load_model_of_vnncomp_network(vnncomp_dir):
    model = load_model(vnncomp_dir / "mnistfc" / "mnist-net_256x2.onnx")
    x = torch.rand(3, *model.graph.input_shape)
    with torch.no_grad():
        expected = model.graph(x).argmax(1)
    assert torch.equal(model.predict(x), expected)
    assert len(model.sha256) == 64


# ------------------------------------------------------------------------------------------------ bad files


def test_missing_file_raises(tmp_path):
    with pytest.raises(RobverifyError, match="no such model file"):
        from_onnx(tmp_path / "absent.onnx")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(RobverifyError):
        from_onnx(tmp_path)


def test_random_bytes_raise(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RobverifyError) as info:
        from_onnx(path)
    assert "corrupt.onnx" in str(info.value)
    assert "\n" not in str(info.value)  # one line for the command line


def test_text_file_raises(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not an ONNX model\n(declare-const X_0 Real)\n")
    with pytest.raises(RobverifyError, match="notes.onnx"):
        from_onnx(path)


def test_truncated_model_raises(tmp_path):
    good = to_onnx(nn.Sequential(nn.Linear(4, 3)), tmp_path / "good.onnx", (4,))
    bad = tmp_path / "truncated.onnx"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(RobverifyError):
        from_onnx(bad)
    with pytest.raises(RobverifyError):
        load_model(bad)


def _model_with(op_type: str, node_name: str, attrs: dict | None = None) -> onnx.ModelProto:
    """``x [N, 4] -> Gemm -> <op_type> -> Gemm -> y [N, 3]`` with a dynamic batch dimension."""
    rng = np.random.default_rng(0)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [4, 5], rng.normal(size=20).astype(np.float32).tolist())
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [5, 3], rng.normal(size=15).astype(np.float32).tolist())
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="first_gemm"),
        helper.make_node(op_type, ["h"], ["a"], name=node_name, **(attrs or {})),
        helper.make_node("Gemm", ["a", "w2"], ["y"], name="second_gemm"),
    ]
    graph = helper.make_graph(
        nodes, "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("op_type,attrs", [("Softplus", None), ("LeakyRelu", {"alpha": 0.1}), ("Elu", None),
                                           ("Exp", None)])
def test_unsupported_operator_is_named(tmp_path, op_type, attrs):
    path = tmp_path / "unsupported.onnx"
    onnx.save(_model_with(op_type, "the_odd_node", attrs), str(path))
    assert _session(path) is not None  # a valid model that onnxruntime runs: only the IR lacks the operator
    with pytest.raises(RobverifyError) as info:
        from_onnx(path)
    message = str(info.value)
    assert op_type in message
    assert "the_odd_node" in message
    assert "supported" in message
    assert all(op in message for op in ("Relu", "Gemm", "Conv", "MaxPool"))
    assert set(SUPPORTED_OPS) <= set(message.replace(",", " ").replace(";", " ").split())
    with pytest.raises(RobverifyError, match=op_type):
        load_model(path)


def test_unsupported_operator_without_name_is_located_by_output(tmp_path):
    model = _model_with("Softplus", "")
    path = tmp_path / "unnamed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RobverifyError) as info:
        from_onnx(path)
    assert "Softplus" in str(info.value) and "'a'" in str(info.value)


def test_two_graph_inputs_are_rejected(tmp_path):
    nodes = [helper.make_node("Add", ["x", "z"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RobverifyError, match="one graph input"):
        from_onnx(path)


# ------------------------------------------------------------------------------------------------ the zoo


ZOO = [
    ("mlp", {}), ("mlp", {"activation": "sigmoid"}), ("mlp", {"activation": "tanh"}),
    ("cnn-small", {}), ("cnn-small", {"activation": "sigmoid"}), ("cnn-small", {"activation": "tanh"}),
    ("cnn-bn", {}), ("resnet-tiny", {}), ("resnet-tiny", {"n_blocks": 3}),
]
ZOO_IDS = [f"{arch}{'-' + '-'.join(map(str, o.values())) if o else ''}" for arch, o in ZOO]
SHAPE = (1, 8, 8)


def _zoo_model(arch: str, options: dict) -> nn.Module:
    model = build_model(arch, SHAPE, 10, mean=[0.4], std=[0.3], seed=0, **options)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.train()  # a few training-mode passes make the running statistics non-trivial
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(32, *SHAPE) * 1.5)
    return model.eval()


@pytest.mark.parametrize("arch,options", [
    pytest.param(arch, options, id=name, marks=[pytest.mark.slow] if options.get("n_blocks") == 3 else [])
    for (arch, options), name in zip(ZOO, ZOO_IDS)])
def test_zoo_architecture_loads_from_onnx_and_module_alike(tmp_path, arch, options):
    model = _zoo_model(arch, options)
    path = tmp_path / "model.onnx"
    export_onnx(model, path, SHAPE, n_parity=8)
    from_file = from_onnx(path)
    from_live = from_module(model, SHAPE)
    assert from_file.input_shape == from_live.input_shape == SHAPE
    assert from_file.dynamic_batch
    assert from_file.n_outputs == from_live.n_outputs == 10

    x = torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(from_live(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(from_file(x), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_runtime_logits(path, from_file, x), expected.double().numpy(), rtol=0, atol=1e-5)

    spec = robustness_spec(x[:4], expected[:4].argmax(1), torch.tensor([0.0, 0.002, 0.01, 0.03]), 10)
    a = compute_bounds(from_live, spec, Method.CROWN).rows_lb
    b = compute_bounds(from_file, spec, Method.CROWN).rows_lb
    assert bool(torch.isfinite(a).all())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ operators
#
# One hand-built ONNX model per operator pattern (x [N, 2, 4, 4] -> ... -> y [N, 3]): the IR must compute what
# onnxruntime computes, and its bounds must hold for every value onnxruntime produces inside the box.

IN_SHAPE = (2, 4, 4)
_RNG = np.random.default_rng(1234)


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    arr = np.asarray(value, dtype=dtype)
    return onnx.numpy_helper.from_array(arr, name)


def _rand(name: str, *shape: int, scale: float = 0.5) -> onnx.TensorProto:
    return _const(name, _RNG.normal(size=shape) * scale)


def _head(src: str, n_features: int, tag: str = "head") -> tuple[list, list]:
    """Flatten + Gemm to 3 outputs named ``y``."""
    return ([helper.make_node("Flatten", [src], [f"{tag}_flat"], name=f"{tag}_flatten"),
             helper.make_node("Gemm", [f"{tag}_flat", f"{tag}_w", f"{tag}_b"], ["y"], name=f"{tag}_gemm",
                              transB=1)],
            [_rand(f"{tag}_w", 3, n_features), _rand(f"{tag}_b", 3)])


def _op_cases() -> dict[str, tuple[list, list]]:
    """name -> (nodes, initializers); every model reads ``x`` and writes ``y``."""
    N = helper.make_node
    cases: dict[str, tuple[list, list]] = {}

    def add(name, nodes, inits, src, n_features):
        head_nodes, head_inits = _head(src, n_features)
        cases[name] = (nodes + head_nodes, inits + head_inits)

    cases["Gemm-transB0-alpha-beta"] = (
        [N("Flatten", ["x"], ["f"], name="flat"), N("Gemm", ["f", "w", "c"], ["h"], name="g1", alpha=0.5, beta=2.0),
         N("Relu", ["h"], ["r"], name="relu"), N("Gemm", ["r", "w2"], ["y"], name="g2")],
        [_rand("w", 32, 6), _rand("c", 6), _rand("w2", 6, 3)])
    cases["MatMul-right-Add"] = (
        [N("Flatten", ["x"], ["f"], name="flat"), N("MatMul", ["f", "w"], ["m"], name="mm"),
         N("Add", ["m", "b"], ["h"], name="add"), N("Tanh", ["h"], ["t"], name="tanh"),
         N("MatMul", ["t", "w2"], ["y"], name="mm2")],
        [_rand("w", 32, 6), _rand("b", 6), _rand("w2", 6, 3)])
    add("MatMul-left", [N("MatMul", ["wl", "x"], ["m"], name="mml"), N("Relu", ["m"], ["r"], name="relu")],
        [_rand("wl", 3, 4)], "r", 24)
    add("Conv-asymmetric-pads", [N("Conv", ["x", "k", "kb"], ["c"], name="conv", pads=[0, 1, 1, 0]),
                                 N("Relu", ["c"], ["r"], name="relu")],
        [_rand("k", 3, 2, 3, 3), _rand("kb", 3)], "r", 3 * 3 * 3)
    add("Conv-dilated-grouped-strided",
        [N("Conv", ["x", "k"], ["c"], name="conv", group=2, dilations=[2, 2], pads=[2, 2, 2, 2], strides=[2, 2]),
         N("Sigmoid", ["c"], ["s"], name="sig")],
        [_rand("k", 4, 1, 3, 3)], "s", 4 * 2 * 2)
    add("Pad-constant-value",
        [N("Pad", ["x", "pads", "pv"], ["p"], name="pad"), N("Relu", ["p"], ["r"], name="relu")],
        [_const("pads", [0, 0, 1, 2, 0, 0, 0, 1], np.int64), _const("pv", 0.5)], "r", 2 * 5 * 7)
    add("Transpose", [N("Transpose", ["x"], ["t"], name="tr", perm=[0, 2, 3, 1]), N("Relu", ["t"], ["r"], name="r")],
        [], "r", 32)
    add("Sub-and-Add-of-two-paths",
        [N("Conv", ["x", "k1"], ["a"], name="c1", pads=[1, 1, 1, 1]), N("Conv", ["x", "k2"], ["b"], name="c2"),
         N("Relu", ["a"], ["ra"], name="ra"), N("Sub", ["a", "b"], ["d"], name="sub"),
         N("Add", ["d", "ra"], ["s"], name="add"), N("Relu", ["s"], ["r"], name="relu")],
        [_rand("k1", 2, 2, 3, 3), _rand("k2", 2, 2, 1, 1)], "r", 32)
    add("Elementwise-constants",
        [N("Sub", ["c1", "x"], ["a"], name="rsub"), N("Div", ["a", "c2"], ["b"], name="div"),
         N("Neg", ["b"], ["n"], name="neg"), N("Mul", ["n", "c3"], ["m"], name="mul"),
         N("Add", ["c4", "m"], ["s"], name="radd"), N("Relu", ["s"], ["r"], name="relu")],
        [_rand("c1", 1, 2, 1, 1), _const("c2", [[[[2.0]], [[-0.5]]]]), _rand("c3", 2, 4, 4),
         _rand("c4", 1, 1, 4)], "r", 32)
    add("BatchNormalization",
        [N("Conv", ["x", "k"], ["c"], name="conv"),
         N("BatchNormalization", ["c", "g", "be", "mu", "var"], ["bn"], name="bn", epsilon=1e-3),
         N("Relu", ["bn"], ["r"], name="relu")],
        [_rand("k", 3, 2, 3, 3), _rand("g", 3, scale=1.0), _rand("be", 3), _rand("mu", 3),
         _const("var", _RNG.uniform(0.2, 2.0, 3))], "r", 3 * 2 * 2)
    for include in (0, 1):
        add(f"AveragePool-pads-include{include}",
            [N("Relu", ["x"], ["r0"], name="r0"),
             N("AveragePool", ["r0"], ["p"], name="avg", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=include)], [], "p", 2 * 2 * 2)
    add("GlobalAveragePool", [N("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                              N("Relu", ["c"], ["r"], name="relu"), N("GlobalAveragePool", ["r"], ["g"], name="gap")],
        [_rand("k", 4, 2, 3, 3)], "g", 4)
    add("MaxPool-overlap-pads-dilations",
        [N("Conv", ["x", "k"], ["c"], name="conv"),
         N("MaxPool", ["c"], ["m"], name="max1", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
         N("MaxPool", ["m"], ["m2"], name="max2", kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2],
           pads=[1, 1, 1, 1]), N("Relu", ["m2"], ["r"], name="relu")],
        [_rand("k", 2, 2, 1, 1)], "r", 2 * 4 * 4)
    add("Squeeze-Unsqueeze",
        [N("Unsqueeze", ["x", "ax"], ["u"], name="unsq"), N("Relu", ["u"], ["r"], name="relu"),
         N("Squeeze", ["r", "ax"], ["s"], name="sq")],
        [_const("ax", [1], np.int64)], "s", 32)
    # (a 1-D index: the scalar index torch writes is test_torch_view_export_loads)
    cases["Shape-Gather-Concat-Reshape"] = (
        [N("Shape", ["x"], ["shape"], name="shape"), N("Gather", ["shape", "i0"], ["n1"], name="gather", axis=0),
         N("Concat", ["n1", "minus1"], ["target"], name="cat", axis=0),
         N("Reshape", ["x", "target"], ["f"], name="reshape"), N("Gemm", ["f", "w", "b"], ["h"], name="g1", transB=1),
         N("Relu", ["h"], ["r"], name="relu"),
         N("Reshape", ["r", "zero_m1"], ["r2"], name="reshape0"),
         N("Gemm", ["r2", "w2"], ["y"], name="g2", transB=1)],
        [_const("i0", [0], np.int64), _const("minus1", [-1], np.int64),
         _rand("w", 6, 32), _rand("b", 6), _const("zero_m1", [0, -1], np.int64), _rand("w2", 3, 6)])
    add("Identity-Dropout-Cast-Constant",
        [N("Identity", ["x"], ["i"], name="id"), N("Dropout", ["i"], ["d"], name="drop"),
         N("Cast", ["d"], ["c"], name="cast", to=TensorProto.FLOAT),
         N("Constant", [], ["k"], name="const", value=_rand("kv", 3, 2, 2, 2)),
         N("Conv", ["c", "k"], ["v"], name="conv", strides=[2, 2]), N("Relu", ["v"], ["r"], name="relu")],
        [], "r", 3 * 2 * 2)
    return cases


OP_CASES = _op_cases()


def _op_model(tmp_path: Path, name: str) -> Path:
    nodes, inits = OP_CASES[name]
    graph = helper.make_graph(nodes, name.replace("-", "_"),
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *IN_SHAPE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_operator_cases_cover_every_supported_operator():
    used = {node.op_type for nodes, _ in OP_CASES.values() for node in nodes}
    assert set(SUPPORTED_OPS) <= used, f"no case for {sorted(set(SUPPORTED_OPS) - used)}"


@pytest.mark.parametrize("name", list(OP_CASES))
def test_operator_matches_onnxruntime_and_bounds_hold(tmp_path, name):
    path = _op_model(tmp_path, name)
    graph = from_onnx(path)
    assert graph.input_shape == IN_SHAPE and graph.dynamic_batch and graph.n_outputs == 3
    x = _inputs(IN_SHAPE, seed=3)
    with torch.no_grad():
        ours = graph(x).double().numpy()
    theirs = _runtime_logits(path, graph, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    # bounds of random rows (and their negations) over random boxes, against onnxruntime on dense samples
    gen = torch.Generator().manual_seed(5)
    centres = torch.rand((3, *IN_SHAPE), generator=gen)
    eps = torch.tensor([0.02, 0.1, 0.3])
    base = robustness_spec(centres, torch.zeros(3, dtype=torch.long), eps, 3)
    C = torch.randn((3, 2, 3), generator=gen)
    C = torch.cat([C, -C], dim=1)
    spec = type(base)(base.x_lo, base.x_hi, C, torch.zeros(3, 4), torch.arange(4))
    points = spec.x_lo.unsqueeze(1) + torch.rand((3, 1500, *IN_SHAPE), generator=gen) * (
        spec.x_hi - spec.x_lo).unsqueeze(1)
    corners = torch.where(torch.rand((3, 500, *IN_SHAPE), generator=gen) < 0.5, spec.x_lo.unsqueeze(1),
                          spec.x_hi.unsqueeze(1))
    points = torch.cat([points, corners], dim=1)
    y = torch.from_numpy(_runtime_logits(path, graph, points.reshape(-1, *IN_SHAPE))).reshape(3, 2000, 3)
    reached = torch.einsum("bso,bmo->bms", C.double(), y).amin(dim=1)
    previous = None
    for method in Method:
        rows = compute_bounds(graph, spec, method).rows_lb
        assert bool(torch.isfinite(rows).all())
        assert bool((rows.double() <= reached).all()), f"{method.value}: {rows.tolist()} vs {reached.tolist()}"
        if previous is not None:
            assert bool((rows >= previous).all())
        previous = rows


def test_flatten_across_the_batch_is_rejected(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="bad_flatten", axis=2),
             helper.make_node("Relu", ["f"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *IN_SHAPE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RobverifyError, match="batch"):
        from_onnx(path)


@pytest.mark.parametrize("kind", NET_KINDS)
def test_fixed_batch_export_loads_and_bounds_hold(tmp_path, kind):
    """VNN-COMP style: an export without a dynamic batch dimension (input ``[1, *shape]``) is read with the
    leading 1 in the per-sample shape; forward and bounds agree with onnxruntime there too."""
    import warnings

    net = tiny_net(kind, 2)
    shape = NET_SHAPES[kind]
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, *shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["y"])
    graph = from_onnx(path)
    assert graph.input_shape == (1, *shape) and not graph.dynamic_batch
    x = _inputs(graph.input_shape, seed=1, n=8)
    with torch.no_grad():
        np.testing.assert_allclose(graph(x).double().numpy(), _runtime_logits(path, graph, x), rtol=1e-5, atol=1e-5)
    centres, eps = random_boxes(graph.input_shape, (0.05, 0.2), 1, seed=0)
    label = torch.from_numpy(_runtime_logits(path, graph, centres).argmax(1))
    spec = robustness_spec(centres, label, eps, 3)
    gen = torch.Generator().manual_seed(0)
    points = spec.x_lo.unsqueeze(1) + torch.rand((2, 500, *graph.input_shape), generator=gen) * (
        spec.x_hi - spec.x_lo).unsqueeze(1)
    y = torch.from_numpy(_runtime_logits(path, graph, points.reshape(-1, *graph.input_shape))).reshape(2, 500, 3)
    reached = torch.einsum("bso,bmo->bms", spec.C.double(), y).amin(dim=1)
    for method in Method:
        rows = compute_bounds(graph, spec, method).rows_lb.double()
        assert bool((rows <= reached).all()), f"{kind} {method.value}: {rows.tolist()} vs {reached.tolist()}"


# ------------------------------------------------------------------------------------------------ known bugs


def _single_node_model(tmp_path: Path, node: onnx.NodeProto, inits: list, name: str) -> Path:
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None, None, None])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _loads_and_matches(path: Path) -> None:
    graph = from_onnx(path)
    x = _inputs(graph.input_shape, seed=0)
    with torch.no_grad():
        ours = graph(x).double().numpy()
    np.testing.assert_allclose(ours, _runtime_logits(path, graph, x), rtol=1e-5, atol=1e-5)


def test_torch_view_export_loads(tmp_path):
    class ViewNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1))

    path = to_onnx(ViewNet().eval(), tmp_path / "view.onnx", (1, 6, 6))
    _loads_and_matches(path)


@pytest.mark.parametrize("case", ["pad-mode-constant", "conv-auto_pad-NOTSET", "conv-auto_pad-VALID"])
def test_explicit_default_string_attributes_are_accepted(tmp_path, case):
    if case == "pad-mode-constant":
        pads = _const("pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64)
        node = helper.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode="constant")
        path = _single_node_model(tmp_path, node, [pads], "pad")
    else:
        node = helper.make_node("Conv", ["x", "k"], ["y"], name="conv", auto_pad=case.split("-")[-1])
        path = _single_node_model(tmp_path, node, [_rand("k", 1, 1, 3, 3)], "conv")
    _loads_and_matches(path)


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
def test_pooling_auto_pad_is_read_or_rejected(tmp_path, op_type):
    node = helper.make_node(op_type, ["x"], ["y"], name="pool", kernel_shape=[2, 2], auto_pad="SAME_UPPER")
    path = _single_node_model(tmp_path, node, [], "pool")
    try:
        _loads_and_matches(path)
    except RobverifyError:
        pass  # rejecting it with a clear message is fine too


def test_module_with_the_wrong_input_shape_is_a_clear_error():
    from robverify.errors import RobverifyError
    from robverify.ir.from_module import from_module

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))
    with pytest.raises(RobverifyError, match=r"module 1: cannot take inputs of shape \[9\]"):
        from_module(net, (1, 3, 3))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_named(tmp_path, value):
    """A model whose weights hold NaN (or inf) is refused naming the initializer, not as a parity failure."""
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        net[2].weight[1, 3] = value
    path = tmp_path / "nan.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["y"], dynamic_axes={"input": {0: "N"}})
    names = [i.name for i in onnx.load(str(path)).graph.initializer]
    bad = [n for n in names if "2.weight" in n]
    assert len(bad) == 1
    for load in (from_onnx, load_model):
        with pytest.raises(RobverifyError) as info:
            load(path)
        message = str(info.value)
        assert "\n" not in message and "non-finite" in message and repr(bad[0]) in message
        assert ("NaN" if value != value else "inf") in message and "onnxruntime" not in message
        assert not any(repr(n) in message for n in names if n != bad[0])  # only the bad one is named
