"""SDXL-Turbo text-to-image, stage by stage (as in diffusers' StableDiffusionXLPipeline).

encode prompt -> prepare latents -> time ids -> denoise (Euler ancestral) -> decode.
Runs on any runtime from `runtime.py`; guidance is off, as SDXL-Turbo is trained for.
"""

import re

import numpy as np

from .sampling import sample_euler_ancestral
from .scheduler import ScheduleConfig, make_schedule, scale_model_input
from .seeds import seeded_noise
from .tokenizer import load_clip_tokenizer

LATENT_CHANNELS = 4


def _penultimate_hidden_state(output_names):
    """SDXL conditions on the second-to-last hidden state; exports name them hidden_states.N."""
    indexed = sorted(
        (int(m.group(1)), name) for name in output_names if (m := re.fullmatch(r"hidden_states\.(\d+)", name))
    )
    if len(indexed) < 2:
        raise ValueError("text encoder exports no hidden_states.N outputs")
    return indexed[-2][1]


class SDXLTurbo:
    """A loaded SDXL-Turbo bundle. `stage(name)` callbacks let callers show progress and cancel."""

    def __init__(self, runtime, entry, tokenizers, sessions, schedule_config):
        self.runtime = runtime
        self.entry = entry
        self.tokenizers = tokenizers
        self.text_encoder, self.text_encoder_2, self.unet, self.vae_decoder = sessions
        self.schedule_config = schedule_config
        self.vae_scaling_factor = float(entry.get("vae_scaling_factor", 0.13025))
        self.vae_scale_factor = int(entry.get("vae_scale_factor", 8))

    @classmethod
    async def load(cls, runtime, entry, on_stage=None):
        async def stage(name):
            if on_stage is not None:
                await on_stage(name)

        tokenizers = []
        for folder in ("tokenizer", "tokenizer_2"):
            await stage(f"load {folder}")
            tokenizers.append(await load_clip_tokenizer(runtime, folder))
        sessions = []
        for part in ("text_encoder", "text_encoder_2", "unet", "vae_decoder"):
            await stage(f"load {part}")
            sessions.append(await runtime.session(f"{part}/model.onnx"))
        schedule_config = ScheduleConfig.from_dict(await runtime.read_json("scheduler_config.json"))
        return cls(runtime, entry, tokenizers, sessions, schedule_config)

    def release(self):
        self.runtime.release()

    async def encode_prompt(self, prompt):
        """(prompt_embeds [1,77,D1+D2], pooled text_embeds [1,P]) from both CLIP encoders."""
        hidden = []
        pooled = None
        for tokenize, encoder in zip(self.tokenizers, (self.text_encoder, self.text_encoder_2)):
            ids = encoder.inputs["input_ids"].coerce([tokenize(prompt)])
            name = _penultimate_hidden_state(encoder.output_names)
            wanted = [name] + (["text_embeds"] if "text_embeds" in encoder.output_names else [])
            out = await encoder.run({"input_ids": ids}, wanted)
            hidden.append(out[name])
            pooled = out.get("text_embeds", pooled)
        if pooled is None:
            raise ValueError("the second text encoder exports no text_embeds")
        return np.concatenate(hidden, axis=-1).astype(np.float32), pooled.astype(np.float32)

    def latent_shape(self, height, width):
        return (1, LATENT_CHANNELS, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def prepare_latents(self, seed, height, width, steps):
        return seeded_noise(seed, self.latent_shape(height, width), steps)

    @staticmethod
    def time_ids(height, width):
        # original size, crop top-left, target size: no crop, no resize.
        return np.array([[height, width, 0, 0, height, width]], dtype=np.float32)

    async def denoise(self, x, noises, prompt_embeds, pooled, time_ids, schedule, callback=None, start=0):
        """Steps `start`.. of the schedule from `x`: fresh latents (start 0) or a checkpoint."""
        feeds = {
            "encoder_hidden_states": self.unet.inputs["encoder_hidden_states"].coerce(prompt_embeds),
            "text_embeds": self.unet.inputs["text_embeds"].coerce(pooled),
            "time_ids": self.unet.inputs["time_ids"].coerce(time_ids),
        }

        async def model(x, i):
            sigma = float(schedule.sigmas[start + i])
            step_feeds = dict(
                feeds,
                sample=self.unet.inputs["sample"].coerce(scale_model_input(x, sigma)),
                timestep=self.unet.inputs["timestep"].coerce(schedule.timesteps[start + i]),
            )
            eps = (await self.unet.run(step_feeds, ["out_sample"]))["out_sample"]
            return x - np.float32(sigma) * eps

        async def on_step(i, x, denoised):
            if callback is not None:
                await callback(start + i, x, denoised)

        if start == 0:
            x = x * np.float32(schedule.init_noise_sigma)
        return await sample_euler_ancestral(model, x, schedule.sigmas[start:], noises[start:], on_step)

    async def decode(self, latents):
        """Float image [H, W, 3] in [0, 1]."""
        feed = self.vae_decoder.inputs["latent_sample"].coerce(latents / np.float32(self.vae_scaling_factor))
        sample = (await self.vae_decoder.run({"latent_sample": feed}, ["sample"]))["sample"]
        return np.clip(sample[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)

    async def generate(self, prompt, seed, steps, height, width, on_stage=None, on_step=None, resume=None):
        """The whole text-to-image run; returns the float image [H, W, 3] in [0, 1].

        `on_step(i, x, denoised)` sees the latents after each step i; `resume=(steps_done, x)`
        continues a run from such a checkpoint and gives the same image as an unbroken run.
        """

        async def stage(name):
            if on_stage is not None:
                await on_stage(name)

        await stage("encode prompt")
        prompt_embeds, pooled = await self.encode_prompt(prompt)
        latents, noises = self.prepare_latents(seed, height, width, steps)
        start = 0
        if resume is not None:
            start, latents = resume
        schedule = make_schedule(steps, self.schedule_config)
        await stage("denoise")
        latents = await self.denoise(
            latents, noises, prompt_embeds, pooled, self.time_ids(height, width), schedule, on_step, start
        )
        await stage("decode")
        return await self.decode(latents)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((image * 255).round().astype(np.uint8))
