"""Importing an SDXL checkpoint in Chromium: the tiny checkpoint, as one A1111/ComfyUI file and as a diffusers
folder, converted in the worker into a model of the visitor's own that generates what CPython's conversion
does; refusals in words, the storage check before converting, Cancel, and Delete."""

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline.bundle import to_uint8
from app.pipeline.turbo import SDXLTurbo
from app.runtime.ort import OrtRuntime
from app.store.png import read_parameters
from checkpoints import SINGLE_FILE, REFINER_FILE, convert, cpython_refined, diffusers_folder, single_file
from conftest import ROOT, RUN_TIMEOUT_MS, run
from test_browser import PIXEL_TOLERANCE, PROMPT, fill, generate_and_download, press_and_wait
from test_browser_device import LOSE_DEVICE_AT
from test_browser_studio import audit

pytestmark = pytest.mark.browser
OWN = "document.querySelectorAll('#models-list li[id^=\"model-own-\"]').length"
OPFS_OWN = """async () => {
    const models = await (await navigator.storage.getDirectory()).getDirectoryHandle('models', {create: true});
    const names = [];
    for await (const name of models.keys()) if (name.startsWith('own-')) names.push(name);
    return names;
}"""


@pytest.fixture
def panel(app):
    """The shared page, left as it was found: the tiny test model chosen, no model of the visitor's own."""
    yield app
    own = app.locator('#models-list li[id^="model-own-"]')
    for left in range(own.count(), 0, -1):
        app.once("dialog", lambda dialog: dialog.accept())
        own.first.get_by_role("button", name="Delete model").click()
        expect(own).to_have_count(left - 1, timeout=RUN_TIMEOUT_MS)
    app.get_by_label("Model", exact=True).select_option("tiny-sdxl-turbo")
    app.get_by_label("Guidance", exact=True).fill("1")


def pick(page, *paths):
    page.set_input_files("#checkpoint-file", [str(p) for p in paths])


def import_as(page, name, kind="Turbo or Lightning-like"):
    page.locator("#checkpoint-name").fill(name)
    page.get_by_label(kind).check()
    page.get_by_role("button", name="Convert and keep").click()
    expect(page.locator("#checkpoint-message")).to_contain_text(f"{name} is ready: converted in",
                                                                timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_label("Model", exact=True).locator("option:checked")).to_have_text(name)


@pytest.fixture(scope="module")
def cpu_converted(tmp_path_factory, manifest_entry):
    """The same checkpoint converted on CPython, and the pipeline over it."""
    folder = tmp_path_factory.mktemp("converted")
    convert(single_file(), folder)
    return run(SDXLTurbo.load(OrtRuntime(folder), manifest_entry))


def test_a_single_file_checkpoint_is_imported_listed_and_generates_as_cpython(panel, cpu_converted):
    app = panel
    pick(app, SINGLE_FILE)
    expect(app.locator("#checkpoint-found")).to_have_text(
        "Found: SDXL UNet + CLIP-L + bigG + VAE, f16, 4.3 MB. Converted here to a 4-bit model of 11.7 MB; only "
        "that is kept.")
    expect(app.locator("#checkpoint-name")).to_have_value("tiny-sdxl")
    assert audit(app, "checkpoint found") == []
    import_as(app, "My tiny SDXL")
    row = app.locator('#models-list li[id^="model-own-"]')
    expect(row).to_have_attribute("data-state", "installed")
    sha = hashlib.sha256(SINGLE_FILE.read_bytes()).hexdigest()
    expect(row.locator(".model-details")).to_contain_text(f"tiny-sdxl.safetensors (4.3 MB, sha256 {sha[:12]}…)")
    expect(row.locator(".model-details")).to_contain_text("your own model, 11.7 MB on disk")
    expect(app.get_by_label("Steps")).to_have_attribute("max", "8")  # the few-step kind's range

    fill(app, seed="7", steps="2")
    _, png = generate_and_download(app)
    params = read_parameters(png)
    assert params["model"].startswith("own-")
    expected = to_uint8(run(cpu_converted.generate(params["prompt"], 7, 2, 64, 64)))
    got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert np.abs(got - expected).max() <= PIXEL_TOLERANCE
    _, again = generate_and_download(app)
    assert again == png

    # A reload lists it again, from what is stored (nothing is downloaded for it).
    app.reload()
    expect(app.get_by_role("status")).to_have_text("Ready.", timeout=RUN_TIMEOUT_MS)
    expect(row).to_have_attribute("data-state", "installed")
    expect(app.get_by_label("Model", exact=True).locator("option", has_text="My tiny SDXL")).to_have_count(1)


