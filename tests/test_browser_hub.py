"""Files whose sha256 nobody publishes take it from the host at install ("sha256_from": "host"), against a
local stand-in for the Hugging Face Hub API (revision -> commit, paths-info, resolve). Three copies of the
tiny model differ only in what their host says: the honest one installs, records the host's hashes and
still generates on a later visit with the host gone; the one that lies about a size is refused before a
byte is fetched; the one that lies about a hash is downloaded and refused. Nothing wrong is ever marked
installed."""

import hashlib
import io
import json
import re
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline.bundle import to_uint8
from conftest import ROOT, RUN_TIMEOUT_MS, expect_ready, run, tiny_by_default
from test_browser import fill, generate_and_download
from test_browser_real_interfaces import offering, opfs_json

pytestmark = pytest.mark.browser

TINY = ROOT / "models" / "tiny-sdxl-turbo"
COMMIT = "feed" + "0" * 36
FROM_HOST = ("unet/model.onnx_data", "vae_decoder/model.onnx")
SHARED = ("scheduler_config.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
          "tokenizer_2/tokenizer.json", "tokenizer_2/tokenizer_config.json")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hub_entry(repo: str) -> dict:
    """The tiny model as the real SDXL-Turbo entry lays it out: two files from a Hub repository with the
    hash from the host, the tokenizers and scheduler config from the site's /sdxl/, the rest pinned."""
    entry = json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo.json").read_text())
    (variant,) = entry["variants"]
    files = []
    for f in variant["files"]:
        if f["path"] in FROM_HOST:
            f = dict(f, url=f"https://huggingface.co/lantern-test/{repo}/resolve/main/{f['path']}", sha256=None,
                     sha256_from="host")
        elif f["path"] in SHARED:
            f = dict(f, url=f"/sdxl/{f['path']}")
        files.append(f)
    return dict(entry, id=f"hub-{repo}", name=f"Hub {repo}", bench=False, variants=[dict(variant, files=files)])


class FakeHub:
    """The three Hub calls the installer makes; "size-liar" reports every size one byte too big,
    "hash-liar" reports the sha256 of other bytes."""

    CORS = {"Access-Control-Allow-Origin": "*"}

    def __init__(self):
        self.requests = []

    def __call__(self, route):
        request = route.request
        path = urlparse(request.url).path
        self.requests.append((request.method, path))
        if m := re.fullmatch(r"/api/models/lantern-test/([\w-]+)/revision/main", path):
            return route.fulfill(json={"sha": COMMIT}, headers=self.CORS)
        if (m := re.fullmatch(rf"/api/models/lantern-test/([\w-]+)/paths-info/{COMMIT}", path)) and \
                request.method == "POST":
            return route.fulfill(json=[self.info(m.group(1), p) for p in parse_qs(request.post_data)["paths"]],
                                 headers=self.CORS)
        if m := re.fullmatch(rf"/lantern-test/[\w-]+/resolve/{COMMIT}/(.+)", path):
            return route.fulfill(body=(TINY / m.group(1)).read_bytes(), headers=self.CORS,
                                 content_type="application/octet-stream")
        route.fulfill(status=404, headers=self.CORS)

    @staticmethod
    def info(repo, path):
        data = (TINY / path).read_bytes()
        size = len(data) + (repo == "size-liar")
        oid = sha256(b"other bytes" if repo == "hash-liar" else data)
        return {"type": "file", "path": path, "size": size, "oid": "0" * 40,
                "lfs": {"oid": oid, "size": size, "pointerSize": 134}}


def install(page, model_id):
    page.locator(f"#model-{model_id}").get_by_role("button", name="Install", exact=True).click()


def test_hashes_from_the_host_are_checked_recorded_and_never_trusted_over_the_bytes(browser, server, cpu_pipeline):
    hub = FakeHub()
    context = tiny_by_default(offering(browser.new_context(accept_downloads=True, service_workers="block"),
                                       hub_entry("honest"), hub_entry("size-liar"), hub_entry("hash-liar")))
    context.route("https://huggingface.co/**", hub)
    page = context.new_page()
    page.goto(server)
    expect_ready(page, "webgpu")

    # A host that gives another size than the site's list: refused before any of its bytes are fetched.
    install(page, "hub-size-liar")
    expect(page.locator("#model-hub-size-liar-message")).to_contain_text(
        "huggingface.co says unet/model.onnx_data in lantern-test/size-liar is 1,037,825 bytes, but this site "
        "lists 1,037,824", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#model-hub-size-liar")).to_have_attribute("data-state", "not-installed")
    assert not any("/size-liar/resolve/" in path for _, path in hub.requests)

    # A host whose hash does not match the bytes it serves: the bytes are refused.
    install(page, "hub-hash-liar")
    expect(page.locator("#model-hub-hash-liar-message")).to_contain_text(
        "unet/model.onnx_data arrived damaged (its bytes do not match the sha256 huggingface.co gave for it)",
        timeout=RUN_TIMEOUT_MS)
    assert page.locator("#model-hub-hash-liar").get_attribute("data-state") == "partial"
    assert "unet/model.onnx_data" not in opfs_json(page, "hub-hash-liar", "host_hashes.json")  # asked again next time

    # An honest host: installed, its hashes recorded with the install and named in the Models panel.
    install(page, "hub-honest")
    expect(page.locator("#model-hub-honest")).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#model-hub-honest-details")).to_contain_text(
        "sha256 from the host (huggingface.co) for 2 files, pinned for the other 8")
    record = opfs_json(page, "hub-honest", "installed.json")
    assert record["sha256_from_host"] == list(FROM_HOST)
    assert {p: record["files"][p] for p in FROM_HOST} == {p: sha256((TINY / p).read_bytes()) for p in FROM_HOST}
    assert {r["commit"] for r in opfs_json(page, "hub-honest", "host_hashes.json").values()} == {COMMIT}

    # A later visit with the host unreachable: still installed, and it draws the tiny model's picture.
    context.unroute("https://huggingface.co/**", hub)
    context.route("https://huggingface.co/**", lambda route: route.abort())
    page.reload()
    expect_ready(page, "webgpu")
    expect(page.locator("#model-hub-honest")).to_have_attribute("data-state", "installed")
    page.get_by_label("Model", exact=True).select_option("hub-honest")
    fill(page, prompt="a photo of a cat", seed="11", steps="2")
    _, png = generate_and_download(page)
    context.close()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    expected = to_uint8(run(cpu_pipeline.generate("a photo of a cat", 11, 2, 64, 64))).astype(int)
    assert np.abs(image - expected).max() <= 1
