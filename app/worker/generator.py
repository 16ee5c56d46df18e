"""The GPU work a request asks for: load a model (one at a time), generate, refine, deliver the
image, bench the device; and how an unexpected failure is described to the page."""

import asyncio
import time
from dataclasses import replace

import js
import numpy as np

from .. import __version__
from ..pipeline.bundle import DECODE_TILE, to_uint8
from ..pipeline.refiner import SDXLRefiner
from ..pipeline.turbo import SDXLTurbo
from ..runtime.one_at_a_time import OneAtATime
from ..runtime.web import DEFAULT_CHUNK_BYTES, DeviceLost, GpuOutOfMemory, WebRuntime
from ..store import gallery
from ..store.gallery import as_bytes
from ..store.locks import BENCH_LOCK, held
from ..store.manifest import bundle_sha256, encoder_for, is_addon, refiner_for
from ..store.png import encode_png
from .bench import bench
from .device import (MEMORY_WORDS, PRESETS, default_resolution, fault_kind, lower_resolution, memory_preset, next_memory,
                     unsuitable)
from .jobs import JobQueue
from .messages import browser_decode, bytes_buffer, filename, image_bitmap, post
from .params import InputError, parse_memory, parse_preview_every, parse_request
from .picture import decode, fit, upscaled_size
from .progress import Progress


def log_models(event, model_id):
    """Loads and releases, in order, on the worker's global: a test (or devtools) can check that
    no two models are ever held at once."""
    if not hasattr(js.globalThis, "lanternModels"):
        js.globalThis.lanternModels = js.Array.new()
    js.globalThis.lanternModels.push(f"{event} {model_id}")


