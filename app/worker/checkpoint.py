"""Importing an SDXL checkpoint (worker side): what the visitor's file holds, then its conversion here into a
model of their own. The bytes never leave the device; only the converted model is stored.

Page -> worker:  {type: "checkpoint-check", id, files: [File]}
                 {type: "checkpoint-import", id, files: [File], name, kind}     {type: "checkpoint-cancel", id}
Worker -> page:  {type: "checkpoint-checked", id, message ("" when it can be imported), found, name,
                  kinds: [{id, label}], converted_mb, precision ("q4f16" or "q4": what it converts to here)}
                 {type: "checkpoint-progress", id, message, fraction, mb_s}
                 {type: "checkpoint-done", id, model (as the ready message lists models), message}
                 {type: "checkpoint-error", id, message}        {type: "checkpoint-cancelled", id}
A single .safetensors file (A1111/ComfyUI) or the .safetensors files of a diffusers folder, in any order. An SDXL
model is imported as one of its family's kinds; an SDXL refiner as the second pass of Refine. It is converted
to the first of its family's variants this device runs: q4f16 (fp16 math) where the GPU has shader-f16, else q4.
The same conversion makes a site model whose variant is converted from a checkpoint at install
(`convert_download`, which the installer calls once the files are downloaded and verified).
"""

import asyncio
import hashlib
import json
import time
import traceback

from ..checkpoint.detect import NAMES, by_part, detect, with_graphs
from ..checkpoint.fill import data_size, fill
from ..checkpoint.safetensors import CheckpointError, read_header
from ..checkpoint.templates import graphs
from ..store.hasher import Hasher
from ..store.layout import InstallError, gb, model_folder, storage_problem, storage_text
from ..store.locks import held, model_lock
from ..store.opfs import js_bytes, room
from ..store.own import Written, finish, forget, own_id, store_bytes
from .device import variant_for
from .messages import post

INDEX = "templates/index.json"
REPORT_SECONDS = 0.25
REFINER = "refiner"  # the kind a refiner checkpoint is imported as
SCHEDULER = "scheduler_config.json"


def _reader(file):
    async def read(start, end):
        return (await file.slice(start, end).arrayBuffer()).to_bytes()
    return read


async def _fetch(url: str) -> bytes:
    import js

    response = await js.fetch(url)
    if not response.ok:
        raise InstallError(f"{url} could not be fetched (HTTP {response.status}).")
    return (await response.arrayBuffer()).to_bytes()


def _folder_of(part: str) -> str:
    return "unet" if part.endswith("unet") else part


