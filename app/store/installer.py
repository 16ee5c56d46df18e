"""Model installs (worker side): the state of every model's install and the commands on it
(install, cancel, delete, verify, import), reported to the page. How files reach OPFS is in
download.py (network) and checks.py (verify, import); where they live, in layout.py.

Page -> worker:  {type: "install", model, stall_s?}  {type: "install-cancel", model}
                 {type: "model-delete", model}      {type: "model-verify", model}
                 {type: "model-import", files: [File]}  {type: "models-free-unlisted"}
Worker -> page:  {type: "models", models: [{id, name, state, done_mb, total_mb, speed_mbps, eta_s, message, error}],
                  storage: {usage_mb, quota_mb, persisted, models_mb, gallery_images, gallery_mb},
                  rejected: [messages], notice,
                  unlisted: [{id, mb}] (folders of models no longer listed)}
Sizes cross in MB (floats): the page's MicroPython reads JS integers above 2**31 as negative.
state is "not-installed" | "downloading" | "converting" | "partial" | "installed" | "damaged" | "verifying" |
"importing".
"""

import asyncio
import json
import time
from contextlib import asynccontextmanager

from .checks import damaged_files, import_file
from .convert import convert_bundle
from .download import Mismatch, Partial, Rate, download
from .gallery import usage as gallery_usage
from .hasher import HashError
from .hub import ask_host, fetch_json, unresolved, with_host_hashes
from .layout import (HOST_HASHES, RECORD, WANTED, InstallError, bundle_state, convert_reserve, gb, kept_bytes,
                     kept_files, leftovers, model_folder, models_folder, no_room_text, page_row, partial_bytes, read_json,
                     record_for, reused, stale_imports, storage_problem, storage_text, stored, write_json)
from .manifest import from_checkpoint
from .locks import held, model_lock
from .opfs import file_sizes, folder_names, remove, room
from .own import is_own

STALL_SECONDS = 30.0  # no bytes for this long: drop the connection and resume it
QUIET_EXTRA_SECONDS = 15.0  # the watchdog speaks after the stall time plus this (more than a resume's backoff)
REPORT_SECONDS = 0.25  # progress messages at most this often
CHANNEL = "lantern-installs"  # every tab's installer tells the others how its installs go
ELSEWHERE = ("{name} is being installed or checked in another tab of this site. "
             "Cancel it there, or wait until it ends.")


def converted_text(record, names: dict) -> str:
    """What an install from a checkpoint did, for its row; `names`: model id -> name."""
    if "conversion_s" not in (record or {}):
        return ""
    kept = sum(size for _, size in record["converted"].values())
    reused = "".join(f" {path} was not downloaded: {names.get(model, model)} was installed from the same bytes."
                     for path, model in sorted(record["reused"].items()))
    return f" Converted here in {record['conversion_s']:.0f} s to {gb(kept)}; the download was removed.{reused}"


