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
import shutil
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.pipeline.bundle import to_uint8
from app.store.png import read_parameters
from checkpoints import REFINER_FILE, REFINER_REPO_FILES, as_diffusers_files, convert, converted_bytes, cpython_refined
from conftest import ROOT, RUN_TIMEOUT_MS, expect_ready, run, tiny_by_default
from test_browser import PIXEL_TOLERANCE, PROMPT, fill, generate_and_download, press_and_wait
from test_browser_checkpoint import UNSTALL, app_worker, stall_reads
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


# --- the site's refiner: safetensors from the Hub, converted at install -------------------------------------

REFINER_REPO, TURBO_REPO = "lantern-test/refiner", "lantern-test/turbo"


class RefinerHub:
    """The Hub as the SDXL refiner's entry meets it: the refiner repository's three fp16 files, and the SDXL-Turbo
    repository's bigG and VAE files, whose sha256 equal the refiner's when `same` (their bytes are never fetched)."""

    def __init__(self, files: dict):
        self.files, self.same, self.requests = files, False, []

    def __call__(self, route):
        request = route.request
        path = urlparse(request.url).path
        self.requests.append(path)
        if re.fullmatch(r"/api/models/lantern-test/(refiner|turbo)/revision/main", path):
            return route.fulfill(json={"sha": COMMIT}, headers=FakeHub.CORS)
        if m := re.fullmatch(rf"/api/models/lantern-test/(refiner|turbo)/paths-info/{COMMIT}", path):
            return route.fulfill(json=[self.info(m.group(1), p) for p in parse_qs(request.post_data)["paths"]],
                                 headers=FakeHub.CORS)
        if m := re.fullmatch(rf"/{REFINER_REPO}/resolve/{COMMIT}/(.+)", path):
            return route.fulfill(body=self.files[m.group(1)], headers=FakeHub.CORS,
                                 content_type="application/octet-stream")
        route.fulfill(status=404, headers=FakeHub.CORS)

    def info(self, repo, path):
        data = self.files[path] if repo == "refiner" or self.same else b"SDXL-Turbo's own " + self.files[path]
        return {"type": "file", "path": path, "size": len(data), "oid": "0" * 40,
                "lfs": {"oid": sha256(data), "size": len(data), "pointerSize": 134}}

    def downloaded(self) -> set:
        return {p.split(f"/resolve/{COMMIT}/", 1)[1] for p in self.requests if "/resolve/" in p}


# A conversion at install: its reads of a downloaded file (stored under its sha256).
STALL_CONVERSION = stall_reads("/^[0-9a-f]{64}$/.test(this.name) && end - start > 100000")


def tiny_refiner_entry(files: dict) -> dict:
    """The site's SDXL refiner entry, with the tiny family's shapes and variants (q4f16 for shader-f16, which
    SwiftShader lacks, then q4) and the tiny SDXL-Turbo as the model it refines and may reuse files of. Every
    size is listed 3 bytes off: the host's is taken (headers vary)."""
    entry = json.loads((ROOT / "models_manifest" / "sdxl-refiner.json").read_text())
    family = json.loads((ROOT / "models" / "templates" / "tiny-sdxl" / "family.json").read_text())
    variant = entry["variants"][-1]
    listed = []
    for f in variant["files"]:
        f = dict(f, url=f"https://huggingface.co/{REFINER_REPO}/resolve/main/{f['path']}", size=len(files[f["path"]]) + 3)
        if "reuse" in f:
            f["reuse"] = dict(f["reuse"], model="tiny-sdxl-turbo",
                              if_same_as=f"https://huggingface.co/{TURBO_REPO}/resolve/main/{f['path']}")
        listed.append(f)
    variants = [dict(v, disk_bytes=sum(f["size"] for f in listed), files=listed,
                     convert=dict(variant["convert"], to=v["precision"], family="tiny-sdxl",
                                  bytes=converted_bytes("tiny-sdxl", precision=v["precision"])))
                for v in family["variants"]]
    return dict(entry, id="hub-refiner", name="Hub refiner", refines=["tiny-sdxl-turbo"],
                defaults=family["refiner"]["defaults"], resolutions=family["resolutions"], variants=variants)


def refine_and_download(page) -> bytes:
    page.get_by_label("Model", exact=True).select_option("tiny-sdxl-turbo")
    fill(page, seed="90", steps="2")
    press_and_wait(page)
    press_and_wait(page, "Refine")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    return open(info.value.path(), "rb").read()


