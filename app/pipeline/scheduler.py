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


# --- img2img (the SDXL refiner): diffusers' EulerDiscreteScheduler --------------------------------------------
#
# The refiner's scheduler_config.json names EulerDiscreteScheduler with "leading" spacing and steps_offset 1.
# The schedule covers `steps` steps; img2img then runs only its last ones, chosen by `strength`.

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class EulerConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    timestep_spacing: str = "linspace"  # diffusers' defaults for EulerDiscreteScheduler
    steps_offset: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "EulerConfig":
        """From a scheduler_config.json; refuses every option this module does not implement."""
        if d.get("_class_name", "EulerDiscreteScheduler") != "EulerDiscreteScheduler":
            raise ValueError(f"not an EulerDiscreteScheduler config: {d['_class_name']}")
        fixed = {
            "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon",
            "interpolation_type": "linear",
            "timestep_type": "discrete",
            "final_sigmas_type": "zero",
        }
        for key, wanted in fixed.items():
            if d.get(key, wanted) != wanted:
                raise ValueError(f"unsupported {key} {d[key]!r}")
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "rescale_betas_zero_snr"):
            if d.get(key):
                raise ValueError(f"unsupported {key}")
        if d.get("trained_betas") is not None:
            raise ValueError("unsupported trained_betas")
        spacing = d.get("timestep_spacing", "linspace")
        if spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unsupported timestep_spacing {spacing!r}")
        return cls(
            num_train_timesteps=int(d.get("num_train_timesteps", 1000)),
            beta_start=float(d.get("beta_start", 0.00085)),
            beta_end=float(d.get("beta_end", 0.012)),
            timestep_spacing=spacing,
            steps_offset=int(d.get("steps_offset", 0)),
        )


def make_euler_schedule(steps: int, config: EulerConfig = EulerConfig()) -> Schedule:
    """All `steps` timesteps and sigmas (plus the final 0), as EulerDiscreteScheduler.set_timesteps makes them."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    n = config.num_train_timesteps
    betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float32) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    if config.timestep_spacing == "leading":
        timesteps = (np.arange(steps) * (n // steps)).round()[::-1].astype(np.float32) + np.float32(config.steps_offset)
    elif config.timestep_spacing == "trailing":
        timesteps = (np.round(np.arange(n, 0, -n / steps)) - 1).astype(np.float32)
    else:  # linspace
        timesteps = np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    sigmas = np.interp(timesteps, np.arange(n), train_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return Schedule(timesteps=timesteps, sigmas=sigmas)


def strength_start(steps: int, strength: float) -> int:
    """Index of the first of `steps` schedule steps that img2img runs (diffusers' get_timesteps).

    init_timestep = min(int(steps * strength), steps); start = steps - init_timestep. A strength that
    leaves no step (steps * strength < 1) is refused, as diffusers does.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, not {strength}")
    init_timestep = min(int(steps * strength), steps)
    start = max(steps - init_timestep, 0)
    if start >= steps:
        raise ValueError(
            f"strength {strength} with {steps} steps leaves no denoising step: raise the strength or the steps"
        )
    return start


def img2img_schedule(steps: int, strength: float, config: EulerConfig = EulerConfig()) -> tuple[Schedule, int]:
    """(the steps img2img runs, start index into the full schedule).

    The returned sigmas begin with the noise level the input latents are noised to (Euler's add_noise:
    x + noise * sigmas[0]) and end in 0; `init_noise_sigma` does not apply to img2img.
    """
    full = make_euler_schedule(steps, config)
    start = strength_start(steps, strength)
    return Schedule(timesteps=full.timesteps[start:], sigmas=full.sigmas[start:]), start
