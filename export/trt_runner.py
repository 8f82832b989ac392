"""Run a TensorRT engine from numpy, without torch: device memory from cuda-python, or pycuda.

Uses the name-based tensor API (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``), which
TensorRT 8.5 and later all have. Device memory and copies come from ``cuda-python`` (``pip install
cuda-python``; ``cuda.bindings.runtime`` or the older ``cuda.cudart``) or, failing that, ``pycuda``
(``pip install pycuda``). JetPack ships TensorRT's Python module but neither of these; the check says so.

Copied into every bundle's ``scripts/`` folder; imported by ``check.py`` only for ``--backend tensorrt``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np


class RuntimeMissing(Exception):
    """TensorRT or a CUDA memory library does not import: bad input for --backend tensorrt (exit 2)."""


class _CudaPython:
    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # noqa: F401 - raises ImportError when cuda-python is absent
        self.rt = cudart
        self.stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        err = result[0] if isinstance(result, tuple) else result
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError("CUDA error {}".format(err))
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(1, nbytes))))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self._ok(self.rt.cudaMemcpy(ptr, host.ctypes.data, host.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice))

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self._ok(self.rt.cudaMemcpy(host.ctypes.data, ptr, host.nbytes,
                                    self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))

    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))


class _PyCuda:
    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401 - creates the context
        import pycuda.driver as driver

        self.driver = driver
        self.stream = driver.Stream()
        self._allocations: Dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        allocation = self.driver.mem_alloc(max(1, nbytes))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.driver.memcpy_htod(ptr, host)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self.driver.memcpy_dtoh(host, ptr)

    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def synchronize(self) -> None:
        self.stream.synchronize()


def cuda_memory() -> Any:
    """cuda-python if it imports, else pycuda; RuntimeMissing naming both when neither does."""
    errors = []
    for api in (_CudaPython, _PyCuda):
        try:
            return api()
        except ImportError as err:
            errors.append(str(err))
    raise RuntimeMissing("the TensorRT backend needs cuda-python or pycuda for device memory and neither "
                         "imports; install one: pip3 install cuda-python (or pycuda)")


class TensorRTRunner:
    """One engine, one execution context, buffers for the largest batch it accepts.

    ``run(x)`` returns the first output for any number of samples (chunked; a fixed-batch engine gets
    padded chunks). ``timed_call(batch)`` returns a function that runs one batch already on the device and
    waits for it: what trtexec reports as GPU compute time, without host copies.
    """

    def __init__(self, engine_path: str, verbose: bool = False) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise RuntimeMissing("TensorRT is needed for --backend tensorrt and its Python module does not "
                                 "import here; run this on the device, or use --backend onnxruntime") from None
        self.trt = trt
        self.cuda = cuda_memory()
        logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        with open(engine_path, "rb") as handle:
            blob = handle.read()
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialise {}".format(engine_path))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise RuntimeError("expected one input and at least one output, the engine has {} and {}".format(
                len(inputs), len(outputs)))
        self.input_name, self.output_names = inputs[0], outputs
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.sample_shape = tuple(int(d) for d in shape[1:])
        if shape[0] >= 0:
            self.fixed_batch: Optional[int] = int(shape[0])
            self.max_batch = int(shape[0])
        else:
            self.fixed_batch = None
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self._buffers: Dict[str, Tuple[int, int]] = {}
        self._allocate(self.max_batch)

    def _allocate(self, batch: int) -> None:
        self.context.set_input_shape(self.input_name, (batch,) + self.sample_shape)
        for name in [self.input_name] + self.output_names:
            dims = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(dims)) * dtype.itemsize
            ptr = self.cuda.malloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.cuda.stream_handle()):
            raise RuntimeError("TensorRT execution failed")
        self.cuda.synchronize()

    def _run_batch(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        batch = self.fixed_batch or n
        if self.fixed_batch and n < self.fixed_batch:
            chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n,) + chunk.shape[1:], chunk.dtype)])
        host_in = np.ascontiguousarray(chunk, dtype=self.input_dtype)
        self.context.set_input_shape(self.input_name, (batch,) + self.sample_shape)
        self.cuda.to_device(self._buffers[self.input_name][0], host_in)
        self._execute()
        name = self.output_names[0]
        dims = tuple(self.context.get_tensor_shape(name))
        host_out = np.empty(dims, dtype=np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name))))
        self.cuda.to_host(host_out, self._buffers[name][0])
        return host_out[:n].astype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        outs: List[np.ndarray] = []
        for i in range(0, len(x), self.max_batch):
            outs.append(self._run_batch(x[i:i + self.max_batch]))
        return np.concatenate(outs)

    def timed_call(self, batch: int, sample: np.ndarray) -> Callable[[], None]:
        if self.fixed_batch and batch != self.fixed_batch:
            raise ValueError("the engine has a fixed batch size {}; time it at that batch".format(self.fixed_batch))
        if batch > self.max_batch:
            raise ValueError("batch {} exceeds the engine's maximum {}".format(batch, self.max_batch))
        reps = int(np.ceil(batch / max(1, len(sample))))
        host_in = np.ascontiguousarray(np.concatenate([sample] * reps)[:batch], dtype=self.input_dtype)
        self.context.set_input_shape(self.input_name, (batch,) + self.sample_shape)
        self.cuda.to_device(self._buffers[self.input_name][0], host_in)
        return self._execute

    def describe(self) -> str:
        return "TensorRT {}".format(self.trt.__version__)

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()
