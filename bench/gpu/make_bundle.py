#!/usr/bin/env python3
"""SDXL-architecture bundles with random seeded weights, in the three layouts the app loads.

    python3 bench/gpu/make_bundle.py --out DIR [--config sdxl|small] [--layouts fp32,q4f16,q4] [--parts unet,...]

Writes, under DIR:
    fp32/          stabilityai/sdxl-turbo's ONNX layout: {part}/model.onnx, weights of text_encoder_2 and
                   unet in model.onnx_data
    q4f16/         webnn/sdxl-turbo's: onnx/{part}_model_q4f16.onnx (4-bit MatMulNBits weights, fp16
                   elsewhere; the encoders export only the penultimate hidden state)
    q4/            what the app's install makes of q4f16 for GPUs without shader-f16 ({part}/model.onnx +
                   model.onnx_data, by app/onnx/fp32.py: the same code)
    manifest.json  the real sdxl-turbo entry (models_manifest/sdxl-turbo.json) listing these files
    weights.json   a sha256 of each part's torch weights, so torch_bench.py can show it times the same ones
Each layout folder also holds the site's tokenizers and scheduler config (models/sdxl/).

--config sdxl builds SDXL's exact configuration, so the files come out the size of the real ones (within 0.4%,
the first text encoder's q4f16 file aside: 3.6% smaller). On 2 cores it took 5 minutes, 21 GB of memory at
its peak (the UNet's export) and 20 GB of disk. --config small keeps SDXL's structure (three UNet levels with
1/2/10 transformer layers, 12- and 32-layer encoders, a four-level VAE) at narrow widths, for a software GPU.
--parts remakes some parts only. Needs torch, diffusers, transformers and onnx; the output is deterministic.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from app.onnx.fp32 import convert_model  # noqa: E402  (the app's own install-time conversion)


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "models", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _script("make_tiny_sdxl_turbo")  # export helpers, SDXL's constants
q4 = _script("make_tiny_sdxl_turbo_q4f16")  # the q4f16 rewrite

SEED = 20261205
# SDXL-Turbo's configuration (its config.json files); "small" narrows the widths only.
CONFIGS = {
    "sdxl": {
        "te1": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    hidden_act="quick_gelu", projection_dim=768),
        "te2": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                    hidden_act="gelu", projection_dim=1280),
        "unet": dict(block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), norm_num_groups=32,
                     addition_time_embed_dim=256, sample_size=128),
        "vae": dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=1024),
        "resolutions": None,  # the real entry's
    },
    "small": {
        "te1": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2,
                    hidden_act="quick_gelu", projection_dim=32),
        "te2": dict(hidden_size=40, intermediate_size=80, num_hidden_layers=32, num_attention_heads=2,
                    hidden_act="gelu", projection_dim=40),
        "unet": dict(block_out_channels=(32, 64, 128), attention_head_dim=(2, 4, 8), norm_num_groups=8,
                     addition_time_embed_dim=8, sample_size=8),
        "vae": dict(block_out_channels=(8, 16, 32, 32), norm_num_groups=8, sample_size=64),
        "resolutions": [[64, 64], [64, 96], [128, 128]],
    },
}
LAYOUTS = ("fp32", "q4f16", "q4")
PARTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
Q4F16_FILES = {part: f"onnx/{part}_model_q4f16.onnx" for part in PARTS}


def build_part(part: str, config: dict):
    """One part as a torch module (fp32, eval, classic attention: the processor ORT's fusions match)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED + PARTS.index(part))  # each part its own seed: built one at a time
    clip = dict(vocab_size=base.VOCAB_SIZE, max_position_embeddings=base.MAX_LEN, bos_token_id=base.BOS_ID,
                eos_token_id=base.EOS_ID, pad_token_id=1, attn_implementation="eager")
    te1, te2 = config["te1"], config["te2"]
    if part == "text_encoder":
        return CLIPTextModel(CLIPTextConfig(**clip, **te1)).eval()
    if part == "text_encoder_2":
        return CLIPTextModelWithProjection(CLIPTextConfig(**clip, **te2)).eval()
    if part == "unet":
        u = config["unet"]
        model = UNet2DConditionModel(
            in_channels=4, out_channels=4, layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=te1["hidden_size"] + te2["hidden_size"], addition_embed_type="text_time",
            projection_class_embeddings_input_dim=te2["projection_dim"] + 6 * u["addition_time_embed_dim"],
            use_linear_projection=True, **u).eval()
    else:
        model = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
            scaling_factor=base.VAE_SCALING_FACTOR, force_upcast=False, **config["vae"]).eval()
    model.set_attn_processor(AttnProcessor())
    return model


