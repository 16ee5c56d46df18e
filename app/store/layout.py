"""Where installed models live in the Origin Private File System, and what state a model folder is in.

OPFS layout, one folder per model:  models/<model id>/
  <sha256>            a file of the bundle, stored under its own digest, only once verified
  <sha256>.partial    a file being downloaded or imported; bytes [0, size) grow in order
  installing.json     present while an install is wanted (a reload resumes it)
  host_hashes.json    {path: {url, size, sha256, commit}}: the sha256 the host gave for files whose
                      manifest entry takes it from there (hub.py), recorded before their download
  installed.json      {variant, files: {path: sha256}, sha256_from_host: [path], converted: {path:
                      [sha256, size]}}: written last, when every file is verified (and, for a variant
                      with "convert", converted: convert.py)
A model counts as installed only when installed.json matches the manifest and every file it names
is present at its size. Bytes are hashed as they are written; a mismatch deletes them and says so.
Full re-hashing happens on demand ("verify"); loading checks presence and sizes only, because
hashing 13 GB on every visit would take longer than the generation.

"""

import json

from .manifest import conversion_growth, from_checkpoint
from .opfs import not_found, options, storage_failure

FOLDER = "models"
RECORD = "installed.json"
WANTED = "installing.json"
HOST_HASHES = "host_hashes.json"
PARTIAL = ".partial"


class InstallError(Exception):
    """A failure to tell the user as it is (the message is the whole explanation)."""


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def record_for(entry: dict) -> dict:
    return {"variant": entry.get("variant"), "files": {f["path"]: f["sha256"] for f in entry["files"]},
            "sha256_from_host": [f["path"] for f in entry["files"] if f.get("sha256_from") == "host"]}


def converted_files(record) -> list[dict]:
    """The files an install made from its download (convert.py), as recorded in installed.json."""
    return [{"path": p, "sha256": sha, "size": size} for p, (sha, size) in ((record or {}).get("converted") or {}).items()]


def kept_files(entry: dict, record) -> list[dict]:
    """What an installed model keeps: its downloaded files and what the install converted from them; a
    checkpoint's files are gone once converted (only the converted model is kept)."""
    return ([] if from_checkpoint(entry) else entry["files"]) + converted_files(record)


def reused(entry: dict) -> list[dict]:
    """Files the host says are the same bytes as one another model was installed from: not downloaded, that
    model's converted part is copied instead (when it is installed; the installer checks)."""
    return [f for f in entry["files"] if (f.get("reuse") or {}).get("same")]


def stored(f: dict, sizes: dict) -> bool:
    """Whether file `f` is in the folder, complete (a file whose sha256 is not known yet is not)."""
    return f["sha256"] is not None and sizes.get(f["sha256"]) == f["size"]


def partial_bytes(f: dict, sizes: dict) -> int:
    return min(sizes.get(f["sha256"] + PARTIAL, 0), f["size"]) if f["sha256"] else 0


def bundle_state(entry: dict, sizes: dict, record, skip=()) -> tuple[str, int, str]:
    """(state, bytes present, detail) from the folder's file sizes (name -> size) and installed.json; the files
    in `skip` are not downloaded (reused from an installed model) and count as present, as a download counts them."""
    files = entry["files"]
    total = sum(f["size"] for f in files)
    missing = [f for f in files if not stored(f, sizes) and f not in skip]
    done = total - sum(f["size"] for f in missing)
    done += sum(partial_bytes(f, sizes) for f in missing)
    if record is not None and record.get("files") == record_for(entry)["files"]:
        missing = [f for f in kept_files(entry, record) if not stored(f, sizes)]
        if not missing:
            return "installed", total, ""
        names = ", ".join(f["path"] for f in missing)
        return "damaged", done, f"Damaged: {names} {'is' if len(missing) == 1 else 'are'} missing or corrupt. Install repairs it."
    if done == total and entry.get("convert"):
        return "partial", done, "Downloaded, not yet converted for loading here. Install converts it."
    if done:
        return "partial", done, f"Paused at {100 * done / total:.0f}%. Install resumes it."
    return "not-installed", 0, ""


def leftovers(entry: dict, names, record=None) -> list[str]:
    """Files in a model's folder that no longer belong to it (an older version's, a stray partial); an import's
    copy in progress is not one (stale_imports finds those a closed tab left)."""
    own = [f["sha256"] for f in entry["files"] + converted_files(record) if f["sha256"]]
    keep = {RECORD, WANTED, HOST_HASHES} | set(own) | {n + PARTIAL for n in own}
    return sorted(n for n in names if n not in keep and not n.startswith("import-"))


IMPORT_GRACE_NS = 3600 * 10**9  # an import's partial copy older than this is one a closed tab left behind


def stale_imports(names, now_ns: int) -> list[str]:
    """Partial copies of imports ("import-<time_ns>.partial") that no running import can still be writing."""
    out = []
    for name in names:
        stamp = name[len("import-"):-len(PARTIAL)] if name.startswith("import-") and name.endswith(PARTIAL) else ""
        if stamp.isdigit() and now_ns - int(stamp) > IMPORT_GRACE_NS:
            out.append(name)
    return out