class Generator:
    def __init__(self, models: dict, caps: dict, installer):
        self.models = models  # id -> manifest entry as it runs on this device
        self.caps = caps
        self.installer = installer
        self.queue = JobQueue(self.report_failure)
        self.loaded = None  # (model id, SDXLTurbo or SDXLRefiner, one part at a time?): one model at a time
        self.progress = None  # the running job's Progress (where it stands when it fails)

    def unload(self):
        """Release the loaded model's sessions and GPU buffers."""
        self.loaded[1].release()
        log_models("release", self.loaded[0])
        self.loaded = None

    async def delete_model(self, model_id):
        async with self.queue.lock:  # never while its sessions are running
            if self.loaded and self.loaded[0] == model_id:
                self.unload()
            await self.installer.delete(model_id)

    async def pipeline(self, model_id, on_stage, one_part_at_a_time=False):
        if self.loaded and self.loaded[0] == model_id and self.loaded[2] == one_part_at_a_time:
            return self.loaded[1]
        if self.loaded:  # one model at a time: release the previous one (or its other memory mode) first
            self.unload()
        entry = self.models[model_id]
        files = await self.installer.files_for_loading(model_id)
        runtime = WebRuntime(files, self.caps["backend"], entry.get("external_data_chunk_bytes", DEFAULT_CHUNK_BYTES))
        kind = SDXLRefiner if entry.get("pipeline") == "sdxl-refiner" else SDXLTurbo
        log_models("load", model_id)
        pipe = await kind.load(OneAtATime(runtime) if one_part_at_a_time else runtime, entry, on_stage)
        self.loaded = (model_id, pipe, one_part_at_a_time)
        return pipe

    def refiner_for(self, model_id):
        return refiner_for(self.models, model_id)

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
            loading = bool(self.progress and self.progress.job_id == job_id and self.progress.stage.startswith("load"))
            memory = next_memory(str(params.get("memory") or ""), loading)
            try:
                request = parse_request(params, self.models)
                lower = lower_resolution(self.models[request.model], request.height, request.width)
                if memory:  # first the ways to use less memory for the same picture, then a smaller one
                    message["retry"] = dict(params, memory=memory)
                    message["retry_label"] = f"Retry, {MEMORY_WORDS[memory]}"
                elif lower:
                    message["retry"] = dict(params, resolution=f"{lower[0]}x{lower[1]}", steps=str(min(request.steps, 2)))
                    steps = min(request.steps, 2)
                    message["retry_label"] = f"Retry at {lower[0]}x{lower[1]}, {steps} step{'s' if steps > 1 else ''}"
            except InputError:
                pass
        else:
            message["message"] = f"Generation failed: {error}"
        post(message)

    def checked_request(self, raw, picture=False):
        request = parse_request(raw, self.models, picture)
        reason = unsuitable(self.models[request.model], self.caps)
        if reason:
            raise InputError(reason, "model")
        return request

    async def load_encoder(self, pipe, model_id, on_stage, one_part_at_a_time):
        """The VAE encoder add-on beside the loaded model: installed on first use, loaded once."""
        if pipe.vae_encoder is not None:
            return
        encoder_id = encoder_for(self.models, model_id)
        if encoder_id is None:
            raise InputError(f"{self.models[model_id]['name']} cannot start from a picture.", "picture")
        entry = self.models[encoder_id]
        reason = unsuitable(entry, self.caps)
        if reason:
            raise InputError(reason, "picture")
        if self.installer.state(encoder_id) != "installed":
            await on_stage("install encoder")
            await self.installer.ensure(encoder_id)
        files = await self.installer.files_for_loading(encoder_id)
        runtime = WebRuntime(files, self.caps["backend"], entry.get("external_data_chunk_bytes", DEFAULT_CHUNK_BYTES))
        await pipe.load_encoder(OneAtATime(runtime, beside=pipe.runtime) if one_part_at_a_time else runtime, on_stage)

    async def start_picture(self, request, source):
        """(the request with an upscale's size, the picture fitted to its size, what the PNG records of it)."""
        picture = await decode(as_bytes(source), managed=browser_decode)
        if request.upscale:
            largest = max(max(r) for r in self.models[request.model]["resolutions"])
            height, width = upscaled_size(*picture.size, request.upscale, largest)
            if height * width <= picture.size[0] * picture.size[1]:
                raise InputError(f"This picture is {picture.size[1]}×{picture.size[0]}; "
                                 f"{self.models[request.model]['name']} makes nothing larger.")
            request = replace(request, height=height, width=width)
        pixels = fit(picture, request.height, request.width, request.fit)
        return request, pixels, {"sha256": picture.sha256, "height": picture.size[0], "width": picture.size[1],
                                 "notes": picture.notes}

    async def generate(self, job_id, raw, resume=None, source=None):
        """A run from noise, or from a picture (`source`: its file's bytes) with a strength, or a result upscaled."""
        request = self.checked_request(raw, picture=source is not None)
        if self.models[request.model].get("pipeline") == "sdxl-refiner":
            raise InputError(f"{self.models[request.model]['name']} refines images; choose a base model to generate.", "model")
        pixels = origin = None
        if source is not None:
            request, pixels, origin = await self.start_picture(request, source)
        tiles, parts = parse_memory(raw)
        started = time.perf_counter()
        progress = self.progress = Progress(job_id, self.queue, request.steps, "denoise", parse_preview_every(raw))
        progress.first = SDXLTurbo.first_step(request.steps, request.strength)
        await progress.on_stage("load")
        pipe = progress.pipe = await self.pipeline(request.model, progress.on_stage, parts)
        if source is not None:
            await self.load_encoder(pipe, request.model, progress.on_stage, parts)
        if resume:
            latents = np.asarray(resume["latents"], np.float32).reshape(pipe.latent_shape(request.height, request.width))
            resume = (int(resume["step"]), latents)
        # An upscale's encode and decode go in tiles above the model's tile size, whatever the memory setting.
        tile = self.decode_tile(request.model, tiles or bool(request.upscale))
        image = await pipe.generate(request.prompt, request.seed, request.steps, request.height, request.width,
                                    on_stage=progress.on_stage, on_step=progress.on_step, resume=resume,
                                    decode_tile=tile, image=pixels, strength=request.strength, encode_tile=tile,
                                    guidance_scale=request.guidance, negative_prompt=request.negative_prompt)
        await self.deliver(job_id, image, self.recorded(request, origin), request, started, progress.preview_ms, raw)

    def recorded(self, request, origin):
        """What a run's PNG records: the settings that made it (none that it did not use) and, for a run from a
        picture, the picture's sha256 and size."""
        parameters = {k: v for k, v in request.as_dict().items() if v not in (None, "")}
        parameters.update(model_sha256=bundle_sha256(self.models[request.model]), app_version=__version__)
        if request.guidance <= 1:
            del parameters["guidance"]
        if origin is None or request.upscale:
            del parameters["fit"]
        if origin is not None:
            parameters["source"] = {k: origin[k] for k in ("sha256", "height", "width")}
        if request.upscale:
            parameters["hires_steps"] = request.steps
        return parameters

    async def refine(self, job_id, raw, resume, base_latents):
        """The refiner's img2img pass over a base result's final latents (sent back by the page)."""
        request = self.checked_request(raw)
        refiner_id = self.refiner_for(request.model)
        if refiner_id is None or base_latents is None:
            raise InputError(f"There is no refiner for {self.models[request.model]['name']}.")
        entry = self.models[refiner_id]
        strength, steps = float(entry["defaults"]["strength"]), int(entry["defaults"]["steps"])
        tiles, parts = parse_memory(raw)
        started = time.perf_counter()
        shape = (1, 4, request.height // 8, request.width // 8)
        base = np.asarray(base_latents, np.float32).reshape(shape)
        progress = self.progress = Progress(job_id, self.queue, steps, "refine", parse_preview_every(raw))
        await progress.on_stage("load")
        pipe = progress.pipe = await self.pipeline(refiner_id, progress.on_stage, parts)  # releases the base model first
        progress.steps = pipe.denoise_steps(steps, strength)
        if resume:
            resume = (int(resume["step"]), np.asarray(resume["latents"], np.float32).reshape(shape))
        image = await pipe.refine(request.prompt, request.seed, base, strength, steps, on_stage=progress.on_stage,
                                  on_step=progress.on_step, resume=resume,
                                  decode_tile=self.decode_tile(refiner_id, tiles))
        parameters = dict(request.as_dict(), model_sha256=bundle_sha256(self.models[request.model]),
                          refiner=refiner_id, refiner_sha256=bundle_sha256(entry), refiner_strength=strength,
                          refiner_steps=steps, app_version=__version__)
        await self.deliver(job_id, image, parameters, request, started, progress.preview_ms, raw)

    def decode_tile(self, model_id, tiles: bool) -> int | None:
        """The tile (pixels) a run of this model decodes with, or None for a whole decode."""
        return int(self.models[model_id].get("decode_tile", DECODE_TILE)) if tiles else None

    async def deliver(self, job_id, image, parameters, request, started, preview_ms, raw):
        """The finished image: pixels first as an ImageBitmap, then the PNG (slow to encode when large)."""
        rgb = to_uint8(image)
        bitmap = await image_bitmap(rgb)
        timing = {"total_ms": (time.perf_counter() - started) * 1000, "preview_ms": preview_ms}
        post({"type": "result", "id": job_id, "bitmap": bitmap, "backend": self.caps["backend"], "timing": timing},
             transfer=[bitmap])
        png = encode_png(rgb, parameters)
        buffer = bytes_buffer(png)
        # The seed also goes as text: the page's MicroPython reads JS numbers as 32-bit signed integers.
        post({"type": "png", "id": job_id, "png": buffer, "filename": filename(request.model, request.seed),
              "parameters": parameters, "seed_text": str(request.seed)}, transfer=[buffer])
        if raw.get("autosave"):
            await gallery.autosave(job_id, png, parameters, post)
            await self.installer.gallery_changed()

    async def bench(self, job_id):
        """Time the bundled bench model on this device; tier presets for every usable model."""
        model_id = next(m for m, e in self.models.items() if e.get("bench"))
        async def report(stage, step=0, steps=1):
            post({"type": "progress", "id": job_id, "stage": stage, "step": step, "steps": steps,
                  "fraction": step / steps})
            await asyncio.sleep(0)

        async with held(BENCH_LOCK):  # one tab measures at a time: two at once would slow each other's figures
            await report("bench prepare")
            await self.installer.ensure(model_id)  # the small calibration model is installed on first use
            pipe = await self.pipeline(model_id, None)
            result = await bench(pipe, on_run=lambda k, n: report("bench run", k, n))
        tier = result["tier"]
        result["presets"] = {
            m: {"resolution": "{}x{}".format(*default_resolution(e, tier)), "steps": PRESETS[tier].steps,
                "preview_every": PRESETS[tier].preview_every, "memory": memory_preset(self.caps, tier)}
            for m, e in self.models.items() if not is_addon(e)
        }
        post(dict(result, type="bench", id=job_id))
