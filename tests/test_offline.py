"""The service worker (static/sw.js, registered by static/offline.py): a second visit needs no
network, a new build replaces the cache, and a host without isolation headers still ends up
cross-origin isolated. Each test has its own server and browser context (service workers allowed)."""

import json
import re
import shutil
import socket
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path

import pytest
from playwright.sync_api import expect

from conftest import BOOT_TIMEOUT_MS, ROOT, RUN_TIMEOUT_MS, SITE, tiny_by_default
from test_browser import counter, fill, wait_counter

sys.path.insert(0, str(ROOT))
import build  # noqa: E402
import serve  # noqa: E402

pytestmark = pytest.mark.browser

# The browser checks sw.js for a new build on every navigation; that is the one request a
# revisit may make, and failing it offline is harmless.
UPDATE_CHECK = "/sw.js"


class Recorder(serve.SiteHandler):
    """serve.py's handler, noting each request path and each open connection on its server."""

    def setup(self):
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self):
        self.server.connections.discard(self.connection)
        super().finish()

    def serve(self, send_body):
        self.server.requests.append(self.path)
        if self.server.down:
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE)
        else:
            super().serve(send_body)


class LocalSite:
    """A site served in a thread: `url`, `requests` (paths received), `stop()`.

    `down=True` answers every request with 503 and only records it: the network is gone."""

    def __init__(self, site, port=0, app_headers=True, down=False):
        self.httpd = serve.make_server(site, ROOT / "models", "127.0.0.1", port, app_headers=app_headers)
        self.httpd.RequestHandlerClass = Recorder
        self.httpd.requests, self.httpd.connections, self.httpd.down = [], set(), down
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url, self.port, self.requests = self.httpd.url, self.httpd.server_address[1], self.httpd.requests

    def stop(self):
        """Stop listening and cut the browser's kept-alive connections, which would still be served."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in list(self.httpd.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of build/site, so that a rebuild while the tests run changes nothing under them."""
    return Path(shutil.copytree(SITE, tmp_path_factory.mktemp("offline") / "site"))


@pytest.fixture
def sites():
    """Start servers with `sites(...)` (LocalSite's arguments); all are stopped afterwards."""
    started = []

    def start(*args, **kwargs):
        started.append(LocalSite(*args, **kwargs))
        return started[-1]

    yield start
    for site in started:
        site.stop()


def precache_of(site: Path) -> dict:
    """The version and files a built site's sw.js precaches."""
    text = (site / build.SERVICE_WORKER).read_text()
    return json.loads(re.search(r"^const BUILD = (.*);$", text, re.M).group(1))


def wait_ready(page):
    expect(page.get_by_role("status")).to_contain_text("Ready", timeout=BOOT_TIMEOUT_MS)


def wait_controlled(page):
    """Until an activated service worker controls the page."""
    page.wait_for_function("navigator.serviceWorker.controller?.state === 'activated'", timeout=BOOT_TIMEOUT_MS)


def rebuilt(site: Path, tmp_path: Path) -> Path:
    """A copy of the site as the next build: its index.html holds <meta name="build-check">."""
    new_site = tmp_path / "site"
    shutil.copytree(site, new_site)
    index = new_site / "index.html"
    index.write_text(index.read_text().replace("<head>", '<head>\n  <meta name="build-check" content="new">'))
    files = {p.relative_to(new_site).as_posix(): p.read_bytes() for p in new_site.rglob("*") if p.is_file()}
    (new_site / "sw.js").write_bytes(build.service_worker(files, (ROOT / "static" / "sw.js").read_bytes()))
    return new_site


CACHES = """async () => {
  const out = {};
  for (const name of await caches.keys()) {
    out[name] = (await (await caches.open(name)).keys()).map((r) => new URL(r.url).pathname.slice(1)).sort();
  }
  return out;
}"""


def test_second_visit_boots_with_the_server_gone(browser, sites, built):
    site = sites(built)
    build_ = precache_of(built)
    assert "index.html" in build_["files"] and "vendor/pyodide/pyodide.asm.wasm" in build_["files"]
    context = tiny_by_default(browser.new_context())
    page = context.new_page()
    page.goto(site.url)
    wait_ready(page)
    wait_controlled(page)
    assert page.evaluate(CACHES) == {f"lantern-{build_['version']}": sorted(build_["files"])}
    # the first visit measures the device with the small bench model, which it installs into OPFS
    expect(page.locator("#tier")).to_contain_text(" ms (runs: ", timeout=RUN_TIMEOUT_MS)
    # ... and a visitor removes and installs it again through the Models panel
    row = page.locator("#model-tiny-sdxl-turbo")
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Delete model", exact=True).click()
    expect(row).to_have_attribute("data-state", "not-installed", timeout=RUN_TIMEOUT_MS)
    row.get_by_role("button", name="Install", exact=True).click()
    expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)

    site.stop()
    gone = sites(built, port=site.port, down=True)
    page.reload()
    wait_ready(page)
    wait_controlled(page)
    assert set(gone.requests) <= {UPDATE_CHECK}, gone.requests
    assert page.workers and page.workers[0].evaluate("self.crossOriginIsolated")
    # still installed, and it generates with no network at all
    expect(row).to_have_attribute("data-state", "installed", timeout=BOOT_TIMEOUT_MS)
    page.get_by_label("Prompt", exact=True).fill("a lantern in the fog")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#result")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    assert set(gone.requests) <= {UPDATE_CHECK}, gone.requests
    context.close()


