"""Bytes already on this device, checked against the manifest: re-hashing installed files (Verify)
and taking in local files a visitor picks or drops (Import), each kept only if its sha256 matches."""

import time

from .download import Partial
from .hasher import Hasher
from .layout import PARTIAL, match_import, model_folder, storage_text, stored
from .opfs import options, pieces, remove


async def file_digest(file) -> str:
    hasher = Hasher()
    try:
        async for data in pieces(file):
            hasher.update(data)
            await hasher.drain()
        return await hasher.hexdigest()
    finally:
        hasher.close()


async def copy(source, folder, name):
    writable = await (await folder.getFileHandle(name, options(create=True))).createWritable()
    async for data in pieces(source):
        await writable.write(data)
    await writable.close()


async def damaged_files(folder, files, sizes) -> list[str]:
    """Paths of the bundle's files (downloaded and converted) that are missing, the wrong size, or whose
    bytes no longer match their sha256 (those are deleted)."""
    bad = []
    for f in files:
        if not stored(f, sizes):
            bad.append(f["path"])
            continue
        file = await (await folder.getFileHandle(f["sha256"])).getFile()
        if await file_digest(file) != f["sha256"]:
            await remove(folder, f["sha256"])
            bad.append(f["path"])
    return bad


async def import_file(file, models: dict, on_progress) -> tuple[set, str | None]:
    """Hash a local file while copying it into OPFS; keep it under its digest in every model folder
    whose bundle holds it. Returns (ids of the models it was added to, a message when it was not);
    `await on_progress(model_id)` follows the copy."""
    size = int(file.size)
    candidates = [(m, f) for m, e in models.items() for f in e["files"] if f["size"] == size]
    if not candidates:
        return set(), f"{file.name} is not a file of any listed model (no file has its size)."
    model_id = candidates[0][0]
    folder = await model_folder(model_id)
    temp = f"import-{time.time_ns()}{PARTIAL}"
    handle = await folder.getFileHandle(temp, options(create=True))
    part = Partial(await handle.createSyncAccessHandle(), file.name)
    try:
        async for data in pieces(file):
            await part.append(data)
            await on_progress(model_id)
        part.flush()
        digest = await part.hasher.hexdigest()
    except Exception as e:  # unreadable file, full storage, hashing failed: the others still go on
        part.close()
        await remove(folder, temp)
        return set(), f"{file.name} was not imported: {storage_text(e)}"
    part.close()
    matches = match_import(size, digest, models)
    if not matches:
        await remove(folder, temp)
        return set(), (f"{file.name} does not match any file of the listed models (its sha256 differs); "
                       "not imported.")
    touched = set()
    moved = False  # the copy lands under its digest; a file shared by several models is copied on
    for m, f in sorted(matches, key=lambda match: match[0] != model_id):
        target = await model_folder(m)
        await remove(target, f["sha256"])
        if not moved and m == model_id:
            await handle.move(f["sha256"])
            moved = True
        else:
            await copy(await handle.getFile(), target, f["sha256"])
        touched.add(m)
    if not moved:
        await remove(folder, temp)
    return touched, None