class Importer:
    def __init__(self, installer, add_model, caps):
        self.installer = installer
        self.caps = caps
        self.add_model = add_model  # (entry) -> the ready message's row for it, once it is installed
        self.index = None
        self.graphs = {}  # url -> verified template bytes
        self.tasks = {}

    async def _index(self) -> dict:
        if self.index is None:
            self.index = json.loads(await _fetch(INDEX))
        return self.index

    async def _templates(self, family: str | None = None) -> dict:
        """{family: {part: graph bytes}}, each checked against the index's sha256."""
        out = {}
        for name, meta in (await self._index())["families"].items():
            if family and name != family:
                continue
            out[name] = {}
            for part, f in meta["parts"].items():
                if f["url"] not in self.graphs:
                    data = await _fetch(f["url"])
                    if hashlib.sha256(data).hexdigest() != f["sha256"]:
                        raise InstallError(f"the site's template {f['url']} is damaged (its sha256 differs); "
                                           "reload the page.")
                    self.graphs[f["url"]] = data
                out[name][part] = self.graphs[f["url"]]
        return out

    async def _open(self, files, shown=None, borrowed=frozenset()):
        """(found, {part: Header}, {part: reader}, {part: file name}, the headers' digest); `shown` names the
        files when their own names do not (an install's files are stored under their digests)."""
        if not files:
            raise CheckpointError("no file was given.")
        # A diffusers folder has two model.safetensors and two diffusion_pytorch_model.safetensors: keyed by
        # position, shown by the path the browser gives (webkitRelativePath for a picked folder) or name.
        shown = shown or [str(getattr(f, "webkitRelativePath", "") or f.name) for f in files]
        for name in shown:
            if not name.lower().endswith(".safetensors"):
                raise CheckpointError(f"{name.rpartition('/')[2]} is not a .safetensors file. Lantern imports SDXL "
                                      "checkpoints saved as .safetensors (one file, or the files of a diffusers folder).")
        keys = [f"{i}:{name}" for i, name in enumerate(shown)]
        readers = {k: _reader(f) for k, f in zip(keys, files)}
        headers = {k: await read_header(readers[k], int(f.size), name) for k, f, name in zip(keys, files, shown)}
        parts = by_part(headers)
        file_of = {part: next(k for k, h in headers.items() if h is header) for part, header in parts.items()}
        digest = hashlib.sha256()
        for part in sorted(parts):
            h = parts[part]
            digest.update(f"{part}:{h.size}:".encode())
            digest.update(await readers[file_of[part]](0, h.data_start))
        found = detect(parts, {f: graphs(g, "q4") for f, g in (await self._templates()).items()}, borrowed)
        names = {part: k.partition(":")[2] for part, k in file_of.items()}
        return found, parts, {part: readers[k] for part, k in file_of.items()}, names, digest.hexdigest()

    # -- check -------------------------------------------------------------------------------------

    async def check(self, msg, files):
        answer = {"type": "checkpoint-checked", "id": msg.get("id"), "message": "", "found": "", "name": "",
                  "kinds": [], "converted_mb": 0, "precision": ""}
        try:
            found, parts, _, file_of, _ = await self._open(files)
            family = (await self._index())["families"][found.family]
            stem = sorted(file_of.values())[0].rsplit(".", 1)[0] if len(file_of) == 1 else "diffusers model"
            found = await self._as(found, variant_for(family, self.caps)["precision"])
            answer.update(found=found.describe(), name=stem, converted_mb=self._converted_bytes(found, family) / 1e6,
                          precision=found.precision,
                          kinds=[{"id": k, "label": v["label"]} for k, v in kinds_of(found, family).items()])
        except (CheckpointError, InstallError) as e:
            answer["message"] = _sentence(e)
        except Exception as e:  # a browser refusal to read the file, say
            traceback.print_exc()
            answer["message"] = f"This file cannot be read: {e}"
        post(answer)

    async def _as(self, found, precision):
        """`found` converted into the family's graphs of `precision` (detect() plans for q4's)."""
        if precision == found.precision:
            return found
        return with_graphs(found, graphs((await self._templates(found.family))[found.family], precision), precision)

    def _converted_bytes(self, found, family) -> int:
        """What the converted model keeps: its weights, its graphs, and the tokenizers and scheduler config."""
        metas = graphs(family["parts"], found.precision)
        shared = sum(f["size"] for f in self.index["shared"].values())
        return sum(data_size(found.targets).values()) + sum(metas[p]["size"] for p in found.parts) + shared

    # -- import ------------------------------------------------------------------------------------

    def start(self, msg, files):
        job = msg.get("id")
        task = asyncio.ensure_future(self._run(job, files, str(msg.get("name") or "").strip(),
                                               str(msg.get("kind") or "")))
        self.tasks[job] = task

        def ended(task):  # cancelled before it began: nothing was written, the page still hears of it
            self.tasks.pop(job, None)
            if task.cancelled():
                post({"type": "checkpoint-cancelled", "id": job})
        task.add_done_callback(ended)

    def cancel(self, job):
        task = self.tasks.get(job)
        if task and not task.done():
            task.cancel()

    async def _run(self, job, files, name, kind):
        model_id = None  # set once this import owns the model's folder (what a failure removes)
        try:
            found, parts, readers, file_of, header_digest = await self._open(files)
            index = await self._index()
            family = index["families"][found.family]
            if kind not in kinds_of(found, family):
                raise CheckpointError("choose what kind of model it is (few-step or base-like)." if found.kind == "sdxl"
                                      else "this is an SDXL refiner: import it as one.")
            new_id = own_id(header_digest)
            if new_id in self.installer.models:
                raise CheckpointError(f"this checkpoint is already imported, as "
                                      f"{self.installer.models[new_id]['name']}.")
            async with held(model_lock(new_id), wait=False) as mine:
                if not mine:
                    raise CheckpointError("this checkpoint is being imported in another tab.")
                model_id = new_id
                entry = await self._convert(job, model_id, name or model_id, kind, found, parts, readers, file_of,
                                            family, index)
            row = await self.add_model(entry)
            post({"type": "checkpoint-done", "id": job, "model": row,
                  "message": f"{entry['name']} is ready: converted in {entry['conversion']['seconds']:.0f} s to "
                             f"{gb(entry['conversion']['bytes'])}."})
        except asyncio.CancelledError:
            await _forget_quietly(model_id)
            post({"type": "checkpoint-cancelled", "id": job})
        except (CheckpointError, InstallError) as e:
            await _forget_quietly(model_id)
            post({"type": "checkpoint-error", "id": job, "message": _sentence(e)})
        except Exception as e:
            traceback.print_exc()
            await _forget_quietly(model_id)
            post({"type": "checkpoint-error", "id": job, "message": f"The import failed: {storage_text(e)}"})
        finally:
            self.tasks.pop(job, None)

    async def _convert(self, job, model_id, name, kind, found, parts, readers, file_of, family, index):
        import js

        started = time.monotonic()
        folder = await model_folder(model_id)
        variant = variant_for(family, self.caps)
        found = await self._as(found, variant["precision"])
        copied = await self._parts_of(_fallback(found, family))
        needed = self._converted_bytes(found, family) + sum(int(f.size) for f in copied.values())
        estimate = await js.navigator.storage.estimate()
        problem = storage_problem(needed, int(estimate.usage), int(estimate.quota))
        if problem:
            raise InstallError(problem.replace("this model needs", "the converted model needs"))
        fits = await room(folder, needed)
        if fits < needed:
            raise InstallError(f"Not enough storage: the converted model needs {gb(needed)}, but this browser "
                               f"window can store only about {gb(fits)} more for this site.")

        async def tell(fraction, message, mb_s):
            post({"type": "checkpoint-progress", "id": job, "message": message, "fraction": fraction, "mb_s": mb_s})

        converted, sources = await self._fill_folder(folder, found, parts, readers, file_of, family, index, copied, tell)
        seconds = time.monotonic() - started
        total = sum(size for _, size in converted.values())
        entry = own_entry(model_id, name, kind, found, family, variant, sources, total, seconds)
        await finish(model_id, entry, converted)
        return entry

    async def convert_download(self, folder, entry, files, borrowed, on_progress) -> dict:
        """The install of a site model made from a checkpoint: its downloaded files ({path: File}) converted into
        `folder`, the parts `borrowed` names ({part: model id}) copied from those installed models. Returns
        {path: [sha256, size]} of what the model keeps. `await on_progress(fraction, message)` hears how it goes."""
        found, parts, readers, file_of, _ = await self._open(list(files.values()), list(files), frozenset(borrowed))
        refiner = entry["pipeline"] == "sdxl-refiner"
        if found.family != entry["convert"]["family"] or (found.kind == "sdxl-refiner") != refiner:
            raise InstallError(f"the downloaded files hold {found.describe()}, not the "
                               f"{'SDXL refiner' if refiner else 'SDXL model'} this site lists.")
        index = await self._index()
        family = index["families"][found.family]
        found = await self._as(found, entry["convert"]["to"])
        copied = await self._parts_of({**_fallback(found, family), **borrowed})

        async def tell(fraction, message, mb_s):
            await on_progress(fraction, message)

        return (await self._fill_folder(folder, found, parts, readers, file_of, family, index, copied, tell))[0]

    async def _fill_folder(self, folder, found, parts, readers, file_of, family, index, copied, tell):
        """The converted model in `folder`: the templates' weights filled from the checkpoint (read once, hashed
        on the way), the graphs, tokenizers and scheduler config, and the `copied` files ({path: File}).
        Returns ({path: [sha256, size]}, {part: the source's name, size and sha256})."""
        sizes = data_size(found.targets)
        templates = graphs((await self._templates(found.family))[found.family], found.precision)
        metas = graphs(family["parts"], found.precision)
        progress = Progress(sum(h.size for h in parts.values()) + sum(sizes.values()), tell)
        written, converted = {}, {}
        hashers = {part: Hasher() for part in parts}
        try:
            for part in found.parts:
                written[part] = Written(folder, f"{part}-data")
                await written[part].open(sizes[part])

            async def write_at(part, offset, raw):
                written[part].write_at(offset, raw)

            async def on_bytes(part, raw):
                hashers[part].update(js_bytes(raw))
                await hashers[part].drain()
                await progress.add(len(raw), "Reading and converting the checkpoint…")

            await fill(found.plan, parts, readers, write_at, on_bytes)
            sources = {part: {"name": file_of[part], "size": parts[part].size,
                              "sha256": await hashers[part].hexdigest()} for part in sorted(parts)}
            for part in found.parts:
                async def checked(n):
                    await progress.add(n, "Checking what was written…")
                converted[f"{_folder_of(part)}/model.onnx_data"] = list(await written[part].commit(checked))
                graph = templates[part]
                converted[f"{_folder_of(part)}/model.onnx"] = list(await store_bytes(
                    folder, graph, metas[part]["sha256"]))
        finally:
            for w in written.values():
                w.close()
            for h in hashers.values():
                h.close()
        for path, f in index["shared"].items():
            if path == SCHEDULER and found.kind == "sdxl-refiner":  # the refiner's own schedule, from its family
                data = json.dumps(family["refiner"]["scheduler"], indent=2).encode()
                converted[path] = list(await store_bytes(folder, data, hashlib.sha256(data).hexdigest()))
                continue
            data = await _fetch(f["url"])
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                raise InstallError(f"the site's {f['url']} is damaged (its sha256 differs); reload the page.")
            converted[path] = list(await store_bytes(folder, data, f["sha256"]))
        for path, file in copied.items():
            copy, size, read = Written(folder, path.replace("/", "-")), int(file.size), _reader(file)
            try:
                await copy.open(size)
                for start in range(0, size, 8 << 20):
                    copy.write_at(start, await read(start, min(start + (8 << 20), size)))
                converted[path] = list(await copy.commit())
            finally:
                copy.close()
        return converted, sources

    async def _parts_of(self, borrowed: dict) -> dict:
        """path -> File of each part that `borrowed` ({part: model id}) takes from an installed model."""
        out = {}
        for part, source in borrowed.items():
            if self.installer.state(source) != "installed":
                name = self.installer.models.get(source, {}).get("name", source)
                raise CheckpointError(
                    f"this checkpoint has no VAE inside, so SDXL's VAE is used; install {name} first (its VAE is "
                    "copied from it)." if part == "vae_decoder" else
                    f"its {NAMES.get(part, part)} is copied from {name}, which is no longer installed; install it first.")
            files = await self.installer.files_for_loading(source)
            out.update({p: f for p, f in files.items() if p.startswith(part + "/")})
        return out


