"""The gallery in headless Chromium: auto-saved results kept in OPFS, listed, searched, opened,
compared, downloaded, deleted, reused; dropped PNGs give their settings back."""

import io
import re

import pytest
from PIL import Image
from playwright.sync_api import expect

from app.store.gallery import NOT_LANTERN
from app.store.png import read_parameters
from conftest import BOOT_TIMEOUT_MS, RUN_TIMEOUT_MS
from test_browser import fill, generate_and_download

pytestmark = pytest.mark.browser

FIRST = dict(prompt="gallery lighthouse", seed="4294967295", steps="1", resolution="64x96")  # the largest seed
SECOND = dict(prompt="Gallery FOX in snow", seed="12", steps="1", resolution="64x64")
MARKUP = "<img src=x onerror=alert(1)><b>bold</b>"
NAME = re.compile(r"tiny-sdxl-turbo_\d{8}-\d{6}_(\d+)\.png")

CLEAR_GALLERY = """async () => {
    const folder = await (await navigator.storage.getDirectory()).getDirectoryHandle('gallery', {create: true});
    for await (const name of folder.keys()) await folder.removeEntry(name);
}"""
DROP = """([bytes, name]) => {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'}));
    let allowed = true;
    for (const type of ['dragenter', 'dragover', 'drop'])
        allowed = document.body.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
    return !allowed;  // true: the page took the drop (the browser did not open the file)
}"""


def items(page):
    return page.locator("#gallery-list > li")


def item(page, prompt):
    return items(page).filter(has=page.get_by_alt_text(prompt, exact=True))


def settle(page):
    """Have the worker list the gallery again (as typing in the search box does) and wait for the
    answer; the worker answers in order, so earlier requests have been answered too."""
    search = page.get_by_label("Search gallery")
    search.fill("settle")
    expect(page.locator("#gallery-note")).to_contain_text("settle")
    search.fill("")
    expect(page.locator("#gallery-note")).not_to_contain_text("settle")


def controls(page):
    return {name: page.get_by_label(label, exact=True).input_value()
            for name, label in (("prompt", "Prompt"), ("seed", "Seed"), ("steps", "Steps"),
                                ("resolution", "Resolution"), ("model", "Model"))}


def scramble(page):
    """Put other values in every control; the model select gets a second (fake) option."""
    fill(page, prompt="something else", seed="1", steps="3", resolution="128x128")
    page.evaluate("""() => { const s = document.getElementById('model');
        if (!s.querySelector('option[value="other"]')) {
            const o = document.createElement('option'); o.value = o.textContent = 'other'; s.appendChild(o); }
        s.value = 'other'; }""")


def expect_restored(page, settings):
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(settings["prompt"])
    assert controls(page) == {"prompt": settings["prompt"], "seed": settings["seed"], "steps": settings["steps"],
                              "resolution": settings["resolution"], "model": "tiny-sdxl-turbo"}


def download_from_gallery(page, prompt):
    with page.expect_download() as info:
        item(page, prompt).get_by_role("link", name="Download").click()
    return info.value.suggested_filename, open(info.value.path(), "rb").read()


def make(page, settings):
    """Generate with Auto-save on; returns the main Download's (name, PNG) once the gallery has it."""
    before = items(page).count()
    page.get_by_label("Model", exact=True).select_option("tiny-sdxl-turbo")  # scramble() may have left a fake one
    fill(page, **settings)
    result = generate_and_download(page)
    expect(items(page)).to_have_count(before + 1, timeout=RUN_TIMEOUT_MS)
    return result


@pytest.fixture(scope="module")
def page(app):
    """The shared page with an empty gallery; emptied again, and everything closed, afterwards."""
    logged = len(app.console_messages)
    app.evaluate(CLEAR_GALLERY)
    settle(app)
    expect(items(app)).to_have_count(0)
    yield app
    app.evaluate("document.querySelectorAll('dialog[open]').forEach(d => d.close())")
    app.evaluate(CLEAR_GALLERY)
    settle(app)
    expect(items(app)).to_have_count(0)
    app.evaluate("document.querySelector('#model option[value=\"other\"]')?.remove()")
    app.evaluate("() => { const e = document.getElementById('error'); e.textContent = ''; e.hidden = true; }")
    if not app.get_by_label("Auto-save").is_checked():
        app.get_by_label("Auto-save").check()
    # Neither side of the gallery logged a Python error (worker tracebacks reach the page's console).
    assert [m for m in app.console_messages[logged:] if "gallery.py" in m or "gallery_ui" in m] == []


@pytest.fixture(scope="module")
def saved(page):
    """Two auto-saved results: {prompt: (download name, PNG bytes)}."""
    expect(page.get_by_label("Auto-save")).to_be_checked()  # on by default
    return {s["prompt"]: make(page, s) for s in (FIRST, SECOND)}


