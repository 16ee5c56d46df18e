"""Euler-ancestral noise schedule as used by SDXL-Turbo (pure numpy, no model knowledge).

Matches diffusers' EulerAncestralDiscreteScheduler with sdxl-turbo's config:
scaled_linear betas 0.00085..0.012 over 1000 steps and "trailing" timestep spacing.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        if d.get("beta_schedule", "scaled_linear") != "scaled_linear":
            raise ValueError(f"unsupported beta_schedule {d['beta_schedule']!r}")
        if d.get("timestep_spacing", "trailing") != "trailing":
            raise ValueError(f"unsupported timestep_spacing {d['timestep_spacing']!r}")
        if d.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"unsupported prediction_type {d['prediction_type']!r}")
        return cls(
            num_train_timesteps=int(d.get("num_train_timesteps", 1000)),
            beta_start=float(d.get("beta_start", 0.00085)),
            beta_end=float(d.get("beta_end", 0.012)),
        )


@dataclass(frozen=True)
class Schedule:
    timesteps: np.ndarray  # float32 [steps], the UNet's timestep input
    sigmas: np.ndarray  # float32 [steps + 1], ending in 0

    @property
    def init_noise_sigma(self) -> float:
        # With "trailing" spacing diffusers starts from sigma_max itself, not sqrt(sigma_max^2 + 1).
        return float(self.sigmas.max())


def make_schedule(steps: int, config: ScheduleConfig = ScheduleConfig()) -> Schedule:
    n = config.num_train_timesteps
    betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float32) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    # Trailing spacing: start exactly at the last training timestep, evenly down from there.
    timesteps = (np.round(np.arange(n, 0, -n / steps)) - 1).astype(np.float32)
    sigmas = np.interp(timesteps, np.arange(n), train_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return Schedule(timesteps=timesteps, sigmas=sigmas)


def scale_model_input(x: np.ndarray, sigma: float) -> np.ndarray:
    return x / np.float32((sigma**2 + 1) ** 0.5)
