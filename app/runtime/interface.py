"""The one interface the pipeline needs from a runtime.

A runtime is bound to one model bundle (a folder or a base URL) and gives:
  - `await read_json(path)`: a JSON file of the bundle;
  - `await tokenizer(tokenizer_json)`: `encode(text) -> list[int]` from a tokenizer.json dict;
  - `await session(path, free_dimensions=None)`: an inference session for an ONNX file of the bundle,
    its named free dimensions fixed where `free_dimensions` ({name: size}) says (names it lacks are ignored);
  - `release()`: frees every session it made.
A session exposes `inputs` (name -> InputSpec) and `output_names`,
`await run(feeds, output_names) -> dict[str, np.ndarray]`, and `release()` (frees it alone).
`one_at_a_time.py` wraps any runtime so that at most one of its sessions holds memory at a time.

Implementations: `runtime_ort.OrtRuntime` (CPython) and `runtime_web.WebRuntime` (Pyodide).
"""

from dataclasses import dataclass

import numpy as np

# ONNX element type names as both onnxruntime ("tensor(float)") and ORT-web ("float32") spell them.
ONNX_DTYPES = {
    "tensor(float)": np.float32, "float32": np.float32,
    "tensor(int64)": np.int64, "int64": np.int64,
    "tensor(int32)": np.int32, "int32": np.int32,
    "tensor(float16)": np.float16, "float16": np.float16,
}


@dataclass(frozen=True)
class InputSpec:
    dtype: type  # numpy scalar type
    rank: int  # -1 when unknown

    def coerce(self, value) -> np.ndarray:
        """`value` in this input's dtype; a single value takes the input's rank ([] or [1])."""
        arr = np.asarray(value, dtype=self.dtype)
        if self.rank >= 0 and arr.ndim != self.rank and arr.size == 1:
            arr = arr.reshape((1,) * self.rank)
        return arr


def input_spec(type_name: str, shape) -> InputSpec:
    if type_name not in ONNX_DTYPES:
        raise ValueError(f"unsupported model input type {type_name}")
    return InputSpec(ONNX_DTYPES[type_name], -1 if shape is None else len(shape))
