#!/usr/bin/env python3
"""Do the full-size templates compute what diffusers and transformers compute? (issue #26)

    # 1. convert a full-size checkpoint on CPython, as the worker does (the test stack's venv)
    .venv/bin/python bench/load/full_size_parity.py convert /tmp/ckbench/sd_xl_random.safetensors /tmp/ckparity
    # 2. compare each part with torch (torch, diffusers, transformers, onnxruntime)
    /tmp/benchvenv/bin/python bench/load/full_size_parity.py compare /tmp/ckparity
    # 3. diffusers' single-file loader and app/checkpoint/keys.py name every tensor alike (torch, diffusers)
    /tmp/benchvenv/bin/python bench/load/full_size_parity.py mapping /tmp/ckbench/sd_xl_random.safetensors

The checkpoint is bench/load/checkpoint_bench.py's random-weight SDXL file (6.94 GB). `compare` builds each part
at SDXL's real configuration (models/make_templates.py), loads into it the values the converted model holds
(float slots as they are, int4 slots dequantized: what MatMulNBits computes with), runs the same inputs through
onnxruntime (CPU) and torch (fp32), and prints each output's largest difference relative to its largest value.
A wrong slot, a wrong transposition or a missing weight moves these by orders of magnitude more than float32's
reordering does. Peak memory: the UNet in torch (10.3 GB) plus its onnxruntime session (~4 GB).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "models")]

PARTS = ("text_encoder", "text_encoder_2", "vae_decoder", "unet")


def convert(checkpoint: str, out: str) -> None:
    from checkpoints import convert as convert_files, single_file

    t0 = time.time()
    found = convert_files(single_file(Path(checkpoint)), Path(out) / "bundle")
    print(f"converted {found.describe()} in {time.time() - t0:.0f} s")


def filled(module, part: str, folder: Path) -> None:
    """`module`'s parameters set to the values the converted part holds."""
    import torch

    from app.checkpoint.fill import targets
    from app.checkpoint.int4 import dequantize
    from make_templates import key_of

    key = key_of(module)
    slots = targets(part, (folder / "model.onnx").read_bytes())
    data = np.memmap(folder / "model.onnx_data", np.uint8, "r")
    with torch.no_grad():
        for name, p in module.named_parameters():
            t = slots.get(key(name))
            if t is None and part == "vae_decoder" and name.startswith(("encoder.", "quant_conv.")):
                continue  # the encoder's half of the VAE
            if t.kind == "float":
                value = np.frombuffer(data[t.offset:t.offset + t.length], np.float32).reshape(p.shape)
            else:
                packed = np.asarray(data[t.offset:t.offset + t.length]).reshape(t.dims)
                scales = np.frombuffer(data[t.scales_offset:t.scales_offset + t.scales_length], np.float32)
                value = dequantize(packed, scales, p.shape[1])
            p.copy_(torch.from_numpy(np.array(value, np.float32)))


