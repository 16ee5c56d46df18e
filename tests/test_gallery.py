"""The gallery's plain logic on CPython: records, search and order, thumbnails, names, refusals."""

import io
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from app.store import gallery
from app.store.png import encode_png
from conftest import run

PARAMS = {"prompt": "A Lighthouse at dusk", "seed": 4294967295, "steps": 2, "height": 64, "width": 96,
          "model": "tiny-sdxl-turbo", "model_sha256": "ab" * 32, "app_version": "0.1.0"}
CREATED = 1_764_000_000_123  # 2025-11-24 16:00:00.123 UTC


def record(prompt, created, token="abcdef", **changes):
    key = gallery.new_key(created, token)
    return gallery.make_record(key, created, dict(PARAMS, prompt=prompt, **changes))


def lantern_png(parameters=PARAMS, size=(64, 96)):
    return encode_png(np.full((*size, 3), 128, np.uint8), parameters)


def plain_png(*texts):
    info = PngImagePlugin.PngInfo()
    for key, text in texts:
        info.add_text(key, text)
    out = io.BytesIO()
    Image.new("RGB", (20, 10), "red").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def test_keys_sort_by_creation_and_are_checked():
    key = gallery.new_key(CREATED, "0a1b2c")
    assert key == "1764000000123-0a1b2c" and gallery.valid_key(key)
    assert gallery.new_key(5, "000000") < gallery.new_key(CREATED, "000000")
    for bad in ("", "../index", "1764000000123-0A1B2C", "1764000000123-0a1b2c.png", None, 5):
        assert not gallery.valid_key(bad)


def test_records_round_trip_and_broken_ones_are_skipped():
    r = record("a cat", CREATED)
    assert gallery.parse_record(json.dumps(r)) == r
    assert gallery.parse_record(b"{\"key\": \"1764000000123-abcd") is None  # torn write
    assert gallery.parse_record(b"\xff\xfe") is None
    assert gallery.parse_record("[]") is None
    assert gallery.parse_record(json.dumps(dict(r, key="evil/../x"))) is None
    assert gallery.parse_record(json.dumps(dict(r, created="yesterday"))) is None
    missing_seed = dict(r, parameters={k: v for k, v in r["parameters"].items() if k != "seed"})
    assert gallery.parse_record(json.dumps(missing_seed)) is None


def test_parameters_need_every_setting_with_its_type():
    assert gallery.checked_parameters(PARAMS) is PARAMS
    assert gallery.checked_parameters(dict(PARAMS, steps="2")) is None
    assert gallery.checked_parameters(dict(PARAMS, seed=True)) is None
    assert gallery.checked_parameters(dict(PARAMS, prompt=None)) is None
    assert gallery.checked_parameters(["prompt"]) is None


def test_select_filters_by_prompt_in_any_case_newest_first():
    records = [record("a Red fox", CREATED), record("blue whale", CREATED + 2000),
               record("RED panda", CREATED + 1000), record("red panda", CREATED + 1000, token="ffffff")]
    chosen, total = gallery.select(records, "")
    assert [r["created"] for r in chosen] == [CREATED + 2000, CREATED + 1000, CREATED + 1000, CREATED]
    assert chosen[1]["key"].endswith("ffffff")  # same millisecond: still a stable order
    chosen, total = gallery.select(records, "  red ")
    assert [r["parameters"]["prompt"] for r in chosen] == ["red panda", "RED panda", "a Red fox"] and total == 3
    assert gallery.select(records, "STRASSE") == ([], 0)
    assert gallery.select([record("Straße", CREATED)], "STRASSE")[1] == 1  # casefold, not just lower
    chosen, total = gallery.select(records, "", limit=2)
    assert len(chosen) == 2 and total == 4


def test_download_name_matches_the_main_download():
    assert gallery.download_name(PARAMS, CREATED) == "tiny-sdxl-turbo_20251124-160000_4294967295.png"


def test_entries_carry_the_settings_with_the_seed_as_text():
    r = record("<b>x</b>", CREATED)
    e = gallery.entry(r)
    assert e == {"key": r["key"], "prompt": "<b>x</b>", "seed": "4294967295", "steps": 2, "height": 64, "width": 96,
                 "model": "tiny-sdxl-turbo", "filename": "tiny-sdxl-turbo_20251124-160000_4294967295.png",
                 "from_key": "", "from_size": ""}


