"""One download for every GPU: on SwiftShader (WebGPU without shader-f16) a model offering q4f16 then q4
gets q4, which downloads the q4f16 files and converts them in the worker to fp32 activations. The
conversion in Pyodide writes the same bytes as on CPython, the picture matches CPython over those files,
Verify catches a flipped bit in a converted file (Repair converts again), and a conversion cut short by
closing the tab is done again on the next visit."""

import hashlib
import io
import shutil

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline.bundle import to_uint8
from app.pipeline.turbo import SDXLTurbo
from app.runtime.ort import OrtRuntime
from app.worker.device import pick_variant
from conftest import RUN_TIMEOUT_MS, expect_ready, run
from test_browser import fill, generate_and_download
from test_browser_hub import opfs_json
from test_browser_real_interfaces import FLIP_BYTE, offering, q4f16_entry
from test_onnx_fp32 import convert
from test_real_interfaces import PARTS, Q4F16

pytestmark = pytest.mark.browser

MODEL = "tiny-q4"

# What an interrupted conversion leaves: no installed.json, no converted files, a partial one.
INTERRUPT = """async ([model, converted]) => {
    const models = await (await navigator.storage.getDirectory()).getDirectoryHandle('models');
    const folder = await models.getDirectoryHandle(model);
    for (const name of ['installed.json', ...converted]) await folder.removeEntry(name);
    const write = async (name, text) => {
        const writable = await (await folder.getFileHandle(name, {create: true})).createWritable();
        await writable.write(text);
        await writable.close();
    };
    await write('installing.json', JSON.stringify({variant: 'q4'}));
    await write('unet-data.partial', 'half a conversion');
}"""

NAMES = """async (model) => {
    const models = await (await navigator.storage.getDirectory()).getDirectoryHandle('models');
    const names = [];
    for await (const name of (await models.getDirectoryHandle(model)).keys()) names.push(name);
    return names;
}"""


def two_variant_entry():
    entry = q4f16_entry()
    (q4f16,) = entry["variants"]
    q4 = {k: v for k, v in q4f16.items() if k != "parts"}
    q4.update(id="q4", precision="q4", requires={"webgpu": True, "shader_f16": False},
              convert={"from": PARTS, "to": "fp32-activations"})
    return dict(entry, id=MODEL, name="Tiny SDXL-Turbo, one download (test model)",
                variants=[dict(q4f16, requires={"webgpu": True, "shader_f16": True}), q4])


def test_without_shader_f16_the_q4f16_download_is_converted_and_generates(browser, server, tmp_path):
    context = offering(browser.new_context(accept_downloads=True, service_workers="block"), two_variant_entry())
    page = context.new_page()
    page.goto(server)
    expect_ready(page, "webgpu")
    row, message = page.locator(f"#model-{MODEL}"), page.locator(f"#model-{MODEL}-message")
    details = page.locator(f"#model-{MODEL}-details")
    expect(details).to_contain_text("q4 variant")
    expect(details).to_contain_text("converted here for 32-bit math")
    expect(details).to_contain_text("q4f16 needs 16-bit GPU shaders (shader-f16), which this device lacks")
    row.get_by_role("button", name="Install", exact=True).click()
    expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    converted = opfs_json(page, MODEL, "installed.json")["converted"]

    # The same conversion on CPython writes the same bytes.
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(Q4F16 / name, tmp_path / name)
    shutil.copy(Q4F16 / "scheduler_config.json", tmp_path)
    for part, source in PARTS.items():
        (tmp_path / part).mkdir()
        convert(Q4F16 / source, tmp_path / part / "model.onnx")
    for path, (sha256, size) in converted.items():
        data = (tmp_path / path).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha256, size), path
    assert set(converted) == {f"{p}/{n}" for p in PARTS for n in ("model.onnx", "model.onnx_data")}

    page.get_by_label("Model", exact=True).select_option(MODEL)
    fill(page, prompt="a photo of a cat", seed="5", steps="2")
    _, png = generate_and_download(page)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    q4 = two_variant_entry()["variants"][1]  # its parts load from {part}/model.onnx, as converted
    cpu = run(SDXLTurbo.load(OrtRuntime(tmp_path), pick_variant(dict(two_variant_entry(), variants=[q4]), {})))
    expected = to_uint8(run(cpu.generate("a photo of a cat", 5, 2, 64, 64))).astype(int)
    assert np.abs(image - expected).max() <= 1

    # A flipped bit in a converted file: Verify finds it, Repair converts again.
    page.evaluate(FLIP_BYTE, [MODEL, converted["unet/model.onnx_data"][0], 1000])
    row.get_by_role("button", name="Verify").click()
    expect(message).to_contain_text("unet/model.onnx_data did not match its sha256", timeout=RUN_TIMEOUT_MS)
    assert row.get_attribute("data-state") == "damaged"
    row.get_by_role("button", name="Repair").click()
    expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    assert opfs_json(page, MODEL, "installed.json")["converted"] == converted

    # A tab closed mid-conversion leaves the verified download, a half-written converted file and the
    # wish to install, but no installed.json: the next visit converts again and ends installed.
    page.evaluate(INTERRUPT, [MODEL, [sha for sha, _ in converted.values()]])
    page.reload()
    expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    assert opfs_json(page, MODEL, "installed.json")["converted"] == converted
    assert not [n for n in page.evaluate(NAMES, MODEL) if n.endswith(".partial")]
    context.close()