def test_a_diffusers_folder_converts_to_the_same_model_and_delete_removes_it(panel):
    app = panel
    pick(app, SINGLE_FILE)
    import_as(app, "From one file")
    fill(app, seed="11", steps="1")
    one = Image.open(io.BytesIO(generate_and_download(app)[1])).tobytes()

    pick(app, *diffusers_folder().values())
    expect(app.locator("#checkpoint-found")).to_contain_text("Found: SDXL UNet + CLIP-L + bigG + VAE, f16")
    expect(app.locator("#checkpoint-name")).to_have_value("diffusers model")
    import_as(app, "From a folder", kind="Base-like")
    expect(app.get_by_label("Steps")).to_have_attribute("max", "50")  # the base-like kind's range
    fill(app, seed="11", steps="1")
    assert Image.open(io.BytesIO(generate_and_download(app)[1])).tobytes() == one

    before = app.evaluate(OPFS_OWN)
    assert len(before) == 2
    app.once("dialog", lambda dialog: dialog.accept())
    app.locator('#models-list li', has_text="From a folder").get_by_role("button", name="Delete model").click()
    expect(app.get_by_label("Model", exact=True).locator("option", has_text="From a folder")).to_have_count(0)
    expect(app.locator('#models-list li[id^="model-own-"]')).to_have_count(1)
    assert len(app.evaluate(OPFS_OWN)) == 1


def test_a_refiner_checkpoint_becomes_the_second_pass_of_refine(panel, tmp_path, cpu_pipeline):
    """tiny-sdxl-refiner.safetensors imported as a refiner: Refine runs it (the visitor's own refiner before the
    site's), over the base picture's latents, as CPython's conversion of the same file refines them."""
    app = panel
    model = app.get_by_label("Model", exact=True)
    before = model.input_value()
    pick(app, REFINER_FILE)
    expect(app.locator("#checkpoint-found")).to_have_text(
        "Found: SDXL refiner UNet + bigG + VAE, f16, 2.7 MB. Converted here to a 4-bit model of 8.5 MB; only that "
        "is kept.")
    expect(app.get_by_label("SDXL refiner (the second pass of Refine)")).to_be_checked()
    app.locator("#checkpoint-name").fill("My refiner")
    app.get_by_role("button", name="Convert and keep").click()
    expect(app.locator("#checkpoint-message")).to_contain_text("My refiner is ready: converted in",
                                                               timeout=RUN_TIMEOUT_MS)
    expect(model).to_have_value(before)  # a refiner is no model to generate with
    expect(model.locator("option", has_text="My refiner")).to_have_count(0)
    expect(app.locator('#models-list li[id^="model-own-"]')).to_contain_text("My refiner")

    app.get_by_label("Model", exact=True).select_option("tiny-sdxl-turbo")
    fill(app, seed="90", steps="2")
    press_and_wait(app)
    expect(app.get_by_role("button", name="Refine")).to_be_enabled()
    press_and_wait(app, "Refine")
    with app.expect_download() as info:
        app.get_by_role("button", name="Download").click()
    png = open(info.value.path(), "rb").read()
    params = read_parameters(png)
    assert params["refiner"].startswith("own-") and params["model"] == "tiny-sdxl-turbo"

    convert(single_file(REFINER_FILE), tmp_path / "refiner")
    expected = cpython_refined(tmp_path / "refiner", cpu_pipeline, PROMPT)
    got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert np.abs(got - expected).max() <= PIXEL_TOLERANCE
    expect(app.locator("#refine-note")).to_have_text("This picture is already refined.")


