"""Pictures a run starts from: checked, decoded and fitted to the run's size (Pillow, in the worker).

A visitor's file is refused with a message they can act on when it is not a PNG, JPEG or WebP picture, is
damaged, is animated or has more pixels than MAX_PIXELS; nothing else is lost. A picture with an embedded
colour profile is decoded by the browser instead, which converts it to sRGB as it shows it (Pyodide's
Pillow has no colour management); transparent parts are laid over white; a JPEG's orientation is applied.
"""

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .params import InputError

FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
MAX_PIXELS = 50_000_000  # a 50 MP photo; decoded, 200 MB of RGBA in the worker
MAX_BYTES = 100 * 2**20
BACKGROUND = (255, 255, 255)  # under transparent parts


SIGNATURES = {"PNG": lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"), "JPEG": lambda d: d.startswith(b"\xff\xd8\xff"),
              "WebP": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"}


def damaged(kind):
    return f"This {kind} picture is damaged (its data ends early or is corrupt), so it cannot be read. Try saving it again."


@dataclass
class Picture:
    image: Image.Image  # RGB
    sha256: str
    notes: list = field(default_factory=list)  # what was done to it, in sentences

    @property
    def size(self):
        return self.image.height, self.image.width


def open_picture(data: bytes, field_id="picture"):
    """The Pillow image of `data`, its format checked and its size read from the header (nothing decoded)."""
    if len(data) > MAX_BYTES:
        raise InputError(f"This file is {len(data) / 2**20:.0f} MB; Lantern takes pictures up to "
                         f"{MAX_BYTES // 2**20} MB.", field_id)
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        kind = next((k for k, magic in SIGNATURES.items() if magic(data)), None)
        if kind:  # it starts as one: a picture cut short or broken
            raise InputError(damaged(kind), field_id) from None
        raise InputError("This file is not a picture Lantern can read. Use a PNG, JPEG or WebP picture.",
                         field_id) from None
    if image.format not in FORMATS:
        raise InputError(f"This is a {image.format} picture; Lantern takes PNG, JPEG or WebP. Save it as one of "
                         "those first.", field_id)
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise InputError(f"This picture is {width}×{height} ({width * height / 1e6:.0f} megapixels); Lantern "
                         f"takes up to {MAX_PIXELS / 1e6:.0f} megapixels. Make it smaller first.", field_id)
    if getattr(image, "n_frames", 1) > 1:
        raise InputError(f"This {FORMATS[image.format]} is animated ({image.n_frames} frames); Lantern starts from "
                         "one still picture. Save the frame you want as a PNG first.", field_id)
    return image


async def decode(data: bytes, field_id="picture", managed=None) -> Picture:
    """The picture in `data` as RGB. `await managed(data) -> RGBA uint8 [H, W, 4]`, when given, decodes pictures
    with a colour profile to sRGB (the browser's decoder)."""
    image = open_picture(data, field_id)
    kind = FORMATS[image.format]
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InputError(damaged(kind), field_id) from None
    notes = []
    profile = image.info.get("icc_profile")
    if profile and managed is not None:
        rgba = await managed(data)
        image = Image.fromarray(rgba, "RGBA")
        notes.append("Its colours were converted from its embedded colour profile to sRGB.")
    else:
        if profile:
            notes.append("Its embedded colour profile was not applied: its colours are read as sRGB.")
        image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
            image = Image.alpha_composite(background, rgba)
            notes.append("Its transparent parts were laid over white.")
    return Picture(image.convert("RGB"), hashlib.sha256(data).hexdigest(), notes)


def fit(picture: Picture, height: int, width: int, how: str = "crop") -> np.ndarray:
    """uint8 [height, width, 3]: the picture scaled (Lanczos) to cover the size and cut to it in the middle
    ("crop"), or scaled to fit inside and its edges extended to fill the rest ("pad")."""
    if how == "crop":
        image = ImageOps.fit(picture.image, (width, height), Image.LANCZOS)
        return np.asarray(image, np.uint8)
    image = ImageOps.contain(picture.image, (width, height), Image.LANCZOS)
    top, left = (height - image.height) // 2, (width - image.width) // 2
    pixels = np.asarray(image, np.uint8)
    return np.pad(pixels, ((top, height - image.height - top), (left, width - image.width - left), (0, 0)), "edge")


def upscaled_size(height: int, width: int, factor: float, largest: int, multiple: int = 32) -> tuple[int, int]:
    """A picture's size times `factor`, in multiples of `multiple` (what the UNet's downsampling needs), its
    longer side at most `largest` (the model's largest size)."""
    scale = min(factor, largest / max(height, width))
    return (max(multiple, int(height * scale) // multiple * multiple),
            max(multiple, int(width * scale) // multiple * multiple))
