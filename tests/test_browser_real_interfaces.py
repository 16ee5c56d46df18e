"""fp16 tensors across the real web bridge: the tiny bundle in the webnn q4f16 layout (MatMulNBits int4
weights, fp16 in and out, int32/int64 ids, files under onnx/) installs (each single-file graph split into a
graph and its weights, verified and repaired like any converted file) and generates in headless Chromium;
so does a checkpoint converted at install into the q4f16 graph templates.
SwiftShader has no shader-f16, so these run on onnxruntime-web's CPU (wasm) back end, which does run these
graphs (MatMulNBits included); the image must match the CPython pipeline over the same files."""

import hashlib
import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline.bundle import to_uint8
from app.pipeline.turbo import SDXLTurbo
from app.runtime.ort import OrtRuntime
from app.worker.device import pick_variant
from checkpoints import SINGLE_FILE, convert, converted_bytes, single_file
from conftest import CHROMIUM_ARGS, ROOT, RUN_TIMEOUT_MS, expect_ready, run
from test_browser import fill, generate_and_download, wait_counter
from test_real_interfaces import CONDITIONING, FP16_FIDELITY, FREE_DIMENSIONS, PARTS, Q4F16, q4f16_files

pytestmark = pytest.mark.browser

MODEL = "tiny-q4f16"


def q4f16_entry():
    """The tiny model's manifest entry with one variant: the q4f16 layout's files, served like the others."""
    entry = json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo.json").read_text())
    files = q4f16_files()
    variant = {"id": "q4f16", "precision": "q4f16", "requires": {"webgpu": False, "shader_f16": False},
               "gpu_memory_bytes": 100_000_000, "disk_bytes": sum(f["size"] for f in files),
               "convert": {"from": PARTS, "to": "external-data"}, "conditioning_outputs": CONDITIONING,
               "free_dimensions": FREE_DIMENSIONS,
               "files": files}
    return dict(entry, id=MODEL, name="Tiny SDXL-Turbo q4f16 (test model)", bench=False, variants=[variant])


FLIP_BYTE = """async ([model, name, at]) => {
    const models = await (await navigator.storage.getDirectory()).getDirectoryHandle('models');
    const handle = await (await models.getDirectoryHandle(model)).getFileHandle(name);
    const byte = new Uint8Array(await (await handle.getFile()).slice(at, at + 1).arrayBuffer());
    const writable = await handle.createWritable({keepExistingData: true});
    await writable.write({type: 'write', position: at, data: new Uint8Array([byte[0] ^ 1])});
    await writable.close();
}"""


def opfs_json(page, model_id, name):
    return page.evaluate("""async ([model, name]) => {
        const models = await (await navigator.storage.getDirectory()).getDirectoryHandle('models');
        const folder = await models.getDirectoryHandle(model);
        return JSON.parse(await (await (await folder.getFileHandle(name)).getFile()).text());
    }""", [model_id, name])


def offering(context, *entries):
    """The context's pages get the site's model list with `entries` added (service workers blocked)."""
    def manifest(route):
        body = json.loads(route.fetch().text())
        route.fulfill(json=dict(body, models=body["models"] + list(entries)))

    context.route("**/models_manifest.json", manifest)
    return context


def without_webgpu(browser_type):
    return browser_type.launch(executable_path="/usr/bin/chromium",
                               args=[a for a in CHROMIUM_ARGS if a != "--enable-unsafe-webgpu"])


def test_q4f16_layout_installs_and_generates_through_the_web_bridge(browser_type, server):
    browser = without_webgpu(browser_type)
    try:
        extra = q4f16_entry()
        context = offering(browser.new_context(accept_downloads=True, service_workers="block"), extra)
        page = context.new_page()
        page.goto(server)
        expect_ready(page, "wasm")
        row = page.locator(f"#model-{MODEL}")
        row.get_by_role("button", name="Install", exact=True).click()
        expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
        # Each single-file graph was split at install into a graph and its weights, both recorded.
        converted = opfs_json(page, MODEL, "installed.json")["converted"]
        assert set(converted) == {f"{p}/{n}" for p in PARTS for n in ("model.onnx", "model.onnx_data")}
        sizes = {f["path"]: f["size"] for f in extra["variants"][0]["files"]}
        for part, source in PARTS.items():
            graph, data = converted[f"{part}/model.onnx"][1], converted[f"{part}/model.onnx_data"][1]
            assert graph < sizes[source] and data > 0, part  # (every tensor of 1 KB or more moved out)
        page.get_by_label("Model", exact=True).select_option(MODEL)
        fill(page, prompt="a photo of a cat", seed="5", steps="2")
        _, png = generate_and_download(page)
        # A flipped bit in the split-off weights: Verify finds it, Repair splits the download again.
        message = page.locator(f"#model-{MODEL}-message")
        page.evaluate(FLIP_BYTE, [MODEL, converted["unet/model.onnx_data"][0], 1000])
        row.get_by_role("button", name="Verify").click()
        expect(message).to_contain_text("unet/model.onnx_data did not match its sha256", timeout=RUN_TIMEOUT_MS)
        row.get_by_role("button", name="Repair").click()
        expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
        assert opfs_json(page, MODEL, "installed.json")["converted"] == converted
    finally:
        browser.close()
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    cpu = run(SDXLTurbo.load(OrtRuntime(Q4F16), dict(pick_variant(extra, {}), parts=PARTS)))  # the single files
    expected = to_uint8(run(cpu.generate("a photo of a cat", 5, 2, 64, 64))).astype(int)
    diff = np.abs(img - expected)
    print(f"q4f16 in the browser (wasm) vs CPython: max |diff| {diff.max()} levels, mean {diff.mean():.4f}")
    # within the fp16 fidelity on floats, which is at most this many levels once both sides are rounded
    assert diff.max() <= math.ceil(FP16_FIDELITY * 255)


