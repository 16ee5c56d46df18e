"""SDXL checkpoints (safetensors, in the diffusers or the single-file layout) made into models this app
loads: the streaming reader (`safetensors.py`), where each weight comes from (`keys.py`), what a file holds
(`detect.py`), the int4 quantizer (`int4.py`) and the filling of graph templates (`fill.py`).

Imports its own modules, app/onnx, the standard library and numpy, so the worker and CPython run it alike.
"""
