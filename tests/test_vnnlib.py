"""VNN-LIB reading and writing: real VNN-COMP files, round trips, malformed input, located errors."""

from __future__ import annotations

import math
import re
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robverify.formats.vnnlib_read import VnnlibError, VnnlibProperty, parse_vnnlib, read_vnnlib
from robverify.formats.vnnlib_write import write_robustness_vnnlib, write_spec_vnnlib
from robverify.errors import RobverifyError
from robverify.spec import Spec, robustness_spec

# ----------------------------------------------------------------------------------------------------------------
# Real VNN-COMP 2021 files


def _onnx_io_sizes(path: Path) -> tuple[int, int]:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(path))
    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    sizes = []
    for vi in (inputs[0], model.graph.output[0]):
        sizes.append(math.prod(d.dim_value for d in vi.type.tensor_type.shape.dim))
    return sizes[0], sizes[1]


def _instances(vnncomp_dir: Path) -> list[tuple[Path, Path]]:
    out = []
    for csv in sorted(vnncomp_dir.glob("*/*_instances.csv")):
        for line in csv.read_text().splitlines():
            if line.strip():
                onnx_name, vnnlib_name = [c.strip() for c in line.split(",")[:2]]
                out.append((csv.parent / onnx_name, csv.parent / vnnlib_name))
    return out


def test_every_vnncomp_file_parses_with_the_model_sizes(vnncomp_dir: Path) -> None:
    files = sorted(vnncomp_dir.glob("*/*.vnnlib"))
    assert len(files) == 34
    sizes: dict[Path, tuple[int, int]] = {}
    for onnx_path, vnnlib_path in _instances(vnncomp_dir):
        sizes.setdefault(vnnlib_path, _onnx_io_sizes(onnx_path))
    assert set(sizes) == set(files)
    for path in files:
        n_in, n_out = sizes[path]
        props = read_vnnlib(path, n_inputs=n_in, n_outputs=n_out)
        assert len(props) == 1, path
        p = props[0]
        assert (p.n_inputs, p.n_outputs) == (n_in, n_out)
        assert p.x_lo.shape == (n_in,) and p.C.shape[1] == n_out and p.x_lo.dtype == torch.float64
        assert bool((p.x_lo <= p.x_hi).all())
        if path.parent.name == "mnistfc":
            assert (n_in, n_out) == (784, 10)
            spec = p.to_spec((1, 784, 1))
            assert spec.x_lo.shape == (1, 1, 784, 1)


def test_mnistfc_property_values(vnncomp_dir: Path) -> None:
    path = vnncomp_dir / "mnistfc" / "prop_0_0.03.vnnlib"
    text = path.read_text()
    label = int(re.search(r"label: (\d+)", text).group(1))
    assert label == 8
    (p,) = read_vnnlib(path, n_inputs=784, n_outputs=10)
    # read by hand from the file
    assert "(assert (<= X_0 0.029999999329447746))\n(assert (>= X_0 0.0))" in text
    assert p.x_lo[0].item() == 0.0 and p.x_hi[0].item() == 0.029999999329447746
    for i in (0, 100, 300, 783):
        hi = float(re.search(rf"\(assert \(<= X_{i} ([^)]+)\)\)", text).group(1))
        lo = float(re.search(rf"\(assert \(>= X_{i} ([^)]+)\)\)", text).group(1))
        assert (p.x_lo[i].item(), p.x_hi[i].item()) == (lo, hi)
    # rows Y_label - Y_j <= 0, one group per j != label
    others = [j for j in range(10) if j != label]
    expected = torch.zeros(9, 10, dtype=torch.float64)
    for s, j in enumerate(others):
        expected[s, label] = 1.0
        expected[s, j] = -1.0
    assert torch.equal(p.C, expected)
    assert torch.equal(p.d, torch.zeros(9, dtype=torch.float64))
    assert p.group.tolist() == list(range(9))
    # the same as robverify's own robustness spec structure
    ref = robustness_spec(torch.zeros(1, 784), torch.tensor([label]), 0.03, 10)
    assert torch.equal(p.C.float(), ref.C[0]) and p.group.tolist() == ref.group.tolist()


