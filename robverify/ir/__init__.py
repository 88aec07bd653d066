"""The graph IR: one computation graph for every model, built from an ONNX file (``from_onnx``) or a live torch
module (``from_module``), with the torch building blocks of the zoo, the ONNX rewrites other verifiers need, and the
loaded model (graph + onnxruntime session) that re-checks every counterexample."""
