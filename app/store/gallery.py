"""The gallery (worker side): auto-saved results, kept in the Origin Private File System (OPFS).

The OPFS folder gallery/ holds, per image (key = "<created, ms since epoch>-<6 hex digits>"):
  <key>.png        the PNG exactly as generated (its settings are also in its own text chunks)
  <key>.thumb.png  a small preview for the list, at most THUMB_SIZE px a side
  <key>.json       {key, created, parameters}
The .json is written last and deleted first, so an image is listed only while all its files are
complete. Each file is written with createWritable(), which swaps the new contents in on close():
a crash or a killed worker never leaves a torn file (a sync access handle is the fallback where a
browser lacks createWritable in workers).

Page -> worker:  {type: "gallery-list", query}      {type: "gallery-get", key}
                 {type: "gallery-delete", key}      {type: "gallery-read", png (ArrayBuffer)}
Worker -> page:  {type: "gallery-items", query, entries, total}     newest first, at most LIST_LIMIT
                 {type: "gallery-saved", id, entry}                  after an auto-save
                 {type: "gallery-item", key, png (ArrayBuffer), filename, parameters}
                 {type: "gallery-deleted", key}
                 {type: "gallery-settings", parameters, message, source}
                 {type: "gallery-error", key, message}
entry = {key, prompt, seed, steps, height, width, model, filename, thumb (ArrayBuffer), from_key, from_size, and
guidance, negative_prompt, strength when the image has them}: from_size is the "WxH" of the picture an image was
made from ("" for none), from_key that picture's gallery key while it is kept ("" otherwise).
gallery-settings: source "lantern" (a Lantern PNG) comes with every setting; "a1111" or "invokeai" (a
PNG from Automatic1111 or InvokeAI) with only those found and valid, height and width together or not
at all; a refused file with parameters {}, source "" and a message, which is "" otherwise.
Seeds travel as decimal text: the page's MicroPython reads JS numbers as 32-bit integers, and a
seed goes up to 2**32 - 1.

Only the functions at the bottom touch the browser; the rest is plain Python, tested on CPython.
"""

import asyncio
import hashlib
import io
import json
import re
import secrets
import time
import traceback

from PIL import Image

from .opfs import entry_names, file_sizes, js_bytes, options, remove, storage_failure
from .png import TextTooLong, TooLarge, read_foreign_settings, read_parameters

FOLDER = "gallery"
THUMB_SIZE = 128
LIST_LIMIT = 200  # thumbnails sent per listing; searching narrows the rest
ORPHAN_GRACE_MS = 10 * 60 * 1000  # files without a .json this old are leftovers of an interrupted save
KEY_RE = re.compile(r"\d{13}-[0-9a-f]{6}")
FIELDS = {"prompt": str, "seed": int, "steps": int, "height": int, "width": int, "model": str}
# Settings only some images have (guidance and its negative prompt; a run from a picture's strength).
OPTIONAL = {"negative_prompt": str, "guidance": (int, float), "strength": (int, float)}

NOT_LANTERN = "This PNG has no generation settings Lantern can read, so there is nothing to restore."
NOT_PNG = "This file is not a PNG image, so it has no settings to restore."
DAMAGED = "This PNG's Lantern settings are damaged or incomplete, so they cannot be restored."
MISSING = "This image is no longer in the gallery."


# --- plain logic ---------------------------------------------------------------------------------

def new_key(created_ms: int, token: str) -> str:
    return f"{created_ms:013d}-{token}"


def valid_key(key) -> bool:
    return isinstance(key, str) and KEY_RE.fullmatch(key) is not None


# Bounds far outside what the app makes, so that no restored number can be one the page cannot hold
# (the page's MicroPython reads JS integers above 2**31 as negative); the generator checks the rest.
LIMITS = {"seed": (0, 2**64 - 1), "steps": (1, 1000), "height": (1, 16384), "width": (1, 16384),
          "guidance": (0, 100), "strength": (0, 1)}


