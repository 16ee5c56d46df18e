"""build.py (integrity checks, reproducible and idempotent output) and serve.py (headers, MIME
types, Range requests, path safety). Plain pytest, no browser.

The full-site build tests reuse the download cache .cache/ that `python build.py` fills
(tests/run.sh runs it first) and build offline from it into temporary folders.
"""

import hashlib
import http.client
import socket
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import build  # noqa: E402
import serve  # noqa: E402

CACHE = ROOT / ".cache"
LOCK = json.loads((ROOT / "build.lock.json").read_text())


def cache_complete() -> bool:
    tarballs = [CACHE / "npm" / build.npm_tarball_name(p["name"], p["version"]) for p in LOCK["npm"]]
    wheels = list((CACHE / "pyodide").glob("*.whl")) + list((CACHE / "pip").glob("*.whl"))
    return all(t.is_file() for t in tarballs) and bool(wheels)


needs_cache = pytest.mark.skipif(not cache_complete(), reason="no .cache/: run `python build.py` once (tests/run.sh does)")


def flip_byte(src: Path, dst: Path, offset: int) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))


def tree_state(folder: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (mtime_ns, sha256)} of every file below `folder`."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- build: integrity


def test_verify_sri_rejects_a_flipped_byte(tmp_path):
    original = tmp_path / "pkg.tgz"
    original.write_bytes(os.urandom(4096))
    integrity = build.sri_of(original.read_bytes())
    build.verify_sri(original, integrity)
    tampered = tmp_path / "tampered.tgz"
    flip_byte(original, tampered, 2048)
    with pytest.raises(build.BuildError, match="integrity mismatch"):
        build.verify_sri(tampered, integrity)


