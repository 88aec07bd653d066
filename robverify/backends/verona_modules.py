"""robverify's pieces in VERONA's shapes: a robverify backend as a VERONA ``VerificationModule``, a call log around
any verification module, and the task samples as a VERONA ``ExperimentDataset``.

Imported only after ``ada_verona`` (see :func:`robverify.backends.verona.import_verona`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ada_verona import DataPoint, ExperimentDataset, VerificationContext, VerificationResult
from ada_verona.database.verification_result import CompleteVerificationData
from ada_verona.verification_module.verification_module import VerificationModule

from robverify.backends.base import Backend
from robverify.spec import robustness_spec


class BackendVerificationModule(VerificationModule):
    """A robverify backend answering VERONA's one query ``(context, eps)``.

    UNSAT: the backend's sound bound proves the property. SAT: a counterexample re-checked in onnxruntime.
    Otherwise TIMEOUT, which VERONA's binary search treats as "no answer" (it has no UNKNOWN).
    The property follows the context's generator: one2any (all other classes) or one2one (``target_class``),
    with its input domain ``[data_lb, data_ub]``.
    """

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self.name = name

    def verify(self, verification_context: VerificationContext, epsilon: float) -> CompleteVerificationData:
        start = time.perf_counter()
        model = self.backend.model
        x = verification_context.data_point.data.reshape(1, *model.graph.input_shape).to(torch.float32)
        label = torch.tensor([int(verification_context.data_point.label)])
        generator = verification_context.property_generator
        target = getattr(generator, "target_class", None)
        spec = robustness_spec(x, label, float(epsilon), model.graph.n_outputs,
                               (float(generator.data_lb), float(generator.data_ub)),
                               None if target is None else torch.tensor([int(target)]))
        if bool(self.backend.verify(spec).verified[0]):
            result = VerificationResult.UNSAT
        elif bool(self.backend.falsify(spec, x).falsified[0]):
            result = VerificationResult.SAT
        else:
            result = VerificationResult.TIMEOUT
        return CompleteVerificationData(result=result, took=time.perf_counter() - start)


@dataclass
class CallLog:
    """Every query a module answered: ``(image_id, epsilon, result)`` in order."""

    calls: list[tuple[int, float, str]] = field(default_factory=list)

    def for_image(self, image_id: int) -> list[tuple[float, str]]:
        return [(eps, res) for i, eps, res in self.calls if i == image_id]


class LoggedModule(VerificationModule):
    """Wraps a VERONA verification module and records each answer in ``log`` (same ``name``)."""

    def __init__(self, inner: VerificationModule, log: CallLog) -> None:
        self.inner = inner
        self.name = inner.name
        self.log = log

    def verify(self, verification_context: VerificationContext, epsilon: float) -> CompleteVerificationData:
        outcome = self.inner.verify(verification_context, epsilon)
        result = outcome.result if isinstance(outcome, CompleteVerificationData) else outcome
        self.log.calls.append((int(verification_context.data_point.id), float(epsilon), str(_value(result))))
        return outcome


def _value(result: object) -> str:
    return result.value if isinstance(result, VerificationResult) else str(result)


class SampleDataset(ExperimentDataset):
    """robverify's samples for VERONA: data points ``[1, *input_shape]`` whose ids are the sample ids."""

    def __init__(self, x: Tensor, label: Tensor, sample_id: Tensor, ids: list[int] | None = None) -> None:
        self.x, self.label, self.sample_id = x, label, sample_id
        self._row = {int(s): i for i, s in enumerate(sample_id.tolist())}
        self._ids = list(self._row) if ids is None else list(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, idx: int) -> DataPoint:
        sid = self._ids[idx]
        row = self._row[sid]
        return DataPoint(sid, int(self.label[row]), self.x[row:row + 1].clone())

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def get_subset(self, indices: list[int]) -> "SampleDataset":
        return SampleDataset(self.x, self.label, self.sample_id, [int(i) for i in indices])
