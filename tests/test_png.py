import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from app.store.gallery import settings_from_png
from app.store.png import (SIGNATURE, TextTooLong, TooLarge, a1111_text, encode_png, parse_a1111,
                           read_foreign_settings, read_parameters)

PARAMS = {"prompt": "a lighthouse at dusk", "seed": 42, "steps": 2, "height": 64, "width": 96,
          "model": "sdxl-turbo", "model_sha256": "1a2b3c4d5e" + "f" * 54, "app_version": "0.1.0"}


def test_png_carries_parameters_and_is_deterministic():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    params = {"prompt": "a <b>cat</b> 🐱", "seed": 7, "steps": 2, "height": 8, "width": 12}
    png = encode_png(rgb, params)
    assert png == encode_png(rgb, params)
    assert read_parameters(png) == params
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), rgb)


def test_png_from_elsewhere_has_no_parameters():
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="PNG")
    assert read_parameters(out.getvalue()) is None


def chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def made_png(*chunks, width=1024, height=1024) -> bytes:
    """A PNG whose pixel data is not even valid: reading its text must not care."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return SIGNATURE + chunk(b"IHDR", ihdr) + b"".join(chunks) + chunk(b"IDAT", b"not pixels") + chunk(b"IEND", b"")


def test_parameters_are_read_without_decoding_a_pixel():
    params = {"prompt": "a cat", "seed": 1}
    png = made_png(chunk(b"tEXt", b"lantern\0" + json.dumps(params).encode()))
    assert read_parameters(png) == params
    itxt = b"lantern\0\0\0\0\0" + json.dumps({"prompt": "猫"}, ensure_ascii=False).encode()
    assert read_parameters(made_png(chunk(b"iTXt", itxt))) == {"prompt": "猫"}


def test_parameters_larger_than_lantern_writes_are_refused_unread():
    huge = b"lantern\0" + json.dumps({"prompt": "x" * 20_000_000}).encode()  # a 19 MB prompt
    with pytest.raises(TextTooLong):
        read_parameters(made_png(chunk(b"tEXt", huge)))
    bomb = b"lantern\0\1\0\0\0" + zlib.compress(b" " * 100_000_000)  # 100 KB that inflate to 100 MB
    with pytest.raises(TextTooLong):
        read_parameters(made_png(chunk(b"iTXt", bomb)))
    settings, message, source = settings_from_png(made_png(chunk(b"tEXt", huge)))
    assert settings is None and source == ""
    assert message.startswith("This PNG's Lantern settings are larger than any Lantern writes")


def test_images_larger_or_longer_than_lantern_makes_are_refused_unread():
    text = chunk(b"tEXt", b"lantern\0" + json.dumps({"prompt": "a cat"}).encode())
    with pytest.raises(TooLarge, match="13000×13000"):
        read_parameters(made_png(text, width=13000, height=13000))
    frames = chunk(b"acTL", (800_000).to_bytes(4, "big") + (0).to_bytes(4, "big"))  # an APNG under the drop limit
    settings, message, _ = settings_from_png(made_png(frames, text))
    assert settings is None
    assert message == "This image is larger than any Lantern makes (an animation of 800,000 frames), so its settings were not read."
    assert read_parameters(made_png(text, width=4096, height=4096)) == {"prompt": "a cat"}  # the largest allowed


def text_of(png: bytes) -> dict:
    with Image.open(io.BytesIO(png)) as img:
        return img.text


def test_png_carries_the_a1111_parameters_other_tools_read():
    rgb = np.zeros((64, 96, 3), np.uint8)  # height 64, width 96
    png = encode_png(rgb, PARAMS)
    assert text_of(png)["parameters"] == (
        "a lighthouse at dusk\n"
        "Steps: 2, Sampler: Euler a, CFG scale: 1, Seed: 42, Size: 96x64, Model hash: 1a2b3c4d5e, Model: sdxl-turbo, "
        "Version: Lantern 0.1.0")
    assert b"tEXtparameters\0" in png
    assert read_parameters(png) == PARAMS  # the Lantern chunk is unchanged
    assert png == encode_png(rgb, dict(reversed(PARAMS.items())))


def test_a1111_text_keeps_the_prompt_as_is_and_quotes_values_as_a1111_does():
    prompt = "猫, on a mat: \"sleepy\"\nwatercolor, soft light"
    png = encode_png(np.zeros((8, 8, 3), np.uint8), dict(PARAMS, prompt=prompt, model='tiny: "x", y'))
    assert b"iTXtparameters\0" in png  # not Latin-1
    text = text_of(png)["parameters"]
    assert text.startswith(prompt + "\nSteps: 2, ")
    assert ', Model: "tiny: \\"x\\", y", Version: ' in text
    assert read_foreign_settings(png) == ("a1111", {"prompt": prompt, "seed": 42, "steps": 2, "height": 64, "width": 96,
                                                    "model": 'tiny: "x", y', "guidance": 1.0})


def test_a1111_text_of_a_refined_image_and_without_a_hash():
    refined = dict(PARAMS, refiner="sdxl-refiner", refiner_sha256="0123456789abcdef" * 4, refiner_strength=0.3,
                   refiner_steps=4)
    assert a1111_text(refined).endswith(
        "Model: sdxl-turbo, Denoising strength: 0.3, Refiner: sdxl-refiner [0123456789], Version: Lantern 0.1.0")
    assert a1111_text(dict(PARAMS, model_sha256="")) == (
        "a lighthouse at dusk\n"
        "Steps: 2, Sampler: Euler a, CFG scale: 1, Seed: 42, Size: 96x64, Model: sdxl-turbo, Version: Lantern 0.1.0")


A1111 = """masterpiece, a "lighthouse" at dusk, (golden hour:1.2)
rain, 8k
Negative prompt: blurry, lowres
Steps: are not here
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 832x1216, \
Model hash: 31e35c80fc, Model: "sdxl: base, 1.0", Lora hashes: "add-detail: 7c6bc2e7a1f3", Version: v1.10.1"""


def foreign_png(*texts) -> bytes:
    return made_png(*(chunk(b"tEXt", key.encode() + b"\0" + text.encode("latin-1")) for key, text in texts))


def test_settings_from_other_tools_are_read_as_far_as_they_go():
    assert read_foreign_settings(foreign_png(("parameters", A1111))) == ("a1111", {
        "prompt": 'masterpiece, a "lighthouse" at dusk, (golden hour:1.2)\nrain, 8k', "seed": 1234567890, "steps": 20,
        "width": 832, "height": 1216, "model": "sdxl: base, 1.0", "guidance": 7.0,
            "negative_prompt": "blurry, lowres\nSteps: are not here"})
    garbage = "a fox\nSteps: many, Seed: -1, Size: 512 by 512, Model: "
    assert read_foreign_settings(foreign_png(("parameters", garbage))) == ("a1111", {"prompt": "a fox"})
    invokeai = {"positive_prompt": "a fox", "negative_prompt": "blurry", "seed": 7, "steps": 30, "width": 1024,
                "height": 768, "model": {"key": "abc", "name": "Juggernaut XL"}}
    assert read_foreign_settings(foreign_png(("invokeai_metadata", json.dumps(invokeai)))) == ("invokeai", {
        "prompt": "a fox", "seed": 7, "steps": 30, "width": 1024, "height": 768, "model": "Juggernaut XL"})
    broken = foreign_png(("invokeai_metadata", "{not json"), ("parameters", "a fox\nSteps: 4"))
    assert read_foreign_settings(broken) == ("a1111", {"prompt": "a fox", "steps": 4})
    assert read_foreign_settings(foreign_png(("parameters", "a fox, no fields"))) is None
    assert read_foreign_settings(foreign_png()) is None


def test_a_long_a1111_line_without_colons_is_read_in_one_pass():
    # Automatic1111's own pattern, with no bound on the key, takes minutes over this line.
    assert parse_a1111("a fox\nSteps: 2, " + "a" * 250_000) == {"prompt": "a fox", "steps": 2}


def test_other_tools_text_larger_than_lantern_writes_is_refused_unread():
    huge = chunk(b"tEXt", b"parameters\0" + b"x" * 20_000_000 + b"\nSteps: 2")
    with pytest.raises(TextTooLong):
        read_foreign_settings(made_png(huge))
    bomb = chunk(b"iTXt", b"invokeai_metadata\0\1\0\0\0" + zlib.compress(b" " * 100_000_000))
    with pytest.raises(TextTooLong):
        read_foreign_settings(made_png(bomb))
    settings, message, source = settings_from_png(made_png(huge))
    assert settings is None and source == "" and "larger than any Lantern writes" in message
    frames = chunk(b"acTL", (800_000).to_bytes(4, "big") + (0).to_bytes(4, "big"))
    with pytest.raises(TooLarge):
        read_foreign_settings(made_png(frames, chunk(b"tEXt", b"parameters\0a fox\nSteps: 2")))


def test_a1111_text_of_guidance_image_to_image_and_an_upscale_as_a1111_writes_them():
    guided = dict(PARAMS, model_sha256="", guidance=2.5, negative_prompt="blurry, lowres")
    assert a1111_text(guided) == (
        "a lighthouse at dusk\nNegative prompt: blurry, lowres\n"
        "Steps: 2, Sampler: Euler a, CFG scale: 2.5, Seed: 42, Size: 96x64, Model: sdxl-turbo, Version: Lantern 0.1.0")
    from_picture = dict(PARAMS, model_sha256="", strength=0.5, source={"sha256": "ab" * 32, "height": 80, "width": 80})
    assert "Size: 96x64, Model: sdxl-turbo, Denoising strength: 0.5, Version" in a1111_text(from_picture)
    upscaled = dict(PARAMS, model_sha256="", height=128, width=192, strength=0.5, upscale=2.0, hires_steps=2,
                    source={"sha256": "ab" * 32, "height": 64, "width": 96})
    assert ("Size: 96x64, Model: sdxl-turbo, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 2, "
            "Hires upscaler: Lanczos, Version") in a1111_text(upscaled)
    png = encode_png(np.zeros((8, 8, 3), np.uint8), guided)
    assert read_foreign_settings(png) == ("a1111", {"prompt": "a lighthouse at dusk", "seed": 42, "steps": 2, "height": 64,
                                                    "width": 96, "model": "sdxl-turbo", "guidance": 2.5,
                                                    "negative_prompt": "blurry, lowres"})
    assert read_foreign_settings(encode_png(np.zeros((8, 8, 3), np.uint8), from_picture))[1]["strength"] == 0.5