def stall_reads(which: str) -> str:
    """A script for the worker: reads of the File slices `which` (JS, with this, start, end) never end, so what
    reads them stays in progress for as long as the test needs; UNSTALL undoes it."""
    return """() => {
    const slice = File.prototype.slice;
    self.lanternUnstall = () => { File.prototype.slice = slice; };
    File.prototype.slice = function (start, end) {
        const part = slice.call(this, start, end);
        if (%s) part.arrayBuffer = () => new Promise(() => {});
        return part;
    };
}""" % which


# An import: a .safetensors file's data windows (over 1 MB; its header reads are smaller).
STALL_IMPORT = stall_reads("this.name.endsWith('.safetensors') && end - start > 1000000")
UNSTALL = "() => self.lanternUnstall()"


def app_worker(page):
    """The app's worker (the newest, after any restart)."""
    return [w for w in page.workers if w.url.endswith("/worker.mjs")][-1]


def test_a_device_loss_during_an_import_ends_it_in_words_and_it_can_be_run_again(panel):
    """A device loss in a run restarts the worker, which ends the import it was running: the page says so (it used
    to wait for it forever), the run recovers, the new worker removes what the import had begun, and Convert and
    keep then imports the same file."""
    app = panel
    fill(app, seed="5", steps="1")
    press_and_wait(app)  # this worker has a GPU device to lose
    app_worker(app).evaluate(STALL_IMPORT)
    pick(app, SINGLE_FILE)
    app.locator("#checkpoint-name").fill("Interrupted")
    app.get_by_role("button", name="Convert and keep").click()
    expect(app.locator("#checkpoint-cancel")).to_be_visible()  # the import is running, and stays so
    app_worker(app).evaluate(LOSE_DEVICE_AT, ["encode prompt", None])
    press_and_wait(app)
    message = app.locator("#checkpoint-message")
    expect(message).to_have_text("The import stopped: the GPU worker had to restart after a device loss. Press "
                                 "Convert and keep to start again.")
    expect(message).to_have_attribute("role", "alert")
    expect(app.locator("#checkpoint-cancel")).to_be_hidden()
    for _ in range(120):  # the new worker's start tidies the models folder
        if app.evaluate(OPFS_OWN) == []:
            break
        app.wait_for_timeout(500)
    assert app.evaluate(OPFS_OWN) == []
    app.get_by_role("button", name="Convert and keep").click()
    expect(message).to_contain_text("Interrupted is ready: converted in", timeout=RUN_TIMEOUT_MS)


def test_a_tab_opened_during_an_import_leaves_it_alone_and_cancel_keeps_nothing(panel):
    """A second tab's worker tidies the models folder as it starts: it neither removes the folder of an import under
    way in the first tab nor offers to free it (it used to do one or the other)."""
    app = panel
    app_worker(app).evaluate(STALL_IMPORT)
    pick(app, SINGLE_FILE)
    app.locator("#checkpoint-name").fill("Under way")
    app.get_by_role("button", name="Convert and keep").click()
    for _ in range(120):  # the import makes its folder, then waits on its first read for good
        if len(app.evaluate(OPFS_OWN)) == 1:
            break
        app.wait_for_timeout(500)
    expect(app.locator("#checkpoint-cancel")).to_be_visible()  # still under way
    other = app.context.new_page()
    try:
        other.goto(app.url)
        # the panel's first report comes after the worker has tidied
        expect(other.locator("#model-tiny-sdxl-turbo")).to_have_attribute("data-state", "installed",
                                                                          timeout=RUN_TIMEOUT_MS)
        expect(other.locator("#models-unlisted")).to_be_hidden()
        assert len(app.evaluate(OPFS_OWN)) == 1
    finally:
        other.close()
        app_worker(app).evaluate(UNSTALL)  # imports after this one read as usual
    app.get_by_role("button", name="Cancel import").click()
    expect(app.locator("#checkpoint-message")).to_have_text("Import cancelled; nothing was kept.")
    assert app.evaluate(OPFS_OWN) == []


