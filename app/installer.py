"""Model installs (worker side): verified, resumable downloads into the Origin Private File System.

OPFS layout, one folder per model:  models/<model id>/
  <sha256>            a file of the bundle, stored under its own digest, only once verified
  <sha256>.partial    a file being downloaded or imported; bytes [0, size) grow in order
  installing.json     present while an install is wanted (a reload resumes it)
  installed.json      {variant, files: {path: sha256}}: written last, when every file is verified
A model counts as installed only when installed.json matches the manifest and every file it names
is present at its size. Bytes are hashed as they are written; a mismatch deletes them and says so.
Full re-hashing happens on demand ("verify"); loading checks presence and sizes only, because
hashing 13 GB on every visit would take longer than the generation.

Page -> worker:  {type: "install", model, stall_s?}  {type: "install-cancel", model}
                 {type: "model-delete", model}      {type: "model-verify", model}
                 {type: "model-import", files: [File]}
Worker -> page:  {type: "models", models: [{id, name, state, done_mb, total_mb, speed_mbps, eta_s, message, error}],
                  storage: {usage_mb, quota_mb, persisted}, rejected: [messages], notice}
Sizes cross in MB (floats): the page's MicroPython reads JS integers above 2**31 as negative.
state is "not-installed" | "downloading" | "partial" | "installed" | "damaged" | "verifying" | "importing".

Only the functions under "the browser side" touch the browser; the rest is plain Python.
"""

import asyncio
import json
import re
import time

from .hasher import Hasher, HashError
from .opfs import PIECE, not_found, options, pieces, remove, storage_failure

FOLDER = "models"
RECORD = "installed.json"
WANTED = "installing.json"
PARTIAL = ".partial"
STALL_SECONDS = 30.0  # no bytes for this long: drop the connection and resume it
RETRIES = 4  # attempts in a row without progress before giving up
BACKOFF_SECONDS = (1, 2, 4, 8)
REPORT_SECONDS = 0.25  # progress messages at most this often


class InstallError(Exception):
    """A failure to tell the user as it is (the message is the whole explanation)."""


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --- plain logic ---------------------------------------------------------------------------------

def record_for(entry: dict) -> dict:
    return {"variant": entry.get("variant"), "files": {f["path"]: f["sha256"] for f in entry["files"]}}


def bundle_state(entry: dict, sizes: dict, record) -> tuple[str, int, str]:
    """(state, bytes present, detail) from the folder's file sizes (name -> size) and installed.json."""
    files = entry["files"]
    total = sum(f["size"] for f in files)
    missing = [f for f in files if sizes.get(f["sha256"]) != f["size"]]
    done = total - sum(f["size"] for f in missing)
    done += sum(min(sizes.get(f["sha256"] + PARTIAL, 0), f["size"]) for f in missing)
    if record is not None and record.get("files") == record_for(entry)["files"]:
        if not missing:
            return "installed", total, ""
        names = ", ".join(f["path"] for f in missing)
        return "damaged", done, f"Damaged: {names} {'is' if len(missing) == 1 else 'are'} missing or corrupt. Install repairs it."
    if done:
        return "partial", done, f"Paused at {100 * done / total:.0f}%. Install resumes it."
    return "not-installed", 0, ""


def leftovers(entry: dict, names) -> list[str]:
    """Files in a model's folder that no longer belong to it (an older version's, a stray partial)."""
    keep = {RECORD, WANTED} | {f["sha256"] for f in entry["files"]} | {f["sha256"] + PARTIAL for f in entry["files"]}
    return sorted(n for n in names if n not in keep)


