#!/usr/bin/env python3
"""Build the tiny SDXL refiner test bundle (random weights, the real refiner's interfaces).

Run from the repository root, after models/make_tiny_sdxl_turbo.py:

    python models/make_tiny_sdxl_refiner.py            # build, record references, verify
    python models/make_tiny_sdxl_refiner.py --verify   # only re-check an existing bundle

Building needs torch, diffusers, transformers, onnx and onnxruntime. The output is deterministic:
re-running produces byte-identical files.

As with the real SDXL refiner, the text encoder and the VAE are the base model's: text_encoder_2,
tokenizer_2 and vae_decoder are byte copies of models/tiny-sdxl-turbo/ (their torch modules are rebuilt
with make_tiny_sdxl_turbo.build_models() for diffusers, and checked against the copied ONNX files).
Only the UNet is new. Rebuild this bundle whenever the base bundle changes.

Writes:
    models/tiny-sdxl-refiner/
        text_encoder_2/model.onnx      CLIPTextModelWithProjection (copy of the base's)
        tokenizer_2/                   tokenizer.json + tokenizer_config.json (copy of the base's)
        unet/model.onnx                UNet2DConditionModel, refiner layout: text_time with 5 time ids
                                       (original h, w, crop top, crop left, aesthetic score),
                                       cross-attention on text_encoder_2's hidden states only
        vae_decoder/model.onnx         copy of the base's (same latent space)
        scheduler_config.json          the SDXL refiner's EulerDiscreteScheduler ("leading", steps_offset 1)
        reference/cases.json           cases
        reference/reference.npz        base latents in, diffusers StableDiffusionXLImg2ImgPipeline image out
    models_manifest/tiny-sdxl-refiner.json

The base latents of each case come from app/pipeline/turbo.py (SDXLTurbo on onnxruntime); --verify runs
app/pipeline/refiner.py on onnxruntime against the recorded diffusers references.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _load_base_script():
    spec = importlib.util.spec_from_file_location(
        "make_tiny_sdxl_turbo", os.path.join(ROOT, "models", "make_tiny_sdxl_turbo.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _load_base_script()

BUNDLE_ID = "tiny-sdxl-refiner"
OUT = os.path.join(ROOT, "models", BUNDLE_ID)
MANIFEST = os.path.join(ROOT, "models_manifest", BUNDLE_ID + ".json")
BASE_OUT = base.OUT
BASE_MANIFEST = base.MANIFEST

SEED = base.SEED + 100  # the refiner UNet's weights
OPSET = base.OPSET
MAX_LEN = base.MAX_LEN
TE2 = base.TE2
ADD_TIME_DIM = base.ADD_TIME_DIM
N_TIME_IDS = 5  # original h, w, crop top, crop left, aesthetic score
VAE_SCALING_FACTOR = base.VAE_SCALING_FACTOR
VAE_SCALE_FACTOR = base.VAE_SCALE_FACTOR
RESOLUTIONS = base.RESOLUTIONS

# stabilityai/stable-diffusion-xl-refiner-1.0 scheduler/scheduler_config.json
SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# Files taken from the base bundle as they are.
COPIED = [
    "text_encoder_2/model.onnx",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/tokenizer_config.json",
    "vae_decoder/model.onnx",
]

# (prompt, seed, base_steps, height, width, strength, steps, guidance_scale, aesthetic_score, negative_aesthetic_score)
# The base run (SDXLTurbo, same prompt and seed) gives the latents; the refiner then runs
# min(int(steps * strength), steps) steps: 1, 2, 3, 5, 2, 2, 3 below.
CASES = [
    ("a photo of a cat", 42, 2, 64, 64, 0.3, 4, 0.0, 6.0, 2.5),
    ("a photo of a cat", 42, 2, 64, 64, 0.5, 4, 0.0, 6.0, 2.5),
    ("a photo of a cat", 42, 2, 64, 64, 0.3, 10, 0.0, 6.0, 2.5),
    (base.UNICODE_PROMPT, 1234, 2, 64, 96, 0.5, 10, 0.0, 6.0, 2.5),
    ("", 0, 1, 64, 64, 0.5, 4, 0.0, 6.0, 2.5),
    ("a photo of a cat", 7, 2, 64, 64, 0.5, 4, 5.0, 6.0, 2.5),
    (base.LONG_PROMPT, 3, 4, 64, 96, 0.3, 10, 5.0, 8.0, 1.0),
]


def case_key(i, prompt, seed, base_steps, h, w, strength, steps, guidance, aesthetic, negative_aesthetic) -> str:
    return f"case{i}_s{seed}_b{base_steps}_str{strength:g}_n{steps}_{h}x{w}_g{guidance:g}"


# ----------------------------------------------------------------------------
# torch models


def build_refiner_unet():
    import torch

    torch.manual_seed(SEED)
    unet = base.tiny_unet(TE2["hidden_size"], N_TIME_IDS)  # the refiner sees text_encoder_2 only
    # As in the base model: larger cross-attention and text/time embedding weights, so that the prompt
    # and the aesthetic score visibly change the picture.
    with torch.no_grad():
        base.strengthen_conditioning(unet)
        # the aesthetic score's columns (the last time id) once more: the tiny 8-wide sinusoidal time
        # embedding alone moves the picture by only ~1e-4 per score point
        unet.add_embedding.linear_1.weight[:, -ADD_TIME_DIM:].mul_(8.0)
    return unet


def check_copies_match_torch(te2, vae) -> None:
    """The copied ONNX files compute what the rebuilt torch modules compute (same base weights)."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    te = ort.InferenceSession(os.path.join(OUT, "text_encoder_2", "model.onnx"), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(os.path.join(OUT, "vae_decoder", "model.onnx"), so, providers=["CPUExecutionProvider"])
    ids = np.full((1, MAX_LEN), 0, dtype=np.int64)
    ids[0, :7] = [49406, 320, 1125, 539, 320, 2368, 49407]
    inp = te.get_inputs()[0]
    got = dict(zip([o.name for o in te.get_outputs()], te.run(None, {inp.name: ids.astype(base.ORT_INT[inp.type])})))
    with torch.no_grad():
        want = te2(input_ids=torch.from_numpy(ids), output_hidden_states=True)
    d_te = max(
        float(np.abs(got["text_embeds"] - want.text_embeds.numpy()).max()),
        float(np.abs(got["hidden_states.1"] - want.hidden_states[1].numpy()).max()),
    )
    z = np.random.Generator(np.random.PCG64(SEED)).standard_normal((1, 4, 8, 8), dtype=np.float32)
    with torch.no_grad():
        want_img = vae.decode(torch.from_numpy(z), return_dict=False)[0].numpy()
    d_vae = float(np.abs(dec.run(None, {"latent_sample": z})[0] - want_img).max())
    print(f"  copied text_encoder_2 / vae_decoder vs rebuilt torch modules: {d_te:.1e} / {d_vae:.1e}")
    assert d_te < 1e-4 and d_vae < 1e-4, "the base bundle's files do not match make_tiny_sdxl_turbo.build_models()"


