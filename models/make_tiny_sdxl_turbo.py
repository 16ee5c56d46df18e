#!/usr/bin/env python3
"""Build the tiny SDXL-Turbo test bundle (random weights, real interfaces).

Run from the repository root:

    python models/make_tiny_sdxl_turbo.py            # build, record references, verify
    python models/make_tiny_sdxl_turbo.py --verify   # only re-check an existing bundle

Building needs the heavy optional dependencies torch, diffusers, transformers,
onnx and onnxruntime (plus open-clip-torch's BPE file, see --bpe).  The output is
deterministic: re-running produces byte-identical files.

Writes:
    models/tiny-sdxl-turbo/
        text_encoder/model.onnx        CLIPTextModel            input_ids int64 [b,77]
        text_encoder_2/model.onnx      CLIPTextModelWithProjection input_ids int32 [b,77]
        unet/model.onnx (+ model.onnx_data) UNet2DConditionModel (text_time), weights as external data
        vae_decoder/model.onnx         AutoencoderKL post_quant_conv + decoder
        tokenizer/, tokenizer_2/       tokenizer.json + tokenizer_config.json (CLIP BPE)
        scheduler_config.json          sdxl-turbo EulerAncestralDiscreteScheduler
        (the tokenizers and the scheduler config are the real SDXL-Turbo's: CLIP's BPE, padded with
        "<|endoftext|>" and "!"; copies go to models/sdxl/, which the site serves to every SDXL bundle)
        reference/cases.json           cases + tokenizer-only cases
        reference/reference.npz        diffusers outputs for each case
    models_manifest/tiny-sdxl-turbo.json

--verify re-implements the pipeline with onnxruntime + numpy only and compares it
with the recorded diffusers references.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_ID = "tiny-sdxl-turbo"
OUT = os.path.join(ROOT, "models", BUNDLE_ID)
MANIFEST = os.path.join(ROOT, "models_manifest", BUNDLE_ID + ".json")
SHARED = os.path.join(ROOT, "models", "sdxl")
SHARED_FILES = ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer.json",
                "tokenizer_2/tokenizer_config.json", "scheduler_config.json")

SEED = 20241124
OPSET = 17
MAX_LEN = 77
VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407
VAE_SCALING_FACTOR = 0.13025
VAE_SCALE_FACTOR = 8
RESOLUTIONS = [[64, 64], [64, 96], [96, 64], [128, 128]]  # [height, width]

# Model sizes: tiny, so the bundle runs quickly on a software WebGPU adapter.
# Activations as in SDXL: quick_gelu in the first encoder (CLIP ViT-L), gelu in the second (OpenCLIP bigG).
TE1 = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, hidden_act="quick_gelu")
# Different hidden sizes (16 / 20) and projection_dim != hidden_size, like SDXL (768 / 1280, 1280), so wiring
# mistakes (wrong encoder, last_hidden_state instead of text_embeds) fail on shapes.
TE2 = dict(
    hidden_size=20, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, hidden_act="gelu", projection_dim=24
)
ADD_TIME_DIM = 8

SCHEDULER_CONFIG = {
    "_class_name": "EulerAncestralDiscreteScheduler",
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
    "timestep_spacing": "trailing",
    "trained_betas": None,
}

LONG_PROMPT = (
    "a highly detailed oil painting of a majestic orange tabby cat wearing a tiny golden crown, "
    "sitting on a velvet throne in a grand medieval castle hall, dramatic candle lighting, "
    "stained glass windows casting colorful reflections on the stone floor, knights and jesters "
    "gathered around in admiration, intricate tapestries on the walls, volumetric fog, cinematic "
    "composition, trending on an art gallery wall, masterpiece, best quality, ultra sharp focus"
)
UNICODE_PROMPT = "Ünïcödé — emoji 🐱🚀, punctuation!?"

# (prompt, seed, steps, height, width)
CASES = [
    ("a photo of a cat", 0, 1, 64, 64),
    ("a photo of a cat", 42, 2, 64, 64),
    ("a photo of a cat", 1234, 4, 64, 64),
    ("", 42, 1, 64, 64),
    (LONG_PROMPT, 0, 2, 64, 64),
    (UNICODE_PROMPT, 1234, 2, 64, 64),
    ("a photo of a cat", 42, 2, 64, 96),
    (UNICODE_PROMPT, 0, 4, 64, 96),
]

TOKENIZER_CASES = [
    "",
    "a photo of a cat",
    LONG_PROMPT,
    "Hello, world!!! What's up?? (yes) [no] {maybe} <tag> #hash @user 100% $5 & co.",
    UNICODE_PROMPT,
    "café naïve Ångström straße ﬁne ＦＵＬＬＷＩＤＴＨ",
    "emoji 🐱🚀👍🏽 👨‍👩‍👧 ❤️",
    "日本語のテキスト 中文 한국어 Ελληνικά русский",
    "multiple   spaces\tand\nnewlines\n\n  here  ",
    "UPPERCASE Prompt With MiXeD CaSe",
    "don't won't it's we're they'll I'd",
    "numbers 1234567890 3.14159 1,000,000",
    "<|startoftext|> literal special tokens <|endoftext|>",
    " leading and trailing spaces ",
]


# ----------------------------------------------------------------------------
# small helpers


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def save_npz_deterministic(path: str, arrays: dict) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (byte-identical output)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def case_key(i: int, prompt: str, seed: int, steps: int, h: int, w: int) -> str:
    return f"case{i}_s{seed}_n{steps}_{h}x{w}"


def find_bpe(explicit: str | None) -> bytes:
    """Return the gzip'ed CLIP BPE merges (bpe_simple_vocab_16e6.txt.gz)."""
    member = "open_clip/bpe_simple_vocab_16e6.txt.gz"
    candidates = []
    if explicit:
        candidates.append(explicit)
    if os.environ.get("CLIP_BPE"):
        candidates.append(os.environ["CLIP_BPE"])
    try:  # installed open_clip
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        if spec and spec.submodule_search_locations:
            candidates.append(os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz"))
    except Exception:
        pass
    for pattern in ("/tmp/explore/pip/open_clip_torch-*.whl", os.path.join(ROOT, ".cache", "**", "open_clip_torch-*.whl")):
        candidates.extend(sorted(glob.glob(pattern, recursive=True)))
    for c in candidates:
        if not os.path.exists(c):
            continue
        if c.endswith(".whl") or c.endswith(".zip"):
            with zipfile.ZipFile(c) as zf:
                return zf.read(member)
        with open(c, "rb") as f:
            return f.read()
    sys.exit(
        "CLIP BPE file not found: pass --bpe PATH (open_clip_torch-*.whl or bpe_simple_vocab_16e6.txt.gz); "
        "`pip download open-clip-torch --no-deps` fetches the wheel."
    )


# ----------------------------------------------------------------------------
# tokenizers


def bytes_to_unicode() -> dict:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizers(bpe_gz: bytes, tmp: str) -> None:
    from transformers import CLIPTokenizer  # transformers 5: the tokenizers-backed ("fast") class

    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # lines 1..48894
    assert len(merges) == 48894
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE
    src = os.path.join(tmp, "bpe")
    os.makedirs(src, exist_ok=True)
    with open(os.path.join(src, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(src, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("\n".join(" ".join(m) for m in merges) + "\n")

    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        tok = CLIPTokenizer(
            vocab=os.path.join(src, "vocab.json"),
            merges=os.path.join(src, "merges.txt"),
            pad_token=pad,
            model_max_length=MAX_LEN,
        )
        tmp_out = os.path.join(tmp, sub)
        tok.save_pretrained(tmp_out)
        dst = os.path.join(OUT, sub)
        os.makedirs(dst, exist_ok=True)
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(os.path.join(tmp_out, fn), os.path.join(dst, fn))
        # normalise tokenizer_config.json: stable key order, required keys present
        cfg_path = os.path.join(dst, "tokenizer_config.json")
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["model_max_length"] = MAX_LEN
        cfg["pad_token"] = pad
        write_json(cfg_path, dict(sorted(cfg.items())))
        # Re-serialise tokenizer.json compactly, with merges in the classic "a b" string form (readable by
        # every tokenizers version and its JS ports; no CLIP token contains a space), and check that the
        # rewritten file tokenizes exactly like the one transformers saved.
        tj_path = os.path.join(dst, "tokenizer.json")
        with open(tj_path, encoding="utf-8") as f:
            tj = json.load(f)
        tj["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        assert all(m.count(" ") == 1 for m in tj["model"]["merges"])
        with open(tj_path, "w", encoding="utf-8", newline="\n") as f:
            json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        reloaded = CLIPTokenizer.from_pretrained(dst)
        for p in TOKENIZER_CASES + [c[0] for c in CASES]:
            assert tok_ids(reloaded, p) == tok_ids(tok, p), (sub, p)


def load_tokenizers():
    from transformers import CLIPTokenizer

    t1 = CLIPTokenizer.from_pretrained(os.path.join(OUT, "tokenizer"))
    t2 = CLIPTokenizer.from_pretrained(os.path.join(OUT, "tokenizer_2"))
    return t1, t2


def tok_ids(tok, prompt: str) -> list:
    return tok(prompt, padding="max_length", max_length=MAX_LEN, truncation=True)["input_ids"]


# ----------------------------------------------------------------------------
# torch models


def build_models():
    import torch
    from diffusers import AutoencoderKL
    from diffusers.models.attention_processor import AttnProcessor
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = dict(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MAX_LEN,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=1,
        attn_implementation="eager",
    )
    torch.manual_seed(SEED)
    te1 = CLIPTextModel(CLIPTextConfig(**common, **TE1, projection_dim=TE1["hidden_size"])).eval()
    torch.manual_seed(SEED + 1)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**common, **TE2)).eval()

    torch.manual_seed(SEED + 2)
    unet = tiny_unet(TE1["hidden_size"] + TE2["hidden_size"], 6)

    torch.manual_seed(SEED + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=VAE_SCALING_FACTOR,
        force_upcast=False,
    ).eval()
    vae.set_attn_processor(AttnProcessor())

    # The default initialisations give nearly prompt-independent, washed-out images:
    # CLIP token/position embeddings have std 0.02, which makes the penultimate hidden
    # states (what SDXL feeds the UNet) almost constant.  Rescale a few tensors so the
    # prompt, seed and step count visibly change the picture.
    g = torch.Generator().manual_seed(SEED + 4)
    with torch.no_grad():
        for te in (te1, te2):
            emb = getattr(te, "text_model", te).embeddings
            emb.token_embedding.weight.copy_(torch.randn(emb.token_embedding.weight.shape, generator=g))
            emb.position_embedding.weight.mul_(10.0)
        # cross-attention and the pooled-text/time embedding: larger weights so the text matters
        strengthen_conditioning(unet)
    return te1, te2, unet, vae


def tiny_unet(cross_attention_dim, n_time_ids):
    """A tiny SDXL-architecture UNet (text_time conditioning); seed torch before calling."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=2,  # diffusers naming: number of heads
        transformer_layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_DIM,
        projection_class_embeddings_input_dim=TE2["projection_dim"] + n_time_ids * ADD_TIME_DIM,
        use_linear_projection=True,
    ).eval()
    unet.set_attn_processor(AttnProcessor())
    return unet


def strengthen_conditioning(unet):
    """Larger cross-attention and text/time embedding weights, so that the prompt visibly changes the
    picture (call under torch.no_grad())."""
    for name, mod in unet.named_modules():
        if name.endswith("attn2"):
            mod.to_q.weight.mul_(3.0)
            mod.to_k.weight.mul_(6.0)
            mod.to_v.weight.mul_(6.0)
            mod.to_out[0].weight.mul_(5.0)
    unet.add_embedding.linear_1.weight.mul_(5.0)


# ----------------------------------------------------------------------------
# ONNX export


UNET_INPUTS = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
UNET_OUTPUTS = ["out_sample"]
UNET_DYNAMIC_AXES = {
    "sample": {0: "batch_size", 2: "height", 3: "width"},
    "encoder_hidden_states": {0: "batch_size"},
    "text_embeds": {0: "batch_size"},
    "time_ids": {0: "batch_size"},
    "out_sample": {0: "batch_size", 2: "height", 3: "width"},
}


def unet_module(unet):
    """The diffusers UNet with SDXL's added conditions as plain inputs, for export."""
    import torch

    class UNet(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            return self.model(
                sample,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
                return_dict=False,
            )[0]

    return UNet(unet)


def export_module(module, args, path, input_names, output_names, dynamic_axes, external_data=False):
    """Export with the TorchScript exporter (opset OPSET, fp32), check the model, strip exporter
    metadata (not needed, and it keeps the file stable); weights in model.onnx_data if external_data.
    The export goes to a scratch folder first: over 2 GB the exporter writes one file per tensor."""
    import onnx
    import torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        exported = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                exported,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(exported)  # by path: a model over 2 GB cannot be checked in memory
        model = onnx.load(exported)
    model.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    if external_data:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx_data", size_threshold=1024)
    else:
        onnx.save(model, path)


def text_encoder_module(model, with_projection: bool):
    """A CLIP text encoder with the Optimum export's outputs: (text_embeds, last_hidden_state) with the
    projection, (last_hidden_state, pooler_output) without, then every hidden state."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, output_hidden_states=True, return_dict=True)
            first = out.text_embeds if with_projection else out.last_hidden_state
            second = out.last_hidden_state if with_projection else out.pooler_output
            return (first, second, *out.hidden_states)

    return TextEncoder()


def vae_decoder_module(vae):
    """The VAE's decode (post_quant_conv + decoder) alone, for export."""
    import torch

    class VaeDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = vae

        def forward(self, latent_sample):
            return self.model.decode(latent_sample, return_dict=False)[0]

    return VaeDecoder()


def export_text_encoder(model, with_projection: bool, ids_dtype, path, external_data=False):
    import torch

    ids = torch.full((1, MAX_LEN), EOS_ID, dtype=ids_dtype)
    ids[0, 0] = BOS_ID
    n = model.config.num_hidden_layers
    outs = (["text_embeds", "last_hidden_state"] if with_projection else ["last_hidden_state", "pooler_output"]) + [
        f"hidden_states.{i}" for i in range(n + 1)
    ]
    dyn = {"input_ids": {0: "batch_size"}}
    for o in outs:
        dyn[o] = {0: "batch_size"}
    export_module(text_encoder_module(model, with_projection), (ids,), path, ["input_ids"], outs, dyn, external_data)


def export_unet(unet, text_dim, pooled_dim, path):
    """Weights apart, like the real UNet (loaded in chunks)."""
    import torch

    args = (
        torch.randn(1, 4, 8, 8),
        torch.tensor([999.0], dtype=torch.float32),
        torch.randn(1, MAX_LEN, text_dim),
        torch.randn(1, pooled_dim),
        torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
    )
    export_module(unet_module(unet), args, path, UNET_INPUTS, UNET_OUTPUTS, UNET_DYNAMIC_AXES, external_data=True)


def export_vae_decoder(vae, path):
    import torch

    axes = {0: "batch_size", 2: "height", 3: "width"}
    export_module(vae_decoder_module(vae), (torch.randn(1, 4, 8, 8),), path, ["latent_sample"], ["sample"],
                  {"latent_sample": axes, "sample": axes})


def export_onnx(te1, te2, unet, vae) -> None:
    import torch

    export_text_encoder(te1, False, torch.int64, os.path.join(OUT, "text_encoder", "model.onnx"))
    export_text_encoder(te2, True, torch.int32, os.path.join(OUT, "text_encoder_2", "model.onnx"))
    export_unet(unet, TE1["hidden_size"] + TE2["hidden_size"], TE2["projection_dim"], os.path.join(OUT, "unet", "model.onnx"))
    export_vae_decoder(vae, os.path.join(OUT, "vae_decoder", "model.onnx"))


# ----------------------------------------------------------------------------
# diffusers references


def record_references(te1, te2, unet, vae) -> None:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as ead

    tok1, tok2 = load_tokenizers()
    cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    scheduler = EulerAncestralDiscreteScheduler.from_config(cfg)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok1,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    arrays = {}
    cases = []
    orig_randn = ead.randn_tensor
    try:
        for i, (prompt, seed, steps, h, w) in enumerate(CASES):
            key = case_key(i, prompt, seed, steps, h, w)
            rng = np.random.Generator(np.random.PCG64(seed))
            shape = (1, 4, h // VAE_SCALE_FACTOR, w // VAE_SCALE_FACTOR)
            latents = rng.standard_normal(shape, dtype=np.float32)
            noises = [rng.standard_normal(shape, dtype=np.float32) for _ in range(steps)]
            calls = []

            def fake_randn(shape_, *a, **k):
                assert tuple(shape_) == shape, (shape_, shape)
                n = noises[len(calls)]
                calls.append(1)
                return torch.from_numpy(n.copy())

            ead.randn_tensor = fake_randn
            with torch.no_grad():
                pe, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
                out = pipe(
                    prompt=prompt,
                    height=h,
                    width=w,
                    num_inference_steps=steps,
                    guidance_scale=0.0,
                    latents=torch.from_numpy(latents.copy()),
                    output_type="np",
                )
            assert len(calls) == steps, (len(calls), steps)
            image = np.asarray(out.images[0], dtype=np.float32)
            assert image.shape == (h, w, 3), image.shape
            arrays[f"{key}_image"] = image
            arrays[f"{key}_timesteps"] = pipe.scheduler.timesteps.numpy().astype(np.float32)
            arrays[f"{key}_sigmas"] = pipe.scheduler.sigmas.numpy().astype(np.float32)
            arrays[f"{key}_ids1"] = np.asarray(tok_ids(tok1, prompt), dtype=np.int64)
            arrays[f"{key}_ids2"] = np.asarray(tok_ids(tok2, prompt), dtype=np.int64)
            arrays[f"{key}_prompt_embeds"] = pe[0].numpy().astype(np.float32)
            arrays[f"{key}_pooled"] = pooled[0].numpy().astype(np.float32)
            arrays[f"{key}_latents"] = latents[0]
            cases.append({"key": key, "prompt": prompt, "seed": seed, "steps": steps, "height": h, "width": w})
    finally:
        ead.randn_tensor = orig_randn

    tokenizer_cases = [{"prompt": p, "ids1": tok_ids(tok1, p), "ids2": tok_ids(tok2, p)} for p in TOKENIZER_CASES]
    ref = os.path.join(OUT, "reference")
    os.makedirs(ref, exist_ok=True)
    doc = {
        "description": (
            "Outputs of diffusers StableDiffusionXLPipeline (fp32, CPU, guidance_scale=0) built from the same "
            "torch modules as the ONNX files. Noise: rng = numpy Generator(PCG64(seed)); latents = "
            "rng.standard_normal((1,4,h/8,w/8), float32); then one more draw of that shape per step "
            "(Euler ancestral noise), in order. reference.npz keys: {key}_image (HWC float32 in [0,1]), "
            "{key}_timesteps, {key}_sigmas, {key}_ids1, {key}_ids2, {key}_prompt_embeds [77,D], "
            "{key}_pooled [P], {key}_latents (initial latents, before init_noise_sigma)."
        ),
        "cases": cases,
        "tokenizer_cases": tokenizer_cases,
    }
    write_json(os.path.join(ref, "cases.json"), doc)
    save_npz_deterministic(os.path.join(ref, "reference.npz"), arrays)


# ----------------------------------------------------------------------------
# numpy + onnxruntime re-implementation (no torch)


ORT_INT = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OrtPipeline:
    def __init__(self, bundle: str = OUT, parts: dict | None = None):
        """`parts`: a part's ONNX file when it is not <part>/model.onnx (other layouts of the same model)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        mk = lambda sub: ort.InferenceSession(os.path.join(bundle, (parts or {}).get(sub, f"{sub}/model.onnx")), so,
                                              providers=["CPUExecutionProvider"])
        self.te1, self.te2 = mk("text_encoder"), mk("text_encoder_2")
        self.unet, self.vae = mk("unet"), mk("vae_decoder")
        from tokenizers import Tokenizer

        self.tok = []
        for sub in ("tokenizer", "tokenizer_2"):
            t = Tokenizer.from_file(os.path.join(bundle, sub, "tokenizer.json"))
            with open(os.path.join(bundle, sub, "tokenizer_config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
            pad = cfg["pad_token"]
            pad = pad["content"] if isinstance(pad, dict) else pad
            self.tok.append((t, t.token_to_id(pad), cfg["model_max_length"]))
        with open(os.path.join(bundle, "scheduler_config.json"), encoding="utf-8") as f:
            self.sched = json.load(f)

    def tokenize(self, i: int, prompt: str) -> np.ndarray:
        t, pad_id, n = self.tok[i]
        ids = t.encode(prompt).ids
        if len(ids) > n:  # truncate, keep the end-of-text token
            ids = ids[: n - 1] + [ids[-1]]
        ids = ids + [pad_id] * (n - len(ids))
        return np.asarray(ids, dtype=np.int64)

    def encode(self, prompt: str):
        feats = []
        pooled = None
        for i, sess in enumerate((self.te1, self.te2)):
            ids = self.tokenize(i, prompt)[None]
            inp = sess.get_inputs()[0]
            names = [o.name for o in sess.get_outputs()]
            L = max(int(n.split(".")[1]) for n in names if n.startswith("hidden_states."))
            outs = dict(zip(names, sess.run(None, {inp.name: ids.astype(ORT_INT[inp.type])})))
            feats.append(outs[f"hidden_states.{L - 1}"])
            if i == 1:
                pooled = outs["text_embeds"]
        return np.concatenate(feats, axis=-1).astype(np.float32), pooled.astype(np.float32)

    def schedule(self, steps: int):
        c = self.sched
        n = c["num_train_timesteps"]
        assert c["beta_schedule"] == "scaled_linear" and c["timestep_spacing"] == "trailing"
        betas = np.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, n, dtype=np.float64) ** 2
        acp = np.cumprod(1.0 - betas)
        all_sigmas = np.sqrt((1 - acp) / acp)
        timesteps = np.round(np.arange(n, 0, -n / steps)).astype(np.float32) - 1
        sigmas = np.interp(timesteps, np.arange(n), all_sigmas)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        return timesteps, sigmas

    def __call__(self, prompt: str, seed: int, steps: int, height: int, width: int, *, sigmas=None):
        emb, pooled = self.encode(prompt)
        timesteps, own_sigmas = self.schedule(steps)
        sig = own_sigmas if sigmas is None else sigmas
        rng = np.random.Generator(np.random.PCG64(seed))
        shape = (1, 4, height // VAE_SCALE_FACTOR, width // VAE_SCALE_FACTOR)
        latents = rng.standard_normal(shape, dtype=np.float32)
        # diffusers' EulerAncestral init_noise_sigma is sigma_max itself for "trailing"/"linspace"
        # spacing (sqrt(sigma_max**2 + 1) only for "leading"); it is 14.6146 vs 14.6488 here.
        latents = latents * np.float32(sig.max())
        time_ids = np.array([[height, width, 0, 0, height, width]], dtype=np.float32)
        for i, t in enumerate(timesteps):
            s, s_next = np.float32(sig[i]), np.float32(sig[i + 1])
            x_in = (latents / np.sqrt(s * s + np.float32(1))).astype(np.float32)
            eps = self.unet.run(
                None,
                {
                    "sample": x_in,
                    "timestep": np.array([t], dtype=np.float32),
                    "encoder_hidden_states": emb,
                    "text_embeds": pooled,
                    "time_ids": time_ids,
                },
            )[0]
            x0 = latents - s * eps
            s_up = np.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
            s_down = np.sqrt(s_next**2 - s_up**2)
            latents = latents + (latents - x0) / s * (s_down - s)
            noise = rng.standard_normal(shape, dtype=np.float32)
            latents = (latents + noise * s_up).astype(np.float32)
        sample = self.vae.run(None, {"latent_sample": (latents / np.float32(VAE_SCALING_FACTOR)).astype(np.float32)})[0]
        image = np.clip(sample / 2 + 0.5, 0, 1)[0].transpose(1, 2, 0)
        return image.astype(np.float32), emb, pooled, timesteps, own_sigmas


def verify(save_png_dir: str | None = None) -> float:
    pipe = OrtPipeline()
    with open(os.path.join(OUT, "reference", "cases.json"), encoding="utf-8") as f:
        doc = json.load(f)
    ref = np.load(os.path.join(OUT, "reference", "reference.npz"))

    print("interfaces:")
    for name, s in (("text_encoder", pipe.te1), ("text_encoder_2", pipe.te2), ("unet", pipe.unet), ("vae_decoder", pipe.vae)):
        ins = ", ".join(f"{i.name}:{i.type[7:-1]}{i.shape}" for i in s.get_inputs())
        outs = ", ".join(f"{o.name}{o.shape}" for o in s.get_outputs())
        print(f"  {name}: ({ins}) -> ({outs})")

    worst = 0.0
    for c in doc["cases"]:
        k = c["key"]
        for i in (0, 1):
            ids = pipe.tokenize(i, c["prompt"])
            assert np.array_equal(ids, ref[f"{k}_ids{i + 1}"]), (k, i)
        img, emb, pooled, ts, sig = pipe(c["prompt"], c["seed"], c["steps"], c["height"], c["width"])
        assert np.array_equal(ts, ref[f"{k}_timesteps"]), (ts, ref[f"{k}_timesteps"])
        d_sig = float(np.abs(sig - ref[f"{k}_sigmas"]).max())
        d_emb = float(np.abs(emb[0] - ref[f"{k}_prompt_embeds"]).max())
        d_pool = float(np.abs(pooled[0] - ref[f"{k}_pooled"]).max())
        d_img = float(np.abs(img - ref[f"{k}_image"]).max())
        worst = max(worst, d_img)
        print(
            f"  {k:28s} image max|diff| {d_img:.2e}  embeds {d_emb:.1e}  pooled {d_pool:.1e}  sigmas {d_sig:.1e}"
            f"  (image mean {img.mean():.3f} std {img.std():.3f})"
        )
        if save_png_dir:
            try:
                from PIL import Image

                os.makedirs(save_png_dir, exist_ok=True)
                Image.fromarray((img * 255).round().astype(np.uint8)).resize((c["width"] * 4, c["height"] * 4), Image.NEAREST).save(
                    os.path.join(save_png_dir, k + ".png")
                )
            except ImportError:
                pass
    for tc in doc["tokenizer_cases"]:
        for i in (0, 1):
            got = pipe.tokenize(i, tc["prompt"]).tolist()
            assert got == tc[f"ids{i + 1}"], (tc["prompt"], i, got, tc[f"ids{i + 1}"])
    print(f"  tokenizer cases: {len(doc['tokenizer_cases'])} prompts match transformers (tokenizers lib + manual pad/truncate)")

    # every listed resolution runs through the UNet and the VAE decoder, batch 1 and 2
    with open(MANIFEST, encoding="utf-8") as f:
        manifest = json.load(f)
    D = pipe.unet.get_inputs()[2].shape[2]
    P = pipe.unet.get_inputs()[3].shape[1]
    for h, w in manifest["resolutions"]:
        for b in (1, 2):
            lh, lw = h // VAE_SCALE_FACTOR, w // VAE_SCALE_FACTOR
            out = pipe.unet.run(
                None,
                {
                    "sample": np.zeros((b, 4, lh, lw), np.float32),
                    "timestep": np.array([999.0], np.float32),
                    "encoder_hidden_states": np.zeros((b, MAX_LEN, D), np.float32),
                    "text_embeds": np.zeros((b, P), np.float32),
                    "time_ids": np.tile(np.array([[h, w, 0, 0, h, w]], np.float32), (b, 1)),
                },
            )[0]
            assert out.shape == (b, 4, lh, lw), out.shape
            img = pipe.vae.run(None, {"latent_sample": np.zeros((b, 4, lh, lw), np.float32)})[0]
            assert img.shape == (b, 3, h, w), img.shape
    print(f"  resolutions {manifest['resolutions']} (h, w): UNet and VAE decoder run at batch 1 and 2")
    files = manifest["variants"][0]["files"]
    for entry in files:
        p = os.path.join(OUT, entry["path"])
        assert os.path.getsize(p) == entry["size"] and sha256_file(p) == entry["sha256"], entry["path"]
    print(f"  manifest: {len(files)} files, sizes and sha256 match")
    print(f"max abs diff (onnxruntime + numpy vs diffusers), all cases: {worst:.3e}")
    return worst


# ----------------------------------------------------------------------------
# manifest


def bundle_files(out: str, bundle_id: str) -> list[dict]:
    """Every file of a generated bundle (its reference outputs aside) as a manifest file entry."""
    files = []
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = sorted(d for d in dirnames if d != "reference")
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            rel = os.path.relpath(p, out).replace(os.sep, "/")
            files.append({"path": rel, "url": f"/models/{bundle_id}/{rel}", "size": os.path.getsize(p),
                          "sha256": sha256_file(p)})
    return sorted(files, key=lambda e: e["path"])


def fp32_variant(files: list[dict], gpu_memory_bytes: int, **extra) -> dict:
    """The one variant of a tiny model: fp32, which runs anywhere (the wasm back end included)."""
    return {"id": "fp32", "precision": "fp32", "requires": {"webgpu": False, "shader_f16": False},
            "gpu_memory_bytes": gpu_memory_bytes, "disk_bytes": sum(f["size"] for f in files), **extra, "files": files}


def write_manifest() -> None:
    files = bundle_files(OUT, BUNDLE_ID)
    manifest = {
        "id": BUNDLE_ID,
        "name": "Tiny SDXL-Turbo (test model)",
        "style": "test pattern (random weights)",
        "description": (
            "A 12 MB model with SDXL-Turbo's exact interfaces (two CLIP text encoders, text_time UNet, "
            "8x VAE decoder, real CLIP tokenizers) and random weights. It draws noise-like pictures; "
            "it exists to test the pipeline end to end quickly."
        ),
        "license": "CC0-1.0 (generated, random weights)",
        "pipeline": "sdxl-turbo",
        "defaults": {"steps": 2, "height": 64, "width": 64},
        "resolutions": RESOLUTIONS,
        "tier_resolutions": {"fast": [128, 128], "medium": [96, 64], "slow": [64, 64]},
        "bench": True,
        "vae_scaling_factor": VAE_SCALING_FACTOR,
        "vae_scale_factor": VAE_SCALE_FACTOR,
        # Small chunks, so that tests take the chunked external-data load path real models need.
        "variants": [fp32_variant(files, 200_000_000, external_data_chunk_bytes=262144)],
    }
    write_json(MANIFEST, manifest)


# ----------------------------------------------------------------------------


def prepare_torch():
    """Import torch, diffusers and transformers for building: quiet, one thread, deterministic."""
    try:
        import torch
    except ImportError:
        sys.exit("building needs torch, diffusers, transformers, onnx, onnxruntime (pip install them)")
    import warnings

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()  # the long prompt's truncation notices are expected
    diffusers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def list_bundle(out, manifest, t0):
    """What a build wrote, with sizes."""
    print(f"built {out} in {time.time() - t0:.1f} s")
    for dirpath, _, filenames in sorted(os.walk(out)):
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            print(f"  {os.path.relpath(p, ROOT):55s} {os.path.getsize(p):>10,d}")
    print(f"  {os.path.relpath(manifest, ROOT):55s} {os.path.getsize(manifest):>10,d}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verify", action="store_true", help="only verify the existing bundle (onnxruntime + numpy)")
    ap.add_argument("--bpe", help="open_clip_torch wheel or bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--png-dir", help="also save the verified images as PNGs here")
    args = ap.parse_args()

    if not args.verify:
        t0 = time.time()
        prepare_torch()
        bpe = find_bpe(args.bpe)
        if os.path.isdir(OUT):
            shutil.rmtree(OUT)
        os.makedirs(OUT)
        with tempfile.TemporaryDirectory() as tmp:
            build_tokenizers(bpe, tmp)
        t1, t2 = load_tokenizers()
        for t in (t1, t2):
            ids = t("a photo of a cat")["input_ids"]
            assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
        assert tok_ids(t1, "")[-1] == EOS_ID and tok_ids(t2, "")[-1] == 0
        write_json(os.path.join(OUT, "scheduler_config.json"), SCHEDULER_CONFIG)
        for path in SHARED_FILES:
            os.makedirs(os.path.dirname(os.path.join(SHARED, path)), exist_ok=True)
            shutil.copyfile(os.path.join(OUT, path), os.path.join(SHARED, path))
        te1, te2, unet, vae = build_models()
        export_onnx(te1, te2, unet, vae)
        record_references(te1, te2, unet, vae)
        write_manifest()
        list_bundle(OUT, MANIFEST, t0)

    worst = verify(args.png_dir)
    if worst > 1e-4:
        print("FAIL: onnxruntime re-implementation differs from diffusers by more than 1e-4")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
