"""Runtime in Pyodide: onnxruntime-web sessions over an installed bundle's files (OPFS `File`s).

Weights go from OPFS straight into ORT as Blobs; they never enter Pyodide's heap. A model whose
weights sit in an external-data file is handed to ORT in chunks (File.slice), because one such
file (the SDXL UNet's 10.3 GB) is larger than a browser ArrayBuffer: see app/onnx/external.py.
`ort`, `hf_tokenizers` and `lantern_js` are JS modules registered by the worker.
"""

import asyncio
import json

import hf_tokenizers
import numpy as np
import ort
from js import JSON, BigInt64Array, Float32Array, Int32Array, Object, Uint8Array, Uint16Array
from lantern_js import tensor_bytes
from pyodide.ffi import create_once_callable, create_proxy, to_js

from ..onnx.external import split_external_data
from .interface import input_spec

DEFAULT_CHUNK_BYTES = 2**30  # each external-data chunk must fit one ArrayBuffer

# fp16 models (the fp16 variants) take float16 tensors; ORT-web accepts their raw bits as a Uint16Array.
_ARRAYS = {np.dtype(np.float32): ("float32", Float32Array), np.dtype(np.int64): ("int64", BigInt64Array),
           np.dtype(np.int32): ("int32", Int32Array), np.dtype(np.float16): ("float16", Uint16Array)}


def _js(obj):
    return to_js(obj, dict_converter=Object.fromEntries)


def to_tensor(arr: np.ndarray):
    name, typed = _ARRAYS[arr.dtype]
    data = typed.new(arr.size)
    arr = np.ascontiguousarray(arr)
    data.assign(arr.view(np.uint16) if arr.dtype == np.float16 else arr)
    return ort.Tensor.new(name, data, _js(list(arr.shape)))




def from_tensor(tensor) -> np.ndarray:
    dtype = input_spec(tensor.type, None).dtype
    arr = np.frombuffer(tensor_bytes(tensor).to_bytes(), dtype=dtype).reshape(tensor.dims.to_py())
    tensor.dispose()
    return arr


class DeviceLost(RuntimeError):
    pass


class GpuOutOfMemory(MemoryError):
    pass


class WebSession:
    def __init__(self, session, fault, on_release):
        self._session = session
        self._fault = fault
        self._on_release = on_release  # the runtime's: it stops watching a device no session uses
        self.inputs = {m.name: input_spec(m.type, m.shape.to_py()) for m in session.inputMetadata}
        self.output_names = list(session.outputNames.to_py())

    async def run(self, feeds, output_names):
        # A lost or exhausted device can leave ORT's promise pending forever: race it against faults.
        running = asyncio.ensure_future(self._session.run(_js({k: to_tensor(v) for k, v in feeds.items()}),
                                                          _js(output_names)))
        await asyncio.wait([running, self._fault], return_when=asyncio.FIRST_COMPLETED)
        if self._fault.done():
            running.add_done_callback(lambda f: f.cancelled() or f.exception())  # outcome no longer matters
            raise self._fault.result()
        try:
            results = running.result()
        except Exception:
            # A destroyed device can fail the run before `device.lost` resolves: give it a moment.
            await asyncio.wait([self._fault], timeout=0.5)
            if self._fault.done():
                raise self._fault.result() from None
            raise
        return {name: from_tensor(getattr(results, name)) for name in output_names}

    def release(self):
        if self._session is not None:
            self._session.release()
            self._session = None
            self._on_release()


class WebRuntime:
    def __init__(self, files, execution_provider="webgpu", chunk_bytes=DEFAULT_CHUNK_BYTES):
        """`files`: bundle path -> JS File (from the model's install)."""
        self.files = files
        self.chunk_bytes = chunk_bytes
        self.name = f"onnxruntime-web/{execution_provider}"
        self.execution_provider = execution_provider
        self._sessions = []
        self._watched = None  # the GPUDevice whose loss and out-of-memory errors fail a run
        self._watches = 0
        # Resolves with DeviceLost or GpuOutOfMemory when the GPU fails under a run.
        self.fault = asyncio.get_event_loop().create_future()

    def _fail(self, error):
        if not self.fault.done():
            self.fault.set_result(error)

    def _watch_device(self):
        """ORT creates its GPUDevice with the first WebGPU session; from then on, watch it.

        An allocation the driver cannot back surfaces as a GPUOutOfMemoryError; outside an error
        scope it arrives as the device's uncapturederror event. Loss arrives through `device.lost`.
        """
        device = ort.env.webgpu.device if self.execution_provider == "webgpu" else None
        if device is None or self._watched is not None:
            return
        self._watched = device
        watch = self._watches = self._watches + 1

        def on_lost(info):
            if watch == self._watches:  # not a device this runtime let go of (see _unwatch_device)
                self._fail(DeviceLost(f"GPU device lost ({info.reason}): {info.message}"))

        def on_error(event):
            if event.error.constructor.name == "GPUOutOfMemoryError":
                self._fail(GpuOutOfMemory(f"GPU out of memory: {event.error.message}"))

        device.lost.then(create_once_callable(on_lost))
        self._error_listener = create_proxy(on_error)
        device.addEventListener("uncapturederror", self._error_listener)

    def _unwatch_device(self):
        """onnxruntime-web may destroy its device with the last session released (low-memory mode releases
        every part in turn): that is no loss. The next session's device is watched afresh."""
        if self._watched is None:
            return
        self._watched.removeEventListener("uncapturederror", self._error_listener)
        self._error_listener.destroy()
        self._watched = None
        self._watches += 1

    async def read_json(self, path):
        return json.loads(await self.files[path].text())

    async def tokenizer(self, tokenizer_json):
        tok = hf_tokenizers.Tokenizer.new(JSON.parse(json.dumps(tokenizer_json)), Object.new())
        return lambda text: tok.encode(text).ids.to_py()

    async def session(self, path, free_dimensions=None):
        folder = path.rpartition("/")[0]
        # Its external data: the other files beside it, but not other graphs (the q4f16 layout keeps all
        # four in onnx/) nor JSON; those are self-contained and go to ORT as they are.
        external = [p for p in self.files if p.rpartition("/")[0] == folder and not p.endswith((".onnx", ".json"))]
        options = {"executionProviders": [self.execution_provider], "graphOptimizationLevel": "all",
                   "freeDimensionOverrides": dict(free_dimensions or {})}
        if external:  # the graph's weights are beside it: rewrite it to read them chunk by chunk
            model, chunks = split_external_data((await self.files[path].arrayBuffer()).to_bytes(), self.chunk_bytes)
            prefix = folder + "/" if folder else ""
            options["externalData"] = [{"path": c.name, "data": self._file(prefix + c.location, path).slice(c.start, c.end)}
                                       for c in chunks]
            data = Uint8Array.new(len(model))
            data.assign(model)
        else:
            data = Uint8Array.new(await self.files[path].arrayBuffer())
        s = WebSession(await ort.InferenceSession.create(data, _js(options)), self.fault, self._released)
        self._watch_device()
        self._sessions = [x for x in self._sessions if x._session is not None] + [s]  # (low-memory mode releases some)
        return s

    def _released(self):
        if all(x._session is None for x in self._sessions):
            self._unwatch_device()

    def _file(self, path, model_path):
        if path not in self.files:
            raise OSError(f"{model_path} needs {path}, which the model's manifest does not list")
        return self.files[path]

    def release(self):
        for s in self._sessions:
            s.release()
        self._sessions.clear()
