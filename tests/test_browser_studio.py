"""The studio as a visitor meets it: first run, start-up, progress, prompt tools, states that stay true,
a layout that holds on a phone, no traceback anywhere, and an accessibility audit (axe-core, vendored
for the tests only and checked against its pinned hash before it is injected)."""

import hashlib
import io
import json
import re
import time

import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import expect

from conftest import ROOT, RUN_TIMEOUT_MS, expect_ready, tiny_by_default
from test_browser import counter, fill, press_and_wait, record, recorded, wait_counter
from test_browser_gallery import DROP
from test_browser_generation import set_options

pytestmark = pytest.mark.browser

AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"
AXE_SHA256 = "b511cd9dec01c76f4b2ad1723b66b6db37d4c2eb4ed199076e1829d9ee7b75e3"  # axe-core 4.10.2, its npm tarball
UNET = "/models/tiny-sdxl-turbo/unet/model.onnx"
TRACEBACK = re.compile(r"Traceback|PythonError|Error:.*line \d+")


def no_traceback(page):
    body = page.locator("body").inner_text()
    assert not TRACEBACK.search(body), body[-2000:]
    assert page.locator(".py-error").count() == 0


def caption_seconds(page):
    return float(re.search(r"made in ([\d.]+) s", page.locator("#caption").text_content()).group(1))


# --- first run and start-up ------------------------------------------------------------------------

def test_start_up_and_the_first_visit_bench_keep_what_was_typed_and_the_bench_shows_itself(browser, server,
                                                                                          fault_server):
    """Typed while the generator starts, kept through start-up and the bench's presets (steps used to be reset
    twice); a Generate pressed during the bench says what it waits for (it sat at "Queued: 1 ahead" for 34 s
    while the queue said "Running"); the caption counts the wait."""
    fault_server.faults[UNET] = {"stall_after": 1 << 20}  # the bench installs its model: held half-way
    context = tiny_by_default(browser.new_context(service_workers="block"))
    try:
        page = context.new_page()
        page.goto(server)
        fill(page, prompt="typed during start-up", seed="31337", steps="3", resolution=None)
        expect_ready(page, "webgpu")
        expect(page.locator("#welcome-device")).to_contain_text("WebGPU on a software GPU (slow), without 16-bit shaders")
        page.get_by_role("button", name="Generate").click()
        clicked = time.monotonic()
        queue = page.get_by_role("list", name="Queue").get_by_role("listitem")
        expect(queue.nth(0)).to_have_text("Measuring this device (once; it sets the defaults)…")
        expect(queue.nth(1)).to_contain_text("Queued: typed during start-up (seed 31337)")
        expect(page.get_by_role("status")).to_have_text("Waiting: Measuring this device (once; it sets the defaults)…")
        expect(page.locator("#tier")).to_contain_text("measuring this device")
        time.sleep(2)  # a wait the visitor sees, which the caption must count
        fault_server.reset()  # the download goes on (resumed), the bench and then the run finish
        waited = time.monotonic() - clicked
        wait_counter(page, "finished", 1, timeout=RUN_TIMEOUT_MS * 2)
        expect(page.get_by_role("status")).to_have_text("Done.")
        assert counter(page, "measured", "#tier") == 1  # the presets have come, before the run
        for label, value in (("Prompt", "typed during start-up"), ("Seed", "31337"), ("Steps", "3")):
            expect(page.get_by_label(label, exact=True)).to_have_value(value)
        expect(page.locator("#caption")).to_contain_text("Seed 31337 · 3 steps")
        assert caption_seconds(page) >= waited - 0.5  # it used to count only the run: 6.5 s after 41 s
        expect(queue).to_have_count(0)
        expect(page.locator("#welcome-device")).to_contain_text("Speed tier: ")
    finally:
        fault_server.reset()
        context.close()


COPY = "tiny-copy"