def kept_bytes(sizes: dict) -> int:
    """What a model folder takes on disk, its small records aside."""
    return sum(n for name, n in sizes.items() if not name.endswith(".json"))


def storage_problem(needed: int, usage: int, quota: int) -> str | None:
    free = max(quota - usage, 0)
    if needed > free:
        return (f"Not enough storage: this model needs {gb(needed)} more, but the browser allows this site "
                f"only {gb(free)} more. Free some space (delete models or gallery images) and try again.")
    return None


PRIVATE_WINDOW = ("In a private (Incognito or Guest) window the browser keeps a site's files in memory, holds "
                  "little of them and drops them all when the window closes: open Lantern in a normal window to "
                  "install it. Otherwise, free some space (delete models or gallery images).")


def out_of_room(name: str) -> str:
    return (f"the browser stopped storing {name}: it has no more room for this site. {PRIVATE_WINDOW} "
            "The bytes stored so far are kept; Install resumes.")


def no_room_text(needed: int, room: int) -> str:
    return (f"Not enough storage: this model needs {gb(needed)} more, but this browser window can store only about "
            f"{gb(room)} more for this site. {PRIVATE_WINDOW}")


def page_row(model_id: str, entry: dict, status: dict) -> dict:
    own = entry.get("conversion")  # a checkpoint of the visitor's own, converted here (own.py): nothing to download
    total = own["bytes"] if own else sum(f["size"] for f in entry["files"])
    return {"id": model_id, "name": entry["name"], "state": status.get("state", "not-installed"),
            "done_mb": status.get("done", 0) / 1e6, "total_mb": total / 1e6, "own": bool(own),
            "speed_mbps": status.get("speed", 0) / 1e6, "eta_s": status.get("eta_s", -1),
            "message": status.get("message", ""), "error": bool(status.get("error")),
            "style": entry.get("style", ""), "license": entry.get("license", ""), "variant": entry.get("variant") or "",
            "variant_reason": entry.get("variant_reason", ""), "needs": entry.get("needs", ""),
            "hashes": own_origin(entry) if own else hash_origin(entry["files"]),
            "convert_mb": convert_reserve(entry) / 1e6,
            "convert_to": entry.get("convert", {}).get("to", ""),
            "kept_mb": status.get("kept", 0) / 1e6}


def convert_reserve(entry: dict) -> int:
    """At most what a variant's converted files take (convert.py, or a checkpoint's conversion)."""
    if from_checkpoint(entry):
        return entry["convert"]["bytes"]
    sources = set(entry.get("convert", {}).get("from", {}).values())
    return conversion_growth(entry) * sum(f["size"] for f in entry["files"] if f["path"] in sources)


def own_origin(entry: dict) -> str:
    """Where a model of the visitor's own came from: its source files (name, sha256) and the conversion."""
    sources = ", ".join(f"{s['name']} ({gb(s['size'])}, sha256 {s['sha256'][:12]}…)" for s in entry["source"].values())
    took = entry["conversion"]["seconds"]
    return f"Converted here in {took:.0f} s from {sources}: {entry['found']}"


def hash_origin(files: list) -> str:
    """Where the sha256s the files are checked against come from."""
    host = sum(f.get("sha256_from") == "host" for f in files)
    if not host:
        return "sha256 pinned for every file"
    rest = f", pinned for the other {len(files) - host}" if host < len(files) else ""
    return f"sha256 from the host (huggingface.co) for {host} file{'s' if host > 1 else ''}{rest}"


def match_import(size: int, digest: str, models: dict) -> list[tuple[str, dict]]:
    """(model id, file) pairs whose bytes these are."""
    return [(m, f) for m, e in models.items() for f in e["files"] if f["size"] == size and f["sha256"] == digest]


# --- the browser side ------------------------------------------------------------------------------

async def models_folder():
    import js

    root = await js.navigator.storage.getDirectory()
    return await root.getDirectoryHandle(FOLDER, options(create=True))


async def model_folder(model_id: str, create: bool = True):
    try:
        return await (await models_folder()).getDirectoryHandle(model_id, options(create=create))
    except Exception as e:
        if not_found(e):
            return None
        raise


async def read_json(folder, name):
    try:
        return json.loads(await (await (await folder.getFileHandle(name)).getFile()).text())
    except Exception as e:
        if not_found(e) or isinstance(e, ValueError):
            return None
        raise


async def write_json(folder, name, obj):
    writable = await (await folder.getFileHandle(name, options(create=True))).createWritable()
    await writable.write(json.dumps(obj))
    await writable.close()


def storage_text(error: Exception) -> str:
    return {
        "full": "the browser's storage for this site is full. Delete a model or gallery images, then Install resumes.",
        "denied": "this browser does not let the page keep files (private browsing?), so models cannot be installed.",
        "busy": "another tab of this site is writing these files. Try again once it is done.",
    }.get(storage_failure(error), str(error))