def first_visit(browser, sites, built):
    """A first visit to a served copy of `built`, until a service worker controls it and the visit is done
    (boot, first-visit bench): no request of the page's own (still uncontrolled) worker may then reach a
    server that replaces this one on the same port. Returns (site, context, page)."""
    site = sites(built)
    context = tiny_by_default(browser.new_context())
    page = context.new_page()
    page.goto(site.url)
    wait_controlled(page)
    wait_ready(page)
    wait_counter(page, "measured", 1, "#tier")
    return site, context, page


def test_a_new_build_replaces_the_cache(browser, sites, built, tmp_path):
    old = precache_of(built)
    first, context, page = first_visit(browser, sites, built)
    new_site = rebuilt(built, tmp_path)
    new = precache_of(new_site)
    assert new["version"] != old["version"]

    first.stop()
    second = sites(new_site, port=first.port)
    page.reload()  # served by the old worker; the new one installs, takes over and the page reloads itself
    expect(page.locator('meta[name="build-check"]')).to_have_count(1, timeout=BOOT_TIMEOUT_MS)
    page.wait_for_function(f"async () => (await caches.keys()).join() === 'lantern-{new['version']}'",
                           timeout=BOOT_TIMEOUT_MS)
    assert page.evaluate(CACHES) == {f"lantern-{new['version']}": sorted(new["files"])}
    # unchanged files were copied from the old cache: only sw.js and the changed index.html were fetched
    assert set(p for p in second.requests if not p.startswith("/models/")) <= {UPDATE_CHECK, "/index.html"}
    wait_ready(page)
    context.close()


def test_a_new_build_never_interrupts_a_page_in_use(browser, sites, built, tmp_path):
    """A run under way when a new build takes over ends on the page that started it; the page then offers
    the new version instead of reloading under the visitor's results."""
    first, context, page = first_visit(browser, sites, built)
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    fill(page, steps="4")
    page.get_by_label("Images").fill("3")
    finished = counter(page, "finished")
    page.get_by_role("button", name="Generate").click()
    wait_counter(page, "steps", counter(page, "steps") + 1)

    new_site = rebuilt(built, tmp_path)
    first.stop()
    sites(new_site, port=first.port)
    page.evaluate("navigator.serviceWorker.getRegistration().then((r) => r.update())")
    expect(page.get_by_role("button", name="Reload now")).to_be_visible(timeout=BOOT_TIMEOUT_MS)
    wait_counter(page, "finished", finished + 1)
    expect(page.get_by_role("status").filter(has_text="Done.")).to_have_count(1)
    expect(page.locator("#grid img")).to_have_count(3)
    assert page.evaluate("window.loadedOnce") is True
    page.get_by_role("button", name="Reload now").click()
    expect(page.locator('meta[name="build-check"]')).to_have_count(1, timeout=BOOT_TIMEOUT_MS)
    wait_ready(page)
    context.close()


def test_isolated_and_under_the_csp_on_a_host_that_sends_no_headers(browser, sites, built):
    site = sites(built, app_headers=False)
    context = tiny_by_default(browser.new_context())
    page = context.new_page()
    page.goto(site.url)
    # offline.py reloads once when the worker takes control; the reloaded page is isolated
    page.wait_for_function("window.crossOriginIsolated === true", timeout=BOOT_TIMEOUT_MS)
    wait_ready(page)
    assert page.evaluate("sessionStorage.getItem('lantern.isolation-reload')") is None
    assert page.workers and page.workers[0].evaluate("self.crossOriginIsolated")
    # ... and under the build's CSP, which only the service worker sent
    page.evaluate("""() => { window.refused = [];
        document.addEventListener('securitypolicyviolation', e => refused.push(e.effectiveDirective)); }""")
    assert page.evaluate("fetch('https://example.org/').then(() => 'fetched', e => e.name)") == "TypeError"
    page.wait_for_function("window.refused.length > 0")
    assert page.evaluate("window.refused") == ["connect-src"]
    context.close()


def test_bytes_that_are_not_the_builds_are_never_kept(browser, sites, built, tmp_path):
    """A file served wrong once (a host's error page, a proxy's truncated copy) is not kept by the service
    worker: its install fails, and the next visit keeps the build's own bytes."""
    site_dir = Path(shutil.copytree(built, tmp_path / "site"))
    good = (site_dir / "gallery.css").read_bytes()
    (site_dir / "gallery.css").write_bytes(b"/* not this build's file */")
    site = sites(site_dir)
    context = tiny_by_default(browser.new_context())
    page = context.new_page()
    page.goto(site.url)
    wait_ready(page)
    # the page's own <link> and the worker's precache both have asked for it
    deadline = time.monotonic() + BOOT_TIMEOUT_MS / 1000
    while site.requests.count("/gallery.css") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert site.requests.count("/gallery.css") >= 2, site.requests
    (site_dir / "gallery.css").write_bytes(good)
    page.reload()
    wait_ready(page)
    wait_controlled(page)
    kept = page.evaluate("""async () => {
        for (const name of await caches.keys()) {
            const copy = await (await caches.open(name)).match(new URL('gallery.css', location.href).href);
            if (copy) return await copy.text();
        }
        return null;
    }""")
    assert kept == good.decode()
    context.close()
