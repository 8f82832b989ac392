"""nayer-edge: data-free knowledge distillation (NAYER) and edge deployment of image classifiers.

Importing the package is cheap: heavy optional dependencies (transformers, onnxruntime, tensorrt)
are imported only inside the functions that need them.
"""

import time as _time

__version__ = "0.4.0"
# When this process imported the package: the CLI counts --time-budget from here (imports included).
IMPORTED_AT = _time.perf_counter()
