import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from app.store.gallery import settings_from_png
from app.store.png import SIGNATURE, TextTooLong, TooLarge, encode_png, read_parameters


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
    settings, message = settings_from_png(made_png(chunk(b"tEXt", huge)))
    assert settings is None and message.startswith("This PNG's Lantern settings are larger than any Lantern writes")


def test_images_larger_or_longer_than_lantern_makes_are_refused_unread():
    text = chunk(b"tEXt", b"lantern\0" + json.dumps({"prompt": "a cat"}).encode())
    with pytest.raises(TooLarge, match="13000×13000"):
        read_parameters(made_png(text, width=13000, height=13000))
    frames = chunk(b"acTL", (800_000).to_bytes(4, "big") + (0).to_bytes(4, "big"))  # an APNG under the drop limit
    settings, message = settings_from_png(made_png(frames, text))
    assert settings is None
    assert message == "This image is larger than any Lantern makes (an animation of 800,000 frames), so its settings were not read."
    assert read_parameters(made_png(text, width=4096, height=4096)) == {"prompt": "a cat"}  # the largest allowed