def test_vnncomp_test_properties(vnncomp_dir: Path) -> None:
    (prop,) = read_vnnlib(vnncomp_dir / "test" / "test_prop.vnnlib", 5, 5)
    assert prop.x_lo.tolist() == [-0.30353115613746867, -0.009549296585513092, 0.4933803235848431, 0.3, 0.3]
    assert prop.x_hi.tolist() == [-0.29855281193475053, 0.009549296585513092, 0.49999999998567607, 0.5, 0.5]
    assert prop.group.tolist() == [0, 0, 0, 0]  # four conjoined rows y_0 - y_k <= 0
    assert prop.C[:, 0].tolist() == [1.0] * 4
    assert prop.C[:, 1:].tolist() == (-torch.eye(4, dtype=torch.float64)).tolist()
    (nano,) = read_vnnlib(vnncomp_dir / "test" / "test_nano.vnnlib", 1, 1)
    assert (nano.x_lo.item(), nano.x_hi.item(), nano.C.item(), nano.d.item()) == (-1.0, 1.0, 1.0, -1.0)
    (small,) = read_vnnlib(vnncomp_dir / "test" / "test_small.vnnlib", 1, 1)  # box inside the disjunct
    assert (small.x_lo.item(), small.x_hi.item(), small.C.item(), small.d.item()) == (-1.0, 1.0, -1.0, -100.0)


def test_mnistfc_parse_time(vnncomp_dir: Path) -> None:
    text = (vnncomp_dir / "mnistfc" / "prop_7_0.05.vnnlib").read_text()
    parse_vnnlib(text)
    best = min(_timed(lambda: parse_vnnlib(text)) for _ in range(5))
    assert best < 0.1, f"parsing a mnistfc property took {best:.3f} s"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------------------------------------------
# Writing local robustness properties


@pytest.mark.parametrize("target", [None, 2])
@pytest.mark.parametrize("shape", [(1, 4, 4), (7,), (1, 3, 2, 2)])
def test_robustness_round_trip(tmp_path: Path, shape: tuple, target: int | None) -> None:
    g = torch.Generator().manual_seed(len(shape) + (target or 0))
    x = torch.rand(shape, generator=g)
    x.view(-1)[0] = 0.0  # clipped at the domain
    x.view(-1)[-1] = 1.0
    eps, label, n = 0.03, 1, 4
    path = write_robustness_vnnlib(tmp_path / "sub" / "r.vnnlib", x, label, eps, n, target=target, comment="test\nprop")
    n_in = x.numel()
    (p,) = read_vnnlib(path, n_inputs=n_in, n_outputs=n)
    x64 = x.reshape(-1).double()
    lo64, hi64 = (x64 - eps).clamp(0, 1), (x64 + eps).clamp(0, 1)
    # float64: contains the intended box, within a float32 ulp of it
    assert bool((p.x_lo <= lo64).all()) and bool((p.x_hi >= hi64).all())
    ulp = torch.finfo(torch.float32).eps
    assert float((lo64 - p.x_lo).max()) <= ulp and float((p.x_hi - hi64).max()) <= ulp
    # float32: contains robustness_spec's box, within 1-2 float32 ulps
    in_shape = tuple(shape[1:]) if len(shape) > 1 and shape[0] == 1 else tuple(shape)
    ref = robustness_spec(x.reshape(1, *in_shape), torch.tensor([label]), eps, n,
                          target=None if target is None else torch.tensor([target]))
    spec = p.to_spec(in_shape)
    assert spec.x_lo.dtype == torch.float32 and spec.x_lo.shape == ref.x_lo.shape
    assert bool((spec.x_lo <= ref.x_lo).all()) and bool((spec.x_hi >= ref.x_hi).all())
    assert bool((spec.x_lo.double() <= lo64.reshape(spec.x_lo.shape)).all())
    assert bool((spec.x_hi.double() >= hi64.reshape(spec.x_hi.shape)).all())
    assert float((ref.x_lo - spec.x_lo).max()) <= 2 * ulp and float((spec.x_hi - ref.x_hi).max()) <= 2 * ulp
    assert torch.equal(spec.C, ref.C) and torch.equal(spec.d, ref.d) and torch.equal(spec.group, ref.group)
    text = path.read_text()
    assert text.startswith(";") and "; test\n; prop\n" in text
    if target is None:
        assert "(and (>= Y_0 Y_1))" in text
    else:
        assert f"(assert (>= Y_{target} Y_{label}))" in text
    assert not list(path.parent.glob("*.tmp"))