def test_an_image_made_from_a_picture_names_it_while_the_gallery_keeps_it():
    picture = gallery.make_record("1764000000000-aaaaaa", CREATED, record("a", CREATED)["parameters"], "ab" * 32)
    made = record("b", CREATED + 1)
    made["parameters"].update(source={"sha256": "ab" * 32, "height": 64, "width": 96}, strength=0.5, guidance=2.5,
                              negative_prompt="blurry")
    e = gallery.entry(made, [picture, made])
    assert (e["from_key"], e["from_size"]) == ("1764000000000-aaaaaa", "96x64")
    assert (e["strength"], e["guidance"], e["negative_prompt"]) == (0.5, 2.5, "blurry")
    assert gallery.entry(made, [made])["from_key"] == ""  # deleted since: only its size is known


def test_thumbnail_is_small_png_with_the_aspect_kept():
    thumb = gallery.make_thumbnail(lantern_png(size=(512, 256)))
    with Image.open(io.BytesIO(thumb)) as img:
        assert img.format == "PNG" and img.size == (64, 128)
    with Image.open(io.BytesIO(gallery.make_thumbnail(lantern_png(size=(64, 96))))) as img:
        assert img.size == (96, 64)  # never enlarged


def test_settings_come_back_from_a_lantern_png():
    settings, message, source = gallery.settings_from_png(lantern_png())
    assert message == "" and source == "lantern"
    assert settings == {"prompt": "A Lighthouse at dusk", "seed": "4294967295", "steps": 2, "height": 64, "width": 96,
                        "model": "tiny-sdxl-turbo"}


A1111 = """a lighthouse, "golden hour", (rain:1.2)
oil on canvas
Negative prompt: blurry, lowres
Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1234567890123, Size: 832x1216, Model hash: 31e35c80fc, \
Model: "sd_xl: base", Version: v1.10.1"""


def test_settings_found_in_a_png_from_another_tool_come_back_as_far_as_they_are_usable():
    assert gallery.settings_from_png(plain_png(("parameters", A1111))) == ({
        "prompt": 'a lighthouse, "golden hour", (rain:1.2)\noil on canvas', "seed": "1234567890123", "steps": 20,
        "height": 1216, "width": 832, "model": "sd_xl: base", "guidance": 7.0,
            "negative_prompt": "blurry, lowres"}, "", "a1111")
    unusable = "猫\nSteps: 5000, Seed: 99999999999999999999999, Size: 20000x512, Model: "  # all beyond LIMITS
    assert gallery.settings_from_png(plain_png(("parameters", unusable))) == ({"prompt": "猫"}, "", "a1111")
    invokeai = {"positive_prompt": "a fox", "negative_prompt": "blurry", "seed": 7, "steps": 30, "width": 1024,
                "height": 768, "model": {"model_name": "juggernaut", "base_model": "sdxl"}}
    assert gallery.settings_from_png(plain_png(("invokeai_metadata", json.dumps(invokeai)))) == ({
        "prompt": "a fox", "seed": "7", "steps": 30, "height": 768, "width": 1024, "model": "juggernaut"},
        "", "invokeai")
    garbage = dict(invokeai, positive_prompt="  ", steps=True, height=None, model=["x"])  # a width alone is no size
    assert gallery.settings_from_png(plain_png(("invokeai_metadata", json.dumps(garbage)))) == ({"seed": "7"}, "",
                                                                                                  "invokeai")