def with_copy(route):
    """The model list with a second small model that is not installed (and is not the bench's)."""
    body = json.loads(route.fetch().text())
    base = next(m for m in body["models"] if m["id"] == "tiny-sdxl-turbo")
    route.fulfill(json=dict(body, models=body["models"] + [dict(base, id=COPY, name="Tiny copy", bench=False)]))


def test_first_run_offers_the_chosen_models_install_in_one_click_and_stale_messages_go(browser, server):
    context = browser.new_context(service_workers="block")
    context.add_init_script(f"location.protocol.startsWith('http') && localStorage.setItem('lantern.model', '{COPY}')")
    context.route("**/models_manifest.json", with_copy)
    try:
        page = context.new_page()
        page.goto(server)
        expect_ready(page, "webgpu")
        expect(page.locator("#stage-empty")).to_contain_text("Your pictures appear here")  # not a bare grey box
        expect(page.locator("#welcome-model")).to_contain_text("Tiny copy for this device: the fp32 variant, a 12.0 MB download")
        fill(page, seed="5", steps="1", resolution=None)
        press_and_wait(page, ending="Stopped.")
        expect(page.get_by_role("alert")).to_contain_text("Tiny copy is not installed.")
        page.get_by_role("button", name="Install Tiny copy").click()  # the stage's own one-click install
        expect(page.locator(f"#model-{COPY}")).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
        expect(page.get_by_role("alert")).to_be_hidden()  # "…is not installed" used to stay after the install
        expect(page.locator("#welcome-model")).to_contain_text("Tiny copy is ready.")
        expect(page.locator("#tokens")).to_have_text(re.compile(r"^\d of 75 tokens$"))  # its tokenizer came with it
        expect(page.get_by_role("button", name="Install Tiny copy")).to_be_hidden()
        press_and_wait(page)
        expect(page.locator("#stage-empty")).to_be_hidden()
    finally:
        context.close()


# --- progress, prompt tools, state -----------------------------------------------------------------

def test_progress_speaks_plainly_with_time_left_and_image_k_of_n(app):
    fill(app, seed="100", steps="3")
    set_options(app, images="2")
    record(app, "status")
    press_and_wait(app, runs=2)
    seen = recorded(app, "status")
    assert "Image 1 of 2 · Drawing: step 1 of 3 · about" in " ".join(seen), seen
    assert any(re.fullmatch(r"Image 2 of 2 · Drawing: step 2 of 3 · about (\d+ s|under a second) left", t)
               for t in seen), seen
    assert any(t == "Image 2 of 2 · Drawing: step 3 of 3" for t in seen), seen
    assert not any(re.search(r"\((tokenizer|text_encoder|unet|vae)", t) for t in seen), seen
    set_options(app)


def test_a_new_run_supersedes_the_last_caption_and_its_actions(app):
    fill(app, seed="101", steps="1")
    set_options(app, preview_every="1")
    press_and_wait(app)
    fill(app, seed="102", steps="3")
    record(app, "caption")
    steps = counter(app, "steps")
    app.get_by_role("button", name="Generate").click()
    wait_counter(app, "steps", steps + 1)
    press_and_wait(app, "Cancel", ending="Cancelled.")
    seen = recorded(app, "caption")
    assert seen[0] == "New image in progress: Seed 102 · 3 steps · 64x64", seen  # not the last one's caption
    expect(app.locator("#caption")).to_contain_text("Seed 101 · 1 step ·")  # Cancel: the last image, as it was
    expect(app.get_by_role("button", name="Download")).to_be_enabled()
    set_options(app)


def test_the_token_counter_follows_the_prompt_and_says_when_it_is_cut(app):
    prompt = app.get_by_label("Prompt", exact=True)
    prompt.fill("a lighthouse")
    expect(app.locator("#tokens")).to_have_text(re.compile(r"^\d of 75 tokens$"))
    expect(app.locator("#tokens-cut")).to_be_hidden()
    prompt.fill("lighthouse " * 100)
    expect(app.locator("#tokens")).to_have_text(re.compile(r"^\d{3} of 75 tokens$"))
    expect(app.locator("#tokens-cut")).to_contain_text("The model reads the first 75 tokens; the last")


