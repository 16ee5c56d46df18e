// The GPU worker: boots Pyodide, hands it onnxruntime-web and the tokenizer library,
// and forwards page messages to app/worker/protocol.py (Python). Only what the browser requires is here.
import { loadPyodide } from "./vendor/pyodide/pyodide.mjs";

const site = new URL("./", import.meta.url);
// Start-up steps, in ms since this worker began (tests/bench_startup.py prints them; handy in devtools).
const boot = (globalThis.lanternBoot = []);
const mark = (step) => boot.push([step, Math.round(performance.now())]);

// onnxruntime-web's JSPI build streams each external-data Blob to the GPU while a session is created;
// the asyncify build, for browsers without JSPI, reads every Blob whole into the tab first.
const ortBuild = (globalThis.lanternOrtBuild = typeof WebAssembly.Suspending === "function" ? "jspi" : "asyncify");
// What does not need Python starts at once, so that it overlaps Pyodide's own start.
const ortModule = import(ortBuild === "jspi" ? "./vendor/ort/ort.jspi.min.mjs" : "./vendor/ort/ort.webgpu.min.mjs").then((ort) => {
  globalThis.ort = ort; // for diagnostics from devtools (e.g. ort.env.webgpu.device), and fault-injection tests
  ort.env.wasm.wasmPaths = new URL("vendor/ort/", site).href;
  // Threads need cross-origin isolation (serve.py sends COOP/COEP); leave a core for the page.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency - 1)) : 1;
  mark("onnxruntime-web");
  return ort;
});
const tokenizersModule = import("./vendor/tokenizers/tokenizers.min.mjs");
const appZip = fetch(new URL("app.zip", site)).then((response) => response.arrayBuffer());

// Messages that arrive while Python boots are replayed once it is ready.
const early = [];
self.onmessage = (event) => early.push(event.data);

try {
  const py = await loadPyodide({ indexURL: new URL("vendor/pyodide/", site).href });
  mark("pyodide");
  const packages = py.loadPackage(["numpy", "pillow"], { messageCallback: () => {} }).then(() => mark("numpy, pillow"));
  py.unpackArchive(await appZip, "zip", { extractDir: "/lantern" });
  py.pyimport("sys").path.insert(0, "/lantern");
  mark("app.zip");
  py.registerJsModule("ort", await ortModule);
  py.registerJsModule("hf_tokenizers", await tokenizersModule);
  // A tensor's bytes, taken in JS: Pyodide cannot wrap the Float16Array that holds an fp16 output
  // (and the CSP allows no Function() of our own to do it from Python).
  py.registerJsModule("lantern_js", {
    tensor_bytes: (t) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
  });
  await packages;
  const protocol = py.pyimport("app.worker.protocol");
  mark("import app");
  const worker = await protocol.start(new URL("models_manifest.json", site).href);
  mark("ready");
  self.onmessage = (event) => worker.handle(event.data);
  early.forEach((message) => worker.handle(message));
} catch (err) {
  self.postMessage({ type: "error", id: null, kind: "boot", message: `The generator could not start: ${err.message}` });
}
