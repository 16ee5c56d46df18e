"""What is kept in the browser and how it is checked: the model manifest, verified model installs in
OPFS (download, resume, hashing, import, verify), the gallery of results and the PNGs they are kept as.

Imports its own modules, app/onnx (to convert models at install), numpy, Pillow and the browser (js,
pyodide); never the pipeline, a runtime or the worker.
"""
