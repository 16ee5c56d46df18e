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


async def room(folder, needed: int, probe: str, steps: int = 5) -> int:
    """How many of `needed` bytes this storage can still hold (`needed` when it has room), found by sizing
    an empty file: instant on disk (a sparse file), while Chrome's in-memory storage (private windows)
    allocates the bytes or, over its limit, silently leaves the file empty. Below `needed`, the figure is
    bisected to needed / 2**steps."""
    handle = await folder.getFileHandle(probe, options(create=True))
    access = await handle.createSyncAccessHandle()

    def fits(n: int) -> bool:
        try:
            access.truncate(n)
            return int(access.getSize()) == n
        except Exception as e:
            if storage_failure(e) == "full":
                return False
            raise
        finally:
            access.truncate(0)

    try:
        if fits(needed):
            return needed
        low, high = 0, needed
        for _ in range(steps):
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low
    finally:
        access.close()
        await remove(folder, probe)


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