def test_other_files_are_refused_politely():
    refused = (None, gallery.NOT_LANTERN, "")
    assert gallery.settings_from_png(plain_png()) == refused
    assert gallery.settings_from_png(plain_png(("parameters", "from another tool"))) == refused
    assert gallery.settings_from_png(plain_png(("parameters", "\nSteps: 0, Seed: x, Size: 64x"))) == refused
    assert gallery.settings_from_png(plain_png(("invokeai_metadata", "{not json"))) == refused
    assert gallery.settings_from_png(plain_png(("invokeai_metadata", '{"seed": true, "steps": 0}'))) == refused
    assert gallery.NOT_LANTERN == ("This PNG has no generation settings Lantern can read, "
                                   "so there is nothing to restore.")
    assert gallery.settings_from_png(b"GIF89a....") == (None, gallery.NOT_PNG, "")
    assert gallery.settings_from_png(b"") == (None, gallery.NOT_PNG, "")
    assert gallery.settings_from_png(plain_png()[:40]) == (None, gallery.NOT_PNG, "")  # truncated
    assert gallery.settings_from_png(plain_png(("lantern", "{not json"))) == (None, gallery.DAMAGED, "")
    assert gallery.settings_from_png(plain_png(("lantern", json.dumps({"prompt": "x"})))) == (None, gallery.DAMAGED, "")
    # A damaged Lantern chunk is not passed over for the other tools' text next to it.
    assert gallery.settings_from_png(plain_png(("lantern", "{"), ("parameters", A1111))) == (None, gallery.DAMAGED, "")


def test_a_large_text_from_another_tool_is_refused_unread():
    settings, message, source = gallery.settings_from_png(plain_png(("parameters", "x" * 300_000 + "\nSteps: 2")))
    assert settings is None and source == ""
    assert message == ("This PNG's Lantern settings are larger than any Lantern writes (its text is 0.3 MiB), "
                       "so they were not read.")


@pytest.mark.parametrize("change", [{"steps": 10**30}, {"seed": -1}, {"height": 0}, {"width": 10**6}])
def test_restored_numbers_outside_what_the_page_can_hold_are_refused(change):
    params = dict(PARAMS, **change)
    png = plain_png(("lantern", json.dumps(params)))
    assert gallery.settings_from_png(png) == (None, gallery.DAMAGED, "")


def test_orphans_are_leftovers_of_interrupted_saves_old_enough():
    old, new = gallery.new_key(CREATED, "aaaaaa"), gallery.new_key(CREATED + 1000, "bbbbbb")
    kept = gallery.new_key(CREATED - 5000, "cccccc")
    names = [f"{old}.png", f"{old}.thumb.png", f"{new}.png", f"{kept}.png", f"{kept}.thumb.png", f"{kept}.json",
             "notes.txt"]
    now = CREATED + gallery.ORPHAN_GRACE_MS + 500
    assert gallery.orphans(names, now) == [f"{old}.png", f"{old}.thumb.png"]  # `new` may still be saving


def test_messages_for_storage_failures_say_what_to_do():
    class QuotaExceededError(Exception):
        pass
    assert "Delete some images" in gallery.storage_message(QuotaExceededError("full"))
    assert "could not be read or written: boom" in gallery.storage_message(OSError("boom"))


def test_bytes_from_page_messages():
    assert gallery.as_bytes(memoryview(b"abc")) == b"abc"
    assert gallery.as_bytes(None) == b""


def test_reading_a_dropped_png_posts_its_settings_without_storage():
    posted = []
    run(gallery.handle({"type": "gallery-read", "png": memoryview(lantern_png())},
                               lambda m, transfer=(): posted.append(m)))
    assert posted == [{"type": "gallery-settings", "parameters": gallery.page_settings(PARAMS), "message": "",
                       "source": "lantern"}]
    posted.clear()
    run(gallery.handle({"type": "gallery-read", "png": memoryview(plain_png(("parameters", "a fox\nSteps: 3")))},
                               lambda m, transfer=(): posted.append(m)))
    assert posted == [{"type": "gallery-settings", "parameters": {"prompt": "a fox", "steps": 3}, "message": "",
                       "source": "a1111"}]
    posted.clear()
    run(gallery.handle({"type": "gallery-read", "png": memoryview(plain_png())},
                               lambda m, transfer=(): posted.append(m)))
    assert posted == [{"type": "gallery-settings", "parameters": {}, "message": gallery.NOT_LANTERN, "source": ""}]


def test_bad_keys_are_answered_without_touching_storage():
    posted = []
    run(gallery.handle({"type": "gallery-delete", "key": "../../etc"}, lambda m, transfer=(): posted.append(m)))
    assert posted == [{"type": "gallery-error", "key": "../../etc", "message": gallery.MISSING}]
