"""VERONA as a backend (``--backend verona --verifier V``): VERONA's robustness-distribution pipeline driven with
a verifier of robverify's choosing.

Verifiers (``--verifier``):

* ``native-<method>`` (``native-ibp``, ``native-crown``, ...): robverify's own engine as a VERONA
  ``VerificationModule``;
* ``lirpa-<method>``: auto-LiRPA (:mod:`robverify.backends.lirpa`) likewise;
* ``marabou``: robverify's Marabou backend (complete; ``--timeout`` seconds per query);
* ``native-bab``: robverify's own complete verifier (:mod:`robverify.backends.bab`: CROWN, then branch and bound
  for what it leaves open; ``--timeout`` seconds per query);
* ``pgd``: VERONA's own ``AttackEstimationModule(PGDAttack)``. A failed attack is reported UNSAT by VERONA, so
  its "critical epsilon" is an *upper* estimate: robverify never counts it as verified.

The sweep itself is :func:`robverify.runs.verona_search.run_verona_sweep`. As a plain backend (``certify``) the wrapped
robverify backend bounds and falsifies; ``pgd`` verifies nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import types

import torch
from torch import Tensor

from robverify.backends.base import AttackConfig, Backend, BackendOptions, distribution_version
from robverify.errors import RobverifyError
from robverify.ir.model import LoadedModel
from robverify.spec import Method, Spec

INSTALL_HINT = ("ada_verona is not installed: pip install --no-deps --ignore-requires-python ada-verona==1.0.3 "
                "(or run make install)")
#: PGD settings of the ``pgd`` verifier (VERONA's ``PGDAttack``)
PGD_ITERATIONS = 40


def import_verona() -> types.ModuleType:
    """``ada_verona``; RobverifyError (what to install) when it cannot be imported."""
    if importlib.util.find_spec("ada_verona") is None:
        raise RobverifyError(INSTALL_HINT)
    try:
        return importlib.import_module("ada_verona")
    except ImportError as exc:
        raise RobverifyError(f"ada_verona cannot be imported ({exc}); {INSTALL_HINT}") from None


def verifier_names() -> list[str]:
    methods = [m.value for m in Method]
    return [f"native-{m}" for m in methods] + ["native-bab"] + [f"lirpa-{m}" for m in methods] + ["marabou", "pgd"]


def parse_verifier(text: str | None) -> tuple[str, Method | None]:
    """``native-crown`` -> ``("native", Method.CROWN)``; ``marabou`` / ``pgd`` -> ``(name, None)``;
    ``native-bab`` -> ``("bab", None)``."""
    if text is None:
        raise RobverifyError(f"--backend verona needs --verifier, one of {', '.join(verifier_names())}")
    name = text.strip().lower()
    if name in ("marabou", "pgd"):
        return name, None
    if name == "native-bab":
        return "bab", None
    for engine in ("native", "lirpa"):
        prefix = f"{engine}-"
        if name.startswith(prefix) and name[len(prefix):] in {m.value for m in Method}:
            return engine, Method(name[len(prefix):])
    raise RobverifyError(f"unknown --verifier: expected one of {', '.join(verifier_names())}, got {text!r}")


def _inner_backend(engine: str, method: Method | None, model: LoadedModel, batch_size: int,
                   attack: AttackConfig | None, options: BackendOptions) -> Backend | None:
    """The robverify backend behind a verifier (None for ``pgd``)."""
    if engine == "pgd":
        return None
    if engine == "bab":
        from robverify.backends import get_backend

        return get_backend("bab")(model, Method.CROWN, batch_size=batch_size, attack=attack,
                                  options=BackendOptions(timeout=options.timeout))
    if engine == "marabou":
        if importlib.util.find_spec("robverify.backends.marabou") is None:
            raise RobverifyError("--verifier marabou needs robverify's marabou backend, which this version lacks")
        from robverify.backends import get_backend

        return get_backend("marabou")(model, Method.CROWN, batch_size=batch_size, attack=attack,
                                      options=BackendOptions(timeout=options.timeout))
    from robverify.backends import get_backend

    return get_backend(engine)(model, method, batch_size=batch_size, attack=attack)


class VeronaBackend(Backend):
    """Holds the chosen verifier: ``inner`` (a robverify backend, None for ``pgd``) and its VERONA module."""

    name = "verona"

    def __init__(self, model: LoadedModel, method: Method | str = Method.CROWN, *, batch_size: int = 256,
                 attack: AttackConfig | None = None, options: BackendOptions | None = None) -> None:
        super().__init__(model, method, batch_size=batch_size, attack=attack, options=options)
        self.verona = import_verona()
        self.engine, inner_method = parse_verifier(self.options.verifier)
        self.verifier = str(self.options.verifier).strip().lower()  # as parse_verifier read it
        if inner_method is not None:
            self.method = inner_method
        self.inner = _inner_backend(self.engine, inner_method, model, batch_size, attack, self.options)

    def provenance(self) -> dict[str, str | None]:
        """``{"ada-verona": version}`` and the libraries of the verifier inside it (auto_LiRPA, maraboupy)."""
        return {"ada-verona": distribution_version("ada-verona"),
                **({} if self.inner is None else self.inner.provenance())}

    @property
    def is_attack(self) -> bool:
        """True for ``pgd``: answers are upper estimates, never certificates."""
        return self.inner is None

    def verification_module(self):
        """A fresh VERONA ``VerificationModule`` for the chosen verifier."""
        if self.inner is None:
            from ada_verona import AttackEstimationModule, PGDAttack

            return AttackEstimationModule(PGDAttack(number_iterations=PGD_ITERATIONS))
        from robverify.backends.verona_modules import BackendVerificationModule

        return BackendVerificationModule(self.inner, f"robverify {self.verifier}")

    def _bound(self, spec: Spec) -> Tensor:
        if self.inner is None:
            return torch.full((spec.batch_size,), -math.inf, dtype=torch.float64)
        return self.inner._bound(spec)

    def _complete(self, spec: Spec, margin_lb: Tensor) -> Tensor:
        if self.inner is None:
            return super()._complete(spec, margin_lb)
        return self.inner._complete(spec, margin_lb)

    def _candidates(self, spec: Spec) -> tuple[Tensor, Tensor]:
        if self.inner is None:
            return super()._candidates(spec)
        return self.inner._candidates(spec)
