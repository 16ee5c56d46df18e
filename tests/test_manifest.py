"""Model manifest v1: the checks the app and the build share, the committed entries, the refresh tool."""

import copy
import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.worker.device import pick_variant
from app.store.manifest import (ADDON_FIELDS, FILE_REQUIRED_FIELDS, MODEL_FIELDS, REQUIRED_FIELDS,
                                VARIANT_REQUIRED_FIELDS, ManifestError, bundle_sha256, load_manifest, model_problems)
from conftest import ROOT

MANIFEST_DIR = ROOT / "models_manifest"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(MANIFEST_DIR))

import build  # noqa: E402
import refresh  # noqa: E402

TINY = ("tiny-sdxl-turbo", "tiny-sdxl-refiner", "tiny-sdxl-turbo-vae-encoder")
REVISION = "fbda35297a8280789ffe2e25206800702fa5c4c1"


def entry_file(model_id: str) -> dict:
    return json.loads((MANIFEST_DIR / f"{model_id}.json").read_text())


@pytest.fixture
def good():
    return entry_file("tiny-sdxl-turbo")


def first_file(e):
    return e["variants"][0]["files"][0]


def set_path(e, path):
    first_file(e)["path"] = path


def set_url(e, url):
    first_file(e)["url"] = url


def add_variant(e, **changes):
    e["variants"].append({**copy.deepcopy(e["variants"][0]), **changes})


