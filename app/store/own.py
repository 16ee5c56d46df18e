"""Models of the visitor's own: checkpoints converted here (app/worker/checkpoint.py).

Each lives in models/<id>/ like an installed model: every file under its digest, and installed.json naming
them all as converted files (nothing is downloaded for it). Beside them, entry.json is its manifest entry,
written by the import: the worker lists it with the manifest's models, and Delete removes the folder.
"""

from .download import storing
from .hasher import Hasher
from .layout import PARTIAL, RECORD, InstallError, model_folder, models_folder, read_json, write_json
from .opfs import PIECE, folder_names, js_bytes, options, remove

PREFIX = "own-"
ENTRY = "entry.json"


def own_id(header_digest: str) -> str:
    """A model's id from its source's header (known before the whole file is read): the same file imported
    twice is the same model."""
    return PREFIX + header_digest[:12]


def is_own(model_id: str) -> bool:
    return model_id.startswith(PREFIX)


async def own_entries() -> list[dict]:
    out = []
    root = await models_folder()
    for name in await folder_names(root):
        if is_own(name):
            entry = await read_json(await root.getDirectoryHandle(name), ENTRY)
            if entry and entry.get("id") == name:
                out.append(entry)
    return out


class Written:
    """A file written at any offsets (a filled template's weights), then hashed in one read-back pass and
    stored under its digest."""

    def __init__(self, folder, name: str):
        self.folder, self.name = folder, name
        self.access = None

    async def open(self, size: int):
        handle = await self.folder.getFileHandle(self.name + PARTIAL, options(create=True))
        self.access = await handle.createSyncAccessHandle()
        with storing(self.name):
            self.access.truncate(size)

    def write_at(self, offset: int, raw: bytes):
        with storing(self.name):
            written = int(self.access.write(js_bytes(raw), options(at=offset)))
        if written != len(raw):
            raise InstallError(f"the browser stopped storing {self.name}: it has no more room for this site.")

    async def commit(self, on_bytes=None) -> tuple[str, int]:
        """(sha256, size): read back, hashed, closed and moved to its digest."""
        import js

        with storing(self.name):
            self.access.flush()
        size = int(self.access.getSize())
        hasher, done = Hasher(), 0
        try:
            while done < size:
                piece = js.Uint8Array.new(min(PIECE, size - done))
                n = int(self.access.read(piece, options(at=done)))
                hasher.update(piece.subarray(0, n))
                done += n
                await hasher.drain()
                if on_bytes:
                    await on_bytes(n)
            digest = await hasher.hexdigest()
        finally:
            hasher.close()
            self.close()
        await remove(self.folder, digest)
        with storing(self.name):
            await (await self.folder.getFileHandle(self.name + PARTIAL)).move(digest)
        return digest, size

    def close(self):
        if self.access is not None:
            self.access.close()
            self.access = None


async def store_bytes(folder, data: bytes, digest: str) -> tuple[str, int]:
    """Small bytes (a graph, a tokenizer) stored under their known digest."""
    writable = await (await folder.getFileHandle(digest, options(create=True))).createWritable()
    await writable.write(js_bytes(data))
    await writable.close()
    return digest, len(data)


async def finish(model_id: str, entry: dict, converted: dict):
    """Write the records that make the folder an installed model: its entry, then installed.json."""
    folder = await model_folder(model_id)
    await write_json(folder, ENTRY, entry)
    await write_json(folder, RECORD, {"variant": entry["variants"][0]["id"], "files": {}, "sha256_from_host": [],
                                      "converted": converted})


async def forget(model_id: str):
    await remove(await models_folder(), model_id, recursive=True)
