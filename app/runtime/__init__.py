"""Runtimes: the one interface the pipeline uses (`interface.py`), its onnxruntime implementation for
CPython (`ort.py`) and its onnxruntime-web one for Pyodide (`web.py`).

The only code that touches onnxruntime. Imports its own modules, app/onnx, numpy, and the runtime libraries
(onnxruntime and tokenizers on CPython; ORT-web, the tokenizer library, js and pyodide in the browser).
"""
