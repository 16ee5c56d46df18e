"""Samplers: short pure functions of (model, x, sigmas, noises, callback).

`model(x, i)` returns the denoised estimate of x at step i; previews and progress
are the callback's business. Nothing here knows about ONNX, GPUs or workers.
"""

import numpy as np


async def sample_euler_ancestral(model, x, sigmas, noises, callback=None):
    """Ancestral Euler steps over `sigmas` (length steps+1, ending in 0).

    `noises[i]` is the fresh noise added after step i, given by the caller so that a
    seed means the same thing on every runtime.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = await model(x, i)
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        d = (x - denoised) / np.float32(sigma)
        x = x + d * np.float32(sigma_down - sigma)
        x = x + noises[i] * np.float32(sigma_up)
        if callback is not None:
            await callback(i, x, denoised)
    return x


async def sample_euler(model, x, sigmas, callback=None):
    """Plain Euler steps over `sigmas` (ending in 0): k-diffusion's sample_euler without churn.

    Deterministic (no noise is drawn), as diffusers' EulerDiscreteScheduler with s_churn=0.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = np.float32(sigmas[i]), np.float32(sigmas[i + 1])
        denoised = await model(x, i)
        d = (x - denoised) / sigma
        x = x + d * (sigma_next - sigma)
        if callback is not None:
            await callback(i, x, denoised)
    return x
