"""SDXL refiner: an img2img second pass over the base model's final latents.

Stage by stage as in diffusers' StableDiffusionXLImg2ImgPipeline given the latents themselves as
`image` (a 4-channel input is used as latents as it is: not encoded, not rescaled):
encode prompt (second CLIP encoder only) -> time ids with an aesthetic score -> noise the base
latents to the strength's starting sigma -> plain Euler steps -> decode (the same VAE as the base).

Guidance is off by default (guidance_scale <= 1, as for the base); above 1 it is classifier-free
guidance against `negative_prompt` ("" by default) and `negative_aesthetic_score`, batched as
diffusers does (negative first).
"""

import numpy as np

from .bundle import LATENT_CHANNELS, SDXLBundle, conditioning_output, report
from .sampling import sample_euler
from .scheduler import EulerConfig, img2img_schedule, scale_model_input
from .seeds import refiner_noise

AESTHETIC_SCORE = 6.0  # diffusers' defaults
NEGATIVE_AESTHETIC_SCORE = 2.5


class SDXLRefiner(SDXLBundle):
    """A loaded SDXL refiner bundle (text_encoder_2, tokenizer_2, unet, vae_decoder, scheduler_config.json)."""

    TOKENIZERS = ("tokenizer_2",)
    PARTS = ("text_encoder_2", "unet", "vae_decoder")
    SCHEDULE_CONFIG = EulerConfig

    async def encode_prompt(self, prompt):
        """(prompt_embeds [1,77,D2], pooled text_embeds [1,P]): the refiner conditions on text_encoder_2 only."""
        encoder = self.text_encoder_2
        if "text_embeds" not in encoder.output_names:
            raise ValueError("the refiner's text encoder exports no text_embeds")
        ids = encoder.inputs["input_ids"].coerce([self.tokenizers[0](prompt)])
        name = conditioning_output(self.entry, "text_encoder_2", encoder.output_names)
        out = await encoder.run({"input_ids": ids}, [name, "text_embeds"])
        return out[name].astype(np.float32), out["text_embeds"].astype(np.float32)

    @staticmethod
    def time_ids(height, width, aesthetic_score=AESTHETIC_SCORE):
        # original size, crop top-left, aesthetic score (the refiner has no target size).
        return np.array([[height, width, 0, 0, aesthetic_score]], dtype=np.float32)

    def schedule(self, steps, strength):
        """(the Schedule of the steps that run, start index): see scheduler.img2img_schedule."""
        return img2img_schedule(steps, strength, self.schedule_config)

    def denoise_steps(self, steps, strength):
        """How many UNet steps `refine` runs (callbacks see i = 0 .. this - 1)."""
        return len(self.schedule(steps, strength)[0].timesteps)

    def noise_latents(self, seed, base_latents, sigma):
        """Euler's add_noise: base latents + the seed's refiner noise * the first sigma."""
        base_latents = np.asarray(base_latents, dtype=np.float32)
        return base_latents + refiner_noise(seed, base_latents.shape) * np.float32(sigma)

    async def denoise(self, x, cond, schedule, uncond=None, guidance_scale=0.0, callback=None, start=0):
        """Steps `start`.. of `schedule` (from `schedule.sigmas[0]`) from the noised latents `x`.

        cond / uncond: (prompt_embeds, text_embeds, time_ids); uncond only with guidance_scale > 1.
        """
        conditioning = self.unet_conditioning(*cond, uncond=uncond if guidance_scale > 1.0 else None)

        async def model(x, i):
            sigma = float(schedule.sigmas[start + i])
            eps = await self.predict_noise(conditioning, scale_model_input(x, sigma), schedule.timesteps[start + i],
                                           guidance_scale)
            return x - np.float32(sigma) * eps

        async def on_step(i, x, denoised):
            if callback is not None:
                await callback(start + i, x, denoised)

        return await sample_euler(model, x, schedule.sigmas[start:], on_step)

    async def refine(
        self,
        prompt,
        seed,
        base_latents,
        strength,
        steps,
        on_stage=None,
        on_step=None,
        *,
        guidance_scale=0.0,
        negative_prompt="",
        aesthetic_score=AESTHETIC_SCORE,
        negative_aesthetic_score=NEGATIVE_AESTHETIC_SCORE,
        resume=None,
        decode_tile=None,
    ):
        """Refine the base run's final latents [1,4,h/8,w/8]; returns the float image [H, W, 3] in [0, 1].

        Runs the last `denoise_steps(steps, strength)` steps of a `steps`-step schedule.
        `on_step(i, x, denoised)` sees the latents after each refiner step i; `resume=(steps_done, x)`
        continues from such a checkpoint and gives the same image as an unbroken run; `decode_tile`
        (pixels) decodes in tiles of that size.
        """

        base_latents = np.asarray(base_latents, dtype=np.float32)
        if base_latents.ndim != 4 or base_latents.shape[:2] != (1, LATENT_CHANNELS):
            raise ValueError(f"base latents must have shape [1, {LATENT_CHANNELS}, h, w], not {base_latents.shape}")
        schedule, _ = self.schedule(steps, strength)
        height = base_latents.shape[2] * self.vae_scale_factor
        width = base_latents.shape[3] * self.vae_scale_factor

        await report(on_stage, "encode prompt")
        embeds, pooled = await self.encode_prompt(prompt)
        cond = (embeds, pooled, self.time_ids(height, width, aesthetic_score))
        uncond = None
        if guidance_scale > 1.0:
            neg_embeds, neg_pooled = await self.encode_prompt(negative_prompt)
            uncond = (neg_embeds, neg_pooled, self.time_ids(height, width, negative_aesthetic_score))

        start = 0
        if resume is not None:
            start, x = resume
        else:
            x = self.noise_latents(seed, base_latents, schedule.sigmas[0])
        await report(on_stage, "refine")
        x = await self.denoise(x, cond, schedule, uncond, guidance_scale, on_step, start)
        await report(on_stage, "decode")
        return await self.decode(x, decode_tile)