def test_robustness_bounds_never_shrink_under_rounding(tmp_path: Path) -> None:
    # values whose x ± eps are not representable; every bound must contain float64 and float32 intended values
    x = torch.tensor([0.1, 0.2, 0.7, 1 / 3, 0.999, 0.5 + 2**-20], dtype=torch.float32)
    for eps in (1e-7, 0.1, 1 / 255, 0.3):
        path = write_robustness_vnnlib(tmp_path / "b.vnnlib", x, 0, eps, 3, domain=(-0.25, 1.0))
        text = path.read_text()
        ups = [float(v) for v in re.findall(r"\(<= X_\d+ ([^)]+)\)", text)]
        los = [float(v) for v in re.findall(r"\(>= X_\d+ ([^)]+)\)", text)]
        x64 = x.double().numpy()
        lo64, hi64 = np.clip(x64 - eps, -0.25, 1.0), np.clip(x64 + eps, -0.25, 1.0)
        assert all(a <= b for a, b in zip(los, lo64)) and all(a >= b for a, b in zip(ups, hi64))
        lo32 = torch.clamp(x - torch.tensor(eps, dtype=torch.float32), -0.25, 1.0).numpy()
        hi32 = torch.clamp(x + torch.tensor(eps, dtype=torch.float32), -0.25, 1.0).numpy()
        assert all(np.float32(a) <= b for a, b in zip(los, lo32)) and all(np.float32(a) >= b for a, b in zip(ups, hi32))
        assert all(np.float32(a) <= np.float32(b) for a, b in zip(los, lo64))
        assert all(np.float32(a) >= np.float32(b) for a, b in zip(ups, hi64))
        assert "e" not in "".join(re.findall(r"[<>]= X_\d+ ([^)]+)\)", text))  # positional notation


def test_robustness_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    x = torch.rand(4)
    with pytest.raises(RobverifyError):
        write_robustness_vnnlib(tmp_path / "a.vnnlib", x, 5, 0.1, 3)
    with pytest.raises(RobverifyError):
        write_robustness_vnnlib(tmp_path / "a.vnnlib", x, 0, -0.1, 3)
    with pytest.raises(RobverifyError):
        write_robustness_vnnlib(tmp_path / "a.vnnlib", x, 0, 0.1, 3, target=0)
    with pytest.raises(RobverifyError):
        write_robustness_vnnlib(tmp_path / "a.vnnlib", x, 0, float("nan"), 3)
    assert not (tmp_path / "a.vnnlib").exists()


# ----------------------------------------------------------------------------------------------------------------
# Writing general specs (hypothesis)

_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=True)
_coef = st.one_of(st.just(0.0), st.just(1.0), st.just(-1.0),
                  st.floats(allow_nan=False, allow_infinity=False, width=64), _finite)


@st.composite
def _specs(draw) -> tuple[Spec, int]:
    n_in = draw(st.integers(1, 6))
    n_out = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    width = 32 if dtype == torch.float32 else 64
    a = draw(st.lists(st.floats(-1e4, 1e4, width=width), min_size=n_in, max_size=n_in))
    b = draw(st.lists(st.floats(-1e4, 1e4, width=width), min_size=n_in, max_size=n_in))
    lo = torch.tensor([min(u, v) for u, v in zip(a, b)], dtype=dtype)
    hi = torch.tensor([max(u, v) for u, v in zip(a, b)], dtype=dtype)
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    ids = draw(st.permutations(list(range(len(sizes)))))  # group ids in any order
    group = [ids[k] for k, n in enumerate(sizes) for _ in range(n)]
    S = len(group)
    C = draw(st.lists(st.lists(_coef, min_size=n_out, max_size=n_out), min_size=S, max_size=S))
    d = draw(st.lists(_coef, min_size=S, max_size=S))
    B = draw(st.integers(1, 2))
    index = draw(st.integers(0, B - 1))
    Ct = torch.tensor(C, dtype=torch.float64).to(dtype)
    dt = torch.tensor(d, dtype=torch.float64).to(dtype)
    assume_finite = bool(torch.isfinite(Ct).all() and torch.isfinite(dt).all())
    if not assume_finite:  # float64 coefficients that overflow float32
        Ct = torch.nan_to_num(Ct, posinf=1.0, neginf=-1.0)
        dt = torch.nan_to_num(dt, posinf=1.0, neginf=-1.0)
    spec = Spec(lo.expand(B, n_in).clone(), hi.expand(B, n_in).clone(), Ct.expand(B, S, n_out).clone(),
                dt.expand(B, S).clone(), torch.tensor(group))
    return spec, index


