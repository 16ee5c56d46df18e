"""Lantern: SDXL-Turbo image generation that runs on the visitor's own GPU.

The package runs unchanged on CPython (onnxruntime) and in Pyodide (onnxruntime-web);
only `runtime_ort` and `runtime_web` know which.
"""

__version__ = "0.1.0"
