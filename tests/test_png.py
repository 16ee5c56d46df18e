import io

import numpy as np
from PIL import Image

from app.store.png import encode_png, read_parameters


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