# ----------------------------------------------------------------------------
# ONNX export (the base script's style: opset 17, TorchScript exporter, fp32, dynamic batch/h/w)


def export_unet(unet) -> None:
    import torch

    g = torch.Generator().manual_seed(SEED + 1)
    args = (
        torch.randn(1, 4, 8, 8, generator=g),
        torch.tensor([999.0], dtype=torch.float32),
        torch.randn(1, MAX_LEN, TE2["hidden_size"], generator=g),
        torch.randn(1, TE2["projection_dim"], generator=g),
        torch.tensor([[64.0, 64.0, 0.0, 0.0, 6.0]]),
    )
    base.export_module(base.unet_module(unet), args, os.path.join(OUT, "unet", "model.onnx"), base.UNET_INPUTS,
                       base.UNET_OUTPUTS, base.UNET_DYNAMIC_AXES)


# ----------------------------------------------------------------------------
# base latents (app/pipeline/turbo.py on onnxruntime) and diffusers references


async def base_latents_for_cases() -> list:
    from app.pipeline.turbo import SDXLTurbo
    from app.runtime.ort import OrtRuntime

    with open(BASE_MANIFEST, encoding="utf-8") as f:
        entry = json.load(f)
    pipe = await SDXLTurbo.load(OrtRuntime(BASE_OUT), entry)
    out = []
    for prompt, seed, base_steps, h, w, *_ in CASES:
        last = []

        async def keep(i, x, denoised):
            last[:] = [x.copy()]

        await pipe.generate(prompt, seed, base_steps, h, w, on_step=keep)
        out.append(last[0].astype(np.float32))
    pipe.release()
    return out


