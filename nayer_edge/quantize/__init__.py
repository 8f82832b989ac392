"""Stage 5, INT8: post-training quantization and quantization-aware fine-tuning on the synthetic samples,
the onnxruntime and TensorRT Q/DQ layouts, and TensorRT's rules for them.

Imports the stages below it (``core`` to ``onnx_model``).
"""

# How an INT8 candidate that made no model says why: its entry is ``{outcome: why}`` (QAT that failed its export
# check, or was skipped on too small a memory).
QAT_NO_MODEL = ("failed", "skipped")
