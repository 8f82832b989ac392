"""nayer-edge: data-free knowledge distillation (NAYER) and edge deployment of image classifiers.

Importing the package is cheap: heavy optional dependencies (transformers, onnxruntime, tensorrt)
are imported only inside the functions that need them.
"""

__version__ = "0.2.0"
