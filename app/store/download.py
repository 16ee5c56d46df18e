"""One file of a bundle from the network into OPFS: streamed into a partial file, hashed while it is
written, resumed with HTTP Range after a dropped connection or a stall (only if the file is still the
version its first bytes came from: If-Range on the site's own files, a compared ETag on a model host's,
where If-Range would add a CORS preflight to every resume), committed under its digest only when its
sha256 matches."""

import asyncio
import re
import time
from contextlib import contextmanager

from .hasher import Hasher, HashError
from .layout import PARTIAL, InstallError, out_of_room
from .opfs import PIECE, options, remove, storage_failure

RETRIES = 4  # attempts in a row without progress before giving up
WEB_PAGES = ("text/html", "application/xhtml+xml")  # never a model file (.onnx, .onnx_data, .json)
BACKOFF_SECONDS = (1, 2, 4, 8)


def content_range_start(header) -> int | None:
    """The first byte of a 206 answer ("bytes 100-199/1000"), or None when unreadable."""
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    return int(m.group(1)) if m else None


def strong_etag(response) -> str | None:
    """The answer's ETag if it can stand for these exact bytes (a weak W/ one cannot), and a page may read it."""
    tag = response.headers.get("ETag")
    return tag if tag and not tag.startswith("W/") else None


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


class Mismatch(InstallError):
    """A downloaded file's bytes do not match the sha256 they are checked against (they are deleted)."""

    def __init__(self, f):
        self.file = f
        whose = "the sha256 huggingface.co gave for it" if f.get("sha256_from") == "host" else "the manifest's sha256"
        super().__init__(f"{f['path']} arrived damaged (its bytes do not match {whose}), so they were deleted "
                         "and nothing was installed. Try Install again.")


class Rate:
    """Speed over the last few seconds, and the time left at that speed. No estimate until a second of
    samples is in: the first reads come in a burst (buffers filling), and a speed taken over them
    promised "0 s left" at 44%."""

    MIN_SPAN = 1.0

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
        if speed <= 0 or self.samples[-1][0] - self.samples[0][0] < self.MIN_SPAN:
            return None
        return remaining / speed


class WriteFailed(InstallError):
    """The browser did not store bytes it was given (the bytes before them are kept)."""


@contextmanager
def storing(name: str):
    """Any failure of an OPFS write, flush or move becomes a WriteFailed that says which file and why."""
    try:
        yield
    except InstallError:
        raise
    except Exception as e:
        if storage_failure(e) == "full":
            raise WriteFailed(out_of_room(name)) from None
        raise WriteFailed(f"storing {name} failed ({e}). The bytes stored so far are kept; Install resumes.") from None


class Partial:
    """A file being written: its open sync access handle, how many bytes it holds, their running hash."""

    last_write = 0.0  # time.monotonic() of the latest bytes written and handed to a hasher, by any Partial

    def __init__(self, access, name: str = "the file"):
        self.access = access
        self.name = name  # for messages
        self.have = 0
        self.hasher = Hasher()
        self.version = None  # the strong ETag of the answer its bytes came from, once known

    async def append(self, chunk):
        n = int(chunk.byteLength)
        with storing(self.name):
            written = int(self.access.write(chunk, options(at=self.have)))
        if written != n:  # Chrome's in-memory storage (private windows) reports "no space" as a byte count
            raise WriteFailed(out_of_room(self.name))
        self.hasher.update(chunk)  # hands the bytes over: written first
        self.have += n
        Partial.last_write = time.monotonic()
        await self.hasher.drain()

    def flush(self):
        with storing(self.name):
            self.access.flush()

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
            Partial.last_write = time.monotonic()
            await self.hasher.drain()

    def restart(self):
        self.access.truncate(0)
        self.hasher.close()
        self.have, self.hasher, self.version = 0, Hasher(), None

    def close(self):
        self.hasher.close()
        self.access.close()


async def download(folder, f, stall_s, on_bytes, on_retry):
    """Fetch manifest file `f` into `folder`: resume its partial bytes, hash while writing, verify, then
    commit it under its digest. `await on_bytes(have)` follows the bytes; `await on_retry(message)`
    says why a connection is being resumed."""
    import js

    url = js.URL.new(f["url"], js.location.href).href
    partial_name = f["sha256"] + PARTIAL
    handle = await folder.getFileHandle(partial_name, options(create=True))
    part = Partial(await handle.createSyncAccessHandle(), f["path"])
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
                await fetch_into(part, url, f, stall_s, on_bytes)
            except (InstallError, HashError, asyncio.CancelledError):
                raise
            except Exception as e:  # dropped connection or stall: resume from where the bytes stop
                failures = 0 if part.have > before else failures + 1
                if failures >= RETRIES:
                    raise InstallError(f"downloading {f['path']} failed {RETRIES} times in a row ({e}). "
                                       "Check the connection; Install resumes from where it stopped.") from None
                await on_retry(f"Connection problem ({e}); resuming…")
                await asyncio.sleep(BACKOFF_SECONDS[max(failures - 1, 0)])
        part.flush()
        digest = await part.hasher.hexdigest()
    finally:
        part.close()
    if digest != f["sha256"]:
        await remove(folder, partial_name)
        raise Mismatch(f)
    with storing(f["path"]):
        await handle.move(f["sha256"])


async def fetch_into(part, url, f, stall_s, on_bytes):
    """One HTTP request from byte `part.have` on, appending to the partial file as bytes arrive."""
    import js

    controller = js.AbortController.new()
    headers = {"Range": f"bytes={part.have}-"} if part.have else {}
    same_origin = js.URL.new(url).origin == js.location.origin
    if part.have and part.version and same_origin:
        headers["If-Range"] = part.version  # a changed file comes back whole (200), not spliced on
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
        if part.version and strong_etag(response) not in (None, part.version):
            controller.abort()
            part.restart()
            raise OSError("the file changed on the server since its first bytes; starting it again")
    elif status == 416:
        part.restart()
        raise InstallError(http_problem(status, url))
    elif not response.ok:
        controller.abort()
        if retryable(status):
            raise OSError(f"HTTP {status}")
        raise InstallError(http_problem(status, url))
    if (response.headers.get("Content-Type") or "").split(";")[0].strip().lower() in WEB_PAGES:
        controller.abort()  # a login, error or captive-portal page answered for the file: keep none of it
        raise InstallError(f"the server sent a web page instead of {f['path']}, so none of it was kept. "
                           "Check the connection (a sign-in page?) and Install again.")
    if not part.have:
        part.version = strong_etag(response)
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
            await on_bytes(part.have)
    finally:
        controller.abort()
    if part.have < f["size"]:
        raise OSError("the connection closed early")