class Installer:
    """Installs, verifies, imports and deletes model bundles; one task per model at a time."""

    def __init__(self, models: dict, post, rejected=()):
        self.models = models  # id -> entry as it runs on this device (its variant picked, host hashes filled in)
        self.entries = dict(models)  # id -> the same as the manifest gives it
        self.post = post
        self.rejected = list(rejected)
        self.status = {}  # id -> {state, done, total, speed, eta_s, message, error}
        self.tasks = {}  # id -> asyncio task (install, verify)
        self._last_report = 0.0
        self.notice = ""  # the outcome of an import, for the panel
        self.unlisted = []  # [{id, mb}]: folders of models no longer listed (tidy)
        self.following = set()  # models another tab is installing while this one waits for it
        self.channel = None
        self.gallery = None  # {images, mb}: what the gallery keeps, for the storage line
        self.active_at = {}  # id -> time.monotonic() of its install's latest progress (the watchdog's clock)
        self.waiting = set()  # tidy's tasks for folders an import held when it looked
        # (folder, entry, {path: File} downloaded, {part: model id} to copy, on_progress) -> {path: [sha256, size]}:
        # the conversion of a variant made from a checkpoint (the worker's checkpoint importer does it)
        self.convert_checkpoint = None

    # -- state ---------------------------------------------------------------------------------

    async def refresh(self, model_id):
        folder = await model_folder(model_id, create=False)
        sizes = await file_sizes(folder) if folder else {}
        record = await read_json(folder, RECORD) if folder else None
        hashes = await read_json(folder, HOST_HASHES) if folder else None
        self.models[model_id] = entry = with_host_hashes(self.entries[model_id], hashes)
        state, done, detail = bundle_state(entry, sizes, record, self._reusable(model_id))
        kept = kept_bytes(sizes)
        if state == "not-installed" and kept:
            detail = (f"Holds {gb(kept)} from an earlier version of this model that the current one does not use. "
                      "Delete frees it; Install replaces it.")
        old = self.status.get(model_id, {})
        keep = old.get("error") and state != "installed"
        self.status[model_id] = {"state": state, "done": done, "total": sum(f["size"] for f in entry["files"]),
                                 "speed": 0, "eta_s": -1, "message": old["message"] if keep else detail,
                                 "error": bool(keep), "kept": kept}
        return folder, sizes, record

    async def wanted(self):
        """Models whose install was under way when the page went away."""
        out = []
        for model_id in self.models:
            folder = await model_folder(model_id, create=False)
            if folder and await read_json(folder, WANTED) is not None:
                out.append(model_id)
        return out

    async def report(self, force=True):
        import js

        now = time.monotonic()
        if not force and now - self._last_report < REPORT_SECONDS:
            return
        self._last_report = now
        storage = {"usage_mb": 0, "quota_mb": 0, "persisted": False}
        try:
            estimate = await js.navigator.storage.estimate()
            storage.update(usage_mb=int(estimate.usage) / 1e6, quota_mb=int(estimate.quota) / 1e6,
                           persisted=bool(await js.navigator.storage.persisted()))
        except Exception:
            pass
        if self.gallery is None:  # listed again only when the gallery changed (gallery_changed)
            try:
                self.gallery = await gallery_usage()
            except Exception:  # a file removed while it was listed (another tab): counted next time
                self.gallery = None
        gallery = self.gallery or {"images": 0, "mb": 0}
        storage.update(models_mb=(sum(s.get("kept", 0) for s in self.status.values()) / 1e6
                                  + sum(u["mb"] for u in self.unlisted)),
                       gallery_images=gallery["images"], gallery_mb=gallery["mb"])
        rows = [page_row(m, e, self.status.get(m, {})) for m, e in self.models.items()]
        if self.channel:
            owned = {m: self.status[m] for m, task in self.tasks.items() if not task.done() and m not in self.following}
            if owned:
                self.channel.postMessage(json.dumps(owned))
        self.post({"type": "models", "models": rows, "storage": storage, "rejected": self.rejected,
                   "notice": self.notice, "unlisted": self.unlisted})

    async def gallery_changed(self):
        """An image was saved to or deleted from the gallery: the storage line counts it anew."""
        self.gallery = None
        await self.report()

    def fail(self, model_id, message):
        self.status[model_id].update(message=message, error=True, speed=0, eta_s=-1)

    async def start(self):
        import js
        from pyodide.ffi import create_proxy

        self.channel = js.BroadcastChannel.new(CHANNEL)
        self.channel.onmessage = create_proxy(self._on_other_tab)
        await self.tidy()
        for model_id in self.models:
            await self.refresh(model_id)
        await self.report()
        for model_id in await self.wanted():
            self.install(model_id)

    async def tidy(self):
        """Remove what closed tabs left behind (partial import copies, checkpoint imports that never finished), and
        find the folders of models no longer listed, so the panel can offer to free them; a folder an import holds
        is judged once that import ends."""
        self.unlisted = []
        root = await models_folder()
        for name in await folder_names(root):
            folder = await root.getDirectoryHandle(name)
            sizes = await file_sizes(folder)
            for stale in stale_imports(sizes, time.time_ns()):
                await remove(folder, stale)
                sizes.pop(stale)
            if name in self.models:
                continue
            async with held(model_lock(name), wait=False) as mine:
                if mine:
                    await self._judge(root, name, sizes)
                elif is_own(name):  # an import in another tab, or in the worker this one replaced: judged once it ends
                    task = asyncio.ensure_future(self._judge_when_free(name))
                    self.waiting.add(task)
                    task.add_done_callback(self.waiting.discard)

    async def _judge(self, root, name, sizes):
        """A folder no model lists: an import that never finished is removed (it cannot be resumed); what else
        holds bytes is offered to free."""
        if (is_own(name) and RECORD not in sizes) or not kept_bytes(sizes):
            await remove(root, name, recursive=True)
        else:
            self.unlisted.append({"id": name, "mb": kept_bytes(sizes) / 1e6})

    async def _judge_when_free(self, name):
        """Once the import holding `name` ends, its folder goes if the import never finished: a worker replaced
        after a device loss holds it until that worker is gone. Another tab's finished import stays (the next
        visit lists it)."""
        async with held(model_lock(name)):
            folder = await model_folder(name, create=False)
            if folder and RECORD not in await file_sizes(folder):
                await remove(await models_folder(), name, recursive=True)

    async def free_unlisted(self):
        for folder in self.unlisted:
            await remove(await models_folder(), folder["id"], recursive=True)
        await self.tidy()
        await self.report()

    def state(self, model_id) -> str:
        return self.status.get(model_id, {}).get("state", "not-installed")

    # -- commands ------------------------------------------------------------------------------

    def install(self, model_id, stall_s=None):
        """Start (or join) the install of one model; returns its task."""
        task = self.tasks.get(model_id)
        if task and not task.done():
            return task
        task = asyncio.ensure_future(self._install(model_id, float(stall_s or STALL_SECONDS)))
        self.tasks[model_id] = task
        return task

    def cancel(self, model_id):
        task = self.tasks.get(model_id)
        if task and not task.done():
            task.cancel()

    async def delete(self, model_id):
        if model_id in self.following:  # another tab's install, which this one keeps following
            self.fail(model_id, ELSEWHERE.format(name=self.models[model_id]["name"]))
            await self.report()
            return
        self.cancel(model_id)
        task = self.tasks.get(model_id)
        if task:
            await asyncio.gather(task, return_exceptions=True)
        async with held(model_lock(model_id), wait=False) as mine:
            if mine:
                await remove(await models_folder(), model_id, recursive=True)
                self.status.pop(model_id, None)
            await self.refresh(model_id)
            if not mine:
                self.fail(model_id, ELSEWHERE.format(name=self.models[model_id]["name"]))
        await self.report()

    def verify(self, model_id):
        """Re-hash every stored file; a file whose bytes changed is deleted and the model marked damaged."""
        task = self.tasks.get(model_id)
        if task and not task.done():
            return
        self.tasks[model_id] = asyncio.ensure_future(self._verify(model_id))

    async def ensure(self, model_id):
        """Install a model if it is not installed (the bench model), waiting for it."""
        if self.state(model_id) != "installed":
            await self.install(model_id)
        if self.state(model_id) != "installed":
            raise InstallError(self.status[model_id]["message"] or f"{self.models[model_id]['name']} is not installed.")

    # -- other tabs ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def _owned(self, model_id):
        """Hold the model's files for the block. While another tab installs it, this one shows that tab's
        progress and waits; if that tab stops first (closed, cancelled, failed), this one carries on."""
        lock = model_lock(model_id)
        async with held(lock, wait=False) as mine:
            if mine:
                yield
                return
        self.following.add(model_id)
        self.status[model_id].update(state="downloading", error=False, message="Being installed in another tab…")
        await self.report()
        try:
            async with held(lock):
                self.following.discard(model_id)
                yield
        finally:
            self.following.discard(model_id)

    def _on_other_tab(self, event):
        for model_id, status in json.loads(event.data).items():
            if model_id in self.following and not self.status[model_id]["error"]:
                self.status[model_id].update({k: status[k] for k in ("state", "done", "speed", "eta_s")},
                                             message=f"In another tab: {status['message']}", error=False)
                asyncio.ensure_future(self.report(force=False))

    async def _install(self, model_id, stall_s):
        if model_id not in self.status:
            await self.refresh(model_id)
        try:
            async with self._owned(model_id):
                await self._install_owned(model_id, stall_s)
        except asyncio.CancelledError:  # while following another tab (an owned install ends in _install_owned)
            await self.refresh(model_id)
            self.status[model_id]["message"] = "Cancelled in this tab; the other tab goes on installing it."
            await self.report()

    async def _install_owned(self, model_id, stall_s):
        entry = self.models[model_id]
        name = entry["name"]
        try:
            folder, sizes, _ = await self.refresh(model_id)
            self.status[model_id].update(message="", error=False)
            if self.state(model_id) == "installed":
                await remove(folder, WANTED)
                return
            folder = folder or await model_folder(model_id)
            if unresolved(self.models[model_id]):
                await self._ask_host(model_id, folder)
                folder, sizes, _ = await self.refresh(model_id)
            # An earlier version's files go first (every hash is known now): the space check counts what stays.
            for stale in leftovers(self.models[model_id], sizes, await read_json(folder, RECORD)):
                await remove(folder, stale)
                sizes.pop(stale)
            skip = self._reusable(model_id)
            await self._check_space(self.models[model_id], folder, sizes, skip)
            await write_json(folder, WANTED, {"variant": entry.get("variant")})
            await remove(folder, RECORD)  # installed again only once every file is verified
            self.status[model_id].update(state="downloading")
            watchdog = asyncio.ensure_future(self._watch(model_id, stall_s + QUIET_EXTRA_SECONDS))
            try:
                await self._download_missing(model_id, folder, sizes, stall_s, skip)
                record = record_for(self.models[model_id])
                if from_checkpoint(entry):
                    began = time.monotonic()
                    record["converted"] = await self._convert_checkpoint(model_id, folder, skip)
                    record["reused"] = {f["path"]: f["reuse"]["model"] for f in skip}
                    record["conversion_s"] = round(time.monotonic() - began, 1)
                elif entry.get("convert"):
                    record["converted"] = await self._convert(model_id, folder)
            finally:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            await write_json(folder, RECORD, record)
            await remove(folder, WANTED)
            if from_checkpoint(entry):  # only the converted model is kept
                for f in self.models[model_id]["files"]:
                    await remove(folder, f["sha256"])
            _, sizes, record = await self.refresh(model_id)
            for stale in leftovers(self.models[model_id], sizes, record):  # not the bundle's: the state stands
                await remove(folder, stale)
            self.status[model_id]["message"] = f"{name} is installed and verified." + converted_text(
                record, {m: e["name"] for m, e in self.models.items()})
        except asyncio.CancelledError:
            converting = self.status[model_id]["state"] == "converting"
            folder = await model_folder(model_id, create=False)
            if folder:
                await remove(folder, WANTED)
            await self.refresh(model_id)
            self.status[model_id]["message"] = (
                "Conversion cancelled; the verified download is kept. Install converts it again; Delete frees the "
                "space." if converting else "Download cancelled. Install resumes it; Delete frees the space.")
        except (InstallError, HashError) as e:
            if isinstance(e, Mismatch) and e.file.get("sha256_from") == "host":
                await self._forget_host_hash(model_id, e.file["path"])  # the next Install asks again
            await self.refresh(model_id)
            self.fail(model_id, f"{name}: {e}")
        except Exception as e:
            import traceback

            traceback.print_exc()
            await self.refresh(model_id)
            self.fail(model_id, f"{name}: {storage_text(e)}")
        finally:
            await self.report()

    def _active(self, model_id):
        self.active_at[model_id] = time.monotonic()

    async def _watch(self, model_id, quiet_s):
        """While an install downloads or converts: when no byte has been written or hashed for `quiet_s`
        (not the network's stall, which resumes on its own and counts as activity), the row says so; its
        Cancel stays offered."""
        self._active(model_id)
        status = self.status[model_id]
        while True:
            await asyncio.sleep(min(quiet_s / 4, 5))
            quiet = time.monotonic() - max(self.active_at[model_id], Partial.last_write)
            if quiet > quiet_s and status["state"] in ("downloading", "converting"):
                status.update(message=f"Nothing has been written or checked for {quiet:.0f} s: the browser's "
                                      "storage may be stuck. Cancel stops the install and keeps the bytes stored "
                                      "so far.", speed=0, eta_s=-1)
                await self.report()

    async def _ask_host(self, model_id, folder):
        """Record the host's sha256 of the files that take it from there, before any of their bytes."""
        self.status[model_id]["message"] = "Asking huggingface.co for the files' sha256…"
        await self.report()
        record = await read_json(folder, HOST_HASHES) or {}
        record.update(await ask_host(unresolved(self.models[model_id]), fetch_json))
        await write_json(folder, HOST_HASHES, record)

    async def _convert(self, model_id, folder):
        status = self.status[model_id]

        doing = {"fp32-activations": "Converting {} for this GPU (32-bit math)…",
                 "external-data": "Preparing {} for loading (its weights into a file of their own)…",
                 "distribution-mean": "Preparing {} for loading (the same picture always encoded the same)…",
                 }[self.models[model_id]["convert"]["to"]]

        async def on_part(part):
            self._active(model_id)
            status.update(state="converting", message=doing.format(part), speed=0, eta_s=-1)
            await self.report()

        return await convert_bundle(folder, self.models[model_id], on_part)

    def _reusable(self, model_id) -> list[dict]:
        """Files not downloaded: the host says they are the bytes an installed model was made from."""
        return [f for f in reused(self.models[model_id]) if self.state(f["reuse"]["model"]) == "installed"]

    async def _convert_checkpoint(self, model_id, folder, skip):
        status, entry = self.status[model_id], self.models[model_id]
        status.update(state="converting", speed=0, eta_s=-1)
        skipped = {f["path"] for f in skip}
        files = {f["path"]: await (await folder.getFileHandle(f["sha256"])).getFile()
                 for f in entry["files"] if f["path"] not in skipped}

        async def on_progress(fraction, message):
            self._active(model_id)
            status.update(message=f"{message} {100 * fraction:.0f}%")
            await self.report(force=False)

        return await self.convert_checkpoint(folder, entry, files, {f["reuse"]["part"]: f["reuse"]["model"]
                                                                    for f in skip}, on_progress)

    async def _forget_host_hash(self, model_id, path):
        folder = await model_folder(model_id)
        record = await read_json(folder, HOST_HASHES) or {}
        record.pop(path, None)
        await write_json(folder, HOST_HASHES, record)

    async def _check_space(self, entry, folder, sizes, skip=()):
        import js

        needed = sum(f["size"] - partial_bytes(f, sizes) for f in entry["files"]
                     if not stored(f, sizes) and f not in skip)
        needed += convert_reserve(entry)  # the converted files, if the variant converts
        estimate = await js.navigator.storage.estimate()
        problem = storage_problem(needed, int(estimate.usage), int(estimate.quota))
        if problem:
            raise InstallError(problem)
        # The quota does not tell a private window's in-memory storage (about 1.4 GB on a 24 GiB machine,
        # Chrome 156) from disk; sizing files to what the install needs does.
        fits = await room(folder, needed)
        if fits < needed:
            raise InstallError(no_room_text(needed, fits))

    async def _download_missing(self, model_id, folder, sizes, stall_s, skip=()):
        entry, status = self.models[model_id], self.status[model_id]
        rate = Rate()
        done = sum(f["size"] for f in entry["files"] if stored(f, sizes) or f in skip)
        for f in entry["files"]:
            if stored(f, sizes) or f in skip:
                continue

            async def on_bytes(have, f=f):
                self._active(model_id)
                rate.add(time.monotonic(), done + have)
                eta = rate.eta(status["total"] - done - have)
                status.update(done=done + have, speed=rate.speed(), eta_s=-1 if eta is None else eta,
                              message=f"Downloading {f['path']}")
                await self.report(force=False)

            async def on_retry(message):
                self._active(model_id)
                status["message"] = message
                await self.report()

            await download(folder, f, stall_s, on_bytes, on_retry)
            done += f["size"]

    # -- verify ----------------------------------------------------------------------------------

    async def _verify(self, model_id):
        async with held(model_lock(model_id), wait=False) as mine:
            if mine:
                return await self._verify_owned(model_id)
        await self.refresh(model_id)
        self.fail(model_id, ELSEWHERE.format(name=self.models[model_id]["name"]))
        await self.report()

    async def _verify_owned(self, model_id):
        entry = self.models[model_id]
        try:
            folder, sizes, record = await self.refresh(model_id)
            entry = self.models[model_id]
            self.status[model_id].update(state="verifying", message="Checking every file…", error=False)
            await self.report()
            bad = await damaged_files(folder, kept_files(entry, record), sizes)
            await self.refresh(model_id)
            if bad:
                self.fail(model_id, f"{entry['name']} is damaged: {', '.join(bad)} did not match "
                                    "its sha256 and was removed. Install downloads it again.")
            else:
                self.status[model_id]["message"] = f"{entry['name']}: every file matches its sha256."
        except Exception as e:
            await self.refresh(model_id)
            self.fail(model_id, f"{entry['name']}: {storage_text(e)}")
        finally:
            await self.report()

    # -- import ----------------------------------------------------------------------------------

    async def import_files(self, files):
        """Local files of a bundle: each is hashed while copied into OPFS and kept if it matches a manifest file."""
        messages, touched = [], set()
        for file in files:
            async def on_progress(model_id, name=file.name):
                self.status[model_id].update(state="importing", message=f"Importing {name}…")
                await self.report(force=False)

            added, message = await import_file(file, self.models, on_progress)
            touched |= added
            if message:
                messages.append(message)
        for m in touched:
            await self._commit_if_complete(m)
        for m in self.models:
            if m not in touched and self.state(m) == "importing":
                await self.refresh(m)
        self.notice = " ".join(messages)
        await self.report()
        self.notice = ""

    async def _commit_if_complete(self, model_id):
        folder, sizes, _ = await self.refresh(model_id)
        entry = self.models[model_id]
        missing = [f["path"] for f in entry["files"] if not stored(f, sizes)]
        if missing:
            self.status[model_id]["message"] = (f"Imported and verified; still missing: {', '.join(missing)}. "
                                                "Import them too, or Install downloads the rest.")
            return
        if from_checkpoint(entry):  # its files are a checkpoint: installed once converted
            self.status[model_id]["message"] = "Imported and verified. Install converts it for loading here."
            return
        await write_json(folder, RECORD, record_for(entry))
        await self.refresh(model_id)
        self.status[model_id]["message"] = f"{entry['name']} was imported and verified."

    # -- loading -----------------------------------------------------------------------------------

    async def files_for_loading(self, model_id) -> dict:
        """path -> File of an installed model (sizes checked); raises InstallError otherwise."""
        folder, sizes, record = await self.refresh(model_id)
        entry = self.models[model_id]
        state = self.state(model_id)
        if state != "installed":
            await self.report()
            hint = self.status[model_id]["message"] or "Install it in the Models panel first."
            raise InstallError(f"{entry['name']} is not installed. {hint}" if state != "damaged" else hint)
        return {f["path"]: await (await folder.getFileHandle(f["sha256"])).getFile()
                for f in kept_files(entry, record)}

