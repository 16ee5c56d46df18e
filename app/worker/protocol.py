"""The worker's side of the page <-> worker protocol (Python in Pyodide, in a Web Worker).

Page -> worker:  {type: "generate", id, params: {prompt, seed, steps, resolution, model, preview_every, autosave,
                  memory, guidance, negative_prompt, strength, fit, upscale}, resume?: {step, latents (Float32Array)},
                  source?: (ArrayBuffer) the picture a run starts from (strength, fit) or a result to upscale}
                 {type: "picture-check", id, source}: is this a picture a run can start from?
                 {type: "refine", id, params (the base image's), latents (its final latents), resume?}
                 {type: "cancel", id}      {type: "bench", id}      {type: "tokens", model, text}
                 install, install-cancel, model-delete, model-verify, model-import, models-free-unlisted: see
                 app/store/installer.py; checkpoint-check, checkpoint-import, checkpoint-cancel: see checkpoint.py
Worker -> page:  {type: "ready", models, capabilities, version}
                 {type: "queued", id, ahead}
                 {type: "progress", id, stage, step, steps, fraction}   (the bench's stages: "bench prepare", "bench run")
                 {type: "checkpoint", id, step, latents (Float32Array, transferred)}
                 {type: "preview", id, step, kind: "approx" | "vae", bitmap (ImageBitmap, transferred)}
                 {type: "result", id, bitmap (ImageBitmap, transferred), backend, timing: {total_ms, preview_ms}}
                 {type: "png", id, png (ArrayBuffer, transferred), filename, parameters}
                 {type: "picture-checked", id, message ("" when usable), width, height, sha256, notes}
                 {type: "bench", id, step_ms, runs_ms, tier, size, model, presets}
                 {type: "cancelled", id}
                 {type: "tokens", model, text, count, limit}: see tokens.py
                 {type: "error", id, message, kind: "input" | "run" | "device-lost" | "oom", retry?,
                  field? (input errors: the id of the page control it is about, or "")}
                 {type: "models", ...}: install states and storage, see app/store/installer.py
                 {type: "model-removed", id}: a model of the visitor's own was deleted (it is no longer listed)
                 checkpoint-checked, -progress, -done, -error, -cancelled: see checkpoint.py
GPU work goes through one queue (jobs.py): a second request waits its turn; cancel works queued or running.
After a "device-lost" or "oom" error the page replaces this worker (a fresh GPU device, nothing
left allocated) and resumes from the last checkpoint or retries as offered.
"""

import asyncio
import traceback

import js

from .. import __version__
from ..store import gallery
from ..store.installer import Installer
from ..store.gallery import as_bytes
from ..store.manifest import ManifestError, encoder_for, is_addon, load_manifest, models_by_id
from ..store.own import is_own, own_entries
from .checkpoint import Importer
from .capabilities import capabilities
from .device import pick_variant, unsuitable
from .generator import Generator
from .messages import browser_decode, post
from .params import MAX_STEPS, InputError
from .picture import decode
from .rejections import install as settle_every_rejection
from .tokens import TokenCounter


