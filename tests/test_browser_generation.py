"""Generation experience in headless Chromium: previews, cancel, queue, batch, prompt history."""

import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline.bundle import to_uint8
from app.store.png import read_parameters
from app.pipeline.refiner import SDXLRefiner
from app.runtime.ort import OrtRuntime
from conftest import ROOT, RUN_TIMEOUT_MS, run
from test_browser import PIXEL_TOLERANCE, PROMPT, counter, fill, press_and_wait, record, recorded, wait_counter

pytestmark = pytest.mark.browser

HTML_PROMPT = "<img src=x onerror=alert(1)><b>bold</b> cat"

def set_options(page, images="1", preview_every="0"):
    page.get_by_label("Images").fill(images)
    page.get_by_label("Preview every").fill(preview_every)


def test_previews_arrive_at_the_chosen_cadence_and_the_final_image_replaces_them(app):
    for every, expected in [("1", ["step 1 (fast approximation)", "step 2 (fast approximation)", "step 3 (decoded)"]),
                            ("2", ["step 2 (fast approximation)"])]:
        fill(app, seed="50", steps="4")
        set_options(app, preview_every=every)
        record(app, "preview-label")
        press_and_wait(app)
        labels = [t for t in recorded(app, "preview-label") if t]
        assert [t.removeprefix("Preview after ") for t in labels] == expected
        expect(app.locator("#preview-label")).to_have_text("")
        expect(app.get_by_role("img", name=re.compile("^Generated image"))).to_be_visible()
        expect(app.locator("#preview")).to_be_hidden()
    set_options(app)


def test_preview_overhead_benchmark(app):
    """Prints preview cost as a fraction of the run (no timing assertion: SwiftShader is noisy)."""
    figures = {}
    for every in ("0", "1"):
        fill(app, seed="51", steps="4")
        set_options(app, preview_every=every)
        press_and_wait(app)
        caption = app.locator("#caption").text_content()
        total_s, preview_ms = re.search(r"made in ([\d.]+) s \(previews (\d+) ms\)", caption).groups()
        figures[every] = (float(total_s), int(preview_ms))
    (t0, _), (t1, p1) = figures["0"], figures["1"]
    print(f"preview overhead: every step -> previews {p1} ms of {t1:.1f} s = {p1 / 1000 / t1:.1%}; "
          f"run without previews {t0:.1f} s (ratio {t1 / t0:.2f})")
    assert p1 > 0
    set_options(app)


def test_cancel_returns_within_one_step_and_the_next_run_succeeds(app):
    fill(app, seed="52", steps="4")
    # The step counter at the moment Cancel is pressed, taken by the click itself.
    app.evaluate("""() => document.getElementById('cancel').addEventListener('click', () => {
        window.__stepsAtCancel = +(document.getElementById('status').dataset.steps || 0); }, {capture: true, once: true})""")
    steps, finished = counter(app, "steps"), counter(app, "finished")
    app.get_by_role("button", name="Generate").click()
    wait_counter(app, "steps", steps + 1)  # step 1 of 4 is done
    app.get_by_role("button", name="Cancel", exact=True).click()
    wait_counter(app, "finished", finished + 1)
    expect(app.get_by_role("status")).to_have_text("Cancelled.")
    after_cancel = counter(app, "steps") - app.evaluate("window.__stepsAtCancel")
    assert after_cancel <= 1, f"{after_cancel} steps were shown after Cancel was pressed"
    fill(app, seed="53", steps="1")
    press_and_wait(app)


def test_queued_runs_execute_in_order_and_can_be_cancelled(app):
    record(app, "caption")
    finished = counter(app, "finished")
    for seed in ("60", "61", "62"):
        fill(app, seed=seed, steps="2")
        app.get_by_role("button", name="Generate").click()
    queue = app.get_by_role("list", name="Queue")
    expect(queue.get_by_role("listitem")).to_have_count(3)
    expect(queue.get_by_role("listitem").nth(2)).to_contain_text("Queued: a lighthouse at dusk, oil painting (seed 62)")
    queue.get_by_role("listitem").filter(has_text="(seed 62)").get_by_role("button", name=re.compile("^Cancel request")).click()
    wait_counter(app, "finished", finished + 2)  # the two runs left; the third was dropped from the queue
    expect(queue.get_by_role("listitem")).to_have_count(0)
    expect(app.get_by_role("status")).to_have_text("Done.")
    seeds = [m.group(1) for t in recorded(app, "caption") if (m := re.match(r"Seed (\d+)", t))]
    assert seeds == ["60", "61"]


