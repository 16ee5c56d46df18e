"""The worker's side of the page <-> worker protocol (Python in Pyodide, in a Web Worker).

Page -> worker:  {type: "generate", id, params: {prompt, seed, steps, resolution, model, preview_every, autosave},
                  resume?: {step, latents (Float32Array)}}
                 {type: "refine", id, params (the base image's), latents (its final latents), resume?}
                 {type: "cancel", id}      {type: "bench", id}
                 install, install-cancel, model-delete, model-verify, model-import: see app/installer.py
Worker -> page:  {type: "ready", models, capabilities, version}
                 {type: "queued", id, ahead}
                 {type: "progress", id, stage, step, steps, fraction}
                 {type: "checkpoint", id, step, latents (Float32Array, transferred)}
                 {type: "preview", id, step, kind: "approx" | "vae", bitmap (ImageBitmap, transferred)}
                 {type: "result", id, bitmap (ImageBitmap, transferred), backend, timing: {total_ms, preview_ms}, refinable}
                 {type: "png", id, png (ArrayBuffer, transferred), filename, parameters}
                 {type: "bench", id, step_ms, runs_ms, tier, size, model, presets}
                 {type: "cancelled", id}
                 {type: "error", id, message, kind: "input" | "run" | "device-lost" | "oom", retry?}
                 {type: "models", ...}: install states and storage, see app/installer.py
One lock serialises GPU work: a second request waits its turn; cancel works queued or running.
After a "device-lost" or "oom" error the page replaces this worker (a fresh GPU device, nothing
left allocated) and resumes from the last checkpoint or retries as offered.
"""

import asyncio
import time
import traceback

import js
import numpy as np
from pyodide.ffi import to_js

from . import __version__, gallery
from .bench import bench
from .device import PRESETS, default_resolution, fault_kind, lower_resolution, pick_variant, unsuitable
from .installer import InstallError, Installer
from .manifest import ManifestError, bundle_sha256, load_manifest, models_by_id
from .params import InputError, parse_preview_every, parse_request
from .pipeline import SDXLTurbo, to_uint8
from .refiner import SDXLRefiner
from .png import encode_png
from .preview import approximate_rgb, half_size, preview_kind
from .runtime_web import DEFAULT_CHUNK_BYTES, DeviceLost, GpuOutOfMemory, WebRuntime

# Share of the progress bar given to each stage; denoise is split evenly between its steps.
STAGES = {"load": (0.0, 0.25), "encode prompt": (0.25, 0.3), "denoise": (0.3, 0.9), "refine": (0.3, 0.9),
          "decode": (0.9, 1.0)}


def stage_fraction(stage, step, steps):
    start, end = STAGES["load" if stage.startswith("load") else stage]
    return start + (end - start) * (step / steps if stage in ("denoise", "refine") else 0.0)


class Cancelled(Exception):
    pass


def post(message: dict, transfer=()):
    js.postMessage(to_js(message, dict_converter=js.Object.fromEntries), to_js(list(transfer)))


def float32_array(arr: np.ndarray):
    out = js.Float32Array.new(arr.size)
    out.assign(np.ascontiguousarray(arr, dtype=np.float32))
    return out


async def image_bitmap(rgb: np.ndarray):
    h, w, _ = rgb.shape
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    pixels = js.Uint8ClampedArray.new(rgba.size)
    pixels.assign(np.ascontiguousarray(rgba))
    return await js.createImageBitmap(js.ImageData.new(pixels, w, h))


def filename(model_id: str, seed: int) -> str:
    return f"{model_id}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}_{seed}.png"


async def capabilities() -> dict:
    """What the browser offers: WebGPU or not, the adapter, shader-f16 and the buffer limits."""
    caps = {"webgpu": False, "adapter": False, "backend": "wasm"}
    gpu = getattr(js.navigator, "gpu", None)
    if gpu is None:
        caps["reason"] = "This browser does not offer WebGPU."
        return caps
    caps["webgpu"] = True
    adapter = await gpu.requestAdapter()
    if adapter is None:
        caps["reason"] = "WebGPU is present but no GPU adapter was given (it may be disabled or blocklisted)."
        return caps
    info = adapter.info
    caps.update(
        adapter=True, backend="webgpu",
        vendor=info.vendor, architecture=info.architecture, description=info.description,
        fallback_adapter=bool(getattr(info, "isFallbackAdapter", False) or getattr(adapter, "isFallbackAdapter", False)),
        shader_f16=bool(adapter.features.has("shader-f16")),
        max_buffer_size=int(adapter.limits.maxBufferSize),
        max_storage_buffer_binding_size=int(adapter.limits.maxStorageBufferBindingSize),
    )
    return caps


