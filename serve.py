#!/usr/bin/env python3
"""Serve the built site locally, the way the app needs to be served.

  /            the built site (default build/site/; built first if its index.html is missing)
  /models/...  local model bundles (default models/), e.g. /models/tiny-sdxl-turbo/unet/model.onnx

Every response is cross-origin isolated (COOP/COEP/CORP, so SharedArrayBuffer and wasm threads
work) and carries the build's security headers (headers.json: CSP, nosniff, Referrer-Policy,
Permissions-Policy); --plain-host leaves all of them out, like a static host that cannot set
headers (the service worker then adds them). Files get the MIME types
browsers insist on (.mjs, .wasm), and GET honours single HTTP Range requests so large model files
can be fetched in parts and resumed. No directory listings, nothing outside its two folders (a
symbolic link that leads out is not followed), idle connections closed after IDLE_SECONDS, at most
MAX_CONNECTIONS at once.

Usage: python3 serve.py [--port 8000] [--host 127.0.0.1] [--site build/site] [--models models]
                       [--plain-host] [--verbose]
Tests can run it in a thread: `server = make_server(site, models, "127.0.0.1", 0)`,
`threading.Thread(target=server.serve_forever, daemon=True).start()`, then `server.shutdown()`.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import re
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

ROOT = Path(__file__).resolve().parent
DEFAULT_SITE = ROOT / "build" / "site"
DEFAULT_MODELS = ROOT / "models"
MODELS_PREFIX = "/models/"
CHUNK = 1 << 20

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}

SECURITY_HEADERS = "headers.json"

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".py": "text/plain; charset=utf-8",
    ".toml": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
DEFAULT_MIME = "application/octet-stream"

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
MAX_DIGITS = 18  # byte positions past this are beyond any file: no int() of a 4,300-digit number
IDLE_SECONDS = 30
MAX_CONNECTIONS = 64


def mime_type(path: Path) -> str:
    return MIME_TYPES.get(path.suffix.lower(), DEFAULT_MIME)


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Interpret a Range header for a file of `size` bytes.

    Returns (first, last) inclusive for a satisfiable single range, "unsatisfiable" for a
    range that lies beyond the file, or None to ignore the header and send the whole file
    (no header, several ranges, or a malformed one, as RFC 9110 allows).
    """
    if not header:
        return None
    match = RANGE_RE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if len(first) > MAX_DIGITS:
        return "unsatisfiable"
    last = last if len(last) <= MAX_DIGITS else str(10**MAX_DIGITS)  # as good as "to the end"
    if first == "":  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class SiteHandler(BaseHTTPRequestHandler):
    """GET/HEAD for static files under the site and models folders."""

    protocol_version = "HTTP/1.1"
    server_version = "lantern-serve"
    timeout = IDLE_SECONDS  # a client that sends nothing for this long is disconnected

    # -- plumbing

    def end_headers(self):
        for name, value in self.app_headers().items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def app_headers(self) -> dict[str, str]:
        if not self.server.app_headers:
            return {}
        return {**ISOLATION_HEADERS, **self.server.security_headers}

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self.serve(send_body=True)

    def do_HEAD(self):
        self.serve(send_body=False)

    def send_empty(self, status: int, headers: dict[str, str] | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- mapping a URL to a file

    def resolve(self, url_path: str) -> tuple[Path | None, int]:
        """The file a URL path names, or (None, error status)."""
        path = unquote(url_path)
        if "\x00" in path or "\\" in path:
            return None, HTTPStatus.BAD_REQUEST
        if path.startswith(MODELS_PREFIX) or path == MODELS_PREFIX.rstrip("/"):
            base, rest = self.server.models_dir, path[len(MODELS_PREFIX):]
        else:
            base, rest = self.server.site_dir, path
        parts = [p for p in rest.split("/") if p]
        if any(p in (".", "..") for p in parts):
            return None, HTTPStatus.FORBIDDEN
        if base is None:
            return None, HTTPStatus.NOT_FOUND
        target = Path(base).joinpath(*parts)
        if not target.resolve().is_relative_to(Path(base).resolve()):  # a link that leads out of the folder
            return None, HTTPStatus.NOT_FOUND
        return target, HTTPStatus.OK

    # -- the response

    def serve(self, send_body: bool):
        url_path = urlsplit(self.path).path
        target, status = self.resolve(url_path)
        if target is None:
            self.send_error(status)
            return
        if target.is_dir():
            if not (target / "index.html").is_file():
                self.send_error(HTTPStatus.NOT_FOUND)  # no listings
                return
            if not url_path.endswith("/"):
                self.send_empty(HTTPStatus.MOVED_PERMANENTLY, {"Location": quote(url_path) + "/"})
                return
            target = target / "index.html"
        try:
            file = open(target, "rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with file:
            self.send_file(file, target, send_body)

    def etag(self, stat) -> str:
        return f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'

    def send_file(self, file, path: Path, send_body: bool):
        stat = os.fstat(file.fileno())
        size = stat.st_size
        etag = self.etag(stat)
        headers = {
            "Content-Type": mime_type(path),
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
        }
        if_none_match = [tag.strip() for tag in (self.headers.get("If-None-Match") or "").split(",")]
        if etag in if_none_match or "*" in if_none_match:
            self.send_empty(HTTPStatus.NOT_MODIFIED, {k: v for k, v in headers.items() if k != "Content-Type"})
            return

        wanted = None
        if_range = self.headers.get("If-Range")
        if self.command == "GET" and (if_range is None or if_range in (etag, headers["Last-Modified"])):
            wanted = parse_range(self.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            self.send_empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"})
            return
        if wanted is None:
            status, start, length = HTTPStatus.OK, 0, size
        else:
            status, start, length = HTTPStatus.PARTIAL_CONTENT, wanted[0], wanted[1] - wanted[0] + 1
            headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"

        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if send_body:
            self.copy(file, start, length)

    def copy(self, file, start: int, length: int):
        file.seek(start)
        try:
            while length > 0:
                chunk = file.read(min(CHUNK, length))
                if not chunk:
                    break
                self.wfile.write(chunk)
                length -= len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the client left, or stopped reading
            self.close_connection = True


class SiteServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address, site_dir: Path, models_dir: Path | None, verbose: bool = False, app_headers: bool = True
    ):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.site_dir = Path(site_dir)
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.verbose = verbose
        self.app_headers = app_headers
        headers = self.site_dir / SECURITY_HEADERS  # written by build.py
        self.security_headers = json.loads(headers.read_text(encoding="utf-8")) if headers.is_file() else {}
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, SiteHandler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):  # too many at once: this one is closed, not queued
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        if self.verbose or not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def make_server(
    site_dir: Path | str = DEFAULT_SITE,
    models_dir: Path | str | None = DEFAULT_MODELS,
    host: str = "127.0.0.1",
    port: int = 8000,
    verbose: bool = False,
    app_headers: bool = True,
) -> SiteServer:
    """A ready, bound (not yet serving) server; port 0 picks a free port (see `server.url`).

    `app_headers=False` sends neither COOP/COEP/CORP nor the security headers, as a static host that
    cannot set headers."""
    return SiteServer((host, port), site_dir, models_dir, verbose, app_headers)


def ensure_built(site_dir: Path) -> int:
    """Run build.py into `site_dir` unless it already holds an index.html; returns an exit code."""
    if (site_dir / "index.html").is_file():
        return 0
    sys.path.insert(0, str(ROOT))
    import build

    return build.main(["--out", str(site_dir)])


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Serve the built site with cross-origin isolation.")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: 8000)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--site", type=Path, default=DEFAULT_SITE, help="built site (default: build/site)")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="served at /models/ (default: models)")
    parser.add_argument("--plain-host", dest="app_headers", action="store_false",
                        help="omit COOP/COEP/CORP and the security headers, like a static host "
                             "(the service worker then supplies them)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = ensure_built(args.site)
    if code:
        return code
    try:
        server = make_server(args.site, args.models, args.host, args.port, args.verbose, args.app_headers)
    except OSError as exc:
        print(f"serve.py: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"Serving on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