def inputs(part: str, rng) -> dict:
    if part.startswith("text_encoder"):
        ids = np.full((1, 77), 49407, np.int64)
        ids[0, :7] = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat"
        return {"input_ids": ids.astype(np.int32 if part == "text_encoder_2" else np.int64)}
    if part == "vae_decoder":
        return {"latent_sample": rng.standard_normal((1, 4, 16, 16), dtype=np.float32)}
    return {"sample": rng.standard_normal((1, 4, 16, 16), dtype=np.float32),
            "timestep": np.array([999.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((1, 77, 2048), dtype=np.float32),
            "text_embeds": rng.standard_normal((1, 1280), dtype=np.float32),
            "time_ids": np.array([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]], np.float32)}


def torch_outputs(part: str, module, feeds: dict) -> dict:
    import torch

    import make_tiny_sdxl_turbo as base

    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        if part.startswith("text_encoder"):
            out = base.text_encoder_module(module, part == "text_encoder_2")(t["input_ids"].long())
            n = module.config.num_hidden_layers
            names = (["text_embeds", "last_hidden_state"] if part == "text_encoder_2"
                     else ["last_hidden_state", "pooler_output"]) + [f"hidden_states.{i}" for i in range(n + 1)]
            wanted = {names[0], names[1], f"hidden_states.{n - 1}"}
            return {k: v.numpy() for k, v in zip(names, out) if k in wanted}
        if part == "vae_decoder":
            return {"sample": base.vae_decoder_module(module)(t["latent_sample"]).numpy()}
        return {"out_sample": base.unet_module(module)(*t.values()).numpy()}


def compare(out: str) -> int:
    import gc

    import onnxruntime as ort

    import make_tiny_sdxl_turbo as base
    from make_templates import build

    base.prepare_torch()
    rng = np.random.Generator(np.random.PCG64(7))
    worst = 0.0
    for part in PARTS:
        folder = Path(out) / "bundle" / part
        t0 = time.time()
        module = build(part)
        filled(module, part, folder)
        feeds = inputs(part, rng)
        want = torch_outputs(part, module, feeds)
        del module
        gc.collect()
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count()
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        del session
        gc.collect()
        for name, w in want.items():
            rel = float(np.abs(got[name] - w).max() / np.abs(w).max())
            worst = max(worst, rel)
            print(f"{part:<15} {name:<20} max|diff| / max|value| = {rel:.2e}  (max|value| {np.abs(w).max():.3g}, "
                  f"{time.time() - t0:.0f} s)", flush=True)
    print(f"worst: {worst:.2e}")
    return 0 if worst < 1e-3 else 1


def mapping(checkpoint: str) -> int:
    """Every slot of the full-size templates is filled from the tensor, rows, transposition and shape that diffusers'
    own single-file loader gives that diffusers key (the tiny checkpoint's check, at SDXL's real layout)."""
    import torch
    from diffusers.loaders import single_file_utils as sfu
    from safetensors.torch import load_file

    from app.checkpoint import keys
    from app.checkpoint.detect import layout
    from app.checkpoint.fill import _value, targets
    from make_templates import TEMPLATES, build

    ckpt = load_file(checkpoint)
    slots = {p.stem: targets(p.stem, p.read_bytes()) for p in Path(TEMPLATES).glob("*.onnx")}
    rules = layout(slots["unet"], slots["vae_decoder"]) | {"text_encoder": 0, "text_encoder_2": 1}
    unet, vae, te2 = (build(part, weights=False) for part in ("unet", "vae_decoder", "text_encoder_2"))
    theirs = {"unet": sfu.convert_ldm_unet_checkpoint(ckpt, dict(unet.config)),
              "vae": sfu.convert_ldm_vae_checkpoint(ckpt, dict(vae.config)),
              "text_encoder": sfu.convert_ldm_clip_checkpoint(ckpt),
              "text_encoder_2": sfu.convert_open_clip_checkpoint(te2, ckpt, prefix="conditioner.embedders.1.model.")}
    checked = 0
    for part in ("unet", "text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder"):
        converted = theirs["vae" if part.startswith("vae") else part]
        converted = converted.state_dict() if hasattr(converted, "state_dict") else converted
        for key, source in keys.single_file_sources(part, slots[part], rules).items():
            want = converted[key if key in converted else key.removeprefix("text_model.")]
            got = torch.from_numpy(np.ascontiguousarray(_value(ckpt[source.key].numpy(), source)))
            if not torch.equal(got.reshape(want.shape), want):
                print(f"{part} {key}: keys.py reads {source}, which is not what diffusers gives")
                return 1
            checked += 1
    print(f"keys.py fills all {checked} slots with what diffusers' single-file loader gives their keys")
    return 0


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "convert" and len(sys.argv) == 4:
        convert(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) == 3 and sys.argv[1] in ("compare", "mapping"):
        return (compare if sys.argv[1] == "compare" else mapping)(sys.argv[2])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