def content_range_start(header) -> int | None:
    """The first byte of a 206 answer ("bytes 100-199/1000"), or None when unreadable."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    return int(m.group(1)) if m else None


def http_problem(status: int, url: str) -> str:
    if status == 404:
        return f"The server does not have {url} (HTTP 404). The model list may be out of date."
    if status == 416:
        return f"The server refused to resume {url} from where it stopped (HTTP 416); the partial file was discarded."
    if status in (401, 403):
        return f"The server refused access to {url} (HTTP {status})."
    return f"Downloading {url} failed (HTTP {status})."


def retryable(status: int) -> bool:
    return status in (408, 425, 429) or status >= 500


def storage_problem(needed: int, usage: int, quota: int) -> str | None:
    free = max(quota - usage, 0)
    if needed > free:
        return (f"Not enough storage: this model needs {gb(needed)} more, but the browser allows this site "
                f"only {gb(free)} more. Free some space (delete models or gallery images) and try again.")
    return None


class Rate:
    """Speed over the last few seconds, and the time left at that speed."""

    def __init__(self, window: float = 3.0):
        self.window = window
        self.samples = []  # (time, bytes so far)

    def add(self, now: float, done: int):
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.pop(0)

    def speed(self) -> float:
        if len(self.samples) < 2 or self.samples[-1][0] <= self.samples[0][0]:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0)

    def eta(self, remaining: int) -> float | None:
        speed = self.speed()
        return remaining / speed if speed > 0 else None


def page_row(model_id: str, entry: dict, status: dict) -> dict:
    return {"id": model_id, "name": entry["name"], "state": status.get("state", "not-installed"),
            "done_mb": status.get("done", 0) / 1e6, "total_mb": sum(f["size"] for f in entry["files"]) / 1e6,
            "speed_mbps": status.get("speed", 0) / 1e6, "eta_s": status.get("eta_s", -1),
            "message": status.get("message", ""), "error": bool(status.get("error"))}


def match_import(size: int, digest: str, models: dict) -> list[tuple[str, dict]]:
    """(model id, file) pairs whose bytes these are."""
    return [(m, f) for m, e in models.items() for f in e["files"] if f["size"] == size and f["sha256"] == digest]


# --- the browser side ------------------------------------------------------------------------------

async def _models_folder():
    import js

    root = await js.navigator.storage.getDirectory()
    return await root.getDirectoryHandle(FOLDER, options(create=True))


async def model_folder(model_id: str, create: bool = True):
    try:
        return await (await _models_folder()).getDirectoryHandle(model_id, options(create=create))
    except Exception as e:
        if not_found(e):
            return None
        raise


async def _sizes(folder) -> dict:
    sizes, entries = {}, folder.entries()
    while True:
        step = await entries.next()
        if step.done:
            return sizes
        name, handle = step.value.to_py() if hasattr(step.value, "to_py") else step.value
        if handle.kind == "file":
            sizes[name] = int((await handle.getFile()).size)


async def _read_json(folder, name):
    try:
        return json.loads(await (await (await folder.getFileHandle(name)).getFile()).text())
    except Exception as e:
        if not_found(e) or isinstance(e, ValueError):
            return None
        raise


async def _write_json(folder, name, obj):
    writable = await (await folder.getFileHandle(name, options(create=True))).createWritable()
    await writable.write(json.dumps(obj))
    await writable.close()


class Partial:
    """A file being downloaded: its open sync access handle, how many bytes it holds, their running hash."""

    def __init__(self, access):
        self.access = access
        self.have = 0
        self.hasher = Hasher()

    async def append(self, chunk):
        n = int(chunk.byteLength)
        self.access.write(chunk, options(at=self.have))
        self.hasher.update(chunk)  # hands the bytes over: written first
        self.have += n
        await self.hasher.drain()

    async def resume(self, length: int):
        """Take up the bytes already in the file (a resume after a reload): hash them again."""
        import js

        while self.have < length:
            piece = js.Uint8Array.new(min(PIECE, length - self.have))
            n = int(self.access.read(piece, options(at=self.have)))
            if n <= 0:
                break
            self.hasher.update(piece.subarray(0, n))
            self.have += n
            await self.hasher.drain()

    def restart(self):
        self.access.truncate(0)
        self.hasher.close()
        self.have, self.hasher = 0, Hasher()

    def close(self):
        self.hasher.close()
        self.access.close()


class Installer:
    """Installs, verifies, imports and deletes model bundles; one task per model at a time."""

    def __init__(self, models: dict, post, rejected=()):
        self.models = models  # id -> entry as it runs on this device (its variant picked)
        self.post = post
        self.rejected = list(rejected)
        self.status = {}  # id -> {state, done, total, speed, eta_s, message, error}
        self.tasks = {}  # id -> asyncio task (install, verify)
        self._last_report = 0.0
        self.notice = ""  # the outcome of an import, for the panel

    # -- state ---------------------------------------------------------------------------------

    async def refresh(self, model_id):
        entry = self.models[model_id]
        folder = await model_folder(model_id, create=False)
        sizes = await _sizes(folder) if folder else {}
        record = await _read_json(folder, RECORD) if folder else None
        state, done, detail = bundle_state(entry, sizes, record)
        old = self.status.get(model_id, {})
        keep = old.get("error") and state != "installed"
        self.status[model_id] = {"state": state, "done": done, "total": sum(f["size"] for f in entry["files"]),
                                 "speed": 0, "eta_s": -1, "message": old["message"] if keep else detail,
                                 "error": bool(keep)}
        return folder, sizes, record

    async def wanted(self):
        """Models whose install was under way when the page went away."""
        out = []
        for model_id in self.models:
            folder = await model_folder(model_id, create=False)
            if folder and await _read_json(folder, WANTED) is not None:
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
        rows = [page_row(m, e, self.status.get(m, {})) for m, e in self.models.items()]
        self.post({"type": "models", "models": rows, "storage": storage, "rejected": self.rejected,
                   "notice": self.notice})

    def fail(self, model_id, message):
        self.status[model_id].update(message=message, error=True, speed=0, eta_s=-1)

    async def start(self):
        for model_id in self.models:
            await self.refresh(model_id)
        await self.report()
        for model_id in await self.wanted():
            self.install(model_id)

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
        self.cancel(model_id)
        task = self.tasks.get(model_id)
        if task:
            await asyncio.gather(task, return_exceptions=True)
        await remove(await _models_folder(), model_id, recursive=True)
        self.status.pop(model_id, None)
        await self.refresh(model_id)
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

    # -- install ---------------------------------------------------------------------------------

    async def _install(self, model_id, stall_s):
        entry = self.models[model_id]
        name = entry["name"]
        try:
            folder, sizes, _ = await self.refresh(model_id)
            self.status[model_id].update(message="", error=False)
            if self.state(model_id) == "installed":
                await remove(folder, WANTED)
                return
            folder = folder or await model_folder(model_id)
            await self._check_space(entry, sizes)
            await _write_json(folder, WANTED, {"variant": entry.get("variant")})
            await remove(folder, RECORD)  # installed again only once every file is verified
            self.status[model_id].update(state="downloading")
            rate = Rate()
            done_before = sum(f["size"] for f in entry["files"] if sizes.get(f["sha256"]) == f["size"])
            progress = {"done": done_before}
            for f in entry["files"]:
                if sizes.get(f["sha256"]) == f["size"]:
                    continue
                await self._download(model_id, folder, f, stall_s, rate, progress)
                progress["done"] += f["size"]
            await _write_json(folder, RECORD, record_for(entry))
            await remove(folder, WANTED)
            _, sizes, _ = await self.refresh(model_id)
            for stale in leftovers(entry, sizes):  # not the bundle's files, so the state just read stands
                await remove(folder, stale)
            self.status[model_id]["message"] = f"{name} is installed and verified."
        except asyncio.CancelledError:
            folder = await model_folder(model_id, create=False)
            if folder:
                await remove(folder, WANTED)
            await self.refresh(model_id)
            self.status[model_id]["message"] = "Download cancelled. Install resumes it; Delete frees the space."
        except (InstallError, HashError) as e:
            await self.refresh(model_id)
            self.fail(model_id, f"{name}: {e}")
        except Exception as e:
            import traceback

            traceback.print_exc()
            await self.refresh(model_id)
            self.fail(model_id, f"{name}: {storage_text(e)}")
        finally:
            await self.report()

    async def _check_space(self, entry, sizes):
        import js

        needed = sum(f["size"] - min(sizes.get(f["sha256"] + PARTIAL, 0), f["size"])
                     for f in entry["files"] if sizes.get(f["sha256"]) != f["size"])
        estimate = await js.navigator.storage.estimate()
        problem = storage_problem(needed, int(estimate.usage), int(estimate.quota))
        if problem:
            raise InstallError(problem)

    async def _download(self, model_id, folder, f, stall_s, rate, progress):
        """One file: resume its partial bytes, hash while writing, verify, then commit under its digest."""
        import js

        url = js.URL.new(f["url"], js.location.href).href
        partial_name = f["sha256"] + PARTIAL
        handle = await folder.getFileHandle(partial_name, options(create=True))
        part = Partial(await handle.createSyncAccessHandle())
        try:
            have = int(part.access.getSize())
            if have > f["size"]:
                part.restart()
            else:
                await part.resume(have)
            failures = 0
            while part.have < f["size"]:
                before = part.have
                try:
                    await self._fetch_into(part, url, f, stall_s, rate, progress, model_id)
                except (InstallError, HashError, asyncio.CancelledError):
                    raise
                except Exception as e:  # dropped connection or stall: resume from where the bytes stop
                    failures = 0 if part.have > before else failures + 1
                    if failures >= RETRIES:
                        raise InstallError(f"downloading {f['path']} failed {RETRIES} times in a row ({e}). "
                                           "Check the connection; Install resumes from where it stopped.") from None
                    self.status[model_id]["message"] = f"Connection problem ({e}); resuming…"
                    await self.report()
                    await asyncio.sleep(BACKOFF_SECONDS[max(failures - 1, 0)])
            part.access.flush()
            digest = await part.hasher.hexdigest()
        finally:
            part.close()
        if digest != f["sha256"]:
            await remove(folder, partial_name)
            raise InstallError(f"{f['path']} arrived damaged (its sha256 does not match the manifest), so its "
                               "bytes were deleted and nothing was installed. Try Install again.")
        await handle.move(f["sha256"])

    async def _fetch_into(self, part, url, f, stall_s, rate, progress, model_id):
        """One HTTP request from byte `part.have` on, appending to the partial file as bytes arrive."""
        import js

        controller = js.AbortController.new()
        headers = {"Range": f"bytes={part.have}-"} if part.have else {}
        request = js.fetch(url, options(headers=options(**headers), signal=controller.signal, cache="no-store"))
        try:
            response = await asyncio.wait_for(asyncio.ensure_future(request), stall_s)
        except asyncio.TimeoutError:
            controller.abort()
            raise OSError(f"no answer from the server for {stall_s:.0f} s") from None
        status = int(response.status)
        if part.have and status == 200:  # the server ignored the Range: start the file again
            part.restart()
        elif part.have and status == 206:
            if content_range_start(response.headers.get("Content-Range")) != part.have:
                controller.abort()
                raise InstallError(f"the server answered a resume of {f['path']} with the wrong bytes.")
        elif status == 416:
            part.restart()
            raise InstallError(http_problem(status, url))
        elif not response.ok:
            controller.abort()
            if retryable(status):
                raise OSError(f"HTTP {status}")
            raise InstallError(http_problem(status, url))
        reader = response.body.getReader()
        try:
            while True:
                try:
                    step = await asyncio.wait_for(asyncio.ensure_future(reader.read()), stall_s)
                except asyncio.TimeoutError:
                    raise OSError(f"the server stopped sending data for {stall_s:.0f} s") from None
                if step.done:
                    break
                chunk = step.value
                if part.have + int(chunk.byteLength) > f["size"]:
                    raise InstallError(f"{f['path']} is larger on the server than the manifest says; not installed.")
                await part.append(chunk)
                done = progress["done"] + part.have
                rate.add(time.monotonic(), done)
                eta = rate.eta(self.status[model_id]["total"] - done)
                self.status[model_id].update(done=done, speed=rate.speed(), eta_s=-1 if eta is None else eta,
                                             message=f"Downloading {f['path']}")
                await self.report(force=False)
        finally:
            controller.abort()
        if part.have < f["size"]:
            raise OSError("the connection closed early")

    # -- verify ----------------------------------------------------------------------------------

    async def _verify(self, model_id):
        entry = self.models[model_id]
        try:
            folder, sizes, _ = await self.refresh(model_id)
            bad = []
            self.status[model_id].update(state="verifying", message="Checking every file…", error=False)
            await self.report()
            for f in entry["files"]:
                if sizes.get(f["sha256"]) != f["size"]:
                    bad.append(f["path"])
                    continue
                file = await (await folder.getFileHandle(f["sha256"])).getFile()
                if await _digest(file) != f["sha256"]:
                    await remove(folder, f["sha256"])
                    bad.append(f["path"])
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
            size = int(file.size)
            candidates = [(m, f) for m, e in self.models.items() for f in e["files"] if f["size"] == size]
            if not candidates:
                messages.append(f"{file.name} is not a file of any listed model (no file has its size).")
                continue
            model_id = candidates[0][0]
            folder = await model_folder(model_id)
            temp = f"import-{time.time_ns()}{PARTIAL}"
            handle = await folder.getFileHandle(temp, options(create=True))
            part = Partial(await handle.createSyncAccessHandle())
            try:
                async for data in pieces(file):
                    await part.append(data)
                    self.status[model_id].update(state="importing", message=f"Importing {file.name}…")
                    await self.report(force=False)
                part.access.flush()
                digest = await part.hasher.hexdigest()
            except Exception as e:  # unreadable file, full storage, hashing failed: the others still go on
                part.close()
                await remove(folder, temp)
                messages.append(f"{file.name} was not imported: {storage_text(e)}")
                continue
            part.close()
            matches = match_import(size, digest, self.models)
            if not matches:
                await remove(folder, temp)
                messages.append(f"{file.name} does not match any file of the listed models (its sha256 differs); "
                                "not imported.")
                continue
            moved = False  # the copy lands under its digest; a file shared by several models is copied on
            for m, f in sorted(matches, key=lambda match: match[0] != model_id):
                target = await model_folder(m)
                await remove(target, f["sha256"])
                if not moved and m == model_id:
                    await handle.move(f["sha256"])
                    moved = True
                else:
                    await _copy(await handle.getFile(), target, f["sha256"])
                touched.add(m)
            if not moved:
                await remove(folder, temp)
        for m in touched:
            await self._commit_if_complete(m)
        for m in self.models:
            if m not in touched and self.state(m) == "importing":
                await self.refresh(m)
        self.notice = " ".join(messages)
        await self.report()
        self.notice = ""

    async def _commit_if_complete(self, model_id):
        entry = self.models[model_id]
        folder, sizes, _ = await self.refresh(model_id)
        missing = [f["path"] for f in entry["files"] if sizes.get(f["sha256"]) != f["size"]]
        if missing:
            self.status[model_id]["message"] = (f"Imported and verified; still missing: {', '.join(missing)}. "
                                                "Import them too, or Install downloads the rest.")
            return
        await _write_json(folder, RECORD, record_for(entry))
        await self.refresh(model_id)
        self.status[model_id]["message"] = f"{entry['name']} was imported and verified."

    # -- loading -----------------------------------------------------------------------------------

    async def files_for_loading(self, model_id) -> dict:
        """path -> File of an installed model (sizes checked); raises InstallError otherwise."""
        entry = self.models[model_id]
        folder, sizes, _ = await self.refresh(model_id)
        state = self.state(model_id)
        if state != "installed":
            await self.report()
            hint = self.status[model_id]["message"] or "Install it in the Models panel first."
            raise InstallError(f"{entry['name']} is not installed. {hint}" if state != "damaged" else hint)
        return {f["path"]: await (await folder.getFileHandle(f["sha256"])).getFile() for f in entry["files"]}


async def _digest(file) -> str:
    hasher = Hasher()
    try:
        async for data in pieces(file):
            hasher.update(data)
            await hasher.drain()
        return await hasher.hexdigest()
    finally:
        hasher.close()


async def _copy(source, folder, name):
    writable = await (await folder.getFileHandle(name, options(create=True))).createWritable()
    async for data in pieces(source):
        await writable.write(data)
    await writable.close()


def storage_text(error: Exception) -> str:
    return {
        "full": "the browser's storage for this site is full. Delete a model or gallery images, then Install resumes.",
        "denied": "this browser does not let the page keep files (private browsing?), so models cannot be installed.",
    }.get(storage_failure(error), str(error))