REJECTIONS = {
    "missing name": (lambda e: e.pop("name"), '"name" is missing'),
    "missing style": (lambda e: e.pop("style"), '"style" is missing'),
    "ill-typed license": (lambda e: e.update(license=3), '"license" must be non-empty text'),
    "bad id": (lambda e: e.update(id="Tiny_Model"), "the id must be lowercase"),
    "id with leading dash": (lambda e: e.update(id="-tiny"), "the id must be lowercase"),
    "unknown pipeline": (lambda e: e.update(pipeline="sd15"), 'the pipeline "sd15" is unknown'),
    "refiner without refines": (lambda e: e.update(pipeline="sdxl-refiner", defaults=dict(e["defaults"], strength=0.5)),
                                'a refiner must name the models it refines'),
    "refiner without strength": (lambda e: e.update(pipeline="sdxl-refiner", refines=["x"]), '"strength" between 0 and 1'),
    "refines on a base model": (lambda e: e.update(refines=["x"]), 'only refiners have "refines"'),
    "defaults not listed": (lambda e: e["defaults"].update(height=72), "must be one of the resolutions"),
    "bad defaults": (lambda e: e["defaults"].update(steps="2"), '"defaults" must give "steps"'),
    "bad resolutions": (lambda e: e.update(resolutions=[[64]]), '"resolutions" must be a non-empty list'),
    "bad vae factor": (lambda e: e.update(vae_scale_factor=0), '"vae_scale_factor" must be a positive'),
    "old base_url": (lambda e: e.update(base_url="/models/x/"), '"base_url" belongs to the old format'),
    "no variants": (lambda e: e.update(variants=[]), '"variants" must be a non-empty list'),
    "variants missing": (lambda e: e.pop("variants"), '"variants" is missing'),
    "duplicate variant ids": (lambda e: add_variant(e), 'variant "fp32" is listed twice'),
    "unknown precision": (lambda e: e["variants"][0].update(precision="int8"), "the precision must be one of"),
    "missing requires": (lambda e: e["variants"][0].pop("requires"), '"requires" is missing'),
    "ill-typed requires": (lambda e: e["variants"][0].update(requires={"webgpu": "no"}), '"requires" must give'),
    "missing gpu memory": (lambda e: e["variants"][0].pop("gpu_memory_bytes"), '"gpu_memory_bytes" is missing'),
    "no files": (lambda e: e["variants"][0].update(files=[]), '"files" must be a non-empty list'),
    "part file not listed": (lambda e: e["variants"][0].update(parts={"unet": "onnx/unet.onnx"}), "is not one of the files"),
    "unknown part": (lambda e: e["variants"][0].update(parts={"safety_checker": first_file(e)["path"]}),
                     "is not a pipeline part"),
    "bad conditioning output": (lambda e: e["variants"][0].update(conditioning_outputs={"text_encoder": "last_hidden_state"}),
                                '"conditioning_outputs" must map text encoders'),
    "duplicate paths": (lambda e: e["variants"][0]["files"].append(dict(first_file(e))), "is listed twice"),
    "empty path": (lambda e: set_path(e, ""), "the path is missing or empty"),
    "parent path": (lambda e: set_path(e, "../a.onnx"), "must stay inside the model's folder"),
    "inner parent path": (lambda e: set_path(e, "unet/../../a.onnx"), "must stay inside the model's folder"),
    "absolute path": (lambda e: set_path(e, "/etc/passwd"), "must stay inside the model's folder"),
    "backslash path": (lambda e: set_path(e, "unet\\model.onnx"), "must stay inside the model's folder"),
    "dot segment": (lambda e: set_path(e, "./unet/model.onnx"), 'empty or "." segments'),
    "empty segment": (lambda e: set_path(e, "unet//model.onnx"), 'empty or "." segments'),
    "trailing slash": (lambda e: set_path(e, "unet/"), 'empty or "." segments'),
    "drive letter": (lambda e: set_path(e, "C:/model.onnx"), 'must not contain ":"'),
    "http url": (lambda e: set_url(e, "http://example.com/a.onnx"), "the url must be an https:// address"),
    "protocol-relative url": (lambda e: set_url(e, "//example.com/a.onnx"), "the url must be an https:// address"),
    "data url": (lambda e: set_url(e, "data:application/octet-stream,AAAA"), "the url must be an https:// address"),
    "javascript url": (lambda e: set_url(e, "javascript:alert(1)"), "the url must be an https:// address"),
    "file url": (lambda e: set_url(e, "file:///etc/passwd"), "the url must be an https:// address"),
    "relative url": (lambda e: set_url(e, "models/a.onnx"), "the url must be an https:// address"),
    "missing url": (lambda e: first_file(e).pop("url"), "the url must be an https:// address"),
    "unknown sha256": (lambda e: first_file(e).update(sha256=None), "the sha256 is not known yet"),
    "uppercase sha256": (lambda e: first_file(e).update(sha256=first_file(e)["sha256"].upper()), "64 lowercase hex"),
    "short sha256": (lambda e: first_file(e).update(sha256="abc"), "64 lowercase hex"),
    "unknown size": (lambda e: first_file(e).update(size=None), "the size is not known yet"),
    "negative size": (lambda e: first_file(e).update(size=-1), "the size must be a whole number"),
    "fractional size": (lambda e: first_file(e).update(size=1.5), "the size must be a whole number"),
    "boolean size": (lambda e: first_file(e).update(size=True), "the size must be a whole number"),
    "disk bytes off": (lambda e: e["variants"][0].update(disk_bytes=e["variants"][0]["disk_bytes"] + 1),
                       "the files add up to"),
    "disk bytes unknown": (lambda e: e["variants"][0].update(disk_bytes=None), '"disk_bytes" is not known yet'),
    "negative chunk": (lambda e: e["variants"][0].update(external_data_chunk_bytes=-1),
                       '"external_data_chunk_bytes" must be a positive'),
}


@pytest.mark.parametrize("name", REJECTIONS)
def test_each_rule_rejects_with_a_plain_message(good, name):
    change, words = REJECTIONS[name]
    change(good)
    problems = model_problems(good)
    assert any(words in p for p in problems), problems
    assert all(p.startswith('Model "') for p in problems)


def test_messages_name_the_model_variant_and_file(good):
    set_path(good, "../a.onnx")
    assert model_problems(good) == [
        'Model "tiny-sdxl-turbo", variant "fp32", file "../a.onnx": '
        'the path must stay inside the model\'s folder (no "..", no leading "/", no "\\").']


@pytest.mark.parametrize("model_id", TINY)
def test_good_entries_pass(model_id):
    assert model_problems(entry_file(model_id)) == []


def test_https_and_same_origin_urls_pass(good):
    set_url(good, "https://huggingface.co/acme/tiny/resolve/" + "0" * 40 + "/unet/model.onnx")
    assert model_problems(good) == []


