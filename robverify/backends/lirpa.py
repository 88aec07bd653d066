"""auto-LiRPA as a backend (``--backend lirpa``): the bound library inside alpha-beta-CROWN.

The model's ONNX file is converted to torch by onnx2torch (or a live zoo module is used) and wrapped once in
an auto_LiRPA ``BoundedModule``; each batch of specs is bounded with its per-sample boxes
(``PerturbationLpNorm(norm=inf, x_L, x_U)``) and margin matrix ``C``. Before conversion the ONNX patterns that
auto_LiRPA 0.3 cannot bound are rewritten into equivalent ones (:mod:`robverify.ir.rewrite`: initializer
``Identity`` nodes dropped so onnx2torch builds an ``nn.BatchNorm`` with parameters, the zoo's ``Normalize`` as a
1x1 ``Conv``); the converted network is checked against onnxruntime.

Methods map to auto_LiRPA's: ``ibp`` -> IBP, ``crown-ibp`` -> CROWN-IBP, ``crown`` -> CROWN (backward),
``alpha-crown`` -> alpha-CROWN (20 Adam steps, learning rate 0.5, as the native engine). auto_LiRPA folds ``C``
into the last linear layer, so its IBP rows can be tighter than an interval of the output box. The same
floating-point safety margin as the native engine's is subtracted from every row.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robverify.backends.base import AttackConfig, Backend, BackendOptions
from robverify.backends.lirpa_compat import import_auto_lirpa
from robverify.errors import RobverifyError
from robverify.ir.layout import natural_shape
from robverify.ir.model import LoadedModel
from robverify.ir.rewrite import verifier_ready_onnx
from robverify.spec import Method, Spec

#: robverify method -> auto_LiRPA ``compute_bounds(method=...)``
LIRPA_METHODS: dict[Method, str] = {
    Method.IBP: "IBP",
    Method.CROWN_IBP: "CROWN-IBP",
    Method.CROWN: "CROWN",
    Method.ALPHA_CROWN: "alpha-CROWN",
}
#: samples per auto_LiRPA call for the methods whose memory grows with intermediate CROWN bounds
CROWN_CHUNK = 32
class _ChannelAffine(nn.Module):
    """The zoo's ``Normalize`` as a depthwise 1x1 convolution: ``[N, C, H, W] -> [N, C, H, W]``."""

    def __init__(self, mean: Tensor, std: Tensor, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, groups=channels)
        with torch.no_grad():
            self.conv.weight.copy_((1.0 / std).expand(channels).reshape(channels, 1, 1, 1))
            self.conv.bias.copy_((-mean / std).expand(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def lirpa_ready_module(module: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of a zoo module in eval mode whose ``Normalize`` layers are depthwise 1x1 convolutions."""
    from robverify.ir.blocks import Normalize

    net = copy.deepcopy(module).eval()
    channels = input_shape[0] if len(input_shape) == 3 else None
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Normalize) and channels is not None:
                setattr(parent, name, _ChannelAffine(child.mean.double(), child.std.double(), channels).float())
    return net


def to_torch(source: Path | nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A torch module auto_LiRPA can bound: onnx2torch of the rewritten ONNX file, or the adapted zoo module."""
    if isinstance(source, nn.Module):
        return lirpa_ready_module(source, input_shape)
    try:
        import onnx2torch
    except ImportError:
        raise RobverifyError("onnx2torch is not installed: pip install onnx2torch (--backend lirpa needs it)") from None
    try:
        return onnx2torch.convert(verifier_ready_onnx(Path(source))).eval()
    except (NotImplementedError, KeyError, ValueError, RuntimeError) as exc:
        raise RobverifyError(f"onnx2torch cannot convert {source}: {exc}") from None


def build_bounded_module(source: Path | nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu"
                         ) -> Any:
    """auto_LiRPA ``BoundedModule`` of ``source`` for inputs ``[B, *input_shape]``."""
    lirpa = import_auto_lirpa()
    net = to_torch(source, input_shape).to(device)
    dummy = torch.zeros((1, *input_shape), device=device)
    opts = {"sparse_features_alpha": False}  # 0.3 crashes on layers with > 90% unstable neurons otherwise
    try:
        return lirpa.BoundedModule(net, dummy, bound_opts=opts, device=str(device))
    except Exception as exc:  # auto_LiRPA raises bare exceptions for operators it lacks
        raise RobverifyError(f"auto_LiRPA cannot build a BoundedModule: {type(exc).__name__}: {exc}") from None


def lirpa_rows(bounded: Any, spec: Spec, method: Method | str, *, with_c: bool = True) -> Tensor:
    """auto_LiRPA lower bounds of ``C . y - d`` ``[B, S]`` (no safety margin).

    ``with_c=False`` bounds the output box and applies ``C`` by interval arithmetic (IBP as the native engine
    computes it)."""
    lirpa = import_auto_lirpa()
    from auto_LiRPA.perturbations import PerturbationLpNorm

    method = Method.parse(method)
    ptb = PerturbationLpNorm(norm=math.inf, x_L=spec.x_lo, x_U=spec.x_hi)
    x = lirpa.BoundedTensor((spec.x_lo + spec.x_hi) / 2, ptb)
    name = LIRPA_METHODS[method]
    if with_c:
        lower, _ = bounded.compute_bounds(x=(x,), C=spec.C, method=name, bound_upper=False)
        return lower.detach() - spec.d
    lo, hi = bounded.compute_bounds(x=(x,), method=name)
    lo, hi = lo.detach().flatten(1).unsqueeze(-1), hi.detach().flatten(1).unsqueeze(-1)
    return (spec.C.clamp(min=0) @ lo + spec.C.clamp(max=0) @ hi).squeeze(-1) - spec.d


def _safety(rows: Tensor) -> Tensor:
    eps = 1e-10 if rows.dtype == torch.float64 else 1e-5
    return rows - eps * (1.0 + rows.abs())


class LirpaBackend(Backend):
    """auto-LiRPA's IBP / CROWN-IBP / CROWN / alpha-CROWN; PGD of the base class falsifies.

    ``module``: optional live zoo module of the same network (bounded instead of the ONNX file's conversion).
    A model with a fixed leading 1 in its ONNX input is bounded on its natural batch ``[B, *input_shape[1:]]``
    (:mod:`robverify.ir.layout`): the converted network takes the batch in that dimension, as the parity check
    against onnxruntime confirms.
    """

    name = "lirpa"

    def __init__(self, model: LoadedModel, method: Method | str = Method.CROWN, *, batch_size: int = 256,
                 attack: AttackConfig | None = None, options: BackendOptions | None = None,
                 module: nn.Module | None = None) -> None:
        super().__init__(model, method, batch_size=batch_size, attack=attack, options=options)
        if self.method in (Method.CROWN, Method.ALPHA_CROWN):
            self.batch_size = min(self.batch_size, CROWN_CHUNK)
        self.device = model.graph.device
        graph = model.graph
        self.input_shape = natural_shape(graph.input_shape, graph.dynamic_batch) or graph.input_shape
        self.bounded = build_bounded_module(module if module is not None else model.path, self.input_shape,
                                            self.device)
        self._check_parity()

    def provenance(self) -> dict[str, str | None]:
        """``{"auto_LiRPA": its installed version}``."""
        from robverify.backends.lirpa_compat import installed_version

        return {"auto_LiRPA": installed_version()}

    def _check_parity(self, n: int = 8, tol: float = 1e-4) -> None:
        """The converted network must compute what onnxruntime computes on a few random inputs."""
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((n, *self.input_shape), generator=gen)
        with torch.no_grad():
            ours = self.bounded(x.to(self.device)).detach().cpu().double().reshape(n, -1)
        ref = torch.from_numpy(self.model.runtime.logits(x.numpy())).double().reshape(n, -1)
        diff = float((ours - ref).abs().max()) if ours.shape == ref.shape else math.inf
        if not diff <= tol * (1.0 + float(ref.abs().max())):
            raise RobverifyError(f"auto_LiRPA's conversion of {self.model.path} differs from onnxruntime "
                                 f"(max |diff| {diff:.3g}); --backend lirpa cannot bound it")

    def _bound(self, spec: Spec) -> Tensor:
        spec = spec.to(self.device, torch.float32)
        B = spec.batch_size
        spec = Spec(spec.x_lo.reshape(B, *self.input_shape), spec.x_hi.reshape(B, *self.input_shape), spec.C, spec.d,
                    spec.group)
        rows = _safety(lirpa_rows(self.bounded, spec, self.method))
        return spec.property_margin(rows)

