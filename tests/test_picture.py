"""Pictures a run starts from (app/worker/picture.py): each bad kind refused with its message, the rest adapted
and fitted to the run's size."""

import numpy as np
import pytest

from app.worker.params import InputError
from app.worker.picture import decode, fit, upscaled_size
from conftest import run
from pictures import animated_png, encoded, gradient, huge_png, red_with_profile, transparent_png


def read(data, managed=None):
    return run(decode(data, managed=managed))


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True})])
def test_png_jpeg_and_webp_are_read(fmt, options):
    picture = read(encoded(gradient(), fmt, **options))
    assert picture.size == (48, 80) and picture.notes == []
    assert np.abs(np.asarray(picture.image, np.int16) - gradient()).max() <= (12 if fmt == "JPEG" else 0)


@pytest.mark.parametrize("data, words", [
    (b"hello, world", "not a picture Lantern can read"),
    (encoded(gradient(), "GIF"), "GIF picture; Lantern takes PNG, JPEG or WebP"),
    (encoded(gradient(), "PNG")[:100], "damaged"),
    (encoded(gradient(), "JPEG")[:400], "damaged"),
    (huge_png(), "9000×8000 (72 megapixels); Lantern takes up to 50 megapixels"),
    (animated_png(), "animated (2 frames)"),
])
def test_bad_pictures_are_refused_with_a_reason(data, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        read(data)
    assert e.value.field == "picture"


def test_transparent_parts_are_laid_over_white():
    picture = read(transparent_png())
    assert picture.notes == ["Its transparent parts were laid over white."]
    pixels = np.asarray(picture.image)
    assert (pixels[:, :40] == 255).all() and (pixels[:, 40:] == gradient()[:, 40:]).all()


def test_a_colour_profile_goes_to_the_colour_managed_decoder_when_there_is_one():
    red = read(red_with_profile())
    assert red.notes == ["Its embedded colour profile was not applied: its colours are read as sRGB."]

    async def managed(data):
        return np.full((32, 32, 4), (0, 0, 255, 255), np.uint8)
    blue = read(red_with_profile(), managed)
    assert blue.notes == ["Its colours were converted from its embedded colour profile to sRGB."]
    assert np.asarray(blue.image)[0, 0].tolist() == [0, 0, 255]


def test_crop_fills_the_size_and_pad_keeps_the_whole_picture():
    picture = read(encoded(gradient(48, 96)))  # 2:1 into 1:1
    cropped, padded = fit(picture, 64, 64, "crop"), fit(picture, 64, 64, "pad")
    assert cropped.shape == padded.shape == (64, 64, 3)
    # crop keeps the middle columns (red 64..191); pad keeps the edges (red 0 and 255) and repeats them up and down
    assert 40 < cropped[:, 0, 0].mean() < 90 and cropped[:, -1, 0].mean() > 170
    assert padded[32, 0, 0] < 10 and padded[32, -1, 0] > 245
    assert (padded[:16] == padded[16]).all() and (padded[-16:] == padded[-17]).all()


@pytest.mark.parametrize("size, factor, largest, expected", [
    ((512, 512), 2, 1024, (1024, 1024)),
    ((512, 512), 1.5, 1024, (768, 768)),
    ((512, 768), 1.5, 1024, (672, 1024)),  # the longer side held at the model's largest
    ((64, 64), 1.5, 128, (96, 96)),
])
def test_upscaled_sizes(size, factor, largest, expected):
    assert upscaled_size(*size, factor, largest) == expected