def test_saved_results_are_listed_newest_first_and_survive_a_reload(page, saved):
    alts = [FIRST["prompt"], SECOND["prompt"]][::-1]
    assert [items(page).nth(i).get_by_role("img").get_attribute("alt") for i in range(2)] == alts
    expect(item(page, FIRST["prompt"])).to_contain_text("Seed 4294967295 · 1 step · 64x96 · tiny-sdxl-turbo")

    # Auto-save off: a new result is not kept, and the choice is remembered.
    page.get_by_label("Auto-save").uncheck()
    fill(page, prompt="not kept", seed="3", steps="1")
    generate_and_download(page)

    page.reload()
    expect(page.get_by_role("status")).to_have_text(re.compile("^Ready"), timeout=BOOT_TIMEOUT_MS)
    expect(items(page)).to_have_count(2)
    assert [items(page).nth(i).get_by_role("img").get_attribute("alt") for i in range(2)] == alts
    expect(page.get_by_label("Auto-save")).not_to_be_checked()
    page.get_by_label("Auto-save").check()
    for i in range(2):
        assert items(page).nth(i).get_by_role("img").evaluate("i => i.decode().then(() => i.naturalWidth)") > 0

    # The gallery's Download gives the very bytes, and the name, of the main Download.
    for prompt, (name, png) in saved.items():
        gallery_name, gallery_png = download_from_gallery(page, prompt)
        assert gallery_png == png
        assert NAME.fullmatch(gallery_name).group(1) == NAME.fullmatch(name).group(1)


def test_search_filters_by_prompt_text_in_any_case(page, saved):
    search = page.get_by_label("Search gallery")
    search.fill("fox")
    expect(items(page)).to_have_count(1)
    expect(items(page).get_by_role("img")).to_have_attribute("alt", SECOND["prompt"])
    search.fill("GALLERY")
    expect(items(page)).to_have_count(2)
    search.fill("zebra")
    expect(items(page)).to_have_count(0)
    expect(page.locator("#gallery-note")).to_have_text("No images match “zebra”.")
    search.fill("")
    expect(items(page)).to_have_count(2)


def test_open_shows_the_full_image_with_zoom_and_pan(page, saved):
    item(page, SECOND["prompt"]).get_by_role("button", name="Open").click()
    viewer = page.get_by_role("dialog", name="Full-size view")
    expect(viewer).to_be_visible()
    image = viewer.get_by_role("img", name=SECOND["prompt"])
    assert image.evaluate("i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])") == [64, 64]
    expect(viewer).to_contain_text("Seed 12 · 1 step · 64x64")

    viewer.get_by_role("button", name="Zoom in").click()
    expect(image).to_have_css("transform", "matrix(1.25, 0, 0, 1.25, 0, 0)")
    box = page.locator("#gallery-viewer-stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -100)
    expect(image).to_have_css("transform", "matrix(1.5625, 0, 0, 1.5625, 0, 0)")
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 30, box["y"] + box["height"] / 2 - 20, steps=5)
    page.mouse.up()
    expect(image).to_have_css("transform", "matrix(1.5625, 0, 0, 1.5625, 30, -20)")
    expect(viewer).to_contain_text("156%")
    viewer.get_by_role("button", name="Zoom out").click()
    viewer.get_by_role("button", name="Fit").click()
    expect(image).to_have_css("transform", "matrix(1, 0, 0, 1, 0, 0)")
    viewer.get_by_role("button", name="Close").click()
    expect(viewer).to_be_hidden()


def test_compare_shows_two_images_side_by_side_with_their_settings(page, saved):
    item(page, FIRST["prompt"]).get_by_role("button", name="Compare").click()
    expect(item(page, FIRST["prompt"]).get_by_role("button", name="Compare")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#gallery-note")).to_have_text("Pick a second image to compare with this one.")
    item(page, SECOND["prompt"]).get_by_role("button", name="Compare").click()
    compare = page.get_by_role("dialog", name="Side-by-side comparison")
    expect(compare).to_be_visible()
    images = compare.get_by_role("img")
    expect(images).to_have_count(2)
    assert [images.nth(i).evaluate("i => i.decode().then(() => i.naturalWidth)") for i in range(2)] == [96, 64]
    figures = compare.locator("figure")
    expect(figures.nth(0)).to_contain_text(FIRST["prompt"])
    expect(figures.nth(0)).to_contain_text("4294967295")
    expect(figures.nth(0)).to_contain_text("64x96")
    expect(figures.nth(1)).to_contain_text(SECOND["prompt"])
    expect(figures.nth(1)).to_contain_text("12")
    assert figures.nth(0).bounding_box()["x"] < figures.nth(1).bounding_box()["x"]  # side by side
    compare.get_by_role("button", name="Close").click()
    expect(compare).to_be_hidden()
    expect(item(page, FIRST["prompt"]).get_by_role("button", name="Compare")).to_have_attribute("aria-pressed", "false")


def test_use_settings_restores_prompt_seed_steps_resolution_and_model(page, saved):
    for settings in (FIRST, SECOND):
        scramble(page)
        item(page, settings["prompt"]).get_by_role("button", name="Use settings").click()
        expect_restored(page, settings)


def test_dropping_a_saved_png_restores_its_settings(page, saved):
    _, png = saved[FIRST["prompt"]]
    scramble(page)
    assert page.evaluate(DROP, [list(png), "from-lantern.png"])
    expect_restored(page, FIRST)
    expect(page.locator("#gallery-note")).to_have_text("Settings restored from the dropped Lantern image.")


def test_a_png_from_elsewhere_is_refused_politely(page, saved):
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "teal").save(out, format="PNG")
    assert read_parameters(out.getvalue()) is None
    scramble(page)
    before = controls(page)
    assert page.evaluate(DROP, [list(out.getvalue()), "photo.png"])
    expect(page.get_by_role("alert")).to_have_text(NOT_LANTERN)
    assert controls(page) == before
    assert page.evaluate(DROP, [list(b"GIF89a not a png"), "anim.png"])
    expect(page.get_by_role("alert")).to_have_text("This file is not a PNG image, so it has no settings to restore.")


