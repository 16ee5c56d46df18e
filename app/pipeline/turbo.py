"""SDXL-Turbo, stage by stage, as diffusers' StableDiffusionXLPipeline (text to image) and
StableDiffusionXLImg2ImgPipeline (image to image):

encode prompt -> prepare latents (noise, or the encoded picture noised to the strength's sigma) -> time ids
-> denoise (Euler ancestral) -> decode.
Runs on any runtime with the interface of `app/runtime/interface.py`. Guidance is off by default, as SDXL-Turbo
is trained for; above 1 it is classifier-free guidance against a negative prompt.
"""

import numpy as np

from .bundle import SDXLBundle, conditioning_output, report
from .sampling import sample_euler_ancestral
from .scheduler import ScheduleConfig, make_schedule, scale_model_input, strength_start
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

    async def negative_conditioning(self, negative_prompt, cond):
        """What guidance pushes away from: the negative prompt encoded, or zeros when there is none
        (diffusers' force_zeros_for_empty_prompt, SDXL-Turbo's setting), with the same time ids."""
        prompt_embeds, pooled, time_ids = cond
        if not negative_prompt:
            return np.zeros_like(prompt_embeds), np.zeros_like(pooled), time_ids
        return (*await self.encode_prompt(negative_prompt), time_ids)

    def prepare_latents(self, seed, height, width, steps):
        return seeded_noise(seed, self.latent_shape(height, width), steps)

    @staticmethod
    def time_ids(height, width):
        # original size, crop top-left, target size: no crop, no resize.
        return np.array([[height, width, 0, 0, height, width]], dtype=np.float32)

    async def denoise(self, x, noises, cond, schedule, callback=None, start=0, uncond=None, guidance_scale=1.0):
        """Steps `start`.. of the schedule from the latents `x`, already at sigma `schedule.sigmas[start]`.

        cond / uncond: (prompt_embeds, pooled, time_ids); uncond (the negative) only with guidance_scale > 1."""
        guided = guidance_scale > 1.0 and uncond is not None
        conditioning = self.unet_conditioning(*cond, uncond=uncond if guided else None)

        async def model(x, i):
            sigma = float(schedule.sigmas[start + i])
            eps = await self.predict_noise(conditioning, scale_model_input(x, sigma), schedule.timesteps[start + i],
                                           guidance_scale)
            return x - np.float32(sigma) * eps

        async def on_step(i, x, denoised):
            if callback is not None:
                await callback(start + i, x, denoised)

        return await sample_euler_ancestral(model, x, schedule.sigmas[start:], noises[start:], on_step)

    @staticmethod
    def first_step(steps, strength=None):
        """The schedule step a run starts at: 0 from noise; from a picture, as strength says (diffusers' get_timesteps)."""
        return 0 if strength is None else strength_start(steps, strength)

    async def generate(self, prompt, seed, steps, height, width, on_stage=None, on_step=None, resume=None,
                       decode_tile=None, *, image=None, strength=None, encode_tile=None, guidance_scale=1.0,
                       negative_prompt=""):
        """The whole run; returns the float image [H, W, 3] in [0, 1].

        From noise, or with `image` (uint8 [height, width, 3]) and `strength` from that picture, as diffusers'
        StableDiffusionXLImg2ImgPipeline: encode it, add the seed's first draw at the starting sigma, run the
        remaining steps. `guidance_scale` above 1 guides away from `negative_prompt` at twice the UNet work.
        `on_step(i, x, denoised)` sees the latents after each step i; `resume=(steps_done, x)` continues a run
        from such a checkpoint and gives the same image as an unbroken run; `decode_tile` / `encode_tile`
        (pixels) decode / encode in tiles of that size.
        """
        await report(on_stage, "encode prompt")
        cond = (*await self.encode_prompt(prompt), self.time_ids(height, width))
        uncond = await self.negative_conditioning(negative_prompt, cond) if guidance_scale > 1.0 else None
        schedule = make_schedule(steps, self.schedule_config)
        noise, noises = self.prepare_latents(seed, height, width, steps)
        start = self.first_step(steps, None if image is None else strength)
        if resume is not None:
            start, latents = resume
        elif image is None:
            latents = noise * np.float32(schedule.init_noise_sigma)
        else:
            await report(on_stage, "encode image")
            latents = await self.encode(image, encode_tile) + noise * np.float32(schedule.sigmas[start])
        await report(on_stage, "denoise")
        latents = await self.denoise(latents, noises, cond, schedule, on_step, start, uncond, guidance_scale)
        await report(on_stage, "decode")
        return await self.decode(latents, decode_tile)
