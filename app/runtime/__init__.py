"""Runtimes: the one interface the pipeline uses (`interface.py`), its onnxruntime implementation for
CPython (`ort.py`) and its onnxruntime-web one for Pyodide (`web.py`), and ONNX protobuf tools.

The only code that touches onnxruntime. Imports its own modules, numpy, and the runtime libraries
(onnxruntime and tokenizers on CPython; ORT-web, the tokenizer library, js and pyodide in the browser).
"""
