"""serve.py's server with faults a test can switch on per URL path, and a log of what was asked.

faults[path] = {
    "status": 404,            answer this status instead of the file
    "page": True,             answer 200 with an HTML page instead of the file (a sign-in or error page)
    "refuse_range": True,     answer 416 to any request with a Range header
    "drop_after": n,          send bytes up to absolute offset n, then cut the connection ("times": how often, default 1)
    "stall_after": n,         send bytes up to absolute offset n, then go silent until `release` is set
    "corrupt_at": n,          flip the bits of the byte at absolute offset n
    "slow": seconds,          pause this long after every 64 KiB
    "replaced": n,            the first answer is an old version of the file (byte n differs, another ETag)
                              and is cut after n + 1 MiB; later answers are the file as it is now
}

Its CSP also asks the browser to report every violation to CSP_REPORTS; they are kept in
`csp_reports` (a test fails on any, see conftest.py), except those for a URI in `csp_provoked`.
"""

import json
import threading
import time
from urllib.parse import urlsplit

import serve

PIECE = 64 * 1024
CSP_REPORTS = "/__csp-reports"


class FaultHandler(serve.SiteHandler):
    def app_headers(self):
        headers = super().app_headers()
        if "Content-Security-Policy" in headers:
            headers["Content-Security-Policy"] += f"; report-uri {CSP_REPORTS}"
        return headers

    def do_POST(self):
        if urlsplit(self.path).path != CSP_REPORTS:
            self.send_empty(405)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        report = json.loads(body or b"{}").get("csp-report", {})
        if report.get("blocked-uri") not in self.server.csp_provoked:
            self.server.csp_reports.append(report)
        self.send_empty(204)

    def serve(self, send_body):
        path = urlsplit(self.path).path
        self.server.log.append((path, self.headers.get("Range")))
        fault = self.server.faults.get(path, {})
        if fault.get("status"):
            self.send_empty(fault["status"])
            return
        if fault.get("page"):
            body = b"<!doctype html><title>Sign in</title><p>Please sign in to continue.</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if send_body else b"")
            return
        if fault.get("refuse_range") and self.headers.get("Range"):
            self.send_empty(416, {"Content-Range": "bytes */0"})
            return
        if fault.get("replaced") is not None:
            at = fault["replaced"]
            self.server.faults[path] = {}  # later requests: the file as it is now
            fault = {"corrupt_at": at, "drop_after": at + (1 << 20), "old_etag": True}
        self.fault = fault
        super().serve(send_body)

    def etag(self, stat):
        return '"old-version"' if getattr(self, "fault", {}).get("old_etag") else super().etag(stat)

    def copy(self, file, start, length):
        fault = getattr(self, "fault", {})
        if not fault:
            return super().copy(file, start, length)
        file.seek(start)
        at, end = start, start + length
        try:
            while at < end:
                drop = fault.get("drop_after")
                if drop is not None and at >= drop and fault.get("times", 1) > 0:
                    fault["times"] = fault.get("times", 1) - 1
                    self.wfile.flush()
                    time.sleep(0.5)  # let the browser take in the bytes sent, so there is something to resume from
                    self.connection.shutdown(2)  # the browser sees the body end early
                    self.close_connection = True
                    return
                stall = fault.get("stall_after")
                if stall is not None and at >= stall:
                    self.server.release.wait(120)
                    self.close_connection = True
                    return
                limit = min(end, at + PIECE)
                for edge in (drop, stall):
                    if edge is not None and at < edge < limit:
                        limit = edge
                data = bytearray(file.read(limit - at))
                corrupt = fault.get("corrupt_at")
                if corrupt is not None and at <= corrupt < at + len(data):
                    data[corrupt - at] ^= 0xFF
                self.wfile.write(data)
                at += len(data)
                if fault.get("slow"):
                    time.sleep(fault["slow"])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class FaultServer(serve.SiteServer):
    def __init__(self, *args, **kwargs):
        self.faults = {}
        self.log = []
        self.csp_reports = []
        self.csp_provoked = set()  # blocked URIs a test asks for on purpose whose reports may come at any time
        self.release = threading.Event()
        super().__init__(*args, **kwargs)
        self.RequestHandlerClass = FaultHandler

    def reset(self):
        self.faults.clear()
        self.log.clear()
        self.release.set()  # let any stalled answer end
        self.release = threading.Event()


def make_fault_server(site, models, host="127.0.0.1", port=0, **kwargs):
    return FaultServer((host, port), site, models, **kwargs)