def _valid(name: str, value) -> bool:
    """Whether `value` has the type of setting `name` and is within LIMITS."""
    if not isinstance(value, {**FIELDS, **OPTIONAL}[name]) or isinstance(value, bool):
        return False
    low, high = LIMITS.get(name, (value, value))
    return low <= value <= high


def checked_parameters(parameters):
    """`parameters` if it has every setting with the right type and within LIMITS, else None (extra keys
    are kept)."""
    if not isinstance(parameters, dict) or not all(_valid(name, parameters.get(name)) for name in FIELDS):
        return None
    return parameters


def make_record(key: str, created_ms: int, parameters: dict, png_sha256: str = "") -> dict:
    """The .json of an image; `png_sha256` (its PNG's) lets an image made from it name it as its source."""
    record = {"key": key, "created": created_ms, "parameters": parameters}
    return dict(record, sha256=png_sha256) if png_sha256 else record


def parse_record(text):
    """A record read back from its .json, or None when it is unreadable or incomplete."""
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not valid_key(record.get("key")):
        return None
    created = record.get("created")
    if not isinstance(created, int) or isinstance(created, bool) or checked_parameters(record.get("parameters")) is None:
        return None
    return record


def download_name(parameters: dict, created_ms: int) -> str:
    """The name the main Download button gives: {model}_{YYYYMMDD-HHMMSS}_{seed}.png, UTC."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(created_ms // 1000))
    return f"{parameters['model']}_{stamp}_{parameters['seed']}.png"


def select(records, query: str = "", limit: int = LIST_LIMIT):
    """(newest first records whose prompt contains `query`, any case; how many matched in all)."""
    needle = (query or "").strip().casefold()
    found = [r for r in records if needle in r["parameters"]["prompt"].casefold()]
    found.sort(key=lambda r: (r["created"], r["key"]), reverse=True)
    return found[:limit], len(found)


def page_settings(parameters: dict) -> dict:
    """The settings the page puts back in its controls (seed as text, see the module docstring); an upscale's
    are those of the picture it started from, which is what the controls make."""
    size = parameters["source"] if parameters.get("upscale") and isinstance(parameters.get("source"), dict) else parameters
    settings = {"prompt": parameters["prompt"], "seed": str(parameters["seed"]), "steps": parameters["steps"],
                "height": size["height"], "width": size["width"], "model": parameters["model"]}
    settings.update({k: parameters[k] for k in OPTIONAL if k in parameters and _valid(k, parameters[k])})
    if parameters.get("upscale"):
        settings.pop("strength", None)  # the upscale's, not a setting of the controls
    return settings


def partial_settings(found: dict) -> dict:
    """The settings another tool stored that the page can put back: each of the right type, within LIMITS
    and not blank; height and width only together; the seed as text, as in `page_settings`."""
    types = {**FIELDS, **OPTIONAL}
    kept = {name: value for name, value in found.items()
            if name in types and _valid(name, value) and (types[name] is not str or value.strip())}
    if ("height" in kept) != ("width" in kept):
        kept.pop("height", None)
        kept.pop("width", None)
    if "seed" in kept:
        kept["seed"] = str(kept["seed"])
    return kept


def source_of(record: dict, records) -> dict:
    """What an image made from a picture says of it: the picture's size, and its gallery key while the gallery
    still keeps it (matched by the PNG's sha256, which the image records instead of the picture)."""
    source = record["parameters"].get("source")
    if not isinstance(source, dict) or not isinstance(source.get("sha256"), str):
        return {"from_key": "", "from_size": ""}
    key = next((r["key"] for r in records if r.get("sha256") == source["sha256"]), "")
    return {"from_key": key, "from_size": f"{source.get('width')}x{source.get('height')}"}


def entry(record: dict, records=()) -> dict:
    """A list entry for the page, without its thumbnail."""
    return dict(page_settings(record["parameters"]), key=record["key"],
                filename=download_name(record["parameters"], record["created"]), **source_of(record, records))


def make_thumbnail(png: bytes, size: int = THUMB_SIZE) -> bytes:
    with Image.open(io.BytesIO(png)) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size))  # keeps the aspect ratio; never enlarges
        out = io.BytesIO()
        img.save(out, format="PNG")
    return out.getvalue()


