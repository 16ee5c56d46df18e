"""The served app in real headless Chromium (SwiftShader WebGPU): a prompt becomes a PNG."""

import io
import re
import time

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline.bundle import to_uint8
from app.store.png import read_parameters
from conftest import RUN_TIMEOUT_MS, run

pytestmark = pytest.mark.browser

PROMPT = "a lighthouse at dusk, oil painting"
# The page's PNG pixels against the CPython pipeline's: both are fp32; allow one uint8 level for
# values that sit on a rounding boundary.
PIXEL_TOLERANCE = 1


def fill(page, prompt=PROMPT, seed="7", steps="2", resolution="64x64"):
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Seed", exact=True).fill(seed)
    page.get_by_label("Steps").fill(steps)
    if resolution:  # not before the page is ready: the model's sizes are not listed yet
        page.get_by_label("Resolution").select_option(resolution)


# Tests never wait for a status text that may come and go between two looks: they wait for the
# counters the page keeps, which only grow (static/page.py `count`): on #status, data-steps
# (denoising steps shown) and data-finished (runs ended); on #tier, data-measured (benchmarks done).
def counter(page, name, where="#status"):
    return int(page.locator(where).get_attribute(f"data-{name}") or 0)


def wait_counter(page, name, at_least, where="#status", timeout=RUN_TIMEOUT_MS):
    page.wait_for_function("([where, name, n]) => +(document.querySelector(where).dataset[name] || 0) >= n",
                           arg=[where, name, at_least], timeout=timeout)


def press_and_wait(page, button="Generate", runs=1, ending="Done."):
    """Press a button that starts `runs` runs, wait until the page has ended that many more runs,
    and check how the last one ended (a status that stays until the next action)."""
    finished = counter(page, "finished")
    page.get_by_role("button", name=button, exact=True).click()
    wait_counter(page, "finished", finished + runs)
    expect(page.get_by_role("status")).to_have_text(ending)


# Records every text a page element is given, in order, from the mutation records themselves
# (not by re-reading the element later), so no text is missed however fast they follow each other.
RECORD = """(ids) => {
    (window.__observers || []).forEach((o) => o.disconnect());
    window.__seen = {};
    window.__observers = ids.map((id) => {
        const seen = window.__seen[id] = [];
        const observer = new MutationObserver((records) => records.forEach((r) => {
            if (r.type === 'characterData') seen.push(r.target.data);
            else if (r.addedNodes.length) r.addedNodes.forEach((n) => seen.push(n.textContent));
            else seen.push('');
        }));
        observer.observe(document.getElementById(id), {childList: true, characterData: true, subtree: true});
        return observer;
    });
}"""


def record(page, *ids):
    page.evaluate(RECORD, list(ids))


def recorded(page, id):
    return page.evaluate("(id) => window.__seen[id]", id)


def generate_and_download(page):
    """Click Generate, wait for the result image, and return (download name, PNG bytes)."""
    page.evaluate("document.getElementById('result').removeAttribute('src')")
    press_and_wait(page)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    download = info.value
    return download.suggested_filename, open(download.path(), "rb").read()


def test_page_boots_offline_on_webgpu(app):
    assert app.boot_status == "Ready."
    expect(app.get_by_role("status")).to_have_attribute("data-backend", "webgpu")
    assert app.requests, "no request was recorded"
    foreign = [u for u in app.requests if not u.startswith((app.server, "blob:", "data:"))]
    assert foreign == []
    assert any(u.endswith("pyodide.asm.wasm") for u in app.requests)  # the worker's requests are seen too
    expect(app.get_by_label("Model", exact=True)).to_have_value("tiny-sdxl-turbo")
    expect(app.get_by_role("progressbar", name="Progress", exact=True)).to_be_visible()


def test_the_csp_holds_in_the_page_and_the_worker_and_violations_are_reported(app, fault_server):
    """What the policy forbids is refused and reported, so the suite-wide check (conftest.no_csp_violations)
    would see any violation the app itself made."""
    probe = "url => fetch(url).then(() => 'fetched', e => e.name)"
    wait_counter(app, "measured", 1, "#tier")  # the first visit's bench is over: the worker is idle
    assert app.evaluate(probe, "https://example.org/from-page") == "TypeError"
    # Chromium sends a worker's report when it likes (seen: over three minutes late), so the worker's
    # violation is taken from the event it fires there, and its report is expected at any time.
    worker_uri = "https://example.org/from-worker"
    fault_server.csp_provoked.add(worker_uri)
    generator = [w for w in app.workers if w.url.endswith("/worker.mjs")][-1]
    assert generator.evaluate("""url => new Promise((resolve) => {
        self.addEventListener('securitypolicyviolation', (e) => resolve([e.violatedDirective, e.blockedURI]),
                              {once: true});
        fetch(url).then(() => resolve('fetched'), () => {});
    })""", worker_uri) == ["connect-src", worker_uri]
    deadline = time.monotonic() + 60
    while not fault_server.csp_reports and time.monotonic() < deadline:
        time.sleep(0.1)
    blocked = [(r["violated-directive"], r["blocked-uri"]) for r in fault_server.csp_reports]
    fault_server.csp_reports.clear()
    assert blocked == [("connect-src", "https://example.org/from-page")]