def test_what_cannot_be_imported_is_refused_in_words_and_nothing_is_kept(panel, tmp_path):
    app = panel
    fake = tmp_path / "photo.safetensors"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(SINGLE_FILE.read_bytes()[:-5000])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    cases = [(fake, "is not a safetensors file"), (cut, "is cut short"), (text, "is not a .safetensors file")]
    for path, message in cases:
        pick(app, path)
        expect(app.locator("#checkpoint-message")).to_contain_text(message)
        expect(app.locator("#checkpoint-message")).to_have_attribute("role", "alert")
        expect(app.locator("#checkpoint-options")).to_be_hidden()
    assert audit(app, "checkpoint refused") == []
    assert app.evaluate(OPFS_OWN) == []


def test_storage_is_checked_before_converting_and_cancel_keeps_nothing(panel):
    app = panel
    pick(app, SINGLE_FILE)
    expect(app.locator("#checkpoint-options")).to_be_visible()
    usage = app.evaluate("navigator.storage.estimate().then(e => e.usage)")
    cdp = app.context.new_cdp_session(app)
    origin = app.evaluate("location.origin")
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": usage + 1_000_000})
    try:
        app.get_by_role("button", name="Convert and keep").click()
        expect(app.locator("#checkpoint-message")).to_contain_text(
            "Not enough storage: the converted model needs 11.7 MB", timeout=RUN_TIMEOUT_MS)
    finally:
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin})
        cdp.detach()
    assert app.evaluate(OPFS_OWN) == []

    # Cancel pressed the moment the import starts: nothing is kept, and the same file imports afterwards.
    app.evaluate("() => { document.getElementById('checkpoint-convert').click(); "
                 "document.getElementById('checkpoint-cancel').click(); }")
    expect(app.locator("#checkpoint-message")).to_have_text("Import cancelled; nothing was kept.",
                                                             timeout=RUN_TIMEOUT_MS)
    assert app.evaluate(OPFS_OWN) == []
    expect(app.locator('#models-list li[id^="model-own-"]')).to_have_count(0)
    import_as(app, "After a cancel")


def without_vae(path):
    """The tiny single file with its VAE's entries taken out of the header (the bytes stay; nothing points at them)."""
    raw = SINGLE_FILE.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    kept = json.dumps({k: v for k, v in header.items() if not k.startswith("first_stage_model.")}).encode()
    path.write_bytes(len(kept).to_bytes(8, "little") + kept + raw[8 + length:])
    return path


def test_a_checkpoint_without_a_vae_borrows_the_installed_sdxl_models(panel, tmp_path, manifest_entry):
    app = panel
    tiny = app.locator("#model-tiny-sdxl-turbo")
    if tiny.get_attribute("data-state") == "not-installed":  # (the page may be installing it already)
        tiny.get_by_role("button", name="Install", exact=True).click()
    expect(tiny).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    path = without_vae(tmp_path / "no-vae.safetensors")
    pick(app, path)
    expect(app.locator("#checkpoint-found")).to_contain_text(
        "SDXL UNet + CLIP-L + bigG, f16, 4.3 MB (no VAE inside: SDXL's VAE will be used)")
    import_as(app, "Without a VAE")
    fill(app, seed="5", steps="1")
    png = generate_and_download(app)[1]

    # CPython: the same conversion, with the tiny SDXL-Turbo's VAE decoder beside it.
    out = tmp_path / "converted"
    convert(single_file(path), out)
    (out / "vae_decoder").mkdir()
    shutil.copy(ROOT / "models" / "tiny-sdxl-turbo" / "vae_decoder" / "model.onnx", out / "vae_decoder" / "model.onnx")
    pipe = run(SDXLTurbo.load(OrtRuntime(out), manifest_entry))
    expected = to_uint8(run(pipe.generate(read_parameters(png)["prompt"], 5, 1, 64, 64)))
    got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert np.abs(got - expected).max() <= PIXEL_TOLERANCE