def test_the_site_refiner_is_converted_at_install_from_the_hub_and_files_the_same_as_turbo_are_reused(
        browser, server, tmp_path, cpu_pipeline):
    """The refiner's entry downloads fp16 safetensors (hashes and sizes from the host), converts them to the 4-bit
    model at install and keeps only that. Where the host says its bigG and VAE are the bytes SDXL-Turbo was made
    from, they are not downloaded: the installed SDXL-Turbo's are copied. Either way Refine runs it as CPython
    runs the same conversion."""
    paths = as_diffusers_files(REFINER_FILE, tmp_path / "repo")
    hub = RefinerHub({p: path.read_bytes() for p, path in paths.items()})
    entry = tiny_refiner_entry(hub.files)

    def manifest(route):  # the site's tiny refiner left out: Refine takes the one under test
        body = json.loads(route.fetch().text())
        route.fulfill(json=dict(body, models=[m for m in body["models"] if m["id"] != "tiny-sdxl-refiner"] + [entry]))

    context = tiny_by_default(browser.new_context(accept_downloads=True, service_workers="block"))
    context.route("**/models_manifest.json", manifest)
    context.route("https://huggingface.co/**", hub)
    page = context.new_page()
    page.goto(server)
    expect_ready(page, "webgpu")
    row, message = page.locator("#model-hub-refiner"), page.locator("#model-hub-refiner-message")
    details = page.locator("#model-hub-refiner-details")
    expect(details).to_contain_text(
        "q4 variant, up to 2.6 MB download, converted here to 4-bit weights (8.5 MB kept; the download is removed)")
    expect(details).to_contain_text("q4f16 needs 16-bit GPU shaders (shader-f16), which this device lacks, so the q4")
    # (the page installs the model it starts on by itself)
    expect(page.locator("#model-tiny-sdxl-turbo")).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)

    # The host's bigG and VAE are not SDXL-Turbo's: all three files are downloaded, converted, then removed.
    install(page, "hub-refiner")
    expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    expect(message).to_contain_text("is installed and verified. Converted here in")
    assert hub.downloaded() == set(paths)
    record = opfs_json(page, "hub-refiner", "installed.json")
    assert record["reused"] == {} and set(record["files"]) == set(paths)
    kept = set(page.evaluate("""async () => {
        const models = await (await navigator.storage.getDirectory()).getDirectoryHandle('models');
        const names = [];
        for await (const name of (await models.getDirectoryHandle('hub-refiner')).keys()) names.push(name);
        return names;
    }"""))
    assert not kept & set(record["files"].values())  # no downloaded file is kept
    assert {sha for sha, _ in record["converted"].values()} <= kept
    png = refine_and_download(page)
    assert read_parameters(png)["refiner"] == "hub-refiner"
    convert({"unet": paths[REFINER_REPO_FILES["refiner_unet"]], "text_encoder_2": paths[REFINER_REPO_FILES["text_encoder_2"]],
             "vae": paths[REFINER_REPO_FILES["vae_decoder"]]}, tmp_path / "all")
    expected = cpython_refined(tmp_path / "all", cpu_pipeline, PROMPT)
    got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert np.abs(got - expected).max() <= PIXEL_TOLERANCE

    # Deleted, and installed again where the host says its bigG and VAE are SDXL-Turbo's: only the UNet is fetched.
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete model").click()
    expect(row).to_have_attribute("data-state", "not-installed", timeout=RUN_TIMEOUT_MS)
    hub.same, hub.requests = True, []
    install(page, "hub-refiner")
    expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    assert hub.downloaded() == {REFINER_REPO_FILES["refiner_unet"]}
    expect(message).to_contain_text(
        "text_encoder_2/model.fp16.safetensors was not downloaded: Tiny SDXL-Turbo (test model) was installed from "
        "the same bytes.")
    assert opfs_json(page, "hub-refiner", "installed.json")["reused"] == {
        REFINER_REPO_FILES["text_encoder_2"]: "tiny-sdxl-turbo", REFINER_REPO_FILES["vae_decoder"]: "tiny-sdxl-turbo"}
    again = refine_and_download(page)

    # Cancel during the conversion (its reads of the downloaded file held): the verified download stays, and
    # Install converts it again without fetching a byte.
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete model").click()
    expect(row).to_have_attribute("data-state", "not-installed", timeout=RUN_TIMEOUT_MS)
    worker = app_worker(page)
    worker.evaluate(STALL_CONVERSION)
    install(page, "hub-refiner")
    expect(row).to_have_attribute("data-state", "converting", timeout=RUN_TIMEOUT_MS)  # held there
    row.get_by_role("button", name="Cancel install").click()
    expect(message).to_have_text("Conversion cancelled; the verified download is kept. Install converts it again; "
                                 "Delete frees the space.", timeout=RUN_TIMEOUT_MS)
    expect(row).to_have_attribute("data-state", "partial")
    worker.evaluate(UNSTALL)
    hub.requests = []
    row.get_by_role("button", name="Resume", exact=True).click()
    expect(row).to_have_attribute("data-state", "installed", timeout=RUN_TIMEOUT_MS)
    assert hub.downloaded() == set()
    context.close()
    convert({"unet": paths[REFINER_REPO_FILES["refiner_unet"]]}, tmp_path / "reused",
            borrowed={"text_encoder_2", "vae_decoder"})
    for part in ("text_encoder_2", "vae_decoder"):
        shutil.copytree(TINY / part, tmp_path / "reused" / part)
    expected_again = cpython_refined(tmp_path / "reused", cpu_pipeline, PROMPT)
    got_again = np.asarray(Image.open(io.BytesIO(again)).convert("RGB")).astype(int)
    assert np.abs(got_again - expected_again).max() <= PIXEL_TOLERANCE
    # The tiny checkpoint's bigG and VAE are the tiny SDXL-Turbo's weights (there in fp16 and 4-bit, here in fp32):
    # reused or downloaded, Refine gives the visitor the same picture, to rounding.
    assert np.abs(got_again - got).max() <= 2 * PIXEL_TOLERANCE
