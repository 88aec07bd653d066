"""Properties side of robverify: ONNX export with parity checks, VNN-LIB read/write, VNN-COMP benchmarks."""
