"""Shared fixtures: the tiny model bundle and its references, one served app, one warmed browser page."""

import asyncio
import concurrent.futures
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "models" / "tiny-sdxl-turbo"
REFERENCE = BUNDLE / "reference"
SITE = ROOT / "build" / "site"

# Headless Chromium with WebGPU on SwiftShader, quiet on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu-sandbox", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader", "--use-angle=swiftshader",
]
BOOT_TIMEOUT_MS = 120_000
RUN_TIMEOUT_MS = 180_000
# Every other wait (a worker's answer, a panel update) gets this long, not Playwright's 5 s: on a
# loaded 2-core machine the worker may be busy for seconds. A limit only decides when a failing test
# gives up; a passing one never waits for it.
WAIT_TIMEOUT_MS = 60_000
expect.set_options(timeout=WAIT_TIMEOUT_MS)


# Float outputs are compared with a tolerance relative to their scale (max |expected|). Between CPUs
# (Intel, AMD) and onnxruntime builds the pipeline's outputs differ by ~1e-6 of their scale (seen: 3.8e-5
# on latents of scale 40); a wiring mistake (wrong hidden state, padding token, timestep, scaling factor)
# moves them by 1e-3 of it or more. 1e-4 sits between the two, and on images in [0, 1] it is the
# project's fidelity standard. Bit-exact comparisons are kept only where exactness is the promise
# (the same computation twice on one machine: same seed, resume from a checkpoint).
FIDELITY = 1e-4


def assert_close(actual, expected, rel=FIDELITY, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max()) or 1.0
    diff = float(np.abs(actual.astype(np.float64) - expected).max())
    assert diff <= rel * scale, f"{what}: max |diff| {diff:.2e} > {rel:g} x scale {scale:.3g}"


def run(coro):
    """Run a coroutine to the end, also from tests where Playwright's own event loop is running."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def manifest_entry():
    """The tiny model's entry merged with its variant, as the worker sees it (with "files")."""
    from app.worker.device import pick_variant

    return pick_variant(json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo.json").read_text()), {})


@pytest.fixture(scope="session")
def cases():
    return json.loads((REFERENCE / "cases.json").read_text())


@pytest.fixture(scope="session")
def reference():
    with np.load(REFERENCE / "reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="session")
def cpu_pipeline(manifest_entry):
    """The same pipeline code on CPython + onnxruntime (the parity baseline)."""
    from app.pipeline.turbo import SDXLTurbo
    from app.runtime.ort import OrtRuntime

    return run(SDXLTurbo.load(OrtRuntime(BUNDLE), manifest_entry))


ENCODER_DOWNLOAD = ROOT / "models" / "tiny-sdxl-turbo-vae-encoder" / "onnx" / "vae_encoder_model.onnx"


@pytest.fixture(scope="session")
def encoder_bundle(tmp_path_factory):
    """The tiny image-to-image add-on as an install leaves it: the encoder cut to its mean."""
    from app.onnx.mean import mean_output
    from app.pipeline.bundle import ENCODER_PATH

    folder = tmp_path_factory.mktemp("encoder")
    (folder / ENCODER_PATH).parent.mkdir(parents=True)
    cut, changed = mean_output(ENCODER_DOWNLOAD.read_bytes())
    assert changed
    (folder / ENCODER_PATH).write_bytes(cut)
    return folder


# --- browser side -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": "/usr/bin/chromium", "args": CHROMIUM_ARGS}


UNCAUGHT = []  # errors no code of the site caught, from any page or worker of a context the suite opened


@pytest.fixture(scope="session")
def browser(browser):
    """The session's browser; every context it opens reports its pages' and workers' uncaught errors."""
    new_context = browser.new_context

    def watched_context(*args, **kwargs):
        context = new_context(*args, **kwargs)
        context.on("page", lambda page: page.on("pageerror", lambda e: UNCAUGHT.append(f"{page.url}: {e.stack or e}")))
        return context

    browser.new_context = watched_context
    return browser


@pytest.fixture(autouse=True)
def no_uncaught_errors():
    """No test may leave an uncaught error (a traceback of the worker's, an unhandled rejection) in a page or
    worker; it fails the test during which it was reported."""
    UNCAUGHT.clear()
    yield
    found, UNCAUGHT[:] = list(UNCAUGHT), []
    assert not found, f"uncaught errors: {found}"


@pytest.fixture(scope="session")
def fault_server():
    """The app's server, able to inject download faults (tests/fault_server.py); off unless a test sets them."""
    from fault_server import make_fault_server

    if not (SITE / "index.html").exists():
        pytest.fail("build/site is missing: run `python build.py` (tests/run.sh does)")
    httpd = make_fault_server(SITE, ROOT / "models")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.reset()
    httpd.shutdown()


@pytest.fixture(scope="session")
def server(fault_server):
    return f"http://127.0.0.1:{fault_server.server_address[1]}/"


@pytest.fixture(autouse=True)
def no_tracebacks_on_the_page(request):
    """No test that drives the shared page may leave an uncaught Python error painted on it (PyScript shows
    those as .py-error boxes); they are removed once read, so one does not fail every later test."""
    if "app" not in request.fixturenames:
        yield
        return
    page = request.getfixturevalue("app")
    yield
    shown = page.evaluate("""() => Array.from(document.querySelectorAll('.py-error'), (e) => {
        const text = e.textContent; e.remove(); return text; })""")
    assert not shown, f"tracebacks on the page: {shown}"


@pytest.fixture(autouse=True)
def no_csp_violations(request):
    """Every test that talks to the served app fails on any Content-Security-Policy violation its pages or
    workers report (the fault server's CSP asks for reports). Reports are sent a little after the fact: one
    that arrives late fails the next browser test, never passes unseen."""
    if "fault_server" not in request.fixturenames:
        yield
        return
    reports = request.getfixturevalue("fault_server").csp_reports
    yield
    found, reports[:] = list(reports), []
    assert not found, f"CSP violations: {found}"


def expect_ready(page, backend):
    """The page booted and says it is ready, on `backend` ("webgpu" or "wasm")."""
    expect(page.get_by_role("status")).to_have_text("Ready.", timeout=BOOT_TIMEOUT_MS)
    expect(page.get_by_role("status")).to_have_attribute("data-backend", backend)


def tiny_by_default(context):
    """Pages of `context` start on the tiny test model, as if the visitor had chosen it on an earlier visit
    (a fresh visit starts on the first listed model this device can run: SDXL-Turbo, which the tests
    cannot download)."""
    context.add_init_script("location.protocol.startsWith('http') && (localStorage.getItem('lantern.model') || "
                            "localStorage.setItem('lantern.model', 'tiny-sdxl-turbo'))")  # about:blank has none
    return context


@pytest.fixture(scope="session")
def app(browser, server):
    """One page, booted once and shared: Pyodide boot and model load happen a single time.

    Every request is recorded; anything not addressed to the local server is aborted.
    """
    # service workers blocked: routing misses what sw.js serves
    context = tiny_by_default(browser.new_context(accept_downloads=True, service_workers="block"))
    requests = []

    def route(r):
        requests.append(r.request.url)
        if r.request.url.startswith(server) or r.request.url.startswith(("blob:", "data:")):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.console_messages = []
    page.on("console", lambda m: page.console_messages.append(m.text))
    page.goto(server)
    page.get_by_role("status").filter(has_text="Ready").wait_for(timeout=BOOT_TIMEOUT_MS)
    page.boot_status = page.get_by_role("status").text_content()
    page.requests = requests
    page.server = server
    yield page
    context.close()