@needs_cache
@pytest.mark.parametrize("pin", LOCK["npm"], ids=lambda pin: pin["name"])
def test_locked_tarball_verifies_and_a_tampered_copy_is_rejected(tmp_path, pin):
    cached = CACHE / "npm" / build.npm_tarball_name(pin["name"], pin["version"])
    build.verify_sri(cached, pin["integrity"])
    tampered = tmp_path / cached.name
    flip_byte(cached, tampered, cached.stat().st_size // 2)
    with pytest.raises(build.BuildError, match="integrity mismatch"):
        build.verify_sri(tampered, pin["integrity"])


def test_wheel_pins_are_checked_against_pyodide_lock():
    lock = json.dumps({"packages": {"numpy": {
        "version": "2.0.2", "file_name": "numpy-2.0.2-x.whl", "sha256": "ab" * 32, "depends": []}}})
    (wheel,) = build.wheels_from_lock(lock.encode(), {"numpy": "2.0.2"})
    assert (wheel.file_name, wheel.sha256) == ("numpy-2.0.2-x.whl", "ab" * 32)
    with pytest.raises(build.BuildError, match="pins 2.0.3"):
        build.wheels_from_lock(lock.encode(), {"numpy": "2.0.3"})
    with pytest.raises(build.BuildError, match="no package 'pillow'"):
        build.wheels_from_lock(lock.encode(), {"pillow": "10.2.0"})
    with pytest.raises(build.BuildError, match="sha256 mismatch"):
        build.verify_sha256(b"not the wheel", wheel.sha256, wheel.file_name)


def test_npm_tarball_names():
    assert build.npm_tarball_name("@pyscript/core", "0.6.66") == "pyscript-core-0.6.66.tgz"
    assert build.npm_tarball_name("pyodide", "0.27.8") == "pyodide-0.27.8.tgz"


# --------------------------------------------------------------------------- build: project parts


@pytest.fixture
def project(tmp_path):
    """A small stand-in project (static/, app/, models_manifest/) using the real lock file."""
    root = tmp_path / "project"
    files = {
        "build.lock.json": (ROOT / "build.lock.json").read_text(),
        "pyproject.toml": '[project]\nname = "lantern"\nversion = "9.8.7"\n',
        "static/index.html": "<!doctype html><title>t</title>\n",
        "static/main.py": "print('page')\n",
        "static/js/worker.mjs": "export {};\n",
        "app/__init__.py": "",
        "app/pipeline.py": "X = 1\n",
        "app/sub/__init__.py": "",
        "app/sub/util.py": "Y = 2\n",
        "app/notes.txt": "not python\n",
        "models_manifest/b-model.json": '{"id": "b"}',
        "models_manifest/a-model.json": '{"id": "a", "files": [1, 2]}',
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "app/__pycache__").mkdir()
    (root / "app/__pycache__/pipeline.cpython-311.pyc").write_bytes(b"\0pyc")
    return root


def test_app_zip_is_reproducible_and_holds_only_sources(project):
    first = build.app_zip(project)
    for path in (project / "app").rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    os.chmod(project / "app/pipeline.py", 0o600)
    assert build.app_zip(project) == first
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == ["app/__init__.py", "app/pipeline.py", "app/sub/__init__.py", "app/sub/util.py"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


def test_models_manifest_merges_in_file_name_order(project):
    tiny = json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo.json").read_text())
    for name in ("b-model", "a-model"):
        (project / "models_manifest" / f"{name}.json").write_text(json.dumps(dict(tiny, id=name[0])))
    merged = json.loads(build.models_manifest(project, {}))
    assert merged["schema"] == 1 and [m["id"] for m in merged["models"]] == ["a", "b"]


def test_refuses_to_clean_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(build.BuildError, match="refusing"):
        build.check_out_dir(tmp_path)
    assert (tmp_path / "precious.txt").exists()


@needs_cache
def test_build_twice_changes_nothing_and_prunes_stale_files(project, tmp_path):
    out = tmp_path / "site"
    first = build.build(out, project, CACHE, offline=True, log=lambda *a: None)
    assert first["written"] == first["files"] > 0
    before = tree_state(out)

    second = build.build(out, project, CACHE, offline=True, log=lambda *a: None)
    assert (second["written"], second["removed"]) == (0, 0)
    assert tree_state(out) == before

    (out / "stale.txt").write_text("old")
    (out / "vendor/old").mkdir()
    (out / "vendor/old/x.js").write_text("old")
    third = build.build(out, project, CACHE, offline=True, log=lambda *a: None)
    assert (third["written"], third["removed"]) == (0, 2)
    assert not (out / "vendor/old").exists()
    assert tree_state(out) == before


@needs_cache
def test_built_site_layout(project, tmp_path):
    out = tmp_path / "site"
    build.build(out, project, CACHE, offline=True, log=lambda *a: None)
    for rel in [
        "index.html", "main.py", "js/worker.mjs", "app.zip", "models_manifest.json", "build-info.json",
        "vendor/ort/ort.webgpu.min.mjs", "vendor/ort/ort-wasm-simd-threaded.asyncify.mjs",
        "vendor/ort/ort-wasm-simd-threaded.asyncify.wasm", "vendor/ort/ort.jspi.min.mjs",
        "vendor/ort/ort-wasm-simd-threaded.jspi.mjs", "vendor/ort/ort-wasm-simd-threaded.jspi.wasm",
        "vendor/pyodide/pyodide.mjs", "vendor/pyodide/pyodide.asm.js", "vendor/pyodide/pyodide.asm.wasm",
        "vendor/pyodide/python_stdlib.zip", "vendor/pyodide/pyodide-lock.json", "vendor/pyodide/package.json",
        "vendor/pyscript/core.js", "vendor/pyscript/core.css",
        "vendor/micropython/micropython.mjs", "vendor/micropython/micropython.wasm",
        "vendor/tokenizers/tokenizers.min.mjs", "vendor/hashwasm/sha256.umd.min.js",
    ]:
        assert (out / rel).is_file(), rel
    assert not list(out.rglob("*.map"))

    pyodide_lock = json.loads((out / "vendor/pyodide/pyodide-lock.json").read_text())["packages"]
    for name, version in LOCK["pyodide_packages"]["packages"].items():
        entry = pyodide_lock[name]
        assert entry["version"] == version
        wheel = out / "vendor/pyodide" / entry["file_name"]
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == entry["sha256"]

    info = json.loads((out / "build-info.json").read_text())
    assert info["version"] == "9.8.7"
    assert info["npm"]["onnxruntime-web"]["version"] == "1.30.0"
    assert info["app_zip_sha256"] == hashlib.sha256((out / "app.zip").read_bytes()).hexdigest()


def test_cli_reports_errors_in_one_line(tmp_path):
    (tmp_path / "x").write_text("not a build")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "build.py"), "--out", str(tmp_path), "--offline", "--cache", str(tmp_path / "c")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("build.py: error:")


# --------------------------------------------------------------------------- serve


MODEL_BYTES = bytes(range(256)) * 4  # 1024 bytes, each position easy to check


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("served")
    site, models = tmp_path / "site", tmp_path / "models"
    files = {
        site / "index.html": b"<!doctype html>home",
        site / "a.mjs": b"export const a = 1;",
        site / "b.wasm": b"\0asm\1\0\0\0",
        site / "c.py": b"print('hi')",
        site / "d.json": b"{}",
        site / "vendor/pyodide/x-1.0-py3-none-any.whl": b"PK",
        site / "empty/.keep": b"",
        models / "tiny/unet/model.onnx": MODEL_BYTES,
        tmp_path / "secret.txt": b"SECRET",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (models / "leak.txt").symlink_to(tmp_path / "secret.txt")  # leads out of models/
    (site / "headers.json").write_bytes(build.to_json(build.security_headers(SITE_MANIFEST)))
    (site / "inside").symlink_to(site / "vendor")  # stays inside the site
    server = serve.make_server(site, models, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


SITE_MANIFEST = json.dumps({"models": [{"variants": [{"files": [
    {"url": "https://huggingface.co/org/repo/resolve/main/unet/model.onnx"},
    {"url": "https://models.example.org/vae/model.onnx"},
    {"url": "/models/tiny/text_encoder/model.onnx"},
]}]}]}).encode()


def test_the_csp_allows_connections_to_the_site_and_its_model_hosts_only():
    csp = dict(d.split(" ", 1) for d in build.security_headers(SITE_MANIFEST)["Content-Security-Policy"].split("; "))
    # the Hub's downloads are redirects to its CDN hosts, which CSP checks too
    assert csp["connect-src"].split() == ["'self'", "https://huggingface.co", "https://*.huggingface.co",
                                          "https://*.hf.co", "https://models.example.org"]
    assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in " ".join(csp.values())


def request(server, path, method="GET", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_a_link_that_leads_out_of_its_folder_is_not_followed(served):
    assert request(served, "/models/leak.txt")[0] == 404
    status, _, body = request(served, "/inside/pyodide/x-1.0-py3-none-any.whl")
    assert (status, body) == (200, b"PK")


@pytest.mark.parametrize("header, status, body", [
    ("bytes=" + "9" * 4300 + "-", 416, b""),  # starts past any file
    ("bytes=0-" + "9" * 4300, 206, MODEL_BYTES),  # ends past it: to the end
    ("bytes=-" + "9" * 4300, 206, MODEL_BYTES),  # the last "n" bytes: all of them
])
def test_a_range_with_thousands_of_digits_gets_an_answer(served, header, status, body):
    got = request(served, "/models/tiny/unet/model.onnx", headers={"Range": header})
    assert (got[0], got[2]) == (status, body)


def test_idle_connections_are_closed_and_their_number_is_bounded(tmp_path, monkeypatch):
    (tmp_path / "index.html").write_text("x")
    monkeypatch.setattr(serve.SiteHandler, "timeout", 1)
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 2)
    server = serve.make_server(tmp_path, None, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        time.sleep(0.3)  # both are being served (silently waiting for a request)
        third = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert third.recv(1) == b""  # no slot: closed at once, not queued
        started = time.monotonic()
        assert [s.recv(1) for s in idle] == [b"", b""]  # idle for 1 s: closed
        assert time.monotonic() - started < 5
        assert request(server, "/")[2] == b"x"  # slots are free again
    finally:
        for s in idle + [third]:
            s.close()
        server.shutdown()
        server.server_close()


def test_port_zero_picks_a_free_port(served):
    assert served.server_address[1] != 0
    assert served.url == f"http://127.0.0.1:{served.server_address[1]}/"


@pytest.mark.parametrize("path", ["/", "/a.mjs", "/models/tiny/unet/model.onnx", "/missing", "/../secret.txt"])
def test_every_response_is_cross_origin_isolated(served, path):
    _, headers, _ = request(served, path)
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert headers["Cross-Origin-Resource-Policy"] == "same-origin"


@pytest.mark.parametrize("path", ["/", "/a.mjs", "/models/tiny/unet/model.onnx", "/missing"])
def test_every_response_carries_the_security_headers(served, path):
    _, headers, _ = request(served, path)
    expected = json.loads((served.site_dir / "headers.json").read_text())
    assert {name: headers.get(name) for name in expected} == expected
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_a_plain_host_sends_none_of_the_apps_headers(served):
    plain = serve.make_server(served.site_dir, None, "127.0.0.1", 0, app_headers=False)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        _, headers, body = request(plain, "/")
        assert body == b"<!doctype html>home"
        assert not {"Content-Security-Policy", "Cross-Origin-Embedder-Policy"} & set(headers)
    finally:
        plain.shutdown()
        plain.server_close()


@pytest.mark.parametrize("path, mime", [
    ("/", "text/html"),
    ("/a.mjs", "text/javascript"),
    ("/b.wasm", "application/wasm"),
    ("/c.py", "text/plain"),
    ("/d.json", "application/json"),
    ("/vendor/pyodide/x-1.0-py3-none-any.whl", "application/zip"),
    ("/models/tiny/unet/model.onnx", "application/octet-stream"),
])
def test_mime_types(served, path, mime):
    status, headers, _ = request(served, path)
    assert status == 200
    assert headers["Content-Type"].split(";")[0] == mime
    assert headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize("header, first, last", [
    ("bytes=10-19", 10, 19),
    ("bytes=1000-", 1000, 1023),
    ("bytes=-5", 1019, 1023),
    ("bytes=1020-5000", 1020, 1023),
    ("bytes=0-0", 0, 0),
])
def test_range_requests(served, header, first, last):
    status, headers, body = request(served, "/models/tiny/unet/model.onnx", headers={"Range": header})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {first}-{last}/{len(MODEL_BYTES)}"
    assert int(headers["Content-Length"]) == last - first + 1
    assert body == MODEL_BYTES[first:last + 1]


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range(served, header):
    status, headers, body = request(served, "/models/tiny/unet/model.onnx", headers={"Range": header})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(MODEL_BYTES)}"
    assert body == b""


def test_ignored_ranges_send_the_whole_file(served):
    for header in ["bytes=0-1,5-6", "items=0-1", "bytes=9-3"]:
        status, _, body = request(served, "/models/tiny/unet/model.onnx", headers={"Range": header})
        assert (status, body) == (200, MODEL_BYTES), header


def test_head_sends_headers_only(served):
    status, headers, body = request(served, "/models/tiny/unet/model.onnx", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) == len(MODEL_BYTES)


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/models/../../secret.txt", "/%2e%2e/secret.txt", "/models/%2E%2E/%2e%2e/secret.txt",
    "/..%2fsecret.txt", "/models/..%5c..%5csecret.txt",
])
def test_path_escape_is_refused(served, path):
    status, _, body = request(served, path)
    assert status in (400, 403, 404)
    assert b"SECRET" not in body


def test_no_directory_listings(served):
    assert request(served, "/empty/")[0] == 404
    assert request(served, "/models/")[0] == 404
    assert request(served, "/models/tiny/")[0] == 404
    status, _, body = request(served, "/")
    assert (status, body) == (200, b"<!doctype html>home")


def test_revalidation_with_etag(served):
    _, headers, _ = request(served, "/a.mjs")
    status, _, body = request(served, "/a.mjs", headers={"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")


def test_parse_range_table():
    assert serve.parse_range(None, 10) is None
    assert serve.parse_range("bytes=2-4", 10) == (2, 4)
    assert serve.parse_range("bytes=-20", 10) == (0, 9)
    assert serve.parse_range("bytes=10-", 10) == "unsatisfiable"
    assert serve.parse_range("bytes=0-", 0) == "unsatisfiable"
    assert serve.parse_range("bytes=-", 10) is None


def test_main_prints_the_real_port(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("x")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), "--port", "0", "--site", str(site), "--models", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("Serving on http://127.0.0.1:") and not line.endswith(":0/")
        port = int(line.rsplit(":", 1)[1].rstrip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"x")
        conn.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert err == ""  # quiet: no per-request log lines