class Worker:
    """Takes the page's messages: GPU work goes to the generator's queue, storage work (installs,
    gallery) runs at once."""

    def __init__(self, entries: list, caps: dict, rejected=()):
        # Each model as it will run on this device (its variant chosen by the capabilities).
        self.caps = caps
        self.models = {m: pick_variant(e, caps) for m, e in models_by_id({"models": entries}).items()}
        self.installer = Installer(self.models, post, rejected)
        self.generator = Generator(self.models, caps, self.installer)
        self.tokens = TokenCounter(self.models, self.installer)
        self.importer = Importer(self.installer, self.add_model, caps)
        self.installer.convert_checkpoint = self.importer.convert_download

    def row(self, m: dict) -> dict:
        """What the page's Model list knows of a model (the ready message lists one per model)."""
        return {"id": m["id"], "name": m["name"], "defaults": {"guidance": 1, **m["defaults"]},
                "resolutions": m["resolutions"],
                "pipeline": m.get("pipeline", "sdxl-turbo"), "unsuitable": unsuitable(m, self.caps) or "",
                "bench": bool(m.get("bench")), "refines": m.get("refines", []), "own": bool(m.get("own")),
                "family": m.get("family", ""), "refines_family": m.get("refines_family", ""),
                "max_steps": int(m.get("max_steps", MAX_STEPS)),
                "encoder": encoder_row(self.models, m["id"], self.caps)}

    async def add_model(self, entry: dict) -> dict:
        """A model of the visitor's own, just imported: listed from now on, like the manifest's."""
        model = pick_variant(entry, self.caps)
        self.models[entry["id"]] = model
        self.installer.entries[entry["id"]] = model
        await self.installer.refresh(entry["id"])
        await self.installer.report()
        return self.row(model)

    async def delete(self, model_id):
        await self.generator.delete_model(model_id)
        if is_own(model_id) and self.installer.state(model_id) == "not-installed":
            for table in (self.models, self.installer.entries, self.installer.status):
                table.pop(model_id, None)
            post({"type": "model-removed", "id": model_id})
            await self.installer.report()

    async def on_gallery(self, msg):
        await gallery.handle(msg, post)
        if msg["type"] == "gallery-delete":
            await self.installer.gallery_changed()

    def handle(self, message):
        msg = message.to_py()
        kind = msg.get("type")
        generator, queue = self.generator, self.generator.queue
        if kind == "generate":
            asyncio.ensure_future(queue.run(msg["id"], generator.generate, msg.get("params") or {}, msg.get("resume"),
                                            msg.get("source")))
        elif kind == "picture-check":  # decoding only: no need to wait for the GPU
            asyncio.ensure_future(check_picture(msg))
        elif kind == "refine":
            asyncio.ensure_future(queue.run(msg["id"], generator.refine, msg.get("params") or {}, msg.get("resume"),
                                            msg.get("latents")))
        elif kind == "bench":
            asyncio.ensure_future(queue.run(msg["id"], generator.bench))
        elif kind == "cancel":
            queue.cancel(msg["id"])
        elif kind == "tokens":  # reads two small files: no need to wait for the GPU
            asyncio.ensure_future(self.tokens.handle(msg))
        elif kind and kind.startswith("gallery-"):  # storage only: no need to wait for the GPU
            asyncio.ensure_future(self.on_gallery(msg))
        elif kind in ("install", "install-cancel", "model-delete", "model-verify") and msg.get("model") in self.models:
            model_id = msg["model"]
            if kind == "install":
                self.installer.install(model_id, msg.get("stall_s"))
            elif kind == "install-cancel":
                self.installer.cancel(model_id)
            elif kind == "model-delete":
                asyncio.ensure_future(self.delete(model_id))
            else:
                self.installer.verify(model_id)
        elif kind == "models-free-unlisted":
            asyncio.ensure_future(self.installer.free_unlisted())
        elif kind == "model-import":
            asyncio.ensure_future(self.installer.import_files(list(message.files)))
        elif kind == "checkpoint-check":  # reads the files' headers only: no need to wait for the GPU
            asyncio.ensure_future(self.importer.check(msg, list(message.files)))
        elif kind == "checkpoint-import":  # reads, quantizes and stores: the CPU and storage, not the GPU
            self.importer.start(msg, list(message.files))
        elif kind == "checkpoint-cancel":
            self.importer.cancel(msg.get("id"))


async def check_picture(msg):
    answer = {"type": "picture-checked", "id": msg.get("id"), "message": "", "notes": []}
    try:
        picture = await decode(as_bytes(msg.get("source")), managed=browser_decode)
        answer.update(height=picture.size[0], width=picture.size[1], sha256=picture.sha256, notes=picture.notes)
    except InputError as e:
        answer["message"] = str(e)
    except Exception as e:  # a browser decoder's refusal, say
        answer["message"] = f"This picture cannot be read: {e}"
    post(answer)


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


def encoder_row(models, model_id, caps) -> dict:
    """What the page says about a model's image-to-image add-on: its id, download size and whether it runs here."""
    encoder_id = encoder_for(models, model_id)
    if not encoder_id:
        return {"id": "", "mb": 0, "unsuitable": ""}
    entry = models[encoder_id]
    return {"id": encoder_id, "mb": round(sum(f["size"] for f in entry["files"]) / 1e6, 1),
            "unsuitable": unsuitable(entry, caps) or ""}


async def listed_own_entries() -> list:
    """The visitor's own models (imported checkpoints); none where the browser keeps no files."""
    try:
        return await own_entries()
    except Exception:
        traceback.print_exc()
        return []


async def start(manifest_url: str):
    settle_every_rejection()
    (entries, rejected, problem), caps, own = await asyncio.gather(read_manifest(manifest_url), capabilities(),
                                                                   listed_own_entries())
    worker = Worker(entries + own, caps, rejected)
    models = [worker.row(m) for m in worker.models.values() if not is_addon(m)]
    post({"type": "ready", "models": models, "capabilities": caps, "version": __version__,
          "manifest_problem": problem, "rejected": rejected})
    asyncio.ensure_future(worker.installer.start())
    return worker
