"""The ONNX file format, read and written without the onnx package (Pyodide has none): the protobuf
wire format (`wire.py`), external data split into loadable chunks (`external.py`), and the install-time
conversion of fp16-activation models to fp32 activations (`fp32.py`).

Imports its own modules, the standard library and numpy; nothing else of the app.
"""