def test_a_checkpoint_converted_at_install_to_q4f16_generates_through_the_web_bridge(browser_type, server, tmp_path):
    """A site model made at install from a checkpoint, in its q4f16 variant (what a GPU with shader-f16 gets):
    the worker fills the q4f16 graph templates (fp16 floats and scales), and the picture matches CPython's
    q4f16 conversion of the same file."""
    parts = ("unet", "text_encoder", "text_encoder_2", "vae_decoder")
    path = f"/models/tiny-sdxl-checkpoint/{SINGLE_FILE.name}"
    data = SINGLE_FILE.read_bytes()
    variant = {"id": "q4f16", "precision": "q4f16", "requires": {"webgpu": False, "shader_f16": False},
               "gpu_memory_bytes": 100_000_000, "disk_bytes": len(data),
               "convert": {"from": "checkpoint", "to": "q4f16", "family": "tiny-sdxl",
                           "bytes": converted_bytes("tiny-sdxl", parts, "q4f16")},
               "files": [{"path": SINGLE_FILE.name, "url": path, "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()}]}
    entry = dict(q4f16_entry(), id="ckpt-q4f16", name="Checkpoint q4f16 (test model)", variants=[variant])
    browser = without_webgpu(browser_type)
    try:
        page = offering(browser.new_context(accept_downloads=True, service_workers="block"), entry).new_page()
        page.goto(server)
        expect_ready(page, "wasm")
        wait_counter(page, "measured", 1, "#tier")  # the first-visit bench is over: its presets cannot override
        row = page.locator("#model-ckpt-q4f16")
        row.get_by_role("button", name="Install", exact=True).click()
        expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
        converted = opfs_json(page, "ckpt-q4f16", "installed.json")["converted"]
        unet_f16 = (ROOT / "models" / "templates" / "tiny-sdxl" / "unet.f16.onnx").read_bytes()
        assert converted["unet/model.onnx"][0] == hashlib.sha256(unet_f16).hexdigest()
        page.get_by_label("Model", exact=True).select_option("ckpt-q4f16")
        fill(page, prompt="a photo of a cat", seed="5", steps="2")
        _, png = generate_and_download(page)
    finally:
        browser.close()
    convert(single_file(), tmp_path, precision="q4f16")
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    cpu = run(SDXLTurbo.load(OrtRuntime(tmp_path), pick_variant(entry, {})))
    expected = to_uint8(run(cpu.generate("a photo of a cat", 5, 2, 64, 64))).astype(int)
    diff = np.abs(img - expected)
    print(f"checkpoint q4f16 in the browser (wasm) vs CPython: max |diff| {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= math.ceil(FP16_FIDELITY * 255)


def test_a_first_visit_offers_sdxl_turbo_in_the_variant_this_device_gets_and_remembers_the_choice(browser, server):
    """On SwiftShader (WebGPU, no shader-f16) a fresh visit starts on SDXL-Turbo, whose row names the q4
    variant (the q4f16 download, converted here), its download size, why not q4f16, what it needs, its
    licence and where its hashes come from;
    the test model says it draws test patterns. A model chosen once is the one the next visit starts on."""
    context = browser.new_context(service_workers="block")
    page = context.new_page()
    page.goto(server)
    expect_ready(page, "webgpu")
    model = page.get_by_label("Model", exact=True)
    expect(model).to_have_value("sdxl-turbo")
    details = page.locator("#model-sdxl-turbo-details")
    for words in ("q4 variant, 2.67 GB download, converted here for 32-bit math (up to 5.34 GB more on disk)",
                  "q4f16 needs 16-bit GPU shaders (shader-f16), which this device lacks, so the q4 variant",
                  "Needs WebGPU, GPU buffers of 256 MiB, about 8 GB of GPU memory",
                  "License: Stability AI Community License",
                  "sha256 from the host (huggingface.co) for 3 files, pinned for the other 6"):
        expect(details).to_contain_text(words)
    tiny = page.locator("#model-tiny-sdxl-turbo-details")
    expect(tiny).to_contain_text("test pattern")
    expect(tiny).to_contain_text("License: CC0-1.0")
    model.select_option("tiny-sdxl-turbo")
    page.reload()
    expect_ready(page, "webgpu")
    expect(model).to_have_value("tiny-sdxl-turbo")
    context.close()
