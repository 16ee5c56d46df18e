#!/usr/bin/env python3
"""Build the tiny SDXL-Turbo's VAE encoder add-on and the image-to-image and guidance references.

Run from the repository root, after models/make_tiny_sdxl_turbo.py (same heavy dependencies):

    python models/make_tiny_vae_encoder.py

It rebuilds the tiny SDXL-Turbo's torch modules from their seed, checks that they are the ones the committed
ONNX files were exported from, then writes:
    models/tiny-sdxl-turbo-vae-encoder/
        onnx/vae_encoder_model.onnx   AutoencoderKL quant_conv + encoder, exported as Optimum's exporter of late
                                      2023 wrote the real one: sample [b,3,H,W] -> latent_sample, a draw from
                                      the latent distribution made inside the graph (RandomNormalLike)
    models_manifest/tiny-sdxl-turbo-vae-encoder.json
    models/tiny-sdxl-turbo/reference/img2img.json, img2img.npz
        diffusers' StableDiffusionXLImg2ImgPipeline (SDXL-Turbo configuration) at strengths 0.3, 0.5 and 1.0,
        StableDiffusionXLPipeline at guidance 1 and 2.5 with a negative prompt, the encoder's mean, and
        AutoencoderKL's tiled encode. Encoding takes the distribution's mean (diffusers'
        retrieve_latents(..., sample_mode="argmax")), as the app does.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tiny_sdxl_turbo as base  # noqa: E402

ROOT = base.ROOT
BUNDLE_ID = "tiny-sdxl-turbo-vae-encoder"
OUT = os.path.join(ROOT, "models", BUNDLE_ID)
MANIFEST = os.path.join(ROOT, "models_manifest", BUNDLE_ID + ".json")
REFERENCE = os.path.join(base.OUT, "reference")
ENCODER_PATH = "onnx/vae_encoder_model.onnx"

CAT = "a photo of a cat"
NEGATIVE = "blurry, low quality"
# (prompt, seed, steps, strength, height, width, guidance, negative prompt): steps x strength >= 1 as diffusers needs
IMG2IMG_CASES = [
    (CAT, 42, 4, 0.3, 64, 64, 1.0, None),
    (CAT, 7, 2, 0.5, 64, 96, 1.0, None),
    (CAT, 1234, 2, 1.0, 64, 64, 1.0, None),
    (CAT, 42, 4, 0.5, 64, 64, 2.5, NEGATIVE),
]
# (prompt, seed, steps, height, width, guidance, negative prompt); None: diffusers' zeros for an empty negative
GUIDANCE_CASES = [
    (CAT, 42, 2, 64, 64, 1.0, NEGATIVE),
    (CAT, 42, 2, 64, 64, 2.5, NEGATIVE),
    (CAT, 0, 1, 64, 96, 2.5, None),
]
TILED_SIZE = (128, 96)  # larger than the tiny VAE's 64-pixel tiles both ways


def picture(height: int, width: int) -> np.ndarray:
    """A deterministic test picture, uint8 [H, W, 3]: gradients and a disc, so that encoding has structure."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = x / max(width - 1, 1)
    g = y / max(height - 1, 1)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(height, width) * 0.25) ** 2).astype(np.float32)
    b = 0.2 + 0.6 * disc
    return np.round(np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def encoder_module(vae):
    """quant_conv + encoder with Optimum's late-2023 output: `vae.encode(x).latent_dist.sample()`."""
    import torch

    class VaeEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = vae

        def forward(self, sample):
            return self.model.encode(sample, return_dict=False)[0].sample()

    return VaeEncoder()


def check_same_weights(unet, vae) -> None:
    """The rebuilt modules must be the ones the committed ONNX files came from."""
    import onnxruntime as ort
    import torch

    rng = np.random.Generator(np.random.PCG64(0))
    z = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    session = ort.InferenceSession(os.path.join(base.OUT, "vae_decoder", "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"latent_sample": z})[0]
    with torch.no_grad():
        torch_out = vae.decode(torch.from_numpy(z), return_dict=False)[0].numpy()
    diff = float(np.abs(onnx_out - torch_out).max())
    assert diff < 1e-5, f"the rebuilt VAE is not the committed one (max diff {diff})"


def export_encoder(vae) -> str:
    import torch

    path = os.path.join(OUT, ENCODER_PATH)
    axes_in = {0: "batch_size", 2: "height", 3: "width"}
    axes_out = {0: "batch_size", 2: "height_latent", 3: "width_latent"}
    base.export_module(encoder_module(vae), (torch.rand(1, 3, 64, 64) * 2 - 1,), path, ["sample"], ["latent_sample"],
                       {"sample": axes_in, "latent_sample": axes_out})
    return path


def record(te1, te2, unet, vae) -> None:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as i2i
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as ead
    from PIL import Image

    tok1, tok2 = base.load_tokenizers()
    cfg = {k: v for k, v in base.SCHEDULER_CONFIG.items() if not k.startswith("_")}
    parts = dict(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2, unet=unet,
                 scheduler=EulerAncestralDiscreteScheduler.from_config(cfg))
    # SDXL-Turbo's configuration: no aesthetic score, zeros for an empty negative prompt (the defaults)
    img2img = StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=False, add_watermarker=False)
    text2img = StableDiffusionXLPipeline(**parts, add_watermarker=False)
    for pipe in (img2img, text2img):
        pipe.set_progress_bar_config(disable=True)

    arrays, cases = {}, []
    originals = (ead.randn_tensor, i2i.randn_tensor, i2i.retrieve_latents)

    def feed(first, noises, shape):
        """diffusers' randn calls answered from the seed's draws: img2img's noise to the start, then each step's."""
        calls = []

        def step_noise(shape_, *a, **k):
            assert tuple(shape_) == shape, (shape_, shape)
            calls.append(1)
            return torch.from_numpy(noises[len(calls) - 1].copy())

        ead.randn_tensor = step_noise
        i2i.randn_tensor = lambda shape_, *a, **k: torch.from_numpy(first.copy())
        return calls

    i2i.retrieve_latents = lambda out, generator=None, sample_mode="sample": originals[2](out, generator, "argmax")
    try:
        for prompt, seed, steps, strength, h, w, guidance, negative in IMG2IMG_CASES:
            key = f"img2img_s{seed}_n{steps}_x{strength}_{h}x{w}_g{guidance}"
            shape = (1, 4, h // 8, w // 8)
            rng = np.random.Generator(np.random.PCG64(seed))
            first = rng.standard_normal(shape, dtype=np.float32)
            noises = [rng.standard_normal(shape, dtype=np.float32) for _ in range(steps)]
            start = steps - min(int(steps * strength), steps)
            calls = feed(first, noises[start:], shape)
            pixels = picture(h, w)
            with torch.no_grad():
                out = img2img(prompt=prompt, image=Image.fromarray(pixels), strength=strength, num_inference_steps=steps,
                              guidance_scale=guidance, negative_prompt=negative, output_type="np")
                mean = vae.encode(torch.from_numpy(pixels.astype(np.float32) / 255 * 2 - 1).permute(2, 0, 1)[None])
                mean = mean.latent_dist.mode().numpy() * base.VAE_SCALING_FACTOR
            assert len(calls) == steps - start, (len(calls), steps - start)
            arrays[f"{key}_image"] = np.asarray(out.images[0], dtype=np.float32)
            arrays[f"{key}_source"] = pixels
            arrays[f"{key}_init_latents"] = mean[0].astype(np.float32)
            cases.append({"key": key, "kind": "img2img", "prompt": prompt, "seed": seed, "steps": steps,
                          "strength": strength, "height": h, "width": w, "guidance": guidance, "negative": negative})
        for prompt, seed, steps, h, w, guidance, negative in GUIDANCE_CASES:
            key = f"guidance_s{seed}_n{steps}_{h}x{w}_g{guidance}_{'neg' if negative else 'zeros'}"
            shape = (1, 4, h // 8, w // 8)
            rng = np.random.Generator(np.random.PCG64(seed))
            latents = rng.standard_normal(shape, dtype=np.float32)
            noises = [rng.standard_normal(shape, dtype=np.float32) for _ in range(steps)]
            calls = feed(latents, noises, shape)
            with torch.no_grad():
                out = text2img(prompt=prompt, height=h, width=w, num_inference_steps=steps, guidance_scale=guidance,
                               negative_prompt=negative, latents=torch.from_numpy(latents.copy()), output_type="np")
            assert len(calls) == steps, (len(calls), steps)
            arrays[f"{key}_image"] = np.asarray(out.images[0], dtype=np.float32)
            cases.append({"key": key, "kind": "text2img", "prompt": prompt, "seed": seed, "steps": steps, "height": h,
                          "width": w, "guidance": guidance, "negative": negative})
    finally:
        ead.randn_tensor, i2i.randn_tensor, i2i.retrieve_latents = originals

    h, w = TILED_SIZE
    pixels = picture(h, w)
    x = torch.from_numpy(pixels.astype(np.float32) / 255 * 2 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mode().numpy()
        vae.enable_tiling()
        tiled = vae.encode(x).latent_dist.mode().numpy()
        vae.disable_tiling()
    assert np.abs(tiled - whole).max() > 1e-3, "the tiled encode did not tile"
    arrays["tiled_source"] = pixels
    arrays["tiled_whole_latents"] = whole[0] * np.float32(base.VAE_SCALING_FACTOR)
    arrays["tiled_latents"] = tiled[0] * np.float32(base.VAE_SCALING_FACTOR)

    doc = {
        "description": (
            "Outputs of diffusers (fp32, CPU) built from the same torch modules as the tiny SDXL-Turbo and its VAE "
            "encoder add-on. img2img: StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score=False), the source "
            "picture encoded to its latent distribution's mean (retrieve_latents sample_mode='argmax') times "
            "0.13025. Noise: rng = numpy Generator(PCG64(seed)); first = rng.standard_normal((1,4,h/8,w/8), float32), "
            "then one draw per step of the full `steps`-step schedule; img2img adds `first` at the starting sigma "
            "and uses the draws of the steps it runs. text2img: StableDiffusionXLPipeline with `first` as the "
            "initial latents. negative null: diffusers' zeros for an empty negative prompt. Keys: {key}_image "
            "(HWC float32 in [0,1]), {key}_source (uint8 HWC), {key}_init_latents (scaled mean, CHW); tiled_source, "
            "tiled_whole_latents and tiled_latents: AutoencoderKL's encode without and with enable_tiling() "
            "(64-pixel tiles, overlap 0.25), scaled by 0.13025."
        ),
        "cases": cases,
    }
    base.write_json(os.path.join(REFERENCE, "img2img.json"), doc)
    base.save_npz_deterministic(os.path.join(REFERENCE, "img2img.npz"), arrays)


def write_manifest() -> None:
    files = base.bundle_files(OUT, BUNDLE_ID)
    variant = base.fp32_variant(files, 50_000_000)
    variant["convert"] = {"from": {"vae_encoder": ENCODER_PATH}, "to": "distribution-mean"}
    base.write_json(MANIFEST, {
        "id": BUNDLE_ID,
        "name": "Tiny SDXL-Turbo image-to-image add-on (test model)",
        "description": ("The VAE encoder of Tiny SDXL-Turbo (random weights), exported as the real SDXL-Turbo's is: "
                        "it turns a picture into latents, so that a run can start from a picture."),
        "license": "CC0-1.0 (generated, random weights)",
        "pipeline": "vae-encoder",
        "encodes_for": ["tiny-sdxl-turbo"],
        "vae_scaling_factor": base.VAE_SCALING_FACTOR,
        "vae_scale_factor": base.VAE_SCALE_FACTOR,
        "variants": [variant],
    })


def main() -> int:
    t0 = time.time()
    base.prepare_torch()
    te1, te2, unet, vae = base.build_models()
    check_same_weights(unet, vae)
    export_encoder(vae)
    record(te1, te2, unet, vae)
    write_manifest()
    base.list_bundle(OUT, MANIFEST, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
