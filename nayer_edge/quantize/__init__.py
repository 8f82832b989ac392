"""Stage 5, INT8: post-training quantization and quantization-aware fine-tuning on the synthetic samples,
the onnxruntime and TensorRT Q/DQ layouts, and TensorRT's rules for them.

Imports the stages below it (``core`` to ``onnx_model``).
"""
