// The GPU worker: boots Pyodide, hands it onnxruntime-web and the tokenizer library,
// and forwards page messages to app/worker/protocol.py (Python). Only what the browser requires is here.
import { loadPyodide } from "./vendor/pyodide/pyodide.mjs";
import * as ort from "./vendor/ort/ort.webgpu.min.mjs";
import * as tokenizers from "./vendor/tokenizers/tokenizers.min.mjs";

const site = new URL("./", import.meta.url);
globalThis.ort = ort; // for diagnostics from devtools (e.g. ort.env.webgpu.device), and fault-injection tests
ort.env.wasm.wasmPaths = new URL("vendor/ort/", site).href;
// Threads need cross-origin isolation (serve.py sends COOP/COEP); leave a core for the page.
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency - 1)) : 1;

// Messages that arrive while Python boots are replayed once it is ready.
const early = [];
self.onmessage = (event) => early.push(event.data);

try {
  const py = await loadPyodide({ indexURL: new URL("vendor/pyodide/", site).href });
  await py.loadPackage(["numpy", "pillow"], { messageCallback: () => {} });
  py.registerJsModule("ort", ort);
  py.registerJsModule("hf_tokenizers", tokenizers);
  // A tensor's bytes, taken in JS: Pyodide cannot wrap the Float16Array that holds an fp16 output
  // (and the CSP allows no Function() of our own to do it from Python).
  py.registerJsModule("lantern_js", {
    tensor_bytes: (t) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
  });
  const app = await (await fetch(new URL("app.zip", site))).arrayBuffer();
  py.unpackArchive(app, "zip", { extractDir: "/lantern" });
  py.pyimport("sys").path.insert(0, "/lantern");
  const worker = await py.pyimport("app.worker.protocol").start(new URL("models_manifest.json", site).href);
  self.onmessage = (event) => worker.handle(event.data);
  early.forEach((message) => worker.handle(message));
} catch (err) {
  self.postMessage({ type: "error", id: null, kind: "boot", message: `The generator could not start: ${err.message}` });
}
