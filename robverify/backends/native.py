"""robverify's own bound engine as a backend."""

from __future__ import annotations

from torch import Tensor

from robverify.backends.base import Backend
from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.spec import Spec


class NativeBackend(Backend):
    """IBP / CROWN-IBP / CROWN / alpha-CROWN of :mod:`robverify.engine.bounds` on the model's graph IR."""

    name = "native"
    bound_options = BoundOptions()

    def _bound(self, spec: Spec) -> Tensor:
        return compute_bounds(self.model.graph, spec, self.method, self.bound_options).margin_lb
