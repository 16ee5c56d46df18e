"""Incremental SHA-256 on a helper thread (hasher.js, hash-wasm's wasm SHA-256), for the worker.

Hashing one stream cannot be split, and on this worker's own thread it costs about as much as
fetching and writing the bytes, so the two add up (~85 MB/s measured). Handed to a thread of its
own, hashing overlaps them (~150 MB/s on 2 cores; the ceiling is the hash alone, ~180-190 MB/s).
"""

import asyncio
import functools

from .opfs import options

BACKLOG = 32 * 2**20  # bytes handed over but not hashed yet; beyond this, drain() waits (memory stays flat)
SILENCE_SECONDS = 60.0  # the thread hashes 32 MB in well under a second: this long without a word, it is gone


class HashError(Exception):
    """The hashing thread failed (it could not start, or the wasm failed)."""


class Hasher:
    """update() hands the chunk's buffer to the thread without copying: the chunk is empty afterwards,
    so write it out first. Call close() when done (it ends the thread)."""

    def __init__(self):
        import js
        from pyodide.ffi import create_proxy

        self._proxy = create_proxy(self._on_event)
        self._worker = js.Worker.new(js.URL.new("hasher.js", js.location.href).href)
        self._worker.onmessage = self._proxy
        self._worker.onerror = self._proxy
        self._backlog = 0
        self._digest = None
        self._error = None
        self._wake = None

    def _on_event(self, event):
        data = getattr(event, "data", None)
        kind = getattr(data, "type", None)
        if event.type == "error":  # the thread did not start (its script did not load)
            event.preventDefault()
            self._error = str(getattr(event, "message", "") or "its script did not load")
        elif kind == "hashed":
            self._backlog -= int(data.n)
        elif kind == "digest":
            self._digest = str(data.hex)
        else:  # its own error, or anything else (a null): never leave a waiter waiting
            self._error = str(getattr(data, "message", None) or f"it sent {data!r}")
        if self._wake and not self._wake.done():
            self._wake.set_result(None)

    async def _wait(self):
        if self._error is None:
            self._wake = asyncio.get_event_loop().create_future()
            try:
                await asyncio.wait_for(self._wake, SILENCE_SECONDS)
            except asyncio.TimeoutError:  # a thread that died without an error event
                self._error = f"no answer for {SILENCE_SECONDS:.0f} s"
        if self._error is not None:
            raise HashError(f"the bytes could not be checked: the hashing thread failed ({self._error}). "
                            "Resume tries again with the bytes already downloaded; if it fails again, reload the page.")

    def update(self, chunk):
        import js

        n = int(chunk.byteLength)
        buffer = chunk.buffer
        self._worker.postMessage(options(type="update", buffer=buffer, offset=chunk.byteOffset, length=n),
                                 js.Array.of(buffer))
        self._backlog += n

    async def drain(self):
        while self._backlog > BACKLOG:
            await self._wait()

    async def hexdigest(self) -> str:
        self._worker.postMessage(options(type="digest"))
        while self._digest is None:
            await self._wait()
        return self._digest

    def close(self):
        # Events the thread posted before it ends may still be dispatched: detach first, so that none
        # reaches the destroyed proxy (an uncaught "Object has already been destroyed"); a thread ended while
        # its script still loads reports that as an error, which would otherwise go uncaught.
        self._worker.onmessage = None
        self._worker.onerror = _ignore_errors()
        self._worker.terminate()
        self._proxy.destroy()


@functools.cache
def _ignore_errors():
    """One handler, made once, for the errors of threads that were ended."""
    from pyodide.ffi import create_proxy

    return create_proxy(lambda event: event.preventDefault())
