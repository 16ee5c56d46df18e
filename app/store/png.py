"""PNG files that carry their own generation parameters.

The parameters go, as JSON, in a tEXt chunk keyed "lantern"; nothing time-dependent is
written, so the same parameters and pixels always give the same bytes.
"""

import io
import json

import numpy as np
from PIL import Image, PngImagePlugin

METADATA_KEY = "lantern"


def encode_png(rgb: np.ndarray, parameters: dict) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(parameters, sort_keys=True, ensure_ascii=False))
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def read_parameters(png: bytes) -> dict | None:
    """The parameters stored by `encode_png`, or None for a PNG from elsewhere."""
    with Image.open(io.BytesIO(png)) as img:
        text = getattr(img, "text", {}).get(METADATA_KEY)
    return None if text is None else json.loads(text)