def test_a_bad_entry_does_not_take_good_ones_down(good):
    bad = dict(copy.deepcopy(good), id="broken")
    set_url(bad, "http://example.com/a")
    refiner = entry_file("tiny-sdxl-refiner")
    models, rejected = load_manifest(json.dumps({"schema": 1, "models": [good, bad, "junk", refiner]}))
    assert [m["id"] for m in models] == ["tiny-sdxl-turbo", "tiny-sdxl-refiner"]
    assert rejected == [
        'Model "broken" was rejected: variant "fp32", file "scheduler_config.json": '
        'the url must be an https:// address or a same-origin path starting with a single "/".',
        'Model "#3" was rejected: a model entry must be a JSON object.',
    ]


@pytest.mark.parametrize("data, words", [
    ("{not json", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    ({"models": []}, 'no "schema" version'),
    ({"schema": 2, "models": []}, "uses schema 2; this app reads schema 1"),
    ({"schema": True, "models": []}, "uses schema True"),
    ({"schema": 1, "models": {}}, 'no "models" list'),
    ({"schema": 1, "models": [{"id": "a"}, {"id": "a"}]}, '"a" more than once'),
])
def test_an_unusable_manifest_is_refused_as_a_whole(data, words):
    with pytest.raises(ManifestError, match=words):
        load_manifest(data)


def test_every_committed_entry_is_complete():
    paths = sorted(p for p in MANIFEST_DIR.glob("*.json") if p.name != "schema.json")
    for path in paths:
        entry = json.loads(path.read_text())
        assert path.stem == entry["id"]
        assert model_problems(entry) == [], path.name
    assert {p.stem for p in paths} == {"sdxl-turbo", "sdxl-turbo-vae-encoder", "sdxl-refiner", *TINY}


def test_sdxl_turbo_offers_q4f16_then_fp32_with_exact_sizes_and_the_hashes_known():
    q4f16, q4, fp32 = entry_file("sdxl-turbo")["variants"]
    # q4 is the same download, converted at install for GPUs without shader-f16
    assert q4["files"] == q4f16["files"] and q4["convert"] == dict(q4f16["convert"], to="fp32-activations")
    assert q4f16["convert"]["to"] == "external-data"  # its single-file graphs are split at install
    assert not q4["requires"]["shader_f16"] and "parts" not in q4
    assert (q4f16["id"], q4f16["precision"], fp32["id"]) == ("q4f16", "q4f16", "fp32")
    assert q4f16["requires"]["shader_f16"] and not fp32["requires"]["shader_f16"]
    webnn = {f["path"]: f for f in q4f16["files"] if f["url"].startswith("https://")}
    assert {p: f["size"] for p, f in webnn.items()} == {
        "onnx/text_encoder_model_q4f16.onnx": 124_433_929, "onnx/text_encoder_2_model_q4f16.onnx": 483_677_630,
        "onnx/unet_model_q4f16.onnx": 1_965_607_674, "onnx/vae_decoder_model_q4f16.onnx": 97_617_257}
    assert sum(f["size"] for f in webnn.values()) == 2_671_336_490
    assert webnn["onnx/unet_model_q4f16.onnx"]["sha256"].startswith("eb2b07ef")
    assert {p for p, f in webnn.items() if f.get("sha256_from") == "host"} == set(webnn) - {"onnx/unet_model_q4f16.onnx"}
    assert all(f["url"] == f"https://huggingface.co/webnn/sdxl-turbo/resolve/main/{p}" for p, f in webnn.items())
    assert q4f16["convert"]["from"]["unet"] == "onnx/unet_model_q4f16.onnx"
    assert q4f16["conditioning_outputs"] == {"text_encoder": "hidden_states.11", "text_encoder_2": "hidden_states.31"}
    official = {f["path"]: f for f in fp32["files"] if f["url"].startswith("https://")}
    assert sum(f["size"] for f in official.values()) == 13_747_509_019
    assert all(f["url"] == f"https://huggingface.co/stabilityai/sdxl-turbo/resolve/{REVISION}/{p}" and f["sha256"]
               for p, f in official.items())
    assert official["unet/model.onnx_data"]["sha256"].startswith("479e70b0")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_sdxl_turbo_takes_its_tokenizers_and_scheduler_config_from_the_site(variant):
    """Generated by the project (models/sdxl/, the same bytes as the tiny model's), pinned, same-origin."""
    files = entry_file("sdxl-turbo")["variants"][variant]["files"]
    shared = [f for f in files if not f["url"].startswith("https://")]
    assert {f["path"] for f in shared} == {"scheduler_config.json", "tokenizer/tokenizer.json",
                                          "tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer.json",
                                          "tokenizer_2/tokenizer_config.json"}
    for f in shared:
        data = (ROOT / "models" / "sdxl" / f["path"]).read_bytes()
        assert f["url"] == f"/sdxl/{f['path']}"
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"])
        assert data == (ROOT / "models" / "tiny-sdxl-turbo" / f["path"]).read_bytes()


@pytest.mark.parametrize("change, words", [
    ({"sha256": None, "sha256_from": "host"}, 'only Hugging Face Hub files'),
    ({"url": "https://huggingface.co/a/b/resolve/main/x.onnx", "sha256_from": "host"}, "exclude each other"),
    ({"url": "https://huggingface.co/a/b/resolve/main/x.onnx", "sha256": None, "sha256_from": "mirror"},
     '"sha256_from" can only be "host"'),
    ({"url": "https://huggingface.co/a/b/resolve/main/x.onnx", "sha256": None}, "sha256 is not known yet"),
])
def test_a_hash_from_the_host_is_only_for_hub_files_without_a_pinned_one(good, change, words):
    first_file(good).update(change)
    assert any(words in p for p in model_problems(good)), model_problems(good)


@pytest.mark.parametrize("convert, words", [
    ({"from": {"unet": "unet/model.onnx"}, "to": "fp32-activations"}, "which is one of the downloaded files"),
    ({"from": {"unet": "nope.onnx"}, "to": "fp32-activations"}, '"convert" must be'),
    ({"from": {"unet": "unet/model.onnx"}, "to": "int8"}, '"convert" must be'),
    ({"from": {"mystery": "unet/model.onnx"}, "to": "fp32-activations"}, '"convert" must be'),
])
def test_a_conversion_names_parts_from_the_files_and_writes_none_of_them(good, convert, words):
    good["variants"][0]["convert"] = convert
    assert any(words in p for p in model_problems(good)), model_problems(good)


def test_a_hub_file_may_take_its_hash_from_the_host(good):
    first_file(good).update(url="https://huggingface.co/a/b/resolve/main/x.onnx", sha256=None, sha256_from="host")
    assert model_problems(good) == []


@pytest.mark.parametrize("dims, ok", [({"batch_size": 1}, True), ({"batch_size": 0}, False), ({"": 1}, False),
                                      ([1], False), ({"batch_size": True}, False)])
def test_free_dimensions_name_positive_sizes(good, dims, ok):
    good["variants"][0]["free_dimensions"] = dims
    assert (model_problems(good) == []) == ok


def test_build_refuses_an_entry_whose_local_files_differ(tmp_path, good):
    folder = tmp_path / "models_manifest"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(dict(good, id="a")))
    (tmp_path / "models" / "tiny-sdxl-turbo").mkdir(parents=True)
    (tmp_path / first_file(good)["url"].lstrip("/")).write_text("other bytes")
    with pytest.raises(build.BuildError, match="not what the manifest says"):
        build.models_manifest(tmp_path, {})
    assert first_file(good)["path"] == "scheduler_config.json"
    site = {"sdxl/scheduler_config.json": (ROOT / "models" / "sdxl" / "scheduler_config.json").read_bytes()}
    first_file(good)["url"] = "/sdxl/scheduler_config.json"  # the site's copy: the same bytes
    (folder / "a.json").write_text(json.dumps(dict(good, id="a")))
    assert [m["id"] for m in json.loads(build.models_manifest(tmp_path, site))["models"]] == ["a"]


