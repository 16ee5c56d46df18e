"""sha256s from the host: what the Hub's answers must say before a byte is fetched, and how the recorded
answer names the files of an install (the browser side is tested in test_browser_hub.py)."""

import pytest

from app.store.hub import HostError, ask_host, host_file, unresolved, with_host_hashes
from app.store.layout import bundle_state, hash_origin, record_for
from conftest import run

COMMIT = "a1" * 20
SHA = "5e" * 32
URL = "https://huggingface.co/webnn/sdxl-turbo/resolve/main/onnx/text_encoder_model_q4f16.onnx"
FILE = {"path": "onnx/text_encoder_model_q4f16.onnx", "url": URL, "size": 124_433_929, "sha256": None,
        "sha256_from": "host"}
PINNED = {"path": "scheduler_config.json", "url": "/sdxl/scheduler_config.json", "size": 420, "sha256": "73" * 32}
ENTRY = {"id": "m", "variant": "q4f16", "files": [FILE, PINNED]}


def info(size=FILE["size"], oid=SHA):
    return {"type": "file", "path": FILE["path"], "size": size, "oid": "0" * 40,
            "lfs": {"oid": oid, "size": size, "pointerSize": 134}}


def test_the_host_answer_gives_the_hash_and_the_commit_to_download_from():
    record = host_file(FILE, COMMIT, info())
    assert record == {"url": URL, "size": FILE["size"], "sha256": SHA, "commit": COMMIT,
                      "resolved_url": f"https://huggingface.co/webnn/sdxl-turbo/resolve/{COMMIT}/{FILE['path']}"}


@pytest.mark.parametrize("answer, words", [
    (info(size=FILE["size"] + 1), "is 124,433,930 bytes, but this site lists 124,433,929"),
    (None, "has no onnx/text_encoder_model_q4f16.onnx"),
    ({"type": "file", "path": FILE["path"], "size": 1234, "oid": "0" * 40}, "gives no sha256"),
    (info(oid="not-a-hash"), "gives no sha256"),
])
def test_a_host_answer_that_does_not_fit_stops_the_install(answer, words):
    with pytest.raises(HostError, match=words):
        host_file(FILE, COMMIT, answer)


def test_ask_host_resolves_the_revision_once_and_asks_for_every_path_at_that_commit():
    calls = []
    second = dict(FILE, path="onnx/vae_decoder_model_q4f16.onnx", url=URL.replace("text_encoder", "vae_decoder"),
                  size=97_617_257)

    async def get_json(url, form=None):
        calls.append((url, form))
        if url.endswith("/revision/main"):
            return {"sha": COMMIT}
        return [info(), dict(info(size=second["size"], oid="7" * 64), path=second["path"])]

    records = run(ask_host([FILE, second], get_json))
    assert calls == [("https://huggingface.co/api/models/webnn/sdxl-turbo/revision/main", None),
                     (f"https://huggingface.co/api/models/webnn/sdxl-turbo/paths-info/{COMMIT}",
                      {"paths": [FILE["path"], second["path"]]})]
    assert records[FILE["path"]]["sha256"] == SHA and records[second["path"]]["sha256"] == "7" * 64


def test_a_revision_without_a_commit_is_refused():
    async def get_json(url, form=None):
        return {"error": "Repository not found"}

    with pytest.raises(HostError, match="did not say which commit"):
        run(ask_host([FILE], get_json))


def test_the_recorded_answer_names_the_files_and_is_kept_in_the_install_record():
    assert unresolved(ENTRY) == [FILE]
    record = {FILE["path"]: host_file(FILE, COMMIT, info())}
    entry = with_host_hashes(ENTRY, record)
    assert unresolved(entry) == []
    f = entry["files"][0]
    assert (f["sha256"], f["commit"], f["sha256_from"]) == (SHA, COMMIT, "host") and COMMIT in f["url"]
    assert record_for(entry) == {"variant": "q4f16", "files": {FILE["path"]: SHA, PINNED["path"]: PINNED["sha256"]},
                                 "sha256_from_host": [FILE["path"]]}
    sizes = {SHA: FILE["size"], PINNED["sha256"]: 420}
    assert bundle_state(entry, sizes, record_for(entry))[0] == "installed"
    assert bundle_state(ENTRY, sizes, record_for(entry))[0] == "partial"  # without the record: not the same bytes
    assert hash_origin(entry["files"]) == "sha256 from the host (huggingface.co) for 1 file, pinned for the other 1"
    assert hash_origin([PINNED]) == "sha256 pinned for every file"


def test_an_answer_recorded_for_another_url_or_size_is_not_used():
    record = {FILE["path"]: host_file(FILE, COMMIT, info())}
    moved = dict(ENTRY, files=[dict(FILE, url=URL.replace("main", "v2")), PINNED])
    resized = dict(ENTRY, files=[dict(FILE, size=5), PINNED])
    assert unresolved(with_host_hashes(moved, record)) and unresolved(with_host_hashes(resized, record))


# A checkpoint file of a variant converted at install: its size from the host too, and maybe SDXL-Turbo's bytes.
UNET = {"path": "unet/diffusion_pytorch_model.fp16.safetensors", "size": 4_519_210_760, "sha256": None,
        "sha256_from": "host", "size_from": "host",
        "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-refiner-1.0/resolve/main/unet/"
               "diffusion_pytorch_model.fp16.safetensors"}
TURBO_VAE = "https://huggingface.co/stabilityai/sdxl-turbo/resolve/main/vae/diffusion_pytorch_model.fp16.safetensors"
VAE = dict(UNET, path="vae/diffusion_pytorch_model.fp16.safetensors", size=167_335_342,
           url=UNET["url"].replace(UNET["path"], "vae/diffusion_pytorch_model.fp16.safetensors"),
           reuse={"model": "sdxl-turbo", "part": "vae_decoder", "if_same_as": TURBO_VAE})


def test_a_checkpoint_file_takes_the_hosts_size_within_a_headers_difference():
    near = host_file(UNET, COMMIT, dict(info(size=UNET["size"] - 4096), path=UNET["path"]))
    assert near["size"] == UNET["size"] - 4096
    entry = with_host_hashes({"files": [UNET]}, {UNET["path"]: near})
    assert entry["files"][0]["size"] == UNET["size"] - 4096 and not unresolved(entry)  # the download checks this size
    with pytest.raises(HostError, match="this site expects about 4,519,210,760"):  # the fp32 file, say
        host_file(UNET, COMMIT, dict(info(size=2 * UNET["size"]), path=UNET["path"]))


@pytest.mark.parametrize("turbo_oid, same", [(SHA, True), ("7" * 64, False)])
def test_a_file_that_may_be_sdxl_turbos_is_compared_by_the_hosts_sha256s(turbo_oid, same):
    calls = []

    async def get_json(url, form=None):
        calls.append(url)
        if url.endswith("/revision/main"):
            return {"sha": COMMIT}
        oid = turbo_oid if "/sdxl-turbo/" in url else SHA
        return [dict(info(size=VAE["size"] + 8, oid=oid), path=VAE["path"])]

    record = run(ask_host([VAE], get_json))
    assert any("/api/models/stabilityai/sdxl-turbo/paths-info/" in c for c in calls)
    assert record[VAE["path"]]["same_as"] == turbo_oid
    (f,) = with_host_hashes({"files": [VAE]}, record)["files"]
    assert f["reuse"]["same"] is same and f["size"] == VAE["size"] + 8
