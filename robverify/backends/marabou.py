"""Marabou (maraboupy, in-process) as a complete verifier: one query per disjunct of a spec.

A spec's unsafe region is a disjunction of conjunctions; each disjunct (for local robustness: one other class)
becomes its own query, because Marabou 2.0 once answered ``sat`` to a disjunctive property whose disjuncts it
each proved ``unsat`` (../shared/notes/marabou.md). A spec is proved only when every disjunct is ``unsat`` or
already proved by the native bound. Marabou's witnesses lie on the decision boundary (``y_j == y_label``):
one that onnxruntime does not confirm is refined by PGD inside a small box around it before it is given up.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Iterator

import torch

from robverify.engine.attacks import pgd_attack
from robverify.backends.base import AttackConfig, BackendOptions, CompleteBackend, QueryAnswer, distribution_version
from robverify.engine.bounds import compute_bounds
from robverify.errors import RobverifyError
from robverify.ir.model import LoadedModel
from robverify.ir.rewrite import write_verifier_ready_onnx
from robverify.spec import Method, Spec, Verdict

#: relative size of the box around an unconfirmed Marabou witness that PGD searches
REFINE_RADIUS = 1e-3


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (Marabou's C++ side prints there even when asked not to)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (captured by a test runner): nothing to protect
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def import_marabou() -> Any:
    """``maraboupy.Marabou``, or a one-line error naming what to install."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Tensorflow parser is unavailable"
            from maraboupy import Marabou
    except ImportError:
        raise RobverifyError("maraboupy is not installed: pip install maraboupy (needed by --backend marabou)"
                             ) from None
    return Marabou


