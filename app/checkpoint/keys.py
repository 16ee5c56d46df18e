"""Where each tensor of a model part comes from in a checkpoint file.

Parts are named by diffusers' keys (the graph templates' slots are). A diffusers-format checkpoint
holds exactly those keys; a single-file A1111/ComfyUI checkpoint holds the original SGM ones
(`model.diffusion_model.input_blocks…`, `conditioner.embedders.N…`, `first_stage_model…`). The rules
below are the inverse of diffusers' single-file conversion (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`): each
diffusers key gives its source key and what must be done to it on the way.
"""

import re
from dataclasses import dataclass

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
EMBEDDERS = "conditioner.embedders."

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
             ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"),
             ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2"))
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
_BIGG = (("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
         ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
         ("text_model.final_layer_norm.", "ln_final."))
_BIGG_LAYER = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))


@dataclass(frozen=True)
class Source:
    key: str
    rows: tuple[int, int] | None = None  # take rows [i/n of the first axis]: (i, n)
    transpose: bool = False
    flatten: bool = False  # a 1x1 convolution's [C, C, 1, 1] taken as a linear [C, C]


def _rename(name: str, pairs, reverse=False) -> str:
    for new, old in pairs:
        a, b = (old, new) if reverse else (new, old)
        if name == a or name.startswith(a + ".") or (a.endswith(".") and name.startswith(a)):
            return b + name[len(a):]
    return name


def unet_source(key: str, layers: int, attention_blocks: set) -> str:
    """SGM name of a diffusers UNet key; `layers` is layers_per_block, `attention_blocks` the indices of
    the up blocks that have attentions (their upsampler sits after the attention, at index 2)."""
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        kind, block, what, index, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if kind == "down":
            first = 1 + block * (layers + 1)
            if what == "downsamplers":
                return f"input_blocks.{first + layers}.0.op.{rest.removeprefix('conv.')}"
            inner = "0." + _rename(rest, _RESNET) if what == "resnets" else "1." + rest
            return f"input_blocks.{first + index}.{inner}"
        first = block * (layers + 1)
        if what == "upsamplers":
            return f"output_blocks.{first + layers}.{2 if block in attention_blocks else 1}.{rest}"
        inner = "0." + _rename(rest, _RESNET) if what == "resnets" else "1." + rest
        return f"output_blocks.{first + index}.{inner}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_rename(m[3], _RESNET)}"
    return _rename(key, _UNET_TOP)


def vae_source(key: str, blocks: int) -> tuple[str, bool]:
    """LDM name of a diffusers VAE key, and whether it is a 1x1 convolution there (mid-block attention)."""
    m = re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        coder, kind, block, what, index, rest = m[1], m[2], int(m[3]), m[4], m[5], m[6]
        level = block if kind == "down" else blocks - 1 - block
        if what == "resnets":
            return f"{coder}.{kind}.{level}.block.{index}.{_rename(rest, (('nin_shortcut', 'conv_shortcut'),))}", False
        return f"{coder}.{kind}.{level}.{kind}sample.{rest}", False
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        if m[2] == "attentions":
            renamed = _rename(m[4], _VAE_ATTENTION)
            return f"{m[1]}.mid.attn_1.{renamed}", renamed.split(".")[0] in ("q", "k", "v", "proj_out")
        return f"{m[1]}.mid.block_{int(m[3]) + 1}.{_rename(m[4], (('nin_shortcut', 'conv_shortcut'),))}", False
    return _rename(key, (("encoder.conv_norm_out", "encoder.norm_out"), ("decoder.conv_norm_out", "decoder.norm_out"))), False


def bigg_source(key: str) -> Source:
    """OpenCLIP name of a diffusers CLIPTextModelWithProjection key (SDXL's second text encoder)."""
    if key == "text_projection.weight":
        return Source("text_projection", transpose=True)
    m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", key)
    if m:
        layer, rest = m[1], m[2]
        q = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
        if q:
            return Source(f"transformer.resblocks.{layer}.attn.in_proj_{q[2]}", rows=("qkv".index(q[1]), 3))
        return Source(f"transformer.resblocks.{layer}.{_rename(rest, _BIGG_LAYER)}")
    return Source(_rename(key, _BIGG))


def single_file_sources(part: str, keys, layout: dict) -> dict:
    """diffusers key -> Source in a single-file checkpoint, for one part ("unet", "text_encoder",
    "text_encoder_2", "vae_decoder", "vae_encoder"). `layout` holds what the names depend on:
    layers, attention_blocks (UNet), vae_blocks, and the embedder index of each text encoder."""
    out = {}
    for key in keys:
        if part == "unet":
            out[key] = Source(UNET_PREFIX + unet_source(key, layout["layers"], layout["attention_blocks"]))
        elif part.startswith("vae"):
            name, flatten = vae_source(key, layout["vae_blocks"])
            out[key] = Source(VAE_PREFIX + name, flatten=flatten)
        elif part == "text_encoder":
            out[key] = Source(f"{EMBEDDERS}{layout['text_encoder']}.transformer.{key}")
        else:
            s = bigg_source(key)
            out[key] = Source(f"{EMBEDDERS}{layout['text_encoder_2']}.model.{s.key}", s.rows, s.transpose)
    return out