def test_ctrl_enter_generates_and_history_can_be_cleared(app):
    fill(app, prompt="from the keyboard", seed="103", steps="1")
    finished = counter(app, "finished")
    app.get_by_label("Prompt", exact=True).press("Control+Enter")
    wait_counter(app, "finished", finished + 1)
    expect(app.locator("#caption")).to_contain_text("Seed 103 ")
    history = app.get_by_label("Recently used").locator("option")
    expect(history.nth(1)).to_have_text("from the keyboard")
    app.get_by_role("button", name="Clear history").click()
    expect(history).to_have_count(1)  # only the "Recently used…" placeholder
    assert app.evaluate("localStorage.getItem('lantern.history')") is None
    # A refusal answered while the visitor types in the prompt marks the field but leaves the typing where it is
    # (taking the focus once sent the test's next typing into the Steps box).
    fill(app, prompt="still typing", seed="103", steps="9")
    finished = counter(app, "finished")
    app.get_by_label("Prompt", exact=True).press("Control+Enter")
    wait_counter(app, "finished", finished + 1)
    expect(app.get_by_label("Steps", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(app.get_by_label("Prompt", exact=True)).to_be_focused()


def test_a_restored_message_never_stands_beside_a_refusal(app):
    out = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a harbour at night\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, "
                                "CFG scale: 7, Seed: 123, Size: 64x64, Model hash: abc, Model: somethingXL")
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    assert app.evaluate(DROP, [list(out.getvalue()), "a1111.png"])
    note = app.locator("#gallery-note")
    expect(note).to_have_text("Settings restored from the dropped Automatic1111 image. Not restored: its model "
                              "'somethingXL' (not available here).")
    for label, value in (("Prompt", "a harbour at night"), ("Seed", "123"), ("Steps", "3"), ("Resolution", "64x64")):
        expect(app.get_by_label(label, exact=True)).to_have_value(value)
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    assert app.evaluate(DROP, [list(plain.getvalue()), "photo.png"])
    expect(app.get_by_role("alert")).to_contain_text("no generation settings Lantern can read")
    expect(note).to_have_text("")  # "restored" used to stay beside the refusal


# --- layout and errors ------------------------------------------------------------------------------

# Whenever the queue changes: the page's width and the queue's height.
MEASURE = """() => { const queue = document.getElementById('queue'); window.__sizes = [];
    new MutationObserver(() => window.__sizes.push([document.documentElement.scrollWidth,
        queue.getBoundingClientRect().height])).observe(queue, {childList: true}); }"""


def test_a_phone_never_scrolls_sideways_even_with_a_10000_character_prompt(app):
    app.set_viewport_size({"width": 360, "height": 800})
    try:
        word = "x" * 1990  # one unbroken word, remembered in history (refused: too many steps)
        fill(app, prompt=word, steps="9")
        app.get_by_role("button", name="Generate").click()
        expect(app.get_by_label("Recently used").locator("option").nth(1)).to_have_attribute("value", word)
        app.evaluate(MEASURE)
        fill(app, prompt=word, seed="104", steps="1")
        press_and_wait(app)  # the sizes are taken as its queue entry comes and goes
        app.get_by_label("Prompt", exact=True).fill("y" * 10_000)
        app.get_by_label("Recently used").focus()
        sizes = app.evaluate("window.__sizes")
        widths = [w for w, _ in sizes] + [app.evaluate("document.documentElement.scrollWidth")]
        assert max(widths) <= 360, widths  # the history once made the page 54,791 px wide
        assert max(h for _, h in sizes) <= 60, sizes  # one line (the queue once printed the prompt whole)
        small = app.evaluate("""() => [...document.querySelectorAll('button, select, input:not([type=checkbox]), summary')]
            .filter((e) => e.offsetParent !== null && e.getBoundingClientRect().height < 40)
            .map((e) => `${e.id || e.textContent.trim()}: ${e.getBoundingClientRect().height} px`)""")
        assert not small, small  # every control is a 40 px touch target (they were about 20 px)
    finally:
        app.set_viewport_size({"width": 1280, "height": 720})
        app.get_by_label("Prompt", exact=True).fill("")


def test_a_tour_of_every_control_with_bad_input_never_shows_a_traceback(app):
    fill(app, seed="105", steps="1")
    press_and_wait(app)
    for field, value in (("Prompt", "   "), ("Seed", "abc"), ("Steps", "-1"), ("Images", "0"), ("Preview every", "9")):
        fill(app, seed="105", steps="1")
        set_options(app)
        app.get_by_label(field, exact=True).fill(value)
        app.get_by_role("button", name="Generate").click()
        expect(app.locator(".field-error:not([hidden])")).to_have_count(1)
        no_traceback(app)
        # The last image is still the one on show: its actions work (they used to raise KeyError: 15).
        with app.expect_download():
            app.get_by_role("button", name="Download").click()
    fill(app, seed="105", steps="1")
    measured = counter(app, "measured", "#tier")
    for name in ("Randomize", "Clear history", "Re-run benchmark"):
        app.get_by_role("button", name=name).click()
        no_traceback(app)
    wait_counter(app, "measured", measured + 1, "#tier")
    app.get_by_label("Search gallery").fill("<b>\u0000%s{}")
    app.get_by_label("Import model files").set_input_files(
        files=[{"name": "model.onnx", "mimeType": "application/octet-stream", "buffer": b"not a model"}])
    expect(app.locator("#models-notice")).to_have_text("model.onnx is not a file of any listed model (no file has its size).")
    assert app.evaluate(DROP, [list(b"GIF89a"), "x.png"])
    expect(app.get_by_role("alert")).to_contain_text("not a PNG")
    app.get_by_label("Search gallery").fill("")
    no_traceback(app)
    set_options(app)


# --- accessibility ------------------------------------------------------------------------------------

def audit(page, what):
    """axe-core's serious and critical findings on the page as it is now (the pointer parked in a corner,
    so that no hover state is half-way)."""
    page.mouse.move(0, 0)
    if not page.evaluate("typeof axe !== 'undefined'"):
        source = AXE.read_bytes()
        assert hashlib.sha256(source).hexdigest() == AXE_SHA256, "tests/vendor/axe-core/axe.min.js is not the pinned file"
        page.evaluate(source.decode())  # through the debugger protocol: the page's CSP is not relaxed
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
        .filter((v) => v.impact === 'serious' || v.impact === 'critical')
        .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')})`)""")
    return [f"{what}: {f}" for f in found]


def test_no_serious_or_critical_accessibility_findings_on_the_main_states(app):
    found = audit(app, "ready")
    fill(app, seed="106", steps="4")
    set_options(app, preview_every="1")
    steps = counter(app, "steps")
    app.get_by_role("button", name="Generate").click()
    wait_counter(app, "steps", steps + 1)
    found += audit(app, "running")
    wait_counter(app, "finished", counter(app, "finished") + 1)
    found += audit(app, "result")
    app.locator("#gallery-list > li").first.get_by_role("button", name="Open").click()
    expect(app.locator("#gallery-viewer")).to_be_visible()
    found += audit(app, "gallery viewer")
    app.get_by_role("button", name="Close").click()
    app.get_by_text("Device details", exact=True).click()
    app.locator("#models").scroll_into_view_if_needed()
    found += audit(app, "models and device panels")
    app.get_by_text("Device details", exact=True).click()
    set_options(app)
    assert not found, "\n".join(found)