class MarabouBackend(CompleteBackend):
    """Complete verification through maraboupy; ``options.timeout`` seconds per query (default 60)."""

    name = "marabou"

    def __init__(self, model: LoadedModel, method: Method | str = Method.CROWN, *, batch_size: int = 256,
                 attack: AttackConfig | None = None, options: BackendOptions | None = None) -> None:
        super().__init__(model, method, batch_size=batch_size, attack=attack, options=options)
        self._marabou = import_marabou()
        ready = write_verifier_ready_onnx(model.path)  # Marabou's parser rejects the zoo's broadcasting Sub/Div
        try:
            try:
                with quiet_stdout():
                    self.network = self._marabou.read_onnx(str(ready))
            except Exception as exc:  # the ONNX parser raises bare exceptions for operators it lacks
                raise RobverifyError(f"Marabou cannot read {model.path}: {type(exc).__name__}: {exc}") from None
            self._check_parity()  # evaluates the file Marabou read
        finally:
            ready.unlink(missing_ok=True)
        self.input_vars = [int(v) for v in self.network.inputVars[0].reshape(-1)]
        self.output_vars = [int(v) for v in self.network.outputVars[0].reshape(-1)]
        n_in, n_out = math.prod(model.graph.input_shape), model.graph.n_outputs
        if len(self.input_vars) != n_in or len(self.output_vars) != n_out:
            raise RobverifyError(f"Marabou reads {len(self.input_vars)} inputs / {len(self.output_vars)} outputs "
                                 f"from {model.path}, robverify {n_in} / {n_out}")
        # The parsed network's own bounds and equations; every query starts again from them.
        self._base = (dict(self.network.lowerBounds), dict(self.network.upperBounds),
                      list(self.network.additionalEquList), list(self.network.equList))
        self.n_solves = 0

    def provenance(self) -> dict[str, str | None]:
        """``{"maraboupy": its installed version}``."""
        return {"maraboupy": distribution_version("maraboupy")}

    def _check_parity(self, n: int = 4, tol: float = 1e-4) -> None:
        """The rewritten graph Marabou parsed (evaluated by maraboupy through onnxruntime) must compute what the
        original model computes on a few random inputs."""
        gen = torch.Generator().manual_seed(0)
        shape = self.model.graph.input_shape
        x = torch.rand((n, *shape), generator=gen).numpy()
        ref = self.model.runtime.logits(x).reshape(n, -1).astype("float64")
        with quiet_stdout():
            ours = [self.network.evaluateWithoutMarabou([x[i:i + 1]])[0].reshape(-1) for i in range(n)]
        diff = max(float(abs(o - r).max()) for o, r in zip(ours, ref))
        if not diff <= tol * (1.0 + float(abs(ref).max())):
            raise RobverifyError(f"Marabou's reading of {self.model.path} differs from onnxruntime "
                                 f"(max |diff| {diff:.3g}); --backend marabou cannot verify it")

    def _reset(self) -> None:
        lower, upper, extra, equations = self._base
        self.network.lowerBounds = dict(lower)
        self.network.upperBounds = dict(upper)
        self.network.additionalEquList = list(extra)
        self.network.equList = list(equations)  # the network's own equations, without earlier queries' rows

    def _solve(self, lo: list[float], hi: list[float], rows: list[tuple[list[float], float]]) -> tuple[str, dict]:
        """One query: box ``[lo, hi]`` (flattened inputs) and the conjunction of rows ``c·y <= d``."""
        self._reset()
        for var, a, b in zip(self.input_vars, lo, hi):
            self.network.setLowerBound(var, a)
            self.network.setUpperBound(var, b)
        for coefs, d in rows:
            nz = [(self.output_vars[j], c) for j, c in enumerate(coefs) if c != 0.0]
            self.network.addInequality([v for v, _ in nz], [c for _, c in nz], d, isProperty=True)
        options = self._marabou.createOptions(verbosity=0, timeoutInSeconds=max(1, math.ceil(self.timeout)))
        self.n_solves += 1
        with quiet_stdout():
            code, values, _ = self.network.solve(options=options, verbose=False)
        return str(code), values

    def _query(self, spec: Spec) -> QueryAnswer:
        spec64 = spec.to("cpu", torch.float64)
        lo = spec64.x_lo[0].reshape(-1).tolist()
        hi = spec64.x_hi[0].reshape(-1).tolist()
        rows_lb = compute_bounds(self.model.graph, spec, self.method).rows_lb[0].detach().cpu()
        group = spec.group.cpu()
        reasons: list[str] = []
        timed_out = False
        for k in range(spec.n_groups):
            members = (group == k).nonzero().squeeze(1).tolist()
            if bool((rows_lb[members] > 0).any()):
                continue  # the bound already proves this disjunct unreachable
            rows = []
            impossible = False
            for s in members:
                coefs, d = spec64.C[0, s].tolist(), float(spec64.d[0, s])
                if not any(c != 0.0 for c in coefs):
                    impossible = impossible or d < 0  # 0 <= d: always true; 0 <= negative: never
                    continue
                rows.append((coefs, d))
            if impossible:
                continue
            code, values = self._solve(lo, hi, rows)
            if code == "sat":
                x = self._refine(spec, torch.tensor([values[v] for v in self.input_vars], dtype=torch.float64))
                if x is not None:
                    return QueryAnswer(Verdict.FALSIFIED, x, f"Marabou sat on disjunct {k}")
                reasons.append(f"disjunct {k}: Marabou's witness is not confirmed by onnxruntime")
            elif code != "unsat":
                timed_out = timed_out or code.upper() == "TIMEOUT"
                reasons.append(f"disjunct {k}: Marabou answered {code}")
        if not reasons:
            return QueryAnswer(Verdict.VERIFIED)
        return QueryAnswer(Verdict.TIMEOUT if timed_out else Verdict.UNKNOWN, None, "; ".join(reasons[:3]))

    def _refine(self, spec: Spec, x: torch.Tensor) -> torch.Tensor | None:
        """A confirmed counterexample ``[*input_shape]`` at or near Marabou's witness ``x`` (flattened), or None."""
        shape = spec.x_lo.shape[1:]
        lo, hi = spec.x_lo[0].cpu().double(), spec.x_hi[0].cpu().double()
        x = torch.minimum(torch.maximum(x.reshape(shape), lo), hi).float()
        one = torch.ones(1, dtype=torch.bool)
        if bool(self.model.confirm(spec, x.unsqueeze(0), one)[0]):
            return x
        radius = REFINE_RADIUS * (hi - lo).clamp(min=1e-12)
        near = Spec(torch.maximum(lo, x.double() - radius).unsqueeze(0).to(spec.x_lo.dtype),
                    torch.minimum(hi, x.double() + radius).unsqueeze(0).to(spec.x_lo.dtype),
                    spec.C.cpu(), spec.d.cpu(), spec.group.cpu())
        result = pgd_attack(self.model.graph, near, steps=self.attack.steps, restarts=self.attack.restarts,
                            seed=self.attack.seed)
        if bool(self.model.confirm(spec, result.x_adv.cpu(), result.found.cpu())[0]):
            return result.x_adv[0].cpu()
        return None