def settings_from_png(data: bytes):
    """(settings for the page, "", source) from a PNG with settings (see gallery-settings in the module
    docstring), or (None, a polite reason, "") otherwise."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None, NOT_PNG, ""
    try:
        parameters = read_parameters(data)
        foreign = read_foreign_settings(data) if parameters is None else None
    except TextTooLong as e:
        return None, f"This PNG's Lantern settings are larger than any Lantern writes ({e}), so they were not read.", ""
    except TooLarge as e:
        return None, f"This image is larger than any Lantern makes ({e}), so its settings were not read.", ""
    except (json.JSONDecodeError, UnicodeDecodeError):  # the chunk is there but its text is broken
        return None, DAMAGED, ""
    except Exception:  # Pillow reports broken files as OSError, SyntaxError, ValueError...
        return None, NOT_PNG, ""
    if parameters is not None:
        if checked_parameters(parameters) is None:
            return None, DAMAGED, ""
        return page_settings(parameters), "", "lantern"
    source, found = foreign or ("", {})
    settings = partial_settings(found)
    return (settings, "", source) if settings else (None, NOT_LANTERN, "")


def orphans(names, now_ms: int, grace_ms: int = ORPHAN_GRACE_MS):
    """Files whose image has no .json (an interrupted save or delete), once they are old enough not
    to be a save still in progress."""
    listed = {n[:-5] for n in names if n.endswith(".json")}
    out = []
    for name in names:
        key = name.split(".", 1)[0]
        if key not in listed and valid_key(key) and now_ms - int(key[:13]) > grace_ms:
            out.append(name)
    return out


def storage_message(error: Exception) -> str:
    return {
        "full": "The browser's storage for this site is full. Delete some images from the gallery to save new ones.",
        "denied": "This browser does not let the page keep files (private browsing?), so the gallery is unavailable.",
    }.get(storage_failure(error), f"The gallery could not be read or written: {error}")


def as_bytes(value):
    """Bytes from what a page message holds: a memoryview after to_py(), or a JS buffer proxy."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if hasattr(value, "to_bytes"):
        return value.to_bytes()
    return b""


# --- the browser side ------------------------------------------------------------------------------

_lock = asyncio.Lock()  # one store operation at a time: listing never sees a half-made image
_records = {}  # key -> record; records never change once written, so they are read once
_thumbs = {}  # key -> thumbnail bytes, for the same reason


async def _folder():
    # Looked up each time, not kept: a handle to a folder removed meanwhile (site data cleared) fails.
    import js

    root = await js.navigator.storage.getDirectory()
    return await root.getDirectoryHandle(FOLDER, options(create=True))


async def _write(folder, name: str, data: bytes):
    handle = await folder.getFileHandle(name, options(create=True))
    if hasattr(handle, "createWritable"):
        writable = await handle.createWritable()
        await writable.write(js_bytes(data))
        await writable.close()  # the new contents replace the old only now
    else:
        access = await handle.createSyncAccessHandle()
        try:
            access.truncate(0)
            access.write(js_bytes(data))
            access.flush()
        finally:
            access.close()


async def _read(folder, name: str) -> bytes:
    file = await (await folder.getFileHandle(name)).getFile()
    return (await file.arrayBuffer()).to_bytes()


async def _records_in(folder):
    names = await entry_names(folder)
    for name in orphans(names, int(time.time() * 1000)):
        await remove(folder, name)
    records = []
    for name in names:
        key = name[:-5]
        if not name.endswith(".json") or not valid_key(key):
            continue
        if key not in _records:
            record = parse_record(await _read(folder, name))
            if record is None or record["key"] != key:
                continue
            _records[key] = record
        records.append(_records[key])
    return records


async def usage() -> dict:
    """What the gallery keeps: {"images": n, "mb": size of every file in its folder, in MB}."""
    sizes = await file_sizes(await _folder())
    return {"images": sum(name.endswith(".json") for name in sizes), "mb": sum(sizes.values()) / 1e6}