def test_batch_makes_consecutive_seeds_in_a_grid(app):
    fill(app, seed="70", steps="1")
    set_options(app, images="3")
    press_and_wait(app, runs=3)
    grid = app.get_by_label("Batch results")
    for seed in (70, 71, 72):
        expect(grid.get_by_role("button", name=f"Show the image with seed {seed}")).to_be_visible()
    grid.get_by_role("button", name="Show the image with seed 71").click()
    expect(app.locator("#caption")).to_contain_text("Seed 71 ")
    with app.expect_download() as info:
        app.get_by_role("button", name="Download").click()
    assert info.value.suggested_filename.endswith("_71.png")
    set_options(app)
    app.get_by_label("Images").fill("9")
    app.get_by_role("button", name="Generate").click()
    expect(app.locator("#count-error")).to_have_text("Images must be a whole number from 1 to 8.")
    set_options(app)


def test_prompt_history_offers_recent_prompts_and_shows_markup_as_text(app):
    fill(app, prompt="first prompt", seed="80", steps="9")  # refused, but remembered
    app.get_by_role("button", name="Generate").click()
    fill(app, prompt=HTML_PROMPT, seed="80", steps="9")
    app.get_by_role("button", name="Generate").click()
    expect(app.locator("#steps-error")).to_contain_text("Steps must be between 1 and 4")
    history = app.get_by_label("Recently used")
    options = history.locator("option")
    expect(options.nth(1)).to_have_text(HTML_PROMPT)
    expect(options.nth(2)).to_have_text("first prompt")
    history.select_option("first prompt")
    expect(app.get_by_label("Prompt", exact=True)).to_have_value("first prompt")
    assert app.locator("#history b, #queue b, #caption b, #error b, .field-error b").count() == 0


def test_markup_in_a_prompt_stays_text_in_queue_and_result(app):
    fill(app, prompt=HTML_PROMPT, seed="81", steps="1")
    record(app, "queue")
    press_and_wait(app)
    assert any(HTML_PROMPT in t for t in recorded(app, "queue"))
    expect(app.get_by_role("img", name=re.compile("^Generated image"))).to_have_attribute(
        "alt", f"Generated image: {HTML_PROMPT}")
    assert app.locator("main b, main img[src='x']").count() == 0


def test_refine_runs_the_refiner_on_the_base_latents_never_holding_both_models(app, cpu_pipeline):
    refiner = app.locator("#model-tiny-sdxl-refiner")
    note = app.locator("#refine-note")
    if refiner.get_attribute("data-state") != "not-installed":
        app.once("dialog", lambda dialog: dialog.accept())
        refiner.get_by_role("button", name="Delete model").click()
        expect(refiner).to_have_attribute("data-state", "not-installed", timeout=RUN_TIMEOUT_MS)
    fill(app, seed="90", steps="2")
    set_options(app)
    press_and_wait(app)
    # Without the refiner, the Refine control says what it needs.
    expect(note).to_have_text("Refine needs Tiny SDXL refiner (test model): install it in the Models panel.")
    expect(app.get_by_role("button", name="Refine")).to_be_disabled()
    refiner.get_by_role("button", name="Install", exact=True).click()  # the refiner is installed like any model
    expect(refiner).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    expect(note).to_have_text("")  # the image on show can be refined now (it used to stay off until the next image)
    expect(app.get_by_role("button", name="Refine")).to_be_enabled()
    record(app, "status")
    press_and_wait(app, "Refine")
    assert any(t.startswith("Refining: step") for t in recorded(app, "status"))
    with app.expect_download() as info:
        app.get_by_role("button", name="Download").click()
    png = open(info.value.path(), "rb").read()
    params = read_parameters(png)
    assert params["refiner"] == "tiny-sdxl-refiner" and params["seed"] == 90 and params["model"] == "tiny-sdxl-turbo"

    # The same two passes on CPython: the base's final latents, then the refiner over them.
    last = {}

    async def keep(i, x, denoised):
        last["x"] = x

    run(cpu_pipeline.generate(PROMPT, 90, 2, 64, 64, on_step=keep))
    entry = json.loads((ROOT / "models_manifest" / "tiny-sdxl-refiner.json").read_text())
    refiner = run(SDXLRefiner.load(OrtRuntime(ROOT / "models" / "tiny-sdxl-refiner"), entry))
    d = entry["defaults"]
    expected = to_uint8(run(refiner.refine(PROMPT, 90, last["x"], d["strength"], d["steps"]))).astype(int)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert np.abs(img - expected).max() <= PIXEL_TOLERANCE

    # The worker logs every load and release: the base is released before the refiner loads.
    log = app.workers[-1].evaluate("lanternModels")
    held = set()
    for event in log:
        action, model = event.split(" ")
        if action == "load":
            assert not held, f"{model} loaded while {held} was held: {log}"
            held.add(model)
        else:
            held.discard(model)
    assert log[-2:] == ["release tiny-sdxl-turbo", "load tiny-sdxl-refiner"], log
    expect(app.get_by_role("button", name="Refine")).to_be_disabled()
    expect(note).to_have_text("This picture is already refined.")
    expect(app.locator("#caption")).to_contain_text("· refined ·")
