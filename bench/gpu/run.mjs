// The GPU benchmark's host: Pyodide under Node with Dawn (npm `webgpu`) as navigator.gpu and the site's own
// onnxruntime-web, so that the app's worker-side Python (app/, from build/site/app.zip) runs exactly as in the
// worker, on the WGSL kernels Chrome runs. gpu_bench.py (in Pyodide) does the measuring; see README.md.
//
//   node bench/gpu/run.mjs --bundle models/tiny-sdxl-turbo --manifest models_manifest/tiny-sdxl-turbo.json \
//        [--sizes 64x64:1,64x64:4] [--prompt "..."] [--runs 5] [--variant ID] [--reference torch.json] [--dawn OPTION]
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath, pathToFileURL } from "node:url";

import { create, globals } from "webgpu";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const site = path.join(root, "build/site");
const { values: args } = parseArgs({
  options: {
    bundle: { type: "string", default: "models/tiny-sdxl-turbo" },
    manifest: { type: "string", default: "models_manifest/tiny-sdxl-turbo.json" },
    sizes: { type: "string", default: "64x64:1,64x64:4" },
    prompt: { type: "string", default: "a lighthouse at dusk, oil painting" },
    runs: { type: "string", default: "9" },
    variant: { type: "string", default: "" },
    // Dawn's own options, e.g. enable-dawn-features=vulkan_enable_f16_on_nvidia (shader-f16 on NVIDIA under
    // Vulkan, which Chrome and Dawn withhold by default).
    dawn: { type: "string", multiple: true, default: [] },
    reference: { type: "string", default: "" },
    "bench-bundle": { type: "string", default: "models/tiny-sdxl-turbo" },
    "bench-manifest": { type: "string", default: "models_manifest/tiny-sdxl-turbo.json" },
  },
});

Object.assign(globalThis, globals);
// dawn.node refuses writeBuffer from a view of a SharedArrayBuffer (ORT's wasm memory is one): copy it first.
const writeBuffer = GPUQueue.prototype.writeBuffer;
GPUQueue.prototype.writeBuffer = function (buffer, offset, data, dataOffset = 0, size) {
  if (ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer) {
    const start = dataOffset * data.BYTES_PER_ELEMENT;
    const length = size === undefined ? data.byteLength - start : size * data.BYTES_PER_ELEMENT;
    return writeBuffer.call(this, buffer, offset, new Uint8Array(data.buffer, data.byteOffset + start, length).slice());
  }
  return writeBuffer.call(this, buffer, offset, data, dataOffset, size);
};
Object.defineProperty(globalThis, "navigator", {
  value: { gpu: create(args.dawn), hardwareConcurrency: os.cpus().length, userAgent: `node ${process.version}` },
  configurable: true,
});

// A file on disk as a Blob that reads its byte range only when asked: Node's own (fs.openAsBlob) reports sizes
// modulo 2^32, and ORT reads each external-data chunk it is given.
class DiskBlob extends Blob {
  constructor(file, start = 0, end = fs.statSync(file).size) {
    super([]);
    Object.assign(this, { file, start, end });
  }
  get size() { return this.end - this.start; }
  slice(a = 0, b = this.size) {
    return new DiskBlob(this.file, this.start + Math.max(0, a), this.start + Math.min(this.size, b));
  }
  async arrayBuffer() {
    const out = new Uint8Array(this.size);
    const handle = await fs.promises.open(this.file);
    try {
      for (let at = 0; at < out.length;) at += (await handle.read(out, at, out.length - at, this.start + at)).bytesRead;
    } finally {
      await handle.close();
    }
    return out.buffer;
  }
  async text() { return new TextDecoder().decode(await this.arrayBuffer()); }
}

function bundleFiles(folder) {
  const files = {};
  const walk = (dir) => fs.readdirSync(dir, { withFileTypes: true }).forEach((e) => {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) walk(full);
    else files[path.relative(folder, full).split(path.sep).join("/")] = new DiskBlob(full);
  });
  walk(folder);
  return files;
}

const ort = await import(pathToFileURL(path.join(site, "vendor/ort/ort.webgpu.min.mjs")).href);
ort.env.wasm.wasmPaths = path.join(site, "vendor/ort/");
ort.env.wasm.numThreads = 1;
const tokenizers = await import(pathToFileURL(path.join(site, "vendor/tokenizers/tokenizers.min.mjs")).href);
const { loadPyodide } = await import(pathToFileURL(path.join(site, "vendor/pyodide/pyodide.mjs")).href);

const py = await loadPyodide({ indexURL: path.join(site, "vendor/pyodide/") });
await py.loadPackage(["numpy", "pillow"], { messageCallback: () => {} });
py.registerJsModule("ort", ort);
py.registerJsModule("hf_tokenizers", tokenizers);
py.registerJsModule("lantern_js", {
  tensor_bytes: (t) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
});
py.registerJsModule("gpu_host", {
  // The peak resident memory of this process so far (VmHWM), in bytes.
  peak_rss: () => 1024 * Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync("/proc/self/status", "utf8"))?.[1] ?? 0),
  // One session run `n` times from plain JS with the same feeds: the ceiling the app's step is compared to.
  raw_runs: async (session, feeds, outputNames, n) => {
    const times = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const out = await session.run(feeds, outputNames);
      times.push(performance.now() - t0);
      Object.values(out).forEach((t) => t.dispose());
    }
    return times;
  },
  files: bundleFiles(path.resolve(root, args.bundle)),
  manifest: fs.readFileSync(path.resolve(root, args.manifest), "utf8"),
  // The model the app's first-visit bench runs (the tier comes from it), when the bundle is another.
  bench_files: bundleFiles(path.resolve(root, args["bench-bundle"])),
  bench_manifest: fs.readFileSync(path.resolve(root, args["bench-manifest"]), "utf8"),
  // PyTorch eager's times on the same weights (torch_bench.py's JSON), for ratios.
  reference: args.reference ? fs.readFileSync(path.resolve(root, args.reference), "utf8") : "",
  options: { sizes: args.sizes, prompt: args.prompt, runs: Number(args.runs), variant: args.variant },
});
py.unpackArchive(new Uint8Array(fs.readFileSync(path.join(site, "app.zip"))), "zip", { extractDir: "/lantern" });
py.FS.writeFile("/lantern/gpu_bench.py", fs.readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), "gpu_bench.py")));
py.pyimport("sys").path.insert(0, "/lantern");
await py.pyimport("gpu_bench").main();
process.exit(0);
