"""PNG files that carry their own generation parameters.

The parameters go, as JSON, in a text chunk keyed "lantern" (tEXt, or iTXt when the prompt is not
Latin-1); nothing time-dependent is written, so the same parameters and pixels always give the same
bytes. Reading them walks the chunks and never decodes a pixel, so a dropped 13000x13000 image or an
APNG of a million frames costs no more than its text; and such a file, larger or longer than any
Lantern writes, is refused before its text is read.
"""

import io
import json
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

METADATA_KEY = "lantern"


def encode_png(rgb: np.ndarray, parameters: dict) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(parameters, sort_keys=True, ensure_ascii=False))
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 256 * 1024  # far more than any parameters Lantern writes


MAX_PIXELS = 4096 * 4096  # 16 times SDXL's own 1024x1024
MAX_FRAMES = 1  # Lantern writes still images, never an animation


class TextTooLong(ValueError):
    """The PNG's parameters are larger than any Lantern writes: not read."""


class TooLarge(ValueError):
    """The image has more pixels or frames than any Lantern writes: not read."""


def _check_size(kind: bytes, data: bytes):
    if kind == b"IHDR" and len(data) >= 8:
        width, height = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
        if width * height > MAX_PIXELS:
            raise TooLarge(f"{width}×{height} pixels")
    frames = int.from_bytes(data[0:4], "big") if kind == b"acTL" and len(data) >= 4 else 0
    if frames > MAX_FRAMES:
        raise TooLarge(f"an animation of {frames:,} frames")


def _text(kind: bytes, data: bytes) -> tuple[bytes, str]:
    """(keyword, text) of a tEXt or iTXt chunk."""
    keyword, _, rest = data.partition(b"\0")
    if kind == b"tEXt":
        return keyword, rest.decode("latin-1")
    compressed, rest = rest[:1] == b"\1", rest[2:]
    rest = rest.split(b"\0", 2)[-1]  # past the language tag and the translated keyword
    if compressed:
        inflate = zlib.decompressobj()
        rest = inflate.decompress(rest, MAX_TEXT_BYTES + 1)
        if len(rest) > MAX_TEXT_BYTES:
            raise TextTooLong(f"its text is over {MAX_TEXT_BYTES // 1024} KiB")
    return keyword, rest.decode("utf-8")


def read_parameters(png: bytes) -> dict | None:
    """The parameters stored by `encode_png`, or None for a PNG from elsewhere. ValueError for a file
    that is not a whole PNG; TextTooLong for parameters larger than Lantern writes; TooLarge for an image
    with more pixels or frames than Lantern writes."""
    if not png.startswith(SIGNATURE):
        raise ValueError("not a PNG")
    pos = len(SIGNATURE)
    while pos + 12 <= len(png):
        length, kind = int.from_bytes(png[pos:pos + 4], "big"), png[pos + 4:pos + 8]
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(png):
            break
        if kind == b"IEND":
            return None
        _check_size(kind, png[start:end])
        if kind in (b"tEXt", b"iTXt") and png[start:start + len(METADATA_KEY) + 1] == METADATA_KEY.encode() + b"\0":
            if length > MAX_TEXT_BYTES:
                raise TextTooLong(f"its text is {length / 2**20:.1f} MiB")
            return json.loads(_text(kind, png[start:end])[1])
        pos = end + 4  # past the CRC
    raise ValueError("the PNG is cut short")
