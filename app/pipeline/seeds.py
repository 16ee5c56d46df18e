"""What a seed means, identically on every runtime.

rng = numpy Generator(PCG64(seed)); the initial latents are its first
`standard_normal(shape, float32)` draw, then one draw of the same shape per
denoising step gives that step's ancestral noise. Nothing else draws from it.

The refiner (img2img second pass) uses a stream of its own, so that refining does not
reuse the base run's noise: numpy Generator(PCG64([seed, 1])), one
`standard_normal(latent shape, float32)` draw, added to the base latents at the first
refiner step's noise level (see `refiner_noise`).
"""

import numpy as np

MAX_SEED = 2**32 - 1


def seeded_noise(seed: int, shape: tuple, steps: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.Generator(np.random.PCG64(seed))
    latents = rng.standard_normal(shape, dtype=np.float32)
    noises = [rng.standard_normal(shape, dtype=np.float32) for _ in range(steps)]
    return latents, noises


def refiner_noise(seed: int, shape: tuple) -> np.ndarray:
    """The refiner's img2img noise for `seed`: the one draw from PCG64([seed, 1])."""
    return np.random.Generator(np.random.PCG64([seed, 1])).standard_normal(shape, dtype=np.float32)
