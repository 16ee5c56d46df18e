"""The served app in real headless Chromium (SwiftShader WebGPU): a prompt becomes a PNG."""

import io
import re

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline import to_uint8
from app.png import read_parameters
from conftest import RUN_TIMEOUT_MS, run

pytestmark = pytest.mark.browser

PROMPT = "a lighthouse at dusk, oil painting"
# The page's PNG pixels against the CPython pipeline's: both are fp32; allow one uint8 level for
# values that sit on a rounding boundary.
PIXEL_TOLERANCE = 1


def fill(page, prompt=PROMPT, seed="7", steps="2", resolution="64x64"):
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Seed", exact=True).fill(seed)
    page.get_by_label("Steps").fill(steps)
    page.get_by_label("Resolution").select_option(resolution)


def generate_and_download(page):
    """Click Generate, wait for the result image, and return (download name, PNG bytes)."""
    page.evaluate("document.getElementById('result').removeAttribute('src')")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("status")).to_have_text("Done.", timeout=RUN_TIMEOUT_MS)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    download = info.value
    return download.suggested_filename, open(download.path(), "rb").read()


def test_page_boots_offline_on_webgpu(app):
    assert app.boot_status == "Ready (webgpu)."
    assert app.requests, "no request was recorded"
    foreign = [u for u in app.requests if not u.startswith((app.server, "blob:", "data:"))]
    assert foreign == []
    assert any(u.endswith("pyodide.asm.wasm") for u in app.requests)  # the worker's requests are seen too
    expect(app.get_by_label("Model", exact=True)).to_have_value("tiny-sdxl-turbo")
    expect(app.get_by_role("progressbar", name="Progress", exact=True)).to_be_visible()


def test_generated_png_matches_cpython_pipeline_and_carries_metadata(app, cpu_pipeline, manifest_entry):
    fill(app)
    app.evaluate("""() => {
        window.__stages = [];
        new MutationObserver(() => window.__stages.push(document.getElementById('status').textContent))
            .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
    }""")
    name, png = generate_and_download(app)
    stages = app.evaluate("window.__stages")
    assert any("Denoising: step 2 of 2" in s for s in stages), stages
    assert any("Decoding" in s for s in stages), stages

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


def test_page_stays_responsive_while_generating(app):
    """Measured in the page: the longest gap between animation frames and the long tasks
    (PerformanceObserver 'longtask', >50 ms) during a whole generation, plus typing mid-run."""
    fill(app, seed="5", steps="2")
    app.evaluate("""() => {
        window.__probe = {maxGap: 0, longTasks: [], running: true};
        let last = performance.now();
        const frame = (t) => { window.__probe.maxGap = Math.max(window.__probe.maxGap, t - last); last = t;
                               if (window.__probe.running) requestAnimationFrame(frame); };
        requestAnimationFrame(frame);
        new PerformanceObserver((list) => list.getEntries().forEach(e => window.__probe.longTasks.push(e.duration)))
            .observe({type: 'longtask'});
    }""")
    app.get_by_role("button", name="Generate").click()
    expect(app.get_by_role("status")).to_contain_text("Denoising", timeout=RUN_TIMEOUT_MS)
    app.get_by_label("Prompt").press_sequentially(" typed")
    expect(app.get_by_label("Prompt")).to_have_value(PROMPT + " typed")
    expect(app.get_by_role("status")).to_have_text("Done.", timeout=RUN_TIMEOUT_MS)
    probe = app.evaluate("() => { window.__probe.running = false; return window.__probe; }")
    print(f"responsiveness: longest frame gap {probe['maxGap']:.0f} ms, long tasks {probe['longTasks']}")
    assert probe["maxGap"] < 500
    assert max(probe["longTasks"], default=0) < 200


def test_cancel_stops_the_run_and_the_next_one_succeeds(app):
    fill(app, seed="9", steps="4")
    app.get_by_role("button", name="Generate").click()
    expect(app.get_by_role("status")).to_contain_text("Denoising", timeout=RUN_TIMEOUT_MS)
    app.get_by_role("button", name="Cancel", exact=True).click()
    expect(app.get_by_role("status")).to_have_text("Cancelled.", timeout=RUN_TIMEOUT_MS)
    fill(app, seed="9", steps="1")
    name, png = generate_and_download(app)
    assert name.endswith("_9.png") and read_parameters(png)["steps"] == 1


@pytest.mark.parametrize("field, message", [
    ({"prompt": "   "}, "Please enter a prompt"),
    ({"steps": "7"}, "Steps must be between 1 and 4"),
    ({"steps": "0"}, "Steps must be between 1 and 4"),
    ({"seed": "abc"}, "Seed must be a whole number"),
])
def test_bad_input_is_explained_on_the_page(app, field, message):
    fill(app, **field)
    app.get_by_role("button", name="Generate").click()
    expect(app.get_by_role("alert")).to_contain_text(message)
    expect(app.get_by_role("status")).to_have_text("Stopped.")


def test_resolution_the_model_cannot_take_is_explained(app):
    fill(app)
    app.evaluate("""() => { const o = document.createElement('option'); o.value = o.textContent = '100x100';
                            document.getElementById('resolution').appendChild(o); }""")
    app.get_by_label("Resolution").select_option("100x100")
    app.get_by_role("button", name="Generate").click()
    expect(app.get_by_role("alert")).to_contain_text("cannot make 100x100 images. Choose one of: 64x64")
    app.evaluate("document.querySelector('#resolution option[value=\"100x100\"]').remove()")