def _groups(C: torch.Tensor, d: torch.Tensor, group: torch.Tensor) -> list:
    by: dict[int, list] = {}
    for s, g in enumerate(group.tolist()):
        by.setdefault(g, []).append((tuple(C[s].tolist()), d[s].item()))
    return sorted(by.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_specs())
def test_spec_round_trip(tmp_path: Path, case: tuple[Spec, int]) -> None:
    spec, index = case
    path = write_spec_vnnlib(tmp_path / "s.vnnlib", spec, index)
    n_in, n_out = spec.x_lo.shape[1], spec.C.shape[2]
    (p,) = read_vnnlib(path, n_inputs=n_in, n_outputs=n_out)
    lo, hi = spec.x_lo[index].double(), spec.x_hi[index].double()
    assert torch.equal(p.x_lo, lo) and torch.equal(p.x_hi, hi)  # exact, so it contains the intended box
    C, d = spec.C[index].double(), spec.d[index].double()
    assert _groups(p.C, p.d, p.group) == _groups(C, d, spec.group)
    assert p.n_groups == len(set(spec.group.tolist()))
    back = p.to_spec((n_in,), dtype=spec.x_lo.dtype)
    assert bool((back.x_lo[0] <= spec.x_lo[index]).all()) and bool((back.x_hi[0] >= spec.x_hi[index]).all())


def test_spec_writer_shapes(tmp_path: Path) -> None:
    single = Spec(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[[0.5, -2.0]]]), torch.tensor([[0.25]]),
                  torch.tensor([0]))
    text = write_spec_vnnlib(tmp_path / "a.vnnlib", single).read_text()
    assert "(assert (<= (+ (* 0.5 Y_0) (* -2.0 Y_1)) 0.25))" in text and "(or" not in text
    rob = robustness_spec(torch.rand(2, 3), torch.tensor([0, 2]), 0.1, 3)
    text = write_spec_vnnlib(tmp_path / "b.vnnlib", rob, index=1).read_text()
    assert "(assert (or\n    (and (<= Y_2 Y_0))\n    (and (<= Y_2 Y_1))\n))" in text
    (p,) = read_vnnlib(tmp_path / "b.vnnlib")
    assert torch.equal(p.C.float(), rob.C[1]) and torch.equal(p.group, rob.group)
    with pytest.raises(RobverifyError):
        write_spec_vnnlib(tmp_path / "c.vnnlib", rob, index=5)


# ----------------------------------------------------------------------------------------------------------------
# The reader's dialect

_HEAD2 = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"


def _box2(a="0", b="1") -> str:
    return f"(assert (>= X_0 {a}))\n(assert (<= X_0 {b}))\n(assert (>= X_1 {a}))\n(assert (<= X_1 {b}))\n"


def test_linear_terms_and_constants() -> None:
    text = _HEAD2 + """
    ; comments anywhere ; even ( unbalanced ) ones
    (assert (<= X_0 1e-1)) (assert (>= X_0 (- 0.5)))
    (assert (> 2.5E+1 X_1)) (assert (< -.5 X_1))
    (assert (or
        (and (<= (+ (* 2 Y_0) (* Y_1 -3)) (- 1.5 (- 0.5))))
        (and (>= (- Y_0) (+ Y_1 1)) (<= (- Y_0 Y_1 2) 0))
        (and (= Y_1 4))
    ))
    """
    (p,) = parse_vnnlib(text)
    assert p.x_lo.tolist() == [-0.5, -0.5] and p.x_hi.tolist() == [0.1, 25.0]
    assert p.C.tolist() == [[2.0, -3.0], [1.0, 1.0], [1.0, -1.0], [0.0, 1.0], [0.0, -1.0]]
    assert p.d.tolist() == [2.0, -1.0, 2.0, 4.0, -4.0]
    assert p.group.tolist() == [0, 1, 1, 2, 2]


