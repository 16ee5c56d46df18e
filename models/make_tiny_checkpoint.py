#!/usr/bin/env python3
"""Build the graph templates and a tiny SDXL checkpoint in both layouts, for importing checkpoints.

Run from the repository root, after models/make_tiny_sdxl_turbo.py and make_tiny_sdxl_refiner.py (same heavy
dependencies: torch, diffusers, transformers, onnx, onnxruntime):

    python models/make_tiny_checkpoint.py            # write everything below
    python models/make_tiny_checkpoint.py --check    # write it to a scratch folder; fail if any byte differs

It rebuilds the tiny SDXL-Turbo's and the tiny refiner's torch modules from their seeds, rounds every weight to
fp16 (what checkpoints hold), and writes:
    models/templates/tiny-sdxl/<part>.onnx
        made by models/make_templates.py's write_template, as the full-size family:
        the graph of each part with no weights: every weight initializer is named after its diffusers key and
        points at its byte range of model.onnx_data. Every MatMul over a linear weight is MatMulNBits (4-bit,
        block 32, symmetric, float32 scales: slots `<key>` and `<key>.scales`); everything else is float32.
        Parts: unet, refiner_unet, text_encoder (CLIP-L), text_encoder_2 (bigG with projection),
        vae_decoder, vae_encoder (the latent distribution's mean, `latent_mean`). Their q4f16 graphs
        (`<part>.f16.onnx`) are derived from these by models/make_f16_templates.py: run it after.
    models/tiny-sdxl-checkpoint/
        diffusers/{unet,text_encoder,text_encoder_2,vae}/...safetensors   the diffusers-format layout
        tiny-sdxl.safetensors           the same weights in the single-file (A1111/ComfyUI, SGM) layout
        tiny-sdxl-refiner.safetensors   the tiny refiner (UNet, bigG, VAE), single file
        reference.json, reference.npz   diffusers' pictures from these weights (the parity oracle)
The single files are written by app/checkpoint/keys.py's rules in reverse, then read back by diffusers' own
single-file loader, which must give the same state dicts. The output is deterministic.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "models"))
import make_templates  # noqa: E402
import make_tiny_sdxl_turbo as base  # noqa: E402

from app.checkpoint import keys  # noqa: E402
from app.checkpoint.templates import BLOCK_SIZE, SYMMETRIC  # noqa: E402


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "models", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refiner = _load("make_tiny_sdxl_refiner")

TEMPLATES = os.path.join(ROOT, "models", "templates", "tiny-sdxl")
OUT = os.path.join(ROOT, "models", "tiny-sdxl-checkpoint")
# (prompt, seed, steps, height, width)
CASES = [("a photo of a cat", 42, 2, 64, 64), ("a red fox in the snow", 7, 1, 64, 96)]


def state(module) -> dict:
    key = make_templates.key_of(module)
    return {key(k): v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}


def round_to_fp16(*modules) -> None:
    import torch

    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(p.half().float())


# ----------------------------------------------------------------------------
# templates


def export_templates(te1, te2, unet, vae, refiner_unet) -> None:
    import copy

    dims = (base.TE1["hidden_size"], base.TE2["hidden_size"], base.TE2["projection_dim"])
    for part, module in (("text_encoder", te1), ("text_encoder_2", te2), ("unet", unet),
                         ("refiner_unet", refiner_unet), ("vae_decoder", vae), ("vae_encoder", vae)):
        make_templates.write_template(part, copy.deepcopy(module), os.path.join(TEMPLATES, part + ".onnx"), dims)


# ----------------------------------------------------------------------------
# checkpoints


def single_file(parts: dict, layout: dict) -> dict:
    """SGM-named tensors from {part: diffusers state dict}, by keys.py's rules in reverse."""
    out = {}
    for part, weights in parts.items():
        for key, source in keys.single_file_sources(part, weights, layout).items():
            value = weights[key]
            if source.transpose:
                value = value.T
            if source.flatten:
                value = value.reshape(*value.shape, 1, 1)
            if source.rows:
                i, n = source.rows
                whole = out.setdefault(source.key, np.zeros((value.shape[0] * n, *value.shape[1:]), np.float32))
                whole[i * value.shape[0]:(i + 1) * value.shape[0]] = value
                continue
            if source.key in out and not np.array_equal(out[source.key], value):
                raise SystemExit(f"two keys map to {source.key}")
            out[source.key] = value
    return out