def weights_sha256(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_fp32(part: str, model, config: dict, folder: str) -> None:
    import torch

    path = os.path.join(folder, part, "model.onnx")
    if part == "text_encoder":
        base.export_text_encoder(model, False, torch.int64, path)
    elif part == "text_encoder_2":  # 2.8 GB at SDXL size: weights apart, as in the real export
        base.export_text_encoder(model, True, torch.int32, path, external_data=True)
    elif part == "unet":
        base.export_unet(model, config["te1"]["hidden_size"] + config["te2"]["hidden_size"],
                         config["te2"]["projection_dim"], path)
    else:
        base.export_vae_decoder(model, path)


def to_q4f16(part: str, config: dict, fp32: str, folder: str) -> None:
    """webnn/sdxl-turbo's file for a part, from the fp32 export (models/make_tiny_sdxl_turbo_q4f16.py's rewrite)."""
    import numpy as np
    import onnx

    penultimate = {k: f"hidden_states.{config[c]['num_hidden_layers'] - 1}" for k, c in
                   (("text_encoder", "te1"), ("text_encoder_2", "te2"))}
    outputs = {"text_encoder": [penultimate["text_encoder"]],
               "text_encoder_2": [penultimate["text_encoder_2"], "text_embeds"],
               "unet": ["out_sample"], "vae_decoder": ["sample"]}[part]
    model = onnx.load(os.path.join(fp32, part, "model.onnx"))
    model = q4.to_float16(q4.with_matmulnbits(q4.keep_outputs(model, outputs)))
    ids_type = {"text_encoder": np.int32, "text_encoder_2": np.int64}.get(part)
    if ids_type is not None:
        model = q4.with_input_type(model, "input_ids", ids_type)
    model.doc_string = ""
    del model.metadata_props[:]
    onnx.checker.check_model(model)
    target = os.path.join(folder, Q4F16_FILES[part])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    onnx.save(model, target)


def to_q4(part: str, q4f16: str, folder: str) -> None:
    """The app's install-time conversion of a q4f16 part, streamed from and to disk as in OPFS."""
    os.makedirs(os.path.join(folder, part), exist_ok=True)
    with open(os.path.join(q4f16, Q4F16_FILES[part]), "rb") as source, \
            open(os.path.join(folder, part, "model.onnx_data"), "wb") as data:
        async def read(start, end):
            source.seek(start)
            return source.read(end - start)

        async def write_data(raw):
            data.write(raw)

        size = os.fstat(source.fileno()).st_size
        graph = asyncio.run(convert_model(read, size, write_data, "model.onnx_data"))
    with open(os.path.join(folder, part, "model.onnx"), "wb") as f:
        f.write(graph)


def copy_shared(folder: str) -> None:
    for path in base.SHARED_FILES:
        os.makedirs(os.path.dirname(os.path.join(folder, path)), exist_ok=True)
        shutil.copyfile(os.path.join(base.SHARED, path), os.path.join(folder, path))


def write_manifest(out: str, config: dict) -> dict:
    """The real entry, each variant listing this bundle's files (no URLs: they are local); returns it."""
    with open(os.path.join(ROOT, "models_manifest", "sdxl-turbo.json"), encoding="utf-8") as f:
        entry = json.load(f)
    entry["name"] += " (random weights)"
    if config["resolutions"]:
        side = config["resolutions"][0]
        entry.update(resolutions=config["resolutions"], tier_resolutions={t: side for t in entry["tier_resolutions"]},
                     defaults=dict(entry["defaults"], height=side[0], width=side[1]))
    for variant in entry["variants"]:
        folder = os.path.join(out, variant["id"])
        files = base.bundle_files(folder, "") if os.path.isdir(folder) else []
        variant["files"] = [{k: v for k, v in f.items() if k != "url"} for f in files]
        variant["disk_bytes"] = sum(f["size"] for f in files)
    base.write_json(os.path.join(out, "manifest.json"), entry)
    return entry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the layouts (created)")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="sdxl")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="any of fp32,q4f16,q4 (q4f16 needs fp32, q4 q4f16)")
    ap.add_argument("--parts", default=",".join(PARTS), help="which parts to (re)make")
    args = ap.parse_args()
    layouts = [x for x in args.layouts.split(",") if x]
    parts = [x for x in args.parts.split(",") if x]
    if set(layouts) - set(LAYOUTS):
        ap.error(f"--layouts: any of {', '.join(LAYOUTS)}")
    if set(parts) - set(PARTS):
        ap.error(f"--parts: any of {', '.join(PARTS)}")
    config = CONFIGS[args.config]
    base.prepare_torch()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # deterministic still: the weights come from the seeded CPU generator
    folders = {layout: os.path.join(args.out, layout) for layout in LAYOUTS}
    for layout in layouts:
        copy_shared(folders[layout])
    weights = os.path.join(args.out, "weights.json")
    digests = {}
    if os.path.exists(weights):
        with open(weights, encoding="utf-8") as f:
            known = json.load(f)
        digests = known["sha256"] if known["config"] == args.config else {}
    for part in parts:
        t0 = time.time()
        if "fp32" in layouts:
            model = build_part(part, config)
            digests[part] = weights_sha256(model)
            export_fp32(part, model, config, folders["fp32"])
            del model
        if "q4f16" in layouts:
            to_q4f16(part, config, folders["fp32"], folders["q4f16"])
        if "q4" in layouts:
            to_q4(part, folders["q4f16"], folders["q4"])
        print(f"{part}: {time.time() - t0:.0f} s", flush=True)
    if digests:
        base.write_json(weights, {"config": args.config, "seed": SEED, "sha256": digests})
    for variant in write_manifest(args.out, config)["variants"]:
        for f in variant["files"]:
            print(f"  {variant['id']}/{f['path']:42s} {f['size']:>14,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
