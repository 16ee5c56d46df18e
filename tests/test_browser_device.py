"""Device capability, tiers, and surviving device loss and out-of-memory, with faults injected
into the real worker in headless Chromium."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline.bundle import to_uint8
from conftest import BOOT_TIMEOUT_MS, CHROMIUM_ARGS, RUN_TIMEOUT_MS, expect_ready, run, tiny_by_default
from test_browser import PIXEL_TOLERANCE, PROMPT, counter, fill, generate_and_download, press_and_wait, record, recorded, wait_counter

pytestmark = pytest.mark.browser

# Chrome's own path for an allocation the GPU cannot back: a GPUOutOfMemoryError delivered as
# an uncapturederror event on the device. Here it fires for any new buffer over 200 kB, which the
# tiny model needs at 128x128 but not at 64x64.
INJECT_OOM = """(() => {
    const create = GPUDevice.prototype.createBuffer;
    GPUDevice.prototype.createBuffer = function (descriptor) {
        const buffer = create.call(this, descriptor);
        if (descriptor.size > 200000) {
            this.dispatchEvent(new GPUUncapturedErrorEvent('uncapturederror',
                {error: new GPUOutOfMemoryError('injected allocation failure')}));
        }
        return buffer;
    };
})()"""
# Loses the worker's GPU device at an exact point of a run: right when the worker reports a given
# progress stage (and step) to the page, before its next GPU work. No timing is involved.
LOSE_DEVICE_AT = """([stage, step]) => {
    const post = self.postMessage;
    self.postMessage = function (message, transfer) {
        if (message?.type === 'progress' && message.stage === stage && (step === null || message.step === step)) {
            self.postMessage = post;
            ort.env.webgpu.device.destroy();
        }
        return post.call(this, message, transfer);
    };
}"""
# The same, with an out-of-memory error from the device instead (as a driver reports one it cannot back):
# allocations alone may not fail a run whose buffers onnxruntime already holds from the run before.
OOM_AT = LOSE_DEVICE_AT.replace("ort.env.webgpu.device.destroy();", """ort.env.webgpu.device.dispatchEvent(
                new GPUUncapturedErrorEvent('uncapturederror', {error: new GPUOutOfMemoryError('injected')}));""")
# Live GPU buffers (count and bytes) as seen from the worker: createBuffer/destroy are wrapped.
TRACK_BUFFERS = """(() => {
    const live = new Map();
    self.gpuBuffers = () => ({count: live.size, bytes: [...live.values()].reduce((a, b) => a + b, 0)});
    const create = GPUDevice.prototype.createBuffer, destroy = GPUBuffer.prototype.destroy;
    GPUDevice.prototype.createBuffer = function (d) { const b = create.call(this, d); live.set(b, d.size); return b; };
    GPUBuffer.prototype.destroy = function () { live.delete(this); return destroy.call(this); };
})()"""


def test_device_panel_shows_capabilities_and_measured_tier(app):
    app.get_by_text("Device details", exact=True).click()
    panel = app.locator("#device")
    expect(panel).to_contain_text("WebGPU")
    expect(panel).to_contain_text("Software adapter")  # SwiftShader is a fallback adapter
    expect(panel.locator("dd").nth(3)).to_have_text("no")  # no shader-f16 on SwiftShader
    tier = app.locator("#tier")
    expect(tier).to_contain_text("Device tier: ", timeout=RUN_TIMEOUT_MS)
    expect(tier).to_contain_text(" ms (runs: ", timeout=RUN_TIMEOUT_MS)
    print(tier.text_content())
    stored = json.loads(app.evaluate("localStorage.getItem('lantern.bench')"))
    assert stored["result"]["tier"] in ("fast", "medium", "slow") and stored["result"]["step_ms"] > 0
    measured = counter(app, "measured", "#tier")
    app.get_by_role("button", name="Re-run benchmark").click()
    wait_counter(app, "measured", measured + 1, "#tier")
    expect(tier).to_contain_text(" ms (runs: ")
    app.get_by_text("Device details", exact=True).click()


def test_device_lost_mid_run_recovers_and_finishes_identically_10_of_10(app):
    fill(app, seed="21", steps="4")
    _, undisturbed = generate_and_download(app)
    recovered = 0
    for i in range(10):
        k = 1 + i % 3
        app.workers[-1].evaluate(LOSE_DEVICE_AT, ["denoise", k])  # the worker that will run this request
        record(app, "status")
        press_and_wait(app)
        stages = recorded(app, "status")
        assert any("device lost" in s for s in stages), stages
        with app.expect_download() as info:
            app.get_by_role("button", name="Download").click()
        assert open(info.value.path(), "rb").read() == undisturbed, f"injection {i + 1} at step {k}"
        recovered += 1
    print(f"device loss: recovered {recovered} of 10, every image identical to the undisturbed run")


def test_recovery_that_keeps_failing_stops_with_a_retry_button(app):
    fill(app, seed="22", steps="2")
    record(app, "status")
    # The loss, then two failed recoveries: the running worker and the next two replacements lose
    # their device as they start encoding the prompt. A replacement gets the fault with its script
    # (prepended to worker.mjs as served), so it is in place before that worker runs anything.
    app.workers[-1].evaluate(LOSE_DEVICE_AT, ["encode prompt", None])
    faulty = [2]

    def serve_worker(route):
        if not faulty[0]:
            route.fallback()  # later workers (after the stop, for Retry) start clean
            return
        faulty[0] -= 1
        response = route.fetch()
        route.fulfill(response=response, body=f"({LOSE_DEVICE_AT})(['encode prompt', null]);\n{response.text()}")

    app.route("**/worker.mjs", serve_worker)
    try:
        press_and_wait(app, ending="Stopped.")
        assert faulty == [0] and sum("device lost" in s for s in recorded(app, "status")) == 2, recorded(app, "status")
        expect(app.get_by_role("alert")).to_contain_text("The GPU keeps failing")
        press_and_wait(app, "Retry")
        expect(app.get_by_role("button", name="Retry")).to_be_hidden()
    finally:  # only once no worker script is on its way (the Retry ran on a worker started after the stop)
        app.unroute("**/worker.mjs", serve_worker)


def download_png(page):
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    return open(info.value.path(), "rb").read()


def test_out_of_memory_retries_with_tiles_then_one_part_at_a_time_then_a_smaller_size(app, cpu_pipeline):
    """Each out-of-memory offers the next way to use less memory for the same picture: the VAE decoded in
    tiles (the image then matches CPython's tiled decode, not the whole one), then the parts loaded one at
    a time as well, then a smaller size. The Memory choice stays where the retry put it."""
    fill(app, seed="23", steps="1", resolution="96x64")
    app.get_by_label("Memory use").select_option("")
    steps = [("Retry, decoding in tiles", "tiles"),
             ("Retry, loading one part at a time and decoding in tiles", "parts+tiles"),
             ("Retry at 64x64, 1 step", "parts+tiles")]
    try:
        for label, memory in steps:
            generator = [w for w in app.workers if w.url.endswith("/worker.mjs")][-1]  # not a hashing thread
            generator.evaluate(OOM_AT, ["denoise", None])  # the worker that will run this request
            press_and_wait(app, ending="Stopped.")
            expect(app.get_by_role("alert")).to_contain_text("The GPU ran out of memory")
            press_and_wait(app, label)
            expect(app.get_by_label("Memory use")).to_have_value(memory)
            if memory == "tiles":
                image = Image.open(io.BytesIO(download_png(app)))
                assert image.size == (64, 96)
                tiled = to_uint8(run(cpu_pipeline.generate(PROMPT, 23, 1, 96, 64, decode_tile=32))).astype(int)
                whole = to_uint8(run(cpu_pipeline.generate(PROMPT, 23, 1, 96, 64))).astype(int)
                got = np.asarray(image.convert("RGB")).astype(int)
                assert np.abs(got - tiled).max() <= PIXEL_TOLERANCE < np.abs(got - whole).max()
        expect(app.get_by_label("Resolution")).to_have_value("64x64")
        assert Image.open(io.BytesIO(download_png(app))).size == (64, 64)
    finally:
        app.get_by_label("Memory use").select_option("")


def test_switching_models_leaves_no_growth_in_gpu_buffers(browser, server):
    """A second manifest entry (the same bundle under another id) forces a full unload/load on
    every switch; live GPU buffers are counted by wrapping createBuffer/destroy in the worker."""
    context = browser.new_context(service_workers="block")  # the route below must see the manifest request

    def manifest(route):
        body = json.loads(route.fetch().text())
        base = next(m for m in body["models"] if m["id"] == "tiny-sdxl-turbo")
        copy = dict(base, id="tiny-copy", name="Tiny copy", bench=False)
        route.fulfill(json=dict(body, models=body["models"] + [copy]))

    context.route("**/models_manifest.json", manifest)
    page = context.new_page()
    with page.expect_worker() as worker_info:
        page.goto(server)
    worker_info.value.evaluate(TRACK_BUFFERS)  # before the worker creates its first session
    expect_ready(page, "webgpu")
    page.locator("#model-tiny-copy").get_by_role("button", name="Install", exact=True).click()
    page.wait_for_function("document.getElementById('model-tiny-copy')?.dataset.state === 'installed'",
                           timeout=BOOT_TIMEOUT_MS)
    held = []
    for model in ["tiny-sdxl-turbo", "tiny-copy", "tiny-sdxl-turbo", "tiny-copy", "tiny-sdxl-turbo"]:
        page.get_by_label("Model", exact=True).select_option(model)
        fill(page, seed="1", steps="1")
        generate_and_download(page)
        held.append(page.workers[-1].evaluate("gpuBuffers()"))
    print("live GPU buffers after each model:", held)
    assert held[3]["bytes"] <= held[1]["bytes"] and held[4]["bytes"] <= held[2]["bytes"]
    assert held[3]["count"] <= held[1]["count"] and held[4]["count"] <= held[2]["count"]
    context.close()


def test_without_webgpu_the_page_explains_and_generates_on_wasm(browser_type, server, cpu_pipeline):
    browser = browser_type.launch(executable_path="/usr/bin/chromium",
                                  args=[a for a in CHROMIUM_ARGS if a != "--enable-unsafe-webgpu"])
    page = browser.new_page(accept_downloads=True)
    page.goto(server)
    expect_ready(page, "wasm")
    expect(page.get_by_role("note")).to_contain_text("Images are made on the CPU instead")
    fill(page, seed="31", steps="2")
    _, png = generate_and_download(page)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    expected = to_uint8(run(cpu_pipeline.generate("a lighthouse at dusk, oil painting", 31, 2, 64, 64))).astype(int)
    assert np.abs(img - expected).max() <= PIXEL_TOLERANCE
    wait_counter(page, "measured", 1, "#tier")  # the first-visit bench ran on wasm too (it used to fail on
    expect(page.locator("#tier")).to_contain_text("Device tier: ")  # the missing adapter, with a traceback)
    assert page.locator(".py-error").count() == 0
    browser.close()


def test_a_first_visit_in_two_tabs_measures_one_at_a_time_and_installs_the_bench_model_once(browser, server,
                                                                                             fault_server):
    fault_server.log.clear()
    context = tiny_by_default(browser.new_context(service_workers="block"))
    try:
        tabs = [context.new_page() for _ in range(2)]
        for tab in tabs:
            tab.goto(server)
        for tab in tabs:
            wait_counter(tab, "measured", 1, "#tier", timeout=BOOT_TIMEOUT_MS + RUN_TIMEOUT_MS)
            tier = tab.locator("#tier").text_content()
            assert tier.startswith("Device tier: ") and "not measured" not in tier, tier
        unet = [rng for path, rng in fault_server.log if path == "/models/tiny-sdxl-turbo/unet/model.onnx"]
        assert unet == [None]  # one tab installed it; the other waited for it
    finally:
        context.close()


def test_onnxruntime_web_runs_its_jspi_build_where_the_browser_has_jspi_and_asyncify_elsewhere(app, browser, server):
    """The JSPI build streams a model's weights to the GPU; a browser without JSPI (hidden here) gets the
    asyncify build, and the device bench (sessions created, UNet steps run) still works on it."""
    assert "streamed to the GPU (JSPI)" in app.locator("#capabilities").text_content()
    assert any(u.endswith("/ort-wasm-simd-threaded.jspi.wasm") for u in app.requests)
    context = tiny_by_default(browser.new_context(service_workers="block"))

    def without_jspi(route):
        response = route.fetch()
        route.fulfill(response=response, body="delete WebAssembly.Suspending;\n" + response.text())

    context.route("**/worker.mjs", without_jspi)
    wasm = []
    try:
        page = context.new_page()
        page.on("request", lambda r: wasm.append(r.url.rpartition("/")[2]) if r.url.endswith(".wasm") else None)
        page.goto(server)
        wait_counter(page, "measured", 1, "#tier", timeout=BOOT_TIMEOUT_MS + RUN_TIMEOUT_MS)
        assert "not measured" not in page.locator("#tier").text_content()
        assert "read whole first (this browser lacks JSPI)" in page.locator("#capabilities").text_content()
        assert "ort-wasm-simd-threaded.asyncify.wasm" in wasm and "ort-wasm-simd-threaded.jspi.wasm" not in wasm
    finally:
        context.close()


def test_one_part_at_a_time_gives_the_same_png_bytes_as_the_normal_mode(app):
    """Low-memory mode creates, runs and releases each part in turn; the picture does not change."""
    fill(app, seed="31", steps="2")
    try:
        app.get_by_label("Memory use").select_option("")
        _, normal = generate_and_download(app)
        app.get_by_label("Memory use").select_option("parts")
        _, low = generate_and_download(app)
    finally:
        app.get_by_label("Memory use").select_option("")
    assert low == normal
    log = app.workers[-1].evaluate("lanternModels")
    assert log[-2:] == ["release tiny-sdxl-turbo", "load tiny-sdxl-turbo"]  # reloaded in the other mode