HUGE_PROMPT_DROP = """(mb) => {  // a PNG carrying a prompt of `mb` MB (its CRCs are not checked by a reader)
    const enc = new TextEncoder(), parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10])];
    const chunk = (kind, body) => {
        const head = new Uint8Array(8);
        new DataView(head.buffer).setUint32(0, body.length);
        head.set(enc.encode(kind), 4);
        parts.push(head, body, new Uint8Array(4));
    };
    chunk("IHDR", new Uint8Array([0, 0, 4, 0, 0, 0, 4, 0, 8, 2, 0, 0, 0]));
    chunk("tEXt", enc.encode('lantern\\0{"prompt": "' + "x".repeat(mb * 1e6) + '"}'));
    chunk("IEND", new Uint8Array(0));
    const data = new DataTransfer();
    data.items.add(new File(parts, "huge-prompt.png", {type: "image/png"}));
    for (const type of ["dragenter", "dragover", "drop"])
        document.body.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
}"""


def test_a_png_larger_than_lantern_writes_is_refused_without_freezing_the_page(page, saved):
    scramble(page)
    before = controls(page)
    page.evaluate(HUGE_PROMPT_DROP, 19.5)  # reading it once froze the page for minutes
    expect(page.get_by_role("alert")).to_have_text(re.compile(
        r"^This PNG's Lantern settings are larger than any Lantern writes \(its text is 18\.6 MiB\)"))
    header = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + (13000).to_bytes(4, "big") * 2 + bytes(9)
    assert page.evaluate(DROP, [list(header + bytes(12)), "huge.png"])
    expect(page.get_by_role("alert")).to_have_text(
        "This image is larger than any Lantern makes (13000×13000 pixels), so its settings were not read.")
    assert controls(page) == before
    make(page, dict(prompt="still responsive", seed="3", steps="1", resolution="64x64"))


def test_prompts_with_markup_are_shown_as_text_everywhere(page, saved):
    prompt = f"tag test {MARKUP}"
    make(page, dict(prompt=prompt, seed="5", steps="1", resolution="64x64"))
    entry = item(page, prompt)
    expect(entry).to_have_count(1)
    expect(entry.locator(".gallery-prompt")).to_have_text(prompt)
    assert MARKUP in entry.inner_text()
    entry.get_by_role("button", name="Open").click()
    viewer = page.get_by_role("dialog", name="Full-size view")
    assert MARKUP in viewer.inner_text()
    expect(viewer.get_by_role("img", name=prompt)).to_be_visible()
    viewer.get_by_role("button", name="Close").click()
    entry.get_by_role("button", name="Compare").click()
    item(page, SECOND["prompt"]).get_by_role("button", name="Compare").click()
    compare = page.get_by_role("dialog", name="Side-by-side comparison")
    expect(compare).to_be_visible()
    assert MARKUP in compare.inner_text()
    compare.get_by_role("button", name="Close").click()
    assert page.locator("#gallery b").count() == 0
    assert page.locator("#gallery img[src='x']").count() == 0


def test_delete_asks_first_and_cancelling_keeps_the_image(page, saved):
    count = items(page).count()
    questions = []

    def answer(accept):
        def on_dialog(dialog):
            questions.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()
        return on_dialog

    expect(page.locator("#models-storage")).to_contain_text(f"gallery {count} images ")
    page.once("dialog", answer(False))
    item(page, FIRST["prompt"]).get_by_role("button", name="Delete").click()
    settle(page)
    expect(items(page)).to_have_count(count)
    page.once("dialog", answer(True))
    item(page, FIRST["prompt"]).get_by_role("button", name="Delete").click()
    expect(items(page)).to_have_count(count - 1)
    expect(item(page, FIRST["prompt"])).to_have_count(0)
    assert questions == ["Delete this image from the gallery?"] * 2
    # the Models panel's storage line counts the gallery, and the delete freed its share
    expect(page.locator("#models-storage")).to_contain_text(f"gallery {count - 1} image{'' if count == 2 else 's'} ")
    settle(page)  # gone from storage too, not just from the page
    expect(items(page)).to_have_count(count - 1)
    expect(item(page, FIRST["prompt"])).to_have_count(0)
