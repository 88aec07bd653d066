"""File formats other tools read and write: VNN-LIB properties (reader and writer), VNN-COMP result text, and the
model card beside every exported model."""
