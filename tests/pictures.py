"""Test pictures made on the spot: good ones of each format, and each kind a run must refuse or adapt."""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gradient(height=48, width=80):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 90)], -1).astype(np.uint8)


def encoded(pixels, fmt="PNG", mode=None, **options):
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, format=fmt, **options)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width=9000, height=8000):
    """A PNG whose header says width x height (over the pixel cap) and whose pixels are never there."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def animated_png():
    frames = [Image.fromarray(gradient()), Image.fromarray(255 - gradient())]
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def transparent_png():
    rgba = np.concatenate([gradient(), np.full((48, 80, 1), 255, np.uint8)], -1)
    rgba[:, :40, 3] = 0  # the left half transparent
    return encoded(rgba, "PNG", "RGBA")


def swapped_primaries_profile() -> bytes:
    """An ICC v2 RGB matrix/TRC profile whose red and blue primaries are sRGB's blue and red: a colour-managed
    decoder turns its pure red into blue, so whether a profile was applied shows in the pixels."""
    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + b"".join(struct.pack(">i", round(v * 65536)) for v in (x, y, z))
    red, green, blue = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
    gamma = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0100)  # gamma 1.0
    text = b"swapped"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0" + b"\0" * 11 + b"\0" * 67),
            (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(*blue)), (b"gXYZ", xyz(*green)), (b"bXYZ", xyz(*red)),
            (b"rTRC", gamma), (b"gTRC", gamma), (b"bTRC", gamma), (b"cprt", b"text\0\0\0\0" + b"none\0")]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 4
              + struct.pack(">iii", round(0.9642 * 65536), 65536, round(0.8249 * 65536)) + b"\0" * 4)
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


def red_with_profile():
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[..., 0] = 255
    return encoded(pixels, "PNG", icc_profile=swapped_primaries_profile())