@pytest.mark.parametrize("model_id", TINY)
def test_tiny_entries_match_the_files_on_disk(model_id):
    entry = entry_file(model_id)
    (variant,) = entry["variants"]
    for f in variant["files"]:
        data = (ROOT / "models" / model_id / f["path"]).read_bytes()
        assert f["url"] == f"/models/{model_id}/{f['path']}"
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"]), f["path"]
    assert len(bundle_sha256(pick_variant(entry, {}))) == 64


def test_tiny_turbo_exercises_chunked_external_data():
    (variant,) = entry_file("tiny-sdxl-turbo")["variants"]
    data = next(f for f in variant["files"] if f["path"] == "unet/model.onnx_data")
    assert variant["external_data_chunk_bytes"] < data["size"]


def test_schema_lists_the_same_required_fields():
    schema = json.loads((MANIFEST_DIR / "schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == list(REQUIRED_FIELDS)
    addon, model = schema["allOf"][1]["then"], schema["allOf"][1]["else"]
    assert addon["required"] == list(ADDON_FIELDS) and model["required"] == list(MODEL_FIELDS)
    assert schema["$defs"]["variant"]["required"] == list(VARIANT_REQUIRED_FIELDS)
    assert schema["$defs"]["file"]["required"] == list(FILE_REQUIRED_FIELDS)
    assert set(REQUIRED_FIELDS + MODEL_FIELDS + ADDON_FIELDS) <= set(schema["properties"])


def test_build_leaves_out_an_invalid_entry_with_a_warning(tmp_path, capsys, good):
    folder = tmp_path / "models_manifest"
    folder.mkdir()
    (folder / "schema.json").write_text("{}")
    (folder / "b.json").write_text(json.dumps(dict(good, id="b")))
    first_file(good)["sha256"] = None
    (folder / "a.json").write_text(json.dumps(dict(good, id="a")))
    merged = json.loads(build.models_manifest(tmp_path, {}))
    assert merged["schema"] == 1 and [m["id"] for m in merged["models"]] == ["b"]
    err = capsys.readouterr().err
    assert "left a.json out of the site" in err and "sha256 is not known yet" in err and "refresh.py" in err


# --- refresh tool against a stand-in for the Hub API --------------------------------------------

COMMIT = "c0ffee" + "0" * 34
LFS_SHA = "ab" * 32
PLAIN = b'{"num_train_timesteps": 1000}\n'


class FakeHub(BaseHTTPRequestHandler):
    routes = {
        "/api/models/acme/tiny/revision/main": {"sha": COMMIT},
        f"/api/models/acme/tiny/tree/{COMMIT}/unet": [
            {"type": "file", "path": "unet/model.onnx_data", "size": 134, "oid": "1" * 40,
             "lfs": {"oid": LFS_SHA, "size": 10_300_000_000, "pointerSize": 134}},
        ],
        f"/api/models/acme/tiny/tree/{COMMIT}/scheduler": [
            {"type": "file", "path": "scheduler/scheduler_config.json", "size": len(PLAIN), "oid": "2" * 40},
        ],
        f"/acme/tiny/resolve/{COMMIT}/scheduler/scheduler_config.json": PLAIN,
    }
    seen: list[str] = []

    def do_GET(self):
        self.seen.append(self.path)
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeHub.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_refresh_pins_revisions_and_fills_sizes_and_hashes(tmp_path, hub, good):
    variant = good["variants"][0]
    variant["files"] = [
        {"path": "unet/model.onnx_data", "url": f"{hub}/acme/tiny/resolve/main/unet/model.onnx_data",
         "size": None, "sha256": None},
        {"path": "scheduler_config.json", "url": f"{hub}/acme/tiny/resolve/{COMMIT}/scheduler/scheduler_config.json",
         "size": None, "sha256": None},
        {"path": "vae_decoder/model.onnx", "url": "/models/tiny-sdxl-turbo/vae_decoder/model.onnx",
         "size": 7, "sha256": "cd" * 32},
    ]
    variant["disk_bytes"] = None
    path = tmp_path / "entry.json"
    path.write_text(json.dumps(good))
    assert model_problems(good)

    assert refresh.main(["--endpoint", hub, str(path)]) == 0
    entry = json.loads(path.read_text())
    files = entry["variants"][0]["files"]
    assert files[0] == {"path": "unet/model.onnx_data", "url": f"{hub}/acme/tiny/resolve/{COMMIT}/unet/model.onnx_data",
                        "size": 10_300_000_000, "sha256": LFS_SHA}
    assert files[1]["size"] == len(PLAIN) and files[1]["sha256"] == hashlib.sha256(PLAIN).hexdigest()
    assert files[2] == variant["files"][2]  # same-origin files are left alone
    assert entry["variants"][0]["disk_bytes"] == 10_300_000_000 + len(PLAIN) + 7
    assert model_problems(json.loads(path.read_text().replace(hub, "https://hub.example"))) == []
    assert path.read_text() == json.dumps(entry, indent=2, ensure_ascii=False) + "\n"
    # the LFS file is never downloaded; the plain one is, once
    assert not any("/resolve/" in p and "onnx_data" in p for p in FakeHub.seen)
    assert sum("/resolve/" in p for p in FakeHub.seen) == 1

    assert refresh.main(["--endpoint", hub, str(path)]) == 0  # nothing left to change
    assert json.loads(path.read_text()) == entry


def test_refresh_pins_a_file_that_took_its_hash_from_the_host(tmp_path, hub, good):
    good["variants"][0]["files"] = [{"path": "unet/model.onnx_data", "size": 10_300_000_000, "sha256": None,
                                     "url": f"{hub}/acme/tiny/resolve/main/unet/model.onnx_data", "sha256_from": "host"}]
    path = tmp_path / "entry.json"
    path.write_text(json.dumps(good))
    assert refresh.main(["--endpoint", hub, str(path)]) == 0
    (f,) = json.loads(path.read_text())["variants"][0]["files"]
    assert f == {"path": "unet/model.onnx_data", "size": 10_300_000_000, "sha256": LFS_SHA,
                 "url": f"{hub}/acme/tiny/resolve/{COMMIT}/unet/model.onnx_data"}


def test_refresh_names_a_file_the_repository_lacks(tmp_path, hub, good, capsys):
    good["variants"][0]["files"][0]["url"] = f"{hub}/acme/tiny/resolve/main/unet/missing.onnx"
    path = tmp_path / "entry.json"
    path.write_text(json.dumps(good))
    before = path.read_text()
    assert refresh.main(["--endpoint", hub, str(path)]) == 1
    assert "has no file unet/missing.onnx" in capsys.readouterr().err
    assert path.read_text() == before


def test_sdxl_turbo_image_to_image_add_on_is_the_official_encoder_cut_at_install():
    entry = entry_file("sdxl-turbo-vae-encoder")
    assert entry["pipeline"] == "vae-encoder" and entry["encodes_for"] == ["sdxl-turbo"]
    (variant,) = entry["variants"]
    (f,) = variant["files"]
    assert f["url"] == ("https://huggingface.co/stabilityai/sdxl-turbo/resolve/fbda35297a8280789ffe2e25206800702fa5c4c1"
                        "/vae_encoder/model.onnx")
    assert (f["size"], f["sha256"]) == (136775724, "6be23fdf564e179787f66056a0fa94d489a1d88528d48d1bbef875166d1bd0bb")
    assert variant["convert"] == {"from": {"vae_encoder": f["path"]}, "to": "distribution-mean"}


@pytest.mark.parametrize("change, words", [
    ({"encodes_for": None}, '"encodes_for" is missing'),
    ({"encodes_for": []}, "must name the models it encodes"),
    ({"resolutions": [[64, 64]]}, 'an add-on has no "resolutions"'),
    ({"pipeline": "sdxl-turbo"}, '"style" is missing'),
])
def test_add_on_entries_are_checked(change, words):
    entry = entry_file("tiny-sdxl-turbo-vae-encoder")
    entry.update(change)
    entry = {k: v for k, v in entry.items() if v is not None}
    assert any(words in p for p in model_problems(entry)), model_problems(entry)


def test_only_encoders_name_what_they_encode_for():
    entry = entry_file("tiny-sdxl-turbo")
    entry["encodes_for"] = ["x"]
    assert any("only VAE encoders" in p for p in model_problems(entry))


REFINER_REPO = "https://huggingface.co/stabilityai/stable-diffusion-xl-refiner-1.0/resolve/main/"
TURBO_REPO = "https://huggingface.co/stabilityai/sdxl-turbo/resolve/main/"


def test_the_sdxl_refiner_is_made_at_install_from_its_official_fp16_safetensors():
    """No browser-sized refiner exists: the entry downloads the official fp16 files and converts them with the
    full-size templates. Each listed size is the file's tensor data, exact (the template's tensors in fp16), and
    a header as safetensors writes one; the host's exact size and sha256 are taken at install."""
    sys.path.insert(0, str(ROOT / "tests"))
    from checkpoints import REFINER_REPO_FILES, converted_bytes, diffusers_file_size

    entry = entry_file("sdxl-refiner")
    f16, variant = entry["variants"]
    assert (entry["pipeline"], entry["refines"]) == ("sdxl-refiner", ["sdxl-turbo"])
    assert variant["convert"] == {"from": "checkpoint", "to": "q4", "family": "sdxl", "bytes": converted_bytes("sdxl")}
    # fp16 math where the GPU has shader-f16: the same download, 3.19 GB kept instead of 5.17 GB
    assert f16["convert"] == dict(variant["convert"], to="q4f16", bytes=converted_bytes("sdxl", precision="q4f16"))
    assert (f16["requires"]["shader_f16"], variant["requires"]["shader_f16"]) == (True, False)
    assert f16["files"] == variant["files"]
    files = {f["path"]: f for f in variant["files"]}
    assert set(files) == set(REFINER_REPO_FILES.values())
    for part, path in REFINER_REPO_FILES.items():
        f = files[path]
        assert f["url"] == REFINER_REPO + path and f["sha256"] is None
        assert (f["sha256_from"], f["size_from"]) == ("host", "host")
        with_encoder = ("vae_decoder", "vae_encoder") if part == "vae_decoder" else (part,)
        assert f["size"] == diffusers_file_size("sdxl", with_encoder)
        if part != "refiner_unet":  # the same as SDXL-Turbo's? decided by the host's sha256s at install
            assert f["reuse"] == {"model": "sdxl-turbo", "part": part, "if_same_as": TURBO_REPO + path}
    assert files[REFINER_REPO_FILES["refiner_unet"]]["size"] == 4_519_210_760  # 2,259,526,660 fp16 parameters
    assert variant["conditioning_outputs"] == {"text_encoder_2": "hidden_states.31"}  # SDXL-Turbo's bigG too


@pytest.mark.parametrize("change, words", [
    ({"convert": {"from": "checkpoint", "to": "q4", "family": "sdxl"}}, '"convert" from a checkpoint must be'),
    ({"convert": {"from": "checkpoint", "to": "fp32-activations", "family": "sdxl", "bytes": 5}},
     '"convert" from a checkpoint must be'),
    ({"parts": {"unet": "unet/diffusion_pytorch_model.fp16.safetensors"}}, 'no "parts"'),
])
def test_a_variant_from_a_checkpoint_names_its_family_and_converted_size(change, words):
    entry = entry_file("sdxl-refiner")
    entry["variants"][0].update(change)
    assert any(words in p for p in model_problems(entry)), model_problems(entry)


@pytest.mark.parametrize("change, words", [
    ({"size_from": "host", "sha256": "ab" * 32, "sha256_from": None}, '"size_from" can only be "host"'),
    ({"size_from": "mirror"}, '"size_from" can only be "host"'),
    ({"reuse": {"model": "sdxl-turbo", "part": "unet"}}, '"reuse" must be'),
    ({"reuse": {"model": "sdxl-turbo", "part": "unet", "if_same_as": "/local.safetensors"}}, '"reuse" must be'),
    ({"path": "unet/model.onnx"}, "downloads only .safetensors files"),
])
def test_a_checkpoint_file_takes_its_size_from_the_host_and_reuses_only_hub_files(change, words):
    entry = entry_file("sdxl-refiner")
    f = entry["variants"][0]["files"][1]
    f.update(change)
    if change.get("sha256_from", "") is None:
        del f["sha256_from"]
    assert any(words in p for p in model_problems(entry)), model_problems(entry)


def test_only_a_variant_from_a_checkpoint_reuses_files(good):
    first_file(good)["reuse"] = {"model": "sdxl-turbo", "part": "unet", "if_same_as": TURBO_REPO + "x.safetensors"}
    assert any("only a variant converted from a checkpoint reuses files" in p for p in model_problems(good))