def fp16(weights: dict) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)).half() for k, v in sorted(weights.items())}


def write_checkpoints(te1, te2, unet, vae, refiner_unet) -> None:
    from safetensors.torch import save_file

    folder = os.path.join(OUT, "diffusers")
    for part, module, name in (("unet", unet, "diffusion_pytorch_model"), ("text_encoder", te1, "model"),
                               ("text_encoder_2", te2, "model"), ("vae", vae, "diffusion_pytorch_model")):
        os.makedirs(os.path.join(folder, part), exist_ok=True)
        save_file(fp16(state(module)), os.path.join(folder, part, name + ".safetensors"))
    layout = unet_layout(unet) | {"vae_blocks": len(vae.config.block_out_channels), "text_encoder": 0,
                                  "text_encoder_2": 1}
    vae_state = state(vae)
    parts = {"unet": state(unet), "text_encoder": state(te1), "text_encoder_2": state(te2),
             "vae_decoder": {k: v for k, v in vae_state.items() if not k.startswith(("encoder.", "quant_conv"))},
             "vae_encoder": {k: v for k, v in vae_state.items() if k.startswith(("encoder.", "quant_conv"))}}
    save_file(fp16(single_file(parts, layout)), os.path.join(OUT, "tiny-sdxl.safetensors"),
              metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    refiner_parts = {"unet": state(refiner_unet), "text_encoder_2": state(te2),
                     "vae_decoder": parts["vae_decoder"], "vae_encoder": parts["vae_encoder"]}
    save_file(fp16(single_file(refiner_parts, unet_layout(refiner_unet) | {"vae_blocks": layout["vae_blocks"],
                                                                           "text_encoder_2": 0})),
              os.path.join(OUT, "tiny-sdxl-refiner.safetensors"))


def unet_layout(unet) -> dict:
    ups = unet.config.up_block_types
    return {"layers": unet.config.layers_per_block,
            "attention_blocks": {i for i, t in enumerate(ups) if "CrossAttn" in t}}


def check_with_diffusers(te1, te2, unet, vae) -> None:
    """diffusers' own single-file conversion of tiny-sdxl.safetensors gives the diffusers state dicts."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors.numpy import load_file

    ckpt = {k: __import__("torch").from_numpy(v.astype(np.float32)) for k, v in
            load_file(os.path.join(OUT, "tiny-sdxl.safetensors")).items()}
    pairs = [
        ("unet", sfu.convert_ldm_unet_checkpoint(ckpt, dict(unet.config)), unet),
        ("vae", sfu.convert_ldm_vae_checkpoint(ckpt, dict(vae.config)), vae),
        ("text_encoder", sfu.convert_ldm_clip_checkpoint(ckpt), te1),
        ("text_encoder_2", sfu.convert_open_clip_checkpoint(te2, ckpt, prefix="conditioner.embedders.1.model."), te2),
    ]
    for name, converted, module in pairs:
        want = state(module)
        if hasattr(converted, "state_dict"):
            converted = converted.state_dict()
        got = {k: v.float().numpy() for k, v in converted.items()}
        missing = set(want) - set(got) - {"text_model.embeddings.position_ids"}
        if missing:
            raise SystemExit(f"diffusers' conversion of the single file lacks {name} keys: {sorted(missing)[:5]}")
        for k in want:
            if k in got and not np.array_equal(got[k].reshape(want[k].shape), want[k]):
                raise SystemExit(f"diffusers' conversion of the single file differs at {name} {k}")
    print("diffusers' single-file conversion gives the same weights: ok")


def as_int4(*modules_and_parts):
    """Copies whose weights that the templates hold as int4 are what MatMulNBits computes with; each argument
    is (module, [the template parts made from it])."""
    import copy

    import torch

    from app.checkpoint.fill import targets
    from app.checkpoint.int4 import dequantize, quantize

    out = []
    for module, parts in modules_and_parts:
        clone = copy.deepcopy(module)
        named = dict(clone.named_parameters())
        if "text_model.embeddings.token_embedding.weight" not in named:
            named |= {"text_model." + k: v for k, v in list(named.items())}
        with torch.no_grad():
            for part in parts:
                raw = open(os.path.join(TEMPLATES, part + ".onnx"), "rb").read()
                for key, target in targets(part, raw).items():
                    if target.kind == "int4":
                        w = named[key].numpy()
                        packed, scales, _ = quantize(w, BLOCK_SIZE, SYMMETRIC)
                        named[key].copy_(torch.from_numpy(dequantize(packed, scales, w.shape[1])))
        out.append(clone)
    return out


def record_refiner_references(te2, vae, refiner_unet):
    """The tiny refiner's first and guided cases, refined by diffusers with the int4 values of the weights the
    refiner checkpoint converts to (the same base latents and noise as models/tiny-sdxl-refiner/reference)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as i2i
    from transformers import CLIPTokenizer

    from app.pipeline.seeds import refiner_noise

    folder = os.path.join(ROOT, "models", "tiny-sdxl-refiner")
    recorded = json.load(open(os.path.join(folder, "reference", "cases.json")))["cases"]
    chosen = [recorded[0], next(c for c in recorded if c["guidance_scale"] > 1)]
    with np.load(os.path.join(folder, "reference", "reference.npz")) as data:
        latents = {c["key"]: data[c["key"] + "_base_latents"] for c in chosen}
    te2_q, unet_q, vae_q = as_int4((te2, ["text_encoder_2"]), (refiner_unet, ["refiner_unet"]),
                                   (vae, ["vae_decoder", "vae_encoder"]))
    cfg = {k: v for k, v in refiner.SCHEDULER_CONFIG.items() if not k.startswith("_")}
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae_q, text_encoder=None, text_encoder_2=te2_q, tokenizer=None,
        tokenizer_2=CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer_2")), unet=unet_q,
        scheduler=EulerDiscreteScheduler.from_config(cfg), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    arrays, original = {}, i2i.randn_tensor
    try:
        for c in chosen:
            shape = latents[c["key"]].shape
            noise = refiner_noise(c["seed"], shape)
            i2i.randn_tensor = lambda *a, **k: torch.from_numpy(noise.copy())
            with torch.no_grad():
                out = pipe(prompt=c["prompt"], image=torch.from_numpy(latents[c["key"]].copy()), strength=c["strength"],
                           num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"],
                           negative_prompt="" if c["guidance_scale"] > 1 else None,
                           aesthetic_score=c["aesthetic_score"], negative_aesthetic_score=c["negative_aesthetic_score"],
                           output_type="np")
            arrays["refiner_" + c["key"]] = np.asarray(out.images[0], dtype=np.float32)
            arrays["refiner_" + c["key"] + "_base_latents"] = latents[c["key"]]
    finally:
        i2i.randn_tensor = original
    return chosen, arrays


def record_references(te1, te2, unet, vae, refiner_unet) -> None:
    """Pictures by diffusers' StableDiffusionXLPipeline from the fp16-rounded weights (the parity oracle), as
    they are ({key}) and with the linear weights the templates quantize replaced by their int4 values
    ({key}_int4: the same weights the converted model computes with)."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as ead

    tok1, tok2 = base.load_tokenizers()
    cfg = {k: v for k, v in base.SCHEDULER_CONFIG.items() if not k.startswith("_")}
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
                                     unet=unet, scheduler=EulerAncestralDiscreteScheduler.from_config(cfg),
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    arrays, cases, original = {}, [], ead.randn_tensor
    quantized = as_int4((te1, ["text_encoder"]), (te2, ["text_encoder_2"]), (unet, ["unet"]),
                        (vae, ["vae_decoder", "vae_encoder"]))
    try:
        for i, (prompt, seed, steps, h, w), suffix in [(i, c, s) for s in ("", "_int4") for i, c in enumerate(CASES)]:
            if suffix:
                pipe.text_encoder, pipe.text_encoder_2, pipe.unet, pipe.vae = quantized
            rng = np.random.Generator(np.random.PCG64(seed))
            shape = (1, 4, h // 8, w // 8)
            latents = rng.standard_normal(shape, dtype=np.float32)
            noises = iter([rng.standard_normal(shape, dtype=np.float32) for _ in range(steps)])
            ead.randn_tensor = lambda *a, **k: torch.from_numpy(next(noises).copy())
            with torch.no_grad():
                out = pipe(prompt=prompt, height=h, width=w, num_inference_steps=steps, guidance_scale=0.0,
                           latents=torch.from_numpy(latents.copy()), output_type="np")
            key = f"case{i}"
            arrays[key + suffix] = np.asarray(out.images[0], dtype=np.float32)
            if not suffix:
                cases.append({"key": key, "prompt": prompt, "seed": seed, "steps": steps, "height": h, "width": w})
    finally:
        ead.randn_tensor = original
    refiner_cases, refiner_arrays = record_refiner_references(te2, vae, refiner_unet)
    arrays |= refiner_arrays
    base.write_json(os.path.join(OUT, "reference.json"), {
        "description": "diffusers StableDiffusionXLPipeline (fp32 CPU, guidance 0) with the checkpoint's weights; "
                       "noise as models/tiny-sdxl-turbo/reference/cases.json describes. reference.npz: {key} = "
                       "HWC float32 image in [0, 1]; {key}_int4 = the same with every linear weight that the "
                       "templates quantize replaced by its int4 value (app/checkpoint/int4.py dequantize). "
                       "refiner_cases: models/tiny-sdxl-refiner's cases (the same base latents and noise), refined "
                       "by diffusers' StableDiffusionXLImg2ImgPipeline with tiny-sdxl-refiner.safetensors' weights "
                       "at their int4 values: refiner_{key}.",
        "cases": cases, "refiner_cases": refiner_cases})
    base.save_npz_deterministic(os.path.join(OUT, "reference.npz"), arrays)


def main() -> int:
    global TEMPLATES, OUT
    if "--check" in sys.argv[1:]:
        import filecmp

        committed = {"templates": TEMPLATES, "checkpoint": OUT}
        with tempfile.TemporaryDirectory() as tmp:
            TEMPLATES, OUT = os.path.join(tmp, "templates"), os.path.join(tmp, "checkpoint")
            build()
            differ = []
            for name, fresh in (("templates", TEMPLATES), ("checkpoint", OUT)):
                for dirpath, _, files in os.walk(fresh):
                    for f in files:
                        rel = os.path.relpath(os.path.join(dirpath, f), fresh)
                        if not filecmp.cmp(os.path.join(dirpath, f), os.path.join(committed[name], rel), shallow=False):
                            differ.append(os.path.join(committed[name], rel))
        print("\n".join(f"differs: {os.path.relpath(d, ROOT)}" for d in differ) or "every file is as committed")
        return 1 if differ else 0
    build()
    for folder in (TEMPLATES, OUT):
        for dirpath, _, files in sorted(os.walk(folder)):
            for f in sorted(files):
                print(f"{os.path.getsize(os.path.join(dirpath, f)):>10,}  {os.path.relpath(os.path.join(dirpath, f), ROOT)}")
    return 0


def build() -> None:
    base.prepare_torch()
    te1, te2, unet, vae = base.build_models()
    refiner_unet = refiner.build_refiner_unet()
    round_to_fp16(te1, te2, unet, vae, refiner_unet)
    export_templates(te1, te2, unet, vae, refiner_unet)
    write_checkpoints(te1, te2, unet, vae, refiner_unet)
    check_with_diffusers(te1, te2, unet, vae)
    record_references(te1, te2, unet, vae, refiner_unet)


if __name__ == "__main__":
    sys.exit(main())
