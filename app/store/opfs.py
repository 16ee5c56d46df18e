"""Small helpers over the Origin Private File System, shared by the gallery and model installs.

`js` is imported inside each function: the modules that use these are also imported on CPython.
"""

PIECE = 8 * 2**20  # files are read this much at a time


def options(**values):
    import js
    from pyodide.ffi import to_js

    return to_js(values, dict_converter=js.Object.fromEntries)


def js_bytes(data: bytes):
    """Python bytes as a new Uint8Array (what OPFS writes and the hashing thread take)."""
    import js

    array = js.Uint8Array.new(len(data))
    array.assign(data)
    return array


def storage_failure(error: Exception) -> str | None:
    """"full" (over the site's quota), "denied" (no OPFS here: private browsing, policy), "busy" (a file
    another tab of the site has open for writing) or None (other)."""
    text = f"{type(error).__name__}: {error}"
    if "QuotaExceeded" in text:
        return "full"
    if "NoModificationAllowed" in text:
        return "busy"
    if "SecurityError" in text or "getDirectory" in text:
        return "denied"
    return None


def not_found(error: Exception) -> bool:
    return "NotFoundError" in f"{type(error).__name__}: {error}"


async def remove(folder, name: str, recursive: bool = False):
    """Remove an entry; one already gone (another tab, an interrupted write) is fine."""
    try:
        await folder.removeEntry(name, options(recursive=recursive))
    except Exception as e:
        if not not_found(e):
            raise


PROBE_PIECES = 32  # a room probe sizes at most this many files (more only past 32 GiB)
PROBE_PIECE_SIZES = (2**27, 2**30)  # each at least 128 MiB (few files) and at most 1 GiB (see room)


async def room(folder, needed: int) -> int:
    """How many of `needed` bytes this storage can still hold (`needed` when it has room), found by sizing
    new empty files one after another: instant on disk (sparse files), while Chrome's in-memory storage
    (private windows) allocates the bytes or, over its limit, silently leaves the file empty. Each file is
    sized once, from empty, to at most 1 GiB: sizing an in-memory file up again once it has held more than
    1 GiB makes Chrome double its buffer past 2 GiB, which crashes the whole browser (Chrome 156). Below
    `needed`, the figure is short by less than one file's size."""
    low, high = PROBE_PIECE_SIZES
    piece = min(max(-(-needed // PROBE_PIECES), low), high)
    names, held = [], 0
    try:
        while held < needed:
            names.append(f"room-probe-{len(names)}.partial")
            size = min(piece, needed - held)
            if not await _sized(folder, names[-1], size):
                break
            held += size
        return held
    finally:
        for name in names:
            await remove(folder, name)


async def _sized(folder, name: str, size: int) -> bool:
    """Whether a new file `name` could be sized to `size` bytes."""
    handle = await folder.getFileHandle(name, options(create=True))
    access = await handle.createSyncAccessHandle()
    try:
        access.truncate(size)
        return int(access.getSize()) == size
    except Exception as e:
        if storage_failure(e) == "full":
            return False
        raise
    finally:
        access.close()


async def pieces(file):
    """A File's bytes as Uint8Arrays of at most PIECE bytes, read one at a time."""
    import js

    for start in range(0, int(file.size), PIECE):
        yield js.Uint8Array.new(await file.slice(start, start + PIECE).arrayBuffer())


async def _entries(folder):
    """(name, handle) of each entry of a folder."""
    entries = folder.entries()
    while True:
        step = await entries.next()
        if step.done:
            return
        yield step.value.to_py() if hasattr(step.value, "to_py") else step.value


async def entry_names(folder) -> list[str]:
    """The names of everything in a folder."""
    return [name async for name, _ in _entries(folder)]


async def folder_names(folder) -> list[str]:
    """The sub-folders of a folder."""
    return [name async for name, handle in _entries(folder) if handle.kind == "directory"]


async def file_sizes(folder) -> dict:
    """name -> size of each file in a folder."""
    return {name: int((await handle.getFile()).size) async for name, handle in _entries(folder) if handle.kind == "file"}
