"""SDXL-Turbo text-to-image, stage by stage (as in diffusers' StableDiffusionXLPipeline).

encode prompt -> prepare latents -> time ids -> denoise (Euler ancestral) -> decode.
Runs on any runtime with the interface of `app/runtime/interface.py`; guidance is off, as SDXL-Turbo is trained for.
"""

import numpy as np

from .bundle import SDXLBundle, conditioning_output, report
from .sampling import sample_euler_ancestral
from .scheduler import ScheduleConfig, make_schedule, scale_model_input
from .seeds import seeded_noise


class SDXLTurbo(SDXLBundle):
    """A loaded SDXL-Turbo bundle. `on_stage(name)` callbacks let callers show progress and cancel."""

    TOKENIZERS = ("tokenizer", "tokenizer_2")
    PARTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
    SCHEDULE_CONFIG = ScheduleConfig

    async def encode_prompt(self, prompt):
        """(prompt_embeds [1,77,D1+D2], pooled text_embeds [1,P]) from both CLIP encoders."""
        hidden = []
        pooled = None
        for tokenize, part in zip(self.tokenizers, ("text_encoder", "text_encoder_2")):
            encoder = getattr(self, part)
            ids = encoder.inputs["input_ids"].coerce([tokenize(prompt)])
            name = conditioning_output(self.entry, part, encoder.output_names)
            wanted = [name] + (["text_embeds"] if "text_embeds" in encoder.output_names else [])
            out = await encoder.run({"input_ids": ids}, wanted)
            hidden.append(out[name])
            pooled = out.get("text_embeds", pooled)
        if pooled is None:
            raise ValueError("the second text encoder exports no text_embeds")
        return np.concatenate(hidden, axis=-1).astype(np.float32), pooled.astype(np.float32)

    def prepare_latents(self, seed, height, width, steps):
        return seeded_noise(seed, self.latent_shape(height, width), steps)

    @staticmethod
    def time_ids(height, width):
        # original size, crop top-left, target size: no crop, no resize.
        return np.array([[height, width, 0, 0, height, width]], dtype=np.float32)

    async def denoise(self, x, noises, prompt_embeds, pooled, time_ids, schedule, callback=None, start=0):
        """Steps `start`.. of the schedule from `x`: fresh latents (start 0) or a checkpoint."""
        conditioning = self.unet_conditioning(prompt_embeds, pooled, time_ids)

        async def model(x, i):
            sigma = float(schedule.sigmas[start + i])
            eps = await self.predict_noise(conditioning, scale_model_input(x, sigma), schedule.timesteps[start + i])
            return x - np.float32(sigma) * eps

        async def on_step(i, x, denoised):
            if callback is not None:
                await callback(start + i, x, denoised)

        if start == 0:
            x = x * np.float32(schedule.init_noise_sigma)
        return await sample_euler_ancestral(model, x, schedule.sigmas[start:], noises[start:], on_step)

    async def generate(self, prompt, seed, steps, height, width, on_stage=None, on_step=None, resume=None,
                       decode_tile=None):
        """The whole text-to-image run; returns the float image [H, W, 3] in [0, 1].

        `on_step(i, x, denoised)` sees the latents after each step i; `resume=(steps_done, x)`
        continues a run from such a checkpoint and gives the same image as an unbroken run;
        `decode_tile` (pixels) decodes in tiles of that size.
        """
        await report(on_stage, "encode prompt")
        prompt_embeds, pooled = await self.encode_prompt(prompt)
        latents, noises = self.prepare_latents(seed, height, width, steps)
        start = 0
        if resume is not None:
            start, latents = resume
        schedule = make_schedule(steps, self.schedule_config)
        await report(on_stage, "denoise")
        latents = await self.denoise(
            latents, noises, prompt_embeds, pooled, self.time_ids(height, width), schedule, on_step, start
        )
        await report(on_stage, "decode")
        return await self.decode(latents, decode_tile)

