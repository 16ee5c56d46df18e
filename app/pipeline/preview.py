"""Previews during denoising: a cheap linear latent -> RGB map for most, the real VAE sometimes.

The linear map is the widely used SDXL-latent approximation (a 4x3 matrix and a bias fitted to
the SDXL VAE); a manifest entry can give its own `latent_rgb_factors` / `latent_rgb_bias`.
"""

import numpy as np

SDXL_LATENT_RGB = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
SDXL_LATENT_RGB_BIAS = [0.1084, -0.0175, -0.0011]
VAE_EVERY = 3  # every third preview is a real decode; the rest use the linear map


def approximate_rgb(latents: np.ndarray, entry: dict) -> np.ndarray:
    """uint8 [h/8, w/8, 3] from latents [1, 4, h/8, w/8], without the VAE."""
    factors = np.asarray(entry.get("latent_rgb_factors", SDXL_LATENT_RGB), np.float32)
    bias = np.asarray(entry.get("latent_rgb_bias", SDXL_LATENT_RGB_BIAS), np.float32)
    rgb = np.einsum("chw,cr->hwr", latents[0], factors) + bias
    return np.ascontiguousarray(((rgb + 1) * 127.5).clip(0, 255).round().astype(np.uint8))


def preview_kind(step: int, steps: int, every: int) -> str | None:
    """'approx', 'vae' or None for the step just finished (1-based); none after the last step,
    whose image is the final one."""
    if every <= 0 or step >= steps or step % every:
        return None
    return "vae" if (step // every) % VAE_EVERY == 0 else "approx"


def half_size(latents: np.ndarray) -> np.ndarray:
    """Latents averaged over 2x2 blocks (odd edges dropped), for a cheaper preview decode."""
    b, c, h, w = latents.shape
    h2, w2 = h // 2, w // 2
    return latents[:, :, : h2 * 2, : w2 * 2].reshape(b, c, h2, 2, w2, 2).mean(axis=(3, 5))
