import numpy as np

from app.pipeline.preview import approximate_rgb, half_size, preview_kind


def test_preview_cadence():
    assert [preview_kind(s, 4, 1) for s in (1, 2, 3, 4)] == ["approx", "approx", "vae", None]
    assert [preview_kind(s, 4, 2) for s in (1, 2, 3, 4)] == [None, "approx", None, None]
    assert [preview_kind(s, 4, 0) for s in (1, 2, 3, 4)] == [None] * 4


def test_approximate_preview_is_a_linear_map_of_the_latents():
    latents = np.zeros((1, 4, 2, 3), np.float32)
    latents[0, 0] = 1.0  # only the first channel: its RGB row plus the bias
    entry = {"latent_rgb_factors": [[0.5, 0.0, -0.5], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
             "latent_rgb_bias": [0.0, 0.0, 0.0]}
    rgb = approximate_rgb(latents, entry)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 191).all() and (rgb[..., 1] == 128).all() and (rgb[..., 2] == 64).all()
    default = approximate_rgb(latents, {})
    assert not np.array_equal(default, rgb)


def test_half_size_averages_2x2_blocks():
    x = np.arange(2 * 4 * 4 * 6, dtype=np.float32).reshape(2, 4, 4, 6)
    small = half_size(x)
    assert small.shape == (2, 4, 2, 3)
    assert small[1, 2, 1, 2] == x[1, 2, 2:4, 4:6].mean()
