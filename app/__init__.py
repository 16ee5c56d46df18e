"""Lantern: SDXL-Turbo image generation that runs on the visitor's own GPU.

Four rooms, each allowed to import only what its own docstring says (tests/test_layout.py checks):
  pipeline/  prompt -> pixels, runtime-agnostic (numpy only; handed a runtime)
  runtime/   the runtime interface and its two implementations: onnxruntime (CPython), ORT-web (Pyodide)
  store/     what is kept in the browser and how it is checked: manifests, installs, gallery
  worker/    the page <-> worker protocol: wires the other three together
The package runs unchanged on CPython (tests, parity) and in Pyodide (the browser).
"""

__version__ = "0.1.0"
