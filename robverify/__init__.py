"""robverify: sound certification of (transferred) adversarial robustness.

The three names most users need: :func:`robverify.graph.from_onnx` / :func:`robverify.graph.from_module`
(the graph IR), :class:`robverify.spec.Spec` (what is verified) and :func:`robverify.bounds.compute_bounds`.
"""

__version__ = "0.1.0"
