"""Stage 4, the trained student as an ONNX model: reading a run folder's student, the exporter and its
parity check, graph edits, FP16 conversion.

Imports the stages below it (``core`` to ``distill``).
"""
