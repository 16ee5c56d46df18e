"""The worker's side of the page <-> worker protocol (Python in Pyodide, in a Web Worker).

Page -> worker:  {type: "generate", id, params: {prompt, seed, steps, resolution, model}}
                 {type: "cancel", id}
Worker -> page:  {type: "ready", models, backend, version}
                 {type: "queued", id, position}
                 {type: "progress", id, stage, step, steps, fraction}
                 {type: "result", id, bitmap (ImageBitmap, transferred), backend}
                 {type: "png", id, png (ArrayBuffer, transferred), filename, parameters}
                 {type: "cancelled", id}   {type: "error", id, message, kind: "input" | "run"}
One lock serialises GPU work: a second generate waits its turn; cancel works queued or running.
"""

import asyncio
import json
import time
import traceback

import js
import numpy as np
from pyodide.ffi import to_js

from . import __version__
from .manifest import bundle_sha256, models_by_id
from .params import InputError, parse_request
from .pipeline import SDXLTurbo, to_uint8
from .png import encode_png
from .runtime_web import WebRuntime, fetch_ok

# Share of the progress bar given to each stage; denoise is split evenly between its steps.
STAGES = {"load": (0.0, 0.25), "encode prompt": (0.25, 0.3), "denoise": (0.3, 0.9), "decode": (0.9, 1.0)}


def stage_fraction(stage, step, steps):
    start, end = STAGES["load" if stage.startswith("load") else stage]
    return start + (end - start) * (step / steps if stage == "denoise" else 0.0)


class Cancelled(Exception):
    pass


def post(message: dict, transfer=()):
    js.postMessage(to_js(message, dict_converter=js.Object.fromEntries), to_js(list(transfer)))


async def image_bitmap(rgb: np.ndarray):
    h, w, _ = rgb.shape
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    pixels = js.Uint8ClampedArray.new(rgba.size)
    pixels.assign(np.ascontiguousarray(rgba))
    return await js.createImageBitmap(js.ImageData.new(pixels, w, h))


def filename(model_id: str, seed: int) -> str:
    return f"{model_id}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}_{seed}.png"


async def pick_backend() -> str:
    """WebGPU when the browser gives an adapter, else onnxruntime-web's wasm (CPU) back end."""
    gpu = getattr(js.navigator, "gpu", None)
    if gpu is None:
        return "wasm"
    return "webgpu" if await gpu.requestAdapter() is not None else "wasm"


class Worker:
    def __init__(self, manifest: dict, backend: str):
        self.models = models_by_id(manifest)
        self.backend = backend
        self.loaded = None  # (model id, SDXLTurbo): one model at a time
        self.lock = asyncio.Lock()
        self.cancelled = set()
        self.waiting = []

    def handle(self, message):
        msg = message.to_py()
        if msg.get("type") == "generate":
            asyncio.ensure_future(self.generate(msg["id"], msg.get("params") or {}))
        elif msg.get("type") == "cancel":
            self.cancelled.add(msg["id"])

    async def pipeline(self, model_id, on_stage):
        if self.loaded and self.loaded[0] == model_id:
            return self.loaded[1]
        if self.loaded:
            self.loaded[1].release()
            self.loaded = None
        entry = self.models[model_id]
        runtime = WebRuntime(js.URL.new(entry["base_url"], js.location.href).href, self.backend)
        self.loaded = (model_id, await SDXLTurbo.load(runtime, entry, on_stage))
        return self.loaded[1]

    async def generate(self, job_id, raw):
        try:
            request = parse_request(raw, self.models)
        except InputError as e:
            post({"type": "error", "id": job_id, "message": str(e), "kind": "input"})
            return
        self.waiting.append(job_id)
        if self.lock.locked():
            post({"type": "queued", "id": job_id, "position": len(self.waiting) - 1})
        try:
            async with self.lock:
                self.waiting.remove(job_id)
                await self.run(job_id, request)
        except Cancelled:
            post({"type": "cancelled", "id": job_id})
        except Exception as e:  # a failed run must leave the worker ready for the next one
            traceback.print_exc()
            post({"type": "error", "id": job_id, "message": f"Generation failed: {e}", "kind": "run"})
        finally:
            self.cancelled.discard(job_id)

    async def run(self, job_id, request):
        steps = request.steps

        async def progress(stage, step=0):
            if job_id in self.cancelled:
                raise Cancelled()
            post({"type": "progress", "id": job_id, "stage": stage, "step": step, "steps": steps,
                  "fraction": stage_fraction(stage, step, steps)})
            await asyncio.sleep(0)

        await progress("load")
        pipe = await self.pipeline(request.model, progress)

        async def on_step(i, x, denoised):
            await progress("denoise", i + 1)

        image = await pipe.generate(request.prompt, request.seed, steps, request.height, request.width,
                                    on_stage=progress, on_step=on_step)
        rgb = to_uint8(image)
        entry = self.models[request.model]
        parameters = dict(request.as_dict(), model_sha256=bundle_sha256(entry), app_version=__version__)
        # Show the pixels first; the PNG (slow to encode at large sizes) follows.
        bitmap = await image_bitmap(rgb)
        post({"type": "result", "id": job_id, "bitmap": bitmap, "backend": self.backend}, transfer=[bitmap])
        png = encode_png(rgb, parameters)
        png_js = js.Uint8Array.new(len(png))
        png_js.assign(png)
        post({"type": "png", "id": job_id, "png": png_js.buffer, "filename": filename(request.model, request.seed),
              "parameters": parameters}, transfer=[png_js.buffer])


async def start(manifest_url: str):
    manifest = json.loads(await (await fetch_ok(manifest_url)).text())
    backend = await pick_backend()
    worker = Worker(manifest, backend)
    models = [{"id": m["id"], "name": m["name"], "defaults": m["defaults"], "resolutions": m["resolutions"]}
              for m in manifest["models"]]
    post({"type": "ready", "models": models, "backend": backend, "version": __version__})
    return worker