def log_models(event, model_id):
    """Loads and releases, in order, on the worker's global: a test (or devtools) can check that
    no two models are ever held at once."""
    if not hasattr(js.globalThis, "lanternModels"):
        js.globalThis.lanternModels = js.Array.new()
    js.globalThis.lanternModels.push(f"{event} {model_id}")


class Worker:
    def __init__(self, entries: list, caps: dict, rejected=()):
        # Each model as it will run on this device (its variant chosen by the capabilities).
        self.models = {m: pick_variant(e, caps) for m, e in models_by_id({"models": entries}).items()}
        self.caps = caps
        self.installer = Installer(self.models, post, rejected)
        self.loaded = None  # (model id, SDXLTurbo or SDXLRefiner): one model at a time
        self.lock = asyncio.Lock()
        self.cancelled = set()
        self.waiting = []

    def handle(self, message):
        msg = message.to_py()
        kind = msg.get("type")
        if kind == "generate":
            asyncio.ensure_future(self.job(msg["id"], self.generate, msg.get("params") or {}, msg.get("resume")))
        elif kind == "refine":
            asyncio.ensure_future(self.job(msg["id"], self.refine, msg.get("params") or {}, msg.get("resume"),
                                           msg.get("latents")))
        elif kind == "bench":
            asyncio.ensure_future(self.job(msg["id"], self.bench))
        elif kind == "cancel":
            self.cancelled.add(msg["id"])
        elif kind and kind.startswith("gallery-"):  # storage only: no need to wait for the GPU
            asyncio.ensure_future(gallery.handle(msg, post))
        elif kind in ("install", "install-cancel", "model-delete", "model-verify") and msg.get("model") in self.models:
            model_id = msg["model"]
            if kind == "install":
                self.installer.install(model_id, msg.get("stall_s"))
            elif kind == "install-cancel":
                self.installer.cancel(model_id)
            elif kind == "model-delete":
                asyncio.ensure_future(self.delete_model(model_id))
            else:
                self.installer.verify(model_id)
        elif kind == "model-import":
            asyncio.ensure_future(self.installer.import_files(list(message.files)))

    def unload(self):
        """Release the loaded model's sessions and GPU buffers."""
        self.loaded[1].release()
        log_models("release", self.loaded[0])
        self.loaded = None

    async def delete_model(self, model_id):
        async with self.lock:  # never while its sessions are running
            if self.loaded and self.loaded[0] == model_id:
                self.unload()
            await self.installer.delete(model_id)

    async def pipeline(self, model_id, on_stage):
        if self.loaded and self.loaded[0] == model_id:
            return self.loaded[1]
        if self.loaded:  # one model at a time: release the previous one first
            self.unload()
        entry = self.models[model_id]
        files = await self.installer.files_for_loading(model_id)
        runtime = WebRuntime(files, self.caps["backend"], entry.get("external_data_chunk_bytes", DEFAULT_CHUNK_BYTES))
        kind = SDXLRefiner if entry.get("pipeline") == "sdxl-refiner" else SDXLTurbo
        log_models("load", model_id)
        self.loaded = (model_id, await kind.load(runtime, entry, on_stage))
        return self.loaded[1]

    def refiner_for(self, model_id):
        return next((m for m, e in self.models.items() if model_id in e.get("refines", [])), None)

    async def job(self, job_id, work, *args):
        """Run one request in turn; every failure becomes a message and leaves the worker usable."""
        self.waiting.append(job_id)
        if self.lock.locked():
            post({"type": "queued", "id": job_id, "ahead": len(self.waiting)})  # the running job + those waiting
        try:
            async with self.lock:
                self.waiting.remove(job_id)
                if job_id in self.cancelled:
                    raise Cancelled()
                await work(job_id, *args)
        except Cancelled:
            post({"type": "cancelled", "id": job_id})
        except (InputError, InstallError) as e:
            post({"type": "error", "id": job_id, "message": str(e), "kind": "input"})
        except Exception as e:
            traceback.print_exc()
            self.report_failure(job_id, e, args[0] if args else None)
        finally:
            self.cancelled.discard(job_id)

    def report_failure(self, job_id, error, params):
        if isinstance(error, (DeviceLost, GpuOutOfMemory)):
            kind = "device-lost" if isinstance(error, DeviceLost) else "oom"
        else:
            kind = fault_kind(f"{type(error).__name__}: {error}")
        message = {"type": "error", "id": job_id, "kind": kind or "run"}
        if kind == "device-lost":
            message["message"] = "The GPU stopped responding (device lost). Recovering and resuming…"
        elif kind == "oom" and params:
            message["message"] = ("The GPU ran out of memory. Try a lower resolution, fewer steps or fewer previews, "
                                  "or close other tabs that use the GPU.")
            try:
                request = parse_request(params, self.models)
                lower = lower_resolution(self.models[request.model], request.height, request.width)
                if lower:
                    message["retry"] = dict(params, resolution=f"{lower[0]}x{lower[1]}", steps=str(min(request.steps, 2)))
            except InputError:
                pass
        else:
            message["message"] = f"Generation failed: {error}"
        post(message)

    def checked_request(self, raw):
        request = parse_request(raw, self.models)
        reason = unsuitable(self.models[request.model], self.caps)
        if reason:
            raise InputError(reason)
        return request

    def progress_reporter(self, job_id, steps, stage_name):
        """(progress, on_step, preview_ms) callbacks shared by generate and refine."""
        preview_ms = [0.0]
        pipe_ref = {"steps": steps}  # the refiner knows its step count only once loaded

        async def progress(stage, step=0):
            if job_id in self.cancelled:
                raise Cancelled()
            n = pipe_ref["steps"]
            post({"type": "progress", "id": job_id, "stage": stage, "step": step, "steps": n,
                  "fraction": stage_fraction(stage, step, n)})
            await asyncio.sleep(0)

        async def on_step(i, x, denoised):
            latents = float32_array(x)  # the page keeps it to resume after a device loss
            post({"type": "checkpoint", "id": job_id, "step": i + 1, "latents": latents}, transfer=[latents.buffer])
            kind = preview_kind(i + 1, pipe_ref["steps"], pipe_ref["every"])
            if kind:
                t0 = time.perf_counter()
                pipe = pipe_ref["pipe"]
                if kind == "approx":
                    rgb = approximate_rgb(denoised, pipe.entry)
                else:  # a real decode, at half size (a quarter of the cost): enough for a preview
                    rgb = to_uint8(await pipe.decode(half_size(denoised)))
                bitmap = await image_bitmap(rgb)
                post({"type": "preview", "id": job_id, "step": i + 1, "kind": kind, "bitmap": bitmap}, transfer=[bitmap])
                preview_ms[0] += (time.perf_counter() - t0) * 1000
            await progress(stage_name, i + 1)

        return progress, on_step, preview_ms, pipe_ref

    async def generate(self, job_id, raw, resume=None):
        request = self.checked_request(raw)
        if self.models[request.model].get("pipeline") == "sdxl-refiner":
            raise InputError(f"{self.models[request.model]['name']} refines images; choose a base model to generate.")
        started = time.perf_counter()
        progress, on_step, preview_ms, pipe_ref = self.progress_reporter(job_id, request.steps, "denoise")
        pipe_ref["every"] = parse_preview_every(raw)
        await progress("load")
        pipe = pipe_ref["pipe"] = await self.pipeline(request.model, progress)
        if resume:
            latents = np.asarray(resume["latents"], np.float32).reshape(pipe.latent_shape(request.height, request.width))
            resume = (int(resume["step"]), latents)
        image = await pipe.generate(request.prompt, request.seed, request.steps, request.height, request.width,
                                    on_stage=progress, on_step=on_step, resume=resume)
        parameters = dict(request.as_dict(), model_sha256=bundle_sha256(self.models[request.model]),
                          app_version=__version__)
        await self.deliver(job_id, image, parameters, request, started, preview_ms[0], raw,
                           refinable=self.refiner_for(request.model) is not None)

    async def refine(self, job_id, raw, resume, base_latents):
        """The refiner's img2img pass over a base result's final latents (sent back by the page)."""
        request = self.checked_request(raw)
        refiner_id = self.refiner_for(request.model)
        if refiner_id is None or base_latents is None:
            raise InputError(f"There is no refiner for {self.models[request.model]['name']}.")
        entry = self.models[refiner_id]
        strength, steps = float(entry["defaults"]["strength"]), int(entry["defaults"]["steps"])
        started = time.perf_counter()
        shape = (1, 4, request.height // 8, request.width // 8)
        base = np.asarray(base_latents, np.float32).reshape(shape)
        progress, on_step, preview_ms, pipe_ref = self.progress_reporter(job_id, steps, "refine")
        pipe_ref["every"] = parse_preview_every(raw)
        await progress("load")
        pipe = pipe_ref["pipe"] = await self.pipeline(refiner_id, progress)  # releases the base model first
        pipe_ref["steps"] = pipe.denoise_steps(steps, strength)
        if resume:
            resume = (int(resume["step"]), np.asarray(resume["latents"], np.float32).reshape(shape))
        image = await pipe.refine(request.prompt, request.seed, base, strength, steps, on_stage=progress,
                                  on_step=on_step, resume=resume)
        parameters = dict(request.as_dict(), model_sha256=bundle_sha256(self.models[request.model]),
                          refiner=refiner_id, refiner_sha256=bundle_sha256(entry), refiner_strength=strength,
                          refiner_steps=steps, app_version=__version__)
        await self.deliver(job_id, image, parameters, request, started, preview_ms[0], raw, refinable=False)

    async def deliver(self, job_id, image, parameters, request, started, preview_ms, raw, refinable):
        """The finished image: pixels first as an ImageBitmap, then the PNG (slow to encode when large)."""
        rgb = to_uint8(image)
        bitmap = await image_bitmap(rgb)
        timing = {"total_ms": (time.perf_counter() - started) * 1000, "preview_ms": preview_ms}
        post({"type": "result", "id": job_id, "bitmap": bitmap, "backend": self.caps["backend"], "timing": timing,
              "refinable": refinable}, transfer=[bitmap])
        png = encode_png(rgb, parameters)
        png_js = js.Uint8Array.new(len(png))
        png_js.assign(png)
        # The seed also goes as text: the page's MicroPython reads JS numbers as 32-bit signed integers.
        post({"type": "png", "id": job_id, "png": png_js.buffer, "filename": filename(request.model, request.seed),
              "parameters": parameters, "seed_text": str(request.seed)}, transfer=[png_js.buffer])
        if raw.get("autosave"):
            await gallery.autosave(job_id, png, parameters, post)

    async def bench(self, job_id):
        """Time the bundled bench model on this device; tier presets for every usable model."""
        model_id = next(m for m, e in self.models.items() if e.get("bench"))
        await self.installer.ensure(model_id)  # the small calibration model is installed on first use
        pipe = await self.pipeline(model_id, None)
        result = await bench(pipe)
        tier = result["tier"]
        result["presets"] = {
            m: {"resolution": "{}x{}".format(*default_resolution(e, tier)), "steps": PRESETS[tier].steps,
                "preview_every": PRESETS[tier].preview_every}
            for m, e in self.models.items()
        }
        post(dict(result, type="bench", id=job_id))


async def read_manifest(url: str):
    """(valid entries, rejection messages, problem with the whole list or "")."""
    try:
        response = await js.fetch(url)
        if not response.ok:
            raise ManifestError(f"it could not be downloaded (HTTP {response.status})")
        entries, rejected = load_manifest(await response.text())
        return entries, rejected, ""
    except ManifestError as e:
        return [], [], f"The model list (models_manifest.json) is not usable: {e}"


async def start(manifest_url: str):
    entries, rejected, problem = await read_manifest(manifest_url)
    caps = await capabilities()
    worker = Worker(entries, caps, rejected)
    models = [{"id": m["id"], "name": m["name"], "defaults": m["defaults"], "resolutions": m["resolutions"],
               "pipeline": m.get("pipeline", "sdxl-turbo"), "unsuitable": unsuitable(m, caps) or "",
               "bench": bool(m.get("bench"))}
              for m in worker.models.values()]
    post({"type": "ready", "models": models, "capabilities": caps, "version": __version__,
          "manifest_problem": problem, "rejected": rejected})
    asyncio.ensure_future(worker.installer.start())
    return worker