async def _thumb(folder, key):
    if key not in _thumbs:
        _thumbs[key] = await _read(folder, key + ".thumb.png")
    return _thumbs[key]


def _with_thumb(record, thumb: bytes, records):
    data = js_bytes(thumb)
    return dict(entry(record, records), thumb=data.buffer), data.buffer


async def _list(msg, post):
    folder = await _folder()
    query = str(msg.get("query") or "")
    records = await _records_in(folder)
    chosen, total = select(records, query)
    entries, buffers = [], []
    for record in chosen:
        try:
            item, buffer = _with_thumb(record, await _thumb(folder, record["key"]), records)
        except Exception:  # a lost thumbnail should not hide the image: remake it from the PNG
            _thumbs[record["key"]] = make_thumbnail(await _read(folder, record["key"] + ".png"))
            item, buffer = _with_thumb(record, _thumbs[record["key"]], records)
        entries.append(item)
        buffers.append(buffer)
    post({"type": "gallery-items", "query": query, "entries": entries, "total": total}, transfer=buffers)


async def _get(key, post):
    folder = await _folder()
    record = _records.get(key) or parse_record(await _read(folder, key + ".json"))
    if record is None:
        raise FileNotFoundError(f"NotFoundError: {key}.json is unreadable")
    png = js_bytes(await _read(folder, key + ".png"))
    post({"type": "gallery-item", "key": key, "png": png.buffer, "parameters": page_settings(record["parameters"]),
          "filename": download_name(record["parameters"], record["created"])}, transfer=[png.buffer])


async def _delete(key, post):
    folder = await _folder()
    for suffix in (".json", ".png", ".thumb.png"):  # the .json first: from then on it is not listed
        await remove(folder, key + suffix)
    _records.pop(key, None)
    _thumbs.pop(key, None)
    post({"type": "gallery-deleted", "key": key})


async def handle(msg, post):
    """One page message whose type starts with "gallery-"; every failure becomes a gallery-error."""
    kind, key = msg.get("type"), msg.get("key")
    try:
        if kind == "gallery-read":  # nothing stored is touched: no need to wait for the lock
            parameters, message, source = settings_from_png(as_bytes(msg.get("png")))
            post({"type": "gallery-settings", "parameters": parameters or {}, "message": message, "source": source})
            return
        if kind in ("gallery-get", "gallery-delete") and not valid_key(key):
            post({"type": "gallery-error", "key": str(key), "message": MISSING})
            return
        async with _lock:
            if kind == "gallery-list":
                await _list(msg, post)
            elif kind == "gallery-get":
                await _get(key, post)
            elif kind == "gallery-delete":
                await _delete(key, post)
    except Exception as e:
        missing = "NotFoundError" in f"{type(e).__name__}: {e}"
        if not missing:
            traceback.print_exc()
        post({"type": "gallery-error", "key": str(key or ""), "message": MISSING if missing else storage_message(e)})


async def autosave(job_id, png: bytes, parameters: dict, post):
    """Keep a finished result; a storage failure is reported but never fails the generation."""
    try:
        created = int(time.time() * 1000)
        key = new_key(created, secrets.token_hex(3))
        record = make_record(key, created, parameters, hashlib.sha256(png).hexdigest())
        thumb = make_thumbnail(png)
        async with _lock:
            folder = await _folder()
            await _write(folder, key + ".png", png)
            await _write(folder, key + ".thumb.png", thumb)
            await _write(folder, key + ".json", json.dumps(record, ensure_ascii=False).encode())
        _records[key], _thumbs[key] = record, thumb
        item, buffer = _with_thumb(record, thumb, list(_records.values()))
        post({"type": "gallery-saved", "id": job_id, "entry": item}, transfer=[buffer])
    except Exception as e:
        traceback.print_exc()
        post({"type": "gallery-error", "key": "", "message": "The image was made but not saved to the gallery. "
              + storage_message(e)})