def _fallback(found, family) -> dict:
    """{part: model id}: SDXL's VAE, from the model the family borrows one from, for a checkpoint without one."""
    return {} if found.own_vae else {"vae_decoder": family["vae_from"]}


def kinds_of(found, family) -> dict:
    """What the visitor may import this checkpoint as: a model's kinds, or the refiner."""
    if found.kind == "sdxl":
        return family["kinds"]
    return {REFINER: family["refiner"]} if "refiner" in family else {}


def own_entry(model_id, name, kind, found, family, variant, sources, total, seconds) -> dict:
    chosen = kinds_of(found, family)[kind]
    variant = dict(variant, disk_bytes=total, files=[])
    if kind == REFINER:  # Refine's second pass: for the family's base models and the visitor's own
        role = {"pipeline": "sdxl-refiner", "refines": family["refiner"]["refines"], "refines_family": found.family}
    else:
        role = {"pipeline": "sdxl-turbo", "family": found.family, "max_steps": chosen["max_steps"]}
    return {"id": model_id, "name": name, "own": True, **role,
            "style": f"your checkpoint: {chosen['label'].split(' (')[0]}",
            "description": f"Imported here from your file: {found.describe()}.",
            "license": "the licence of the checkpoint you imported", "defaults": chosen["defaults"],
            "resolutions": family["resolutions"],
            "tier_resolutions": family["tier_resolutions"], "vae_scaling_factor": family["vae_scaling_factor"],
            "vae_scale_factor": family["vae_scale_factor"], "source": sources, "found": found.describe(),
            "conversion": {"seconds": round(seconds, 1), "bytes": total}, "variants": [variant]}


class Progress:
    """Bytes done of a conversion, told (`await tell(fraction, message, MB/s)`) at most every REPORT_SECONDS."""

    def __init__(self, total: int, tell):
        self.total, self.done, self.tell = max(total, 1), 0, tell
        self.started = self.last = time.monotonic()

    async def add(self, n: int, message: str):
        self.done += n
        now = time.monotonic()
        if now - self.last >= REPORT_SECONDS or self.done >= self.total:
            self.last = now
            await self.tell(min(self.done / self.total, 1.0), message, self.done / 1e6 / max(now - self.started, 1e-3))
        await asyncio.sleep(0)  # a Cancel (and the page's other messages) gets its turn


async def _forget_quietly(model_id):
    if model_id:
        try:
            await forget(model_id)
        except Exception:
            traceback.print_exc()


def _sentence(error) -> str:
    text = str(error)
    return text[:1].upper() + text[1:]