def test_bounds_in_any_form() -> None:
    text = _HEAD2 + """
    (assert (>= 1 X_0)) (assert (<= (- X_0) 0.5)) (assert (<= (* 4 X_1) 1)) (assert (>= (* 3 X_1) 0.5))
    (assert (<= X_0 2)) (assert (and (>= Y_0 Y_1)))
    """
    (p,) = parse_vnnlib(text)
    assert p.x_lo[0].item() == -0.5 and p.x_hi.tolist()[0] == 1.0 and p.x_hi[1].item() == 0.25
    lo1 = p.x_lo[1].item()  # 0.5 / 3 is inexact: rounded outward (down)
    assert Fraction(lo1) <= Fraction(1, 6) and math.nextafter(lo1, 1) >= 1 / 6
    assert p.C.tolist() == [[-1.0, 1.0]] and p.d.tolist() == [0.0]


def test_disjunction_over_input_boxes_gives_several_properties() -> None:
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n" + """
    (assert (or
        (and (>= X_0 0) (<= X_0 1) (<= Y_0 Y_1))
        (and (>= X_0 2) (<= X_0 3) (>= Y_0 5))
        (and (>= X_0 0) (<= X_0 1) (>= Y_1 7))
        (and (>= X_0 4) (<= X_0 5))
    ))
    (assert (<= Y_0 100))
    """
    props = parse_vnnlib(text)
    assert [(p.x_lo.item(), p.x_hi.item()) for p in props] == [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)]
    a, b, c = props
    assert a.C.tolist() == [[1.0, 0.0], [1.0, -1.0], [1.0, 0.0], [0.0, -1.0]] and a.group.tolist() == [0, 0, 1, 1]
    assert a.d.tolist() == [100.0, 0.0, 100.0, -7.0]
    assert b.C.tolist() == [[1.0, 0.0], [-1.0, 0.0]] and b.d.tolist() == [100.0, -5.0]
    assert c.C.tolist() == [[1.0, 0.0]] and c.group.tolist() == [0]


def test_nested_and_or_normal_form() -> None:
    text = _HEAD2 + _box2() + "(assert (and (or (<= Y_0 1) (<= Y_1 2)) (or (>= Y_0 3) (and (>= Y_1 4)))))"
    (p,) = parse_vnnlib(text)
    assert p.n_groups == 4 and p.C.shape == (8, 2)
    spec = p.to_spec((2,))
    y = torch.tensor([[0.0, 5.0], [3.5, 0.0], [2.0, 3.0], [0.5, 3.0]])
    margins = Spec(spec.x_lo.expand(4, 2), spec.x_hi.expand(4, 2), spec.C.expand(4, -1, -1),
                   spec.d.expand(4, -1), spec.group).output_margin(y)
    assert (margins <= 0).tolist() == [True, True, False, False]


def test_no_output_constraint_means_every_point_is_unsafe() -> None:
    (p,) = parse_vnnlib(_HEAD2 + _box2())
    assert p.C.tolist() == [[0.0, 0.0]] and p.d.tolist() == [0.0]
    spec = p.to_spec()
    assert spec.output_margin(torch.tensor([[3.0, -4.0]])).item() <= 0


def test_to_spec_rounds_the_box_outward() -> None:
    text = _HEAD2 + _box2("0.1", "0.7") + "(assert (<= Y_0 0.3))"
    (p,) = parse_vnnlib(text)
    spec = p.to_spec((1, 2))
    assert spec.x_lo.shape == (1, 1, 2) and spec.x_lo.dtype == torch.float32
    assert bool((spec.x_lo.double().flatten() <= p.x_lo).all()) and bool((spec.x_hi.double().flatten() >= p.x_hi).all())
    assert spec.x_lo.flatten()[0].item() == np.nextafter(np.float32(0.1), np.float32(0))  # float32(0.1) > 0.1
    assert float(np.float32(0.7)) < 0.7  # so the cast is stepped up
    assert spec.x_hi.flatten()[0].item() == float(np.nextafter(np.float32(0.7), np.float32(1))) >= 0.7
    assert spec.d.double().item() >= 0.3
    with pytest.raises(RobverifyError, match="do not fit"):
        p.to_spec((3,))
    assert torch.equal(p.to_spec(dtype=torch.float64).x_lo[0], p.x_lo)


# ----------------------------------------------------------------------------------------------------------------
# Errors


def _error(text: str, **kw) -> VnnlibError:
    with pytest.raises(VnnlibError) as info:
        parse_vnnlib(text, filename="prop.vnnlib", **kw)
    assert isinstance(info.value, RobverifyError)
    return info.value


def test_located_error_for_a_typo() -> None:
    text = _HEAD2 + _box2() + "(assert (or\n    (and (>= Y_0 Y_1))\n    (and (=> Y_1 Y_0))\n))\n"
    err = _error(text)
    assert (err.line, err.column) == (11, 11)
    assert str(err).startswith("prop.vnnlib:11:11: unsupported operator '=>'")
    err = _error(_HEAD2 + "(asert (>= X_0 0))")
    assert str(err).startswith("prop.vnnlib:5:2: unsupported command 'asert'")
    err = _error(_HEAD2 + _box2() + "(assert (<= Y_0 0.5.1))")
    assert str(err).startswith("prop.vnnlib:9:17: malformed number")


def test_unbalanced_parentheses_are_located() -> None:
    err = _error(_HEAD2 + _box2() + "(assert (<= Y_0 1)")
    assert str(err).startswith("prop.vnnlib:9:19: expected ')' to close the '(' opened at 9:1")
    err = _error(_HEAD2 + "))")
    assert (err.line, err.column) == (5, 1) and "unexpected ')'" in str(err)
    err = _error("X_0")
    assert str(err).startswith("prop.vnnlib:1:1: expected '('")


@pytest.mark.parametrize(
    "body, kw, message, where",
    [
        ("(assert (<= X_0 Y_0))", {}, "mixing inputs (X) and outputs (Y)", (9, 9)),
        ("(assert (<= Y_2 0))", {}, "undeclared variable Y_2", (9, 13)),
        ("(assert (<= 1 2))", {}, "comparison of two constants", (9, 9)),
        ("(assert (<= (+ X_0 X_1) 2))", {}, "several inputs", (9, 9)),
        ("(assert (<= (* Y_0 Y_1) 2))", {}, "not linear", (9, 20)),
        ("(assert (<= Y_0 1e999))", {}, "out of the float64 range", (9, 17)),
        ("(assert (<= Y_0 foo))", {}, "found 'foo'", (9, 17)),
        ("(assert (not (<= Y_0 1)))", {}, "unsupported operator 'not'", (9, 10)),
        ("(assert (<= Y_0 1 2))", {}, "expects 2 operands", (9, 9)),
        ("(assert (or))", {}, "empty 'or'", (9, 9)),
        ("(assert (>= X_0 2))", {}, "empty input box: X_0 >= 2.0 and X_0 <= 1.0", (9, 9)),
        ("(assert (<= Y_0 0))", {"n_inputs": 5}, "the file declares 2 inputs, the model has 5", (2, 16)),
        ("(assert (<= Y_0 0))", {"n_outputs": 1}, "the file declares 2 outputs, the model has 1", (4, 16)),
    ],
)
def test_errors_are_located(body: str, kw: dict, message: str, where: tuple[int, int]) -> None:
    err = _error(_HEAD2 + _box2() + body, **kw)
    assert message in str(err), str(err)
    assert (err.line, err.column) == where, str(err)


def test_declaration_errors() -> None:
    assert "declares 784 inputs, the model has 5" in str(
        _error("".join(f"(declare-const X_{i} Real)\n" for i in range(784)) + "(declare-const Y_0 Real)", n_inputs=5)
    )
    err = _error("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (<= Y_0 1))")
    assert "X_0 has no lower bound" in str(err) and (err.line, err.column) == (1, 16)
    assert "declared twice" in str(_error("(declare-const X_0 Real)\n(declare-const X_0 Real)"))
    gap = "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)"
    assert "X_1 is not declared" in str(_error(gap))
    assert "unsupported sort" in str(_error("(declare-const X_0 Int)"))
    assert "unsupported variable name" in str(_error("(declare-const Z Real)"))
    assert "declares no outputs" in str(_error("(declare-const X_0 Real)"))
    err = _error("(assert (<= X_0 1))\n(declare-const X_0 Real)\n(declare-const Y_0 Real)")
    assert "undeclared variable X_0" in str(err) and (err.line, err.column) == (1, 13)


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(RobverifyError, match="cannot read"):
        read_vnnlib(tmp_path / "missing.vnnlib")
    bad = tmp_path / "bad.vnnlib"
    bad.write_bytes(b"(declare-const X_0 Real)\n\xff\xfe(")
    with pytest.raises(VnnlibError, match=r"^bad.vnnlib:2:"):
        read_vnnlib(bad)


def test_deep_nesting_and_long_files_do_not_crash() -> None:
    deep = _HEAD2 + _box2() + "(assert " + "(and " * 5000 + "(<= Y_0 1)" + ")" * 5001
    assert "nested deeper" in str(_error(deep))
    deep_term = _HEAD2 + _box2() + "(assert (<= " + "(- " * 150 + "Y_0" + ")" * 150 + " 1))"
    (p,) = parse_vnnlib(deep_term)
    assert p.C.tolist() == [[1.0, 0.0]]
    n = 50_000
    long = "".join(f"(declare-const X_{i} Real)\n" for i in range(n)) + "(declare-const Y_0 Real)\n"
    long += "".join(f"(assert (<= X_{i} 1))\n(assert (>= X_{i} 0))\n" for i in range(n)) + "(assert (<= Y_0 0))\n"
    t = time.perf_counter()
    (p,) = parse_vnnlib(long, n_inputs=n, n_outputs=1)
    assert p.n_inputs == n and time.perf_counter() - t < 5.0


def test_blowup_of_normal_form_is_refused() -> None:
    ors = " ".join(f"(or (<= Y_0 {k}) (<= Y_1 {k}))" for k in range(40))
    err = _error(_HEAD2 + _box2() + f"(assert (and {ors}))")
    assert "too large" in str(err)


# ----------------------------------------------------------------------------------------------------------------
# Malformed input (hypothesis): parse or VnnlibError, never another exception, never slow


def _seed_files() -> list[str]:
    rob = (
        "; Mnist-like property with label: 1.\n" + "".join(f"(declare-const X_{i} Real)\n" for i in range(4))
        + "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
        + "".join(f"(assert (<= X_{i} 0.{i + 3}))\n(assert (>= X_{i} -0.{i}e-1))\n" for i in range(4))
        + "(assert (or\n    (and (>= Y_0 Y_1))\n    (and (>= Y_2 Y_1))\n))\n"
    )
    general = _HEAD2 + _box2("-1.5", "2") + (
        "(assert (or (and (<= (+ (* 2 Y_0) (* Y_1 -3)) (- 1.5)) (>= (- Y_0 Y_1) 0)) (and (= Y_1 4))))\n"
    )
    boxes = (
        "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (or\n"
        "    (and (>= X_0 -1) (<= X_0 1) (>= Y_0 100))\n    (and (>= X_0 2) (<= X_0 3) (< Y_0 1))\n))\n"
    )
    return [rob, general, boxes]


_SEEDS = _seed_files()


@st.composite
def _mutants(draw) -> str:
    text = draw(st.sampled_from(_SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "insert", "truncate", "replace", "duplicate"]))
        i = draw(st.integers(0, max(0, len(text) - 1)))
        if kind == "delete":
            text = text[:i] + text[i + 1:]
        elif kind == "insert":
            piece = draw(st.sampled_from(["(", ")", " ", "-", "X_9", "Y_0", ";", "\n", "e", "1", "(or", "(and"]))
            text = text[:i] + piece + text[i:]
        elif kind == "truncate":
            text = text[:i]
        elif kind == "replace":
            text = text[:i] + draw(st.characters(codec="utf-8")) + text[i + 1:]
        else:
            j = draw(st.integers(i, len(text)))
            text = text[:j] + text[i:j] + text[j:]
    return text


@settings(max_examples=400, deadline=None)
@given(text=_mutants(), sizes=st.sampled_from([(None, None), (4, 3), (2, 2), (1, 1)]))
def test_mutated_files_parse_or_raise_vnnlib_error(text: str, sizes: tuple) -> None:
    t = time.perf_counter()
    try:
        props = parse_vnnlib(text, filename="m.vnnlib", n_inputs=sizes[0], n_outputs=sizes[1])
    except VnnlibError as err:
        assert str(err).startswith("m.vnnlib:") and "\n" not in str(err)
        assert err.line >= 1 and err.column >= 1
    else:
        assert props and all(isinstance(p, VnnlibProperty) for p in props)
        for p in props:
            assert bool((p.x_lo <= p.x_hi).all()) and p.C.shape[0] == p.d.shape[0] == p.group.shape[0]
            p.to_spec()
    assert time.perf_counter() - t < 1.0


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("()XY_0123456789.-+e <=>andor;\n")), max_size=300))
def test_random_text_parses_or_raises_vnnlib_error(text: str) -> None:
    try:
        parse_vnnlib(text)
    except VnnlibError:
        pass