def test_generated_png_matches_cpython_pipeline_and_carries_metadata(app, cpu_pipeline, manifest_entry):
    fill(app)
    record(app, "status")
    name, png = generate_and_download(app)
    stages = recorded(app, "status")
    assert any("Drawing: step 2 of 2" in s for s in stages), stages
    assert any("Finishing the image" in s for s in stages), stages

    assert re.fullmatch(r"tiny-sdxl-turbo_\d{8}-\d{6}_7\.png", name), name
    params = read_parameters(png)
    assert params["prompt"] == PROMPT and params["seed"] == 7 and params["steps"] == 2
    assert (params["height"], params["width"]) == (64, 64)
    assert params["model"] == "tiny-sdxl-turbo" and len(params["model_sha256"]) == 64
    assert params["app_version"]

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    expected = to_uint8(run(cpu_pipeline.generate(PROMPT, 7, 2, 64, 64)))
    diff = np.abs(img.astype(int) - expected.astype(int))
    print(f"browser vs CPython: max |diff| {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= PIXEL_TOLERANCE
    alt = app.get_by_role("img", name=re.compile("^Generated image")).get_attribute("alt")
    assert alt == f"Generated image: {PROMPT}"


def test_browser_tokenizer_and_pipeline_agree_with_cpython_on_hard_prompts(app, cpu_pipeline):
    """Unicode, emoji, markup and a prompt far past 77 tokens go through @huggingface/tokenizers in
    the browser and HF tokenizers on CPython: the images agree only if the token ids do."""
    for prompt in ["Ünïcödé café 東京 🐱🚀 <b>bold</b> & \"quotes\"!?", " ".join(["a very long prompt"] * 40)]:
        fill(app, prompt=prompt, seed="3", steps="1")
        _, png = generate_and_download(app)
        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        expected = to_uint8(run(cpu_pipeline.generate(prompt, 3, 1, 64, 64))).astype(int)
        assert np.abs(img - expected).max() <= PIXEL_TOLERANCE, prompt
    foreign = [u for u in app.requests if not u.startswith((app.server, "blob:", "data:"))]
    assert foreign == [] and any(u.endswith("unet/model.onnx") for u in app.requests)


def test_same_seed_twice_gives_identical_png_bytes(app):
    fill(app, seed="123", steps="1", resolution="64x96")
    _, first = generate_and_download(app)
    _, second = generate_and_download(app)
    assert first == second
    assert Image.open(io.BytesIO(first)).size == (96, 64)
    fill(app, seed="124", steps="1", resolution="64x96")
    _, other = generate_and_download(app)
    assert other != first


# What the page itself runs on its main thread: Long Animation Frames (frames over 50 ms) list the scripts
# that ran in them, with their durations. A frame gap also grows when the machine does not schedule the
# page (another process busy), but script time is the page's own work.
PROBE = """() => {
    (window.__probe || {}).running = false;
    const probe = window.__probe = {maxGap: 0, scriptMs: [], running: true};
    let last = performance.now();
    const frame = (t) => { probe.maxGap = Math.max(probe.maxGap, t - last); last = t;
                           if (probe.running) requestAnimationFrame(frame); };
    requestAnimationFrame(frame);
    new PerformanceObserver((list) => list.getEntries().forEach((e) => probe.running &&
        probe.scriptMs.push(e.scripts.reduce((ms, s) => ms + s.duration + s.forcedStyleAndLayoutDuration, 0))))
        .observe({type: 'long-animation-frame'});
}"""
STOP_PROBE = "() => { window.__probe.running = false; return window.__probe; }"
OWN_WORK_MS = 200  # a visitor notices a page that does not answer for this long


def test_page_stays_responsive_while_generating(app):
    """During a whole generation, with typing mid-run, no frame of the page spends more than 200 ms in its
    own scripts (Long Animation Frames' script timings). The longest gap between frames is printed, not
    checked: it also counts the time a busy machine leaves the page unscheduled."""
    fill(app, seed="5", steps="2")
    app.evaluate(PROBE)
    steps, finished = counter(app, "steps"), counter(app, "finished")
    app.get_by_role("button", name="Generate").click()
    wait_counter(app, "steps", steps + 1)  # denoising has begun
    app.get_by_label("Prompt", exact=True).press_sequentially(" typed")
    expect(app.get_by_label("Prompt", exact=True)).to_have_value(PROMPT + " typed")
    wait_counter(app, "finished", finished + 1)
    expect(app.get_by_role("status")).to_have_text("Done.")
    probe = app.evaluate(STOP_PROBE)
    own = max(probe["scriptMs"], default=0)
    print(f"responsiveness: the page's own script time per long frame, at most {own:.0f} ms "
          f"({len(probe['scriptMs'])} frames over 50 ms); longest frame gap {probe['maxGap']:.0f} ms")
    assert own < OWN_WORK_MS, probe["scriptMs"]


def test_cancel_stops_the_run_and_the_next_one_succeeds(app):
    fill(app, seed="9", steps="4")
    steps, finished = counter(app, "steps"), counter(app, "finished")
    app.get_by_role("button", name="Generate").click()
    wait_counter(app, "steps", steps + 1)  # denoising has begun
    app.get_by_role("button", name="Cancel", exact=True).click()
    wait_counter(app, "finished", finished + 1)
    expect(app.get_by_role("status")).to_have_text("Cancelled.")
    fill(app, seed="9", steps="1")
    name, png = generate_and_download(app)
    assert name.endswith("_9.png") and read_parameters(png)["steps"] == 1


def test_a_run_that_ends_without_an_image_leaves_the_last_one_as_it_was(app):
    """A refused or cancelled run neither breaks Download nor leaves its preview or an empty caption in
    place of the last finished image (they used to: a KeyError traceback on the page, a blocky preview)."""
    fill(app, seed="11", steps="1")
    name, png = generate_and_download(app)
    fill(app, prompt="   ")
    press_and_wait(app, ending="Not started: see the marked field.")
    with app.expect_download() as info:
        app.get_by_role("button", name="Download").click()
    assert info.value.suggested_filename == name
    fill(app, seed="12", steps="4")
    steps, finished = counter(app, "steps"), counter(app, "finished")
    app.get_by_role("button", name="Generate").click()
    wait_counter(app, "steps", steps + 1)  # a preview of the new run is showing
    app.get_by_role("button", name="Cancel", exact=True).click()
    wait_counter(app, "finished", finished + 1)
    expect(app.locator("#result")).to_be_visible()
    expect(app.locator("#preview")).to_be_hidden()
    expect(app.locator("#caption")).to_contain_text("Seed 11 · 1 step ·")
    with app.expect_download() as info:
        app.get_by_role("button", name="Download").click()
    assert info.value.suggested_filename == name


@pytest.mark.parametrize("field, message", [
    ({"prompt": "   "}, "Please enter a prompt"),
    ({"prompt": "x" * 20_000}, "The prompt is 20,000 characters long; Lantern takes up to 2,000"),
    ({"steps": "7"}, "Steps must be between 1 and 4"),
    ({"steps": "0"}, "Steps must be between 1 and 4"),
    ({"seed": "abc"}, "Seed must be a whole number"),
])
def test_bad_input_is_explained_beside_its_field_not_as_a_failure(app, field, message):
    """A refused value is said next to its field, which is marked and focused (it used to be "Stopped." and a
    red line under the progress bar, far from the field)."""
    name = next(iter(field))
    fill(app, **field)
    press_and_wait(app, ending="Not started: see the marked field.")
    box = app.get_by_label(name.capitalize(), exact=True)
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(box).to_be_focused()
    expect(app.locator(f"#{name}-error")).to_contain_text(message)
    expect(app.locator("#error")).to_be_hidden()
    box.press("End")
    box.type("1")  # editing the field answers its message
    expect(app.locator(f"#{name}-error")).to_be_hidden()
    expect(box).not_to_have_attribute("aria-invalid", "true")


def test_resolution_the_model_cannot_take_is_explained(app):
    fill(app)
    app.evaluate("""() => { const o = document.createElement('option'); o.value = o.textContent = '100x100';
                            document.getElementById('resolution').appendChild(o); }""")
    app.get_by_label("Resolution").select_option("100x100")
    app.get_by_role("button", name="Generate").click()
    expect(app.locator("#resolution-error")).to_contain_text("cannot make 100x100 images. Choose one of: 64x64")
    app.evaluate("document.querySelector('#resolution option[value=\"100x100\"]').remove()")