def record_references(te2, vae, unet, base_latents) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as i2i
    from transformers import CLIPTokenizer

    from app.pipeline.seeds import refiner_noise

    tok2 = CLIPTokenizer.from_pretrained(os.path.join(OUT, "tokenizer_2"))
    cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=te2,
        tokenizer=None,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(cfg),
        requires_aesthetics_score=True,  # as the real refiner's model_index.json
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    seen = []  # what the UNet receives, per call

    def hook(module, args, kwargs):
        seen.append((float(args[1]), args[0].shape[0], kwargs["added_cond_kwargs"]["time_ids"].numpy().copy()))

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    arrays, cases = {}, []
    orig_randn = i2i.randn_tensor
    try:
        for i, (case, latents) in enumerate(zip(CASES, base_latents)):
            prompt, seed, base_steps, h, w, strength, steps, guidance, aesthetic, neg_aesthetic = case
            key = case_key(i, *case)
            shape = (1, 4, h // VAE_SCALE_FACTOR, w // VAE_SCALE_FACTOR)
            assert latents.shape == shape, (latents.shape, shape)
            noise = refiner_noise(seed, shape)
            calls = []

            def fake_randn(shape_, *a, **k):
                assert tuple(shape_) == shape, (shape_, shape)
                calls.append(1)
                return torch.from_numpy(noise.copy())

            i2i.randn_tensor = fake_randn
            seen.clear()
            with torch.no_grad():
                pe, npe, pooled, npooled = pipe.encode_prompt(
                    prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=""
                )
                out = pipe(
                    prompt=prompt,
                    image=torch.from_numpy(latents.copy()),  # 4 channels: used as latents as they are
                    strength=strength,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    negative_prompt="" if guidance > 1 else None,
                    aesthetic_score=aesthetic,
                    negative_aesthetic_score=neg_aesthetic,
                    output_type="np",
                )
            n_run = min(int(steps * strength), steps)
            assert len(calls) == 1, len(calls)
            assert len(seen) == n_run, (len(seen), n_run)
            assert all(b == (2 if guidance > 1 else 1) for _, b, _ in seen)
            image = np.asarray(out.images[0], dtype=np.float32)
            assert image.shape == (h, w, 3), image.shape
            arrays[f"{key}_base_latents"] = latents
            arrays[f"{key}_image"] = image
            arrays[f"{key}_timesteps"] = pipe.scheduler.timesteps.numpy().astype(np.float32)
            arrays[f"{key}_sigmas"] = pipe.scheduler.sigmas.numpy().astype(np.float32)
            arrays[f"{key}_unet_timesteps"] = np.asarray([t for t, _, _ in seen], dtype=np.float32)
            arrays[f"{key}_time_ids"] = seen[0][2].astype(np.float32)
            arrays[f"{key}_prompt_embeds"] = pe[0].numpy().astype(np.float32)
            arrays[f"{key}_pooled"] = pooled[0].numpy().astype(np.float32)
            arrays[f"{key}_negative_prompt_embeds"] = npe[0].numpy().astype(np.float32)
            arrays[f"{key}_negative_pooled"] = npooled[0].numpy().astype(np.float32)
            cases.append(
                {
                    "key": key,
                    "prompt": prompt,
                    "seed": seed,
                    "base_steps": base_steps,
                    "height": h,
                    "width": w,
                    "strength": strength,
                    "steps": steps,
                    "start": steps - n_run,
                    "refiner_steps": n_run,
                    "guidance_scale": guidance,
                    "negative_prompt": "",
                    "aesthetic_score": aesthetic,
                    "negative_aesthetic_score": neg_aesthetic,
                }
            )
    finally:
        i2i.randn_tensor = orig_randn
        handle.remove()

    ref = os.path.join(OUT, "reference")
    os.makedirs(ref, exist_ok=True)
    doc = {
        "description": (
            "Outputs of diffusers StableDiffusionXLImg2ImgPipeline (fp32, CPU; text_encoder=None, tokenizer=None, "
            "requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, EulerDiscreteScheduler from "
            "scheduler_config.json) built from the same torch modules as the ONNX files. image = the base latents "
            "[1,4,h/8,w/8] (4 channels: diffusers uses them as latents, unscaled). The base latents are the final "
            "latents of app/pipeline/turbo.py SDXLTurbo on models/tiny-sdxl-turbo (prompt, seed, base_steps, height, "
            "width). Noise: numpy Generator(PCG64([seed, 1])).standard_normal((1,4,h/8,w/8), float32), drawn once, "
            "as img2img's add_noise noise (Euler draws none with s_churn=0). Guidance > 1: negative prompt \"\" and "
            "negative_aesthetic_score. reference.npz keys: {key}_base_latents, {key}_image (HWC float32 in [0,1]), "
            "{key}_timesteps and {key}_sigmas (the whole schedule of `steps`), {key}_unet_timesteps (those the UNet "
            "saw), {key}_time_ids (the UNet's time_ids, negative row first with guidance), {key}_prompt_embeds "
            "[77,D], {key}_pooled [P], {key}_negative_prompt_embeds, {key}_negative_pooled (prompt \"\")."
        ),
        "cases": cases,
    }
    base.write_json(os.path.join(ref, "cases.json"), doc)
    base.save_npz_deterministic(os.path.join(ref, "reference.npz"), arrays)


# ----------------------------------------------------------------------------
# verify with app/pipeline/refiner.py on onnxruntime


async def verify_async() -> float:
    from app.pipeline.refiner import SDXLRefiner
    from app.runtime.ort import OrtRuntime

    with open(MANIFEST, encoding="utf-8") as f:
        manifest = json.load(f)
    with open(os.path.join(OUT, "reference", "cases.json"), encoding="utf-8") as f:
        doc = json.load(f)
    ref = dict(np.load(os.path.join(OUT, "reference", "reference.npz")))
    refiner = await SDXLRefiner.load(OrtRuntime(OUT), manifest)

    print("interfaces:")
    for name, s in (("text_encoder_2", refiner.text_encoder_2), ("unet", refiner.unet), ("vae_decoder", refiner.vae_decoder)):
        sess = s._session
        ins = ", ".join(f"{i.name}:{i.type[7:-1]}{i.shape}" for i in sess.get_inputs())
        outs = ", ".join(f"{o.name}{o.shape}" for o in sess.get_outputs())
        print(f"  {name}: ({ins}) -> ({outs})")

    worst = 0.0
    for c in doc["cases"]:
        k = c["key"]
        schedule, start = refiner.schedule(c["steps"], c["strength"])
        assert start == c["start"], (start, c["start"])
        assert np.array_equal(schedule.timesteps, ref[f"{k}_unet_timesteps"]), (schedule.timesteps, ref[f"{k}_unet_timesteps"])
        d_sig = float(np.abs(schedule.sigmas - ref[f"{k}_sigmas"][start:]).max())
        embeds, pooled = await refiner.encode_prompt(c["prompt"])
        d_emb = max(float(np.abs(embeds[0] - ref[f"{k}_prompt_embeds"]).max()), float(np.abs(pooled[0] - ref[f"{k}_pooled"]).max()))
        img = await refiner.refine(
            c["prompt"],
            c["seed"],
            ref[f"{k}_base_latents"],
            c["strength"],
            c["steps"],
            guidance_scale=c["guidance_scale"],
            negative_prompt=c["negative_prompt"],
            aesthetic_score=c["aesthetic_score"],
            negative_aesthetic_score=c["negative_aesthetic_score"],
        )
        d_img = float(np.abs(img - ref[f"{k}_image"]).max())
        worst = max(worst, d_img)
        clipped = float(np.mean((img <= 0) | (img >= 1)))
        print(
            f"  {k:40s} image max|diff| {d_img:.2e}  embeds {d_emb:.1e}  sigmas {d_sig:.1e}"
            f"  ({c['refiner_steps']} steps from t={schedule.timesteps[0]:.0f}; mean {img.mean():.3f} std {img.std():.3f},"
            f" clipped {clipped:.0%})"
        )

    # every listed resolution runs through the UNet at batch 1 and 2 (guidance)
    D = TE2["hidden_size"]
    P = TE2["projection_dim"]
    for h, w in manifest["resolutions"]:
        for b in (1, 2):
            lh, lw = h // VAE_SCALE_FACTOR, w // VAE_SCALE_FACTOR
            out = await refiner.unet.run(
                {
                    "sample": np.zeros((b, 4, lh, lw), np.float32),
                    "timestep": np.array([999.0], np.float32),
                    "encoder_hidden_states": np.zeros((b, MAX_LEN, D), np.float32),
                    "text_embeds": np.zeros((b, P), np.float32),
                    "time_ids": np.tile(np.array([[h, w, 0, 0, 6.0]], np.float32), (b, 1)),
                },
                ["out_sample"],
            )
            assert out["out_sample"].shape == (b, 4, lh, lw), out["out_sample"].shape
    print(f"  resolutions {manifest['resolutions']} (h, w): refiner UNet runs at batch 1 and 2")
    files = manifest["variants"][0]["files"]
    for entry in files:
        p = os.path.join(OUT, entry["path"])
        assert os.path.getsize(p) == entry["size"] and base.sha256_file(p) == entry["sha256"], entry["path"]
    for path in COPIED:
        assert base.sha256_file(os.path.join(OUT, path)) == base.sha256_file(os.path.join(BASE_OUT, path)), path
    print(f"  manifest: {len(files)} files, sizes and sha256 match; {len(COPIED)} files identical to the base's")
    refiner.release()
    print(f"max abs diff (app/pipeline/refiner.py on onnxruntime vs diffusers), all cases: {worst:.3e}")
    return worst


# ----------------------------------------------------------------------------
# manifest


def write_manifest() -> None:
    files = base.bundle_files(OUT, BUNDLE_ID)
    total_mb = sum(f["size"] for f in files) / 1e6
    manifest = {
        "id": BUNDLE_ID,
        "name": "Tiny SDXL refiner (test model)",
        "style": "test pattern (random weights)",
        "description": (
            f"A {total_mb:.0f} MB model with the SDXL refiner's exact interfaces (the second CLIP text encoder, "
            "a text_time UNet conditioned on an aesthetic score, the base model's 8x VAE decoder) and random "
            "weights. It refines the latents of Tiny SDXL-Turbo in a short img2img second pass; it exists to "
            "test that pass end to end quickly."
        ),
        "license": "CC0-1.0 (generated, random weights)",
        "pipeline": "sdxl-refiner",
        "refines": ["tiny-sdxl-turbo"],
        "defaults": {"steps": 4, "strength": 0.5, "height": 64, "width": 64},
        "resolutions": RESOLUTIONS,
        "vae_scaling_factor": VAE_SCALING_FACTOR,
        "vae_scale_factor": VAE_SCALE_FACTOR,
        "variants": [base.fp32_variant(files, 100_000_000)],
    }
    base.write_json(MANIFEST, manifest)


# ----------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verify", action="store_true", help="only verify the existing bundle (app/pipeline/refiner.py on onnxruntime)")
    args = ap.parse_args()

    if not args.verify:
        t0 = time.time()
        base.prepare_torch()
        for path in COPIED + ["unet/model.onnx", "scheduler_config.json"]:
            if not os.path.exists(os.path.join(BASE_OUT, path)):
                sys.exit(f"{os.path.join(BASE_OUT, path)} is missing: run models/make_tiny_sdxl_turbo.py first")
        if os.path.isdir(OUT):
            shutil.rmtree(OUT)
        os.makedirs(OUT)
        for path in COPIED:
            os.makedirs(os.path.dirname(os.path.join(OUT, path)), exist_ok=True)
            shutil.copyfile(os.path.join(BASE_OUT, path), os.path.join(OUT, path))
        base.write_json(os.path.join(OUT, "scheduler_config.json"), SCHEDULER_CONFIG)
        _, te2, _, vae = base.build_models()
        check_copies_match_torch(te2, vae)
        unet = build_refiner_unet()
        export_unet(unet)
        base_latents = asyncio.run(base_latents_for_cases())
        record_references(te2, vae, unet, base_latents)
        write_manifest()
        base.list_bundle(OUT, MANIFEST, t0)

    worst = asyncio.run(verify_async())
    if worst > 1e-4:
        print("FAIL: app/pipeline/refiner.py differs from diffusers by more than 1e-4")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
