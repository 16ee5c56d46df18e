"""What a checkpoint holds, told from its tensors' names and shapes, and the plan that converts it.

A single file (A1111/ComfyUI) uses SGM names; a diffusers folder gives one file per part. Either way
the UNet decides the kind: SDXL base-shaped (base, Turbo, Lightning and their fine-tunes) or the SDXL
refiner, whichever template its every tensor fits; other architectures are named and refused.
"""

import math
import re
from dataclasses import dataclass, field, replace

from . import keys
from .fill import Target, targets
from .keys import Source
from .safetensors import CheckpointError, Header
from .templates import BLOCK_SIZE

SINGLE = "checkpoint"  # the file id of a single-file checkpoint
DIFFUSERS_FILES = {"unet": "unet", "refiner_unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2",
                   "vae_decoder": "vae", "vae_encoder": "vae"}
NAMES = {"unet": "SDXL UNet", "refiner_unet": "SDXL refiner UNet", "text_encoder": "CLIP-L",
         "text_encoder_2": "bigG", "vae_decoder": "VAE"}
PARTS = {"sdxl": ("unet", "text_encoder", "text_encoder_2", "vae_decoder"),
         "sdxl-refiner": ("refiner_unet", "text_encoder_2", "vae_decoder")}


@dataclass
class Found:
    kind: str                 # "sdxl" or "sdxl-refiner"
    family: str               # the templates it fits
    parts: tuple              # the parts converted (vae_decoder is absent when the checkpoint has no VAE)
    plan: dict                # (file, source key) -> [(Target, Source)]
    dtypes: str
    size: int
    own_vae: bool
    targets: dict = field(default_factory=dict)  # part -> {key: Target}
    precision: str = "q4"     # the graphs the plan fills (app/checkpoint/templates.py)

    def describe(self) -> str:
        names = [NAMES[p] for p in self.parts]
        vae = "" if self.own_vae else " (no VAE inside: SDXL's VAE will be used)"
        size = f"{self.size / 1e9:.2f} GB" if self.size >= 1e8 else f"{self.size / 1e6:.1f} MB"
        return f"{' + '.join(names)}, {self.dtypes.lower()}, {size}{vae}"


def with_graphs(found: Found, graphs: dict, precision: str) -> Found:
    """The same conversion into another precision's graphs of the same parts ({part: graph}): the same slots,
    by key, at their offsets and element types there."""
    now = {part: targets(part, graphs[part]) for part in found.parts}
    plan = {where: [(now[t.part][t.key], source) for t, source in uses] for where, uses in found.plan.items()}
    return replace(found, plan=plan, targets=now, precision=precision)


def _unet_key(single: bool, key: str) -> str:
    return keys.UNET_PREFIX + key if single else key


def _refuse_other_architectures(names: set, header_of, single: bool) -> None:
    if any(n.startswith(("lora_", "lora_unet")) or ".lora_" in n or ".lora." in n for n in names):
        raise CheckpointError("this is a LoRA (a patch for a model), not a whole checkpoint.")
    unet = [n for n in names if n.startswith(keys.UNET_PREFIX)] if single else list(names)
    if not unet:
        what = "only a VAE" if any(n.startswith(("first_stage_model.", "decoder.", "encoder.")) for n in names) \
            else "no diffusion model"
        raise CheckpointError(f"this file holds {what}: a checkpoint with an SDXL UNet is needed.")
    prefix = keys.UNET_PREFIX if single else ""
    if any(n.startswith(prefix + "joint_blocks.") for n in unet):
        raise CheckpointError("this is a Stable Diffusion 3 checkpoint; only SDXL checkpoints can be imported.")
    if any(n.startswith(tuple(prefix + b for b in ("double_blocks.", "transformer_blocks.", "single_blocks.")))
           for n in unet):
        raise CheckpointError("this is a Flux or other transformer checkpoint; only SDXL checkpoints can be imported.")
    added = prefix + ("label_emb.0.0.weight" if single else "add_embedding.linear_1.weight")
    if added not in names:
        context = None
        for n in unet:
            if re.search(r"attn2\.to_k\.weight$", n):
                context = header_of(n).shape[1]
                break
        version = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x"}.get(context, "a non-SDXL")
        raise CheckpointError(f"this is {version} checkpoint (its UNet has no SDXL size and text conditioning); "
                              "only SDXL checkpoints can be imported.")


def layout(unet: dict, vae: dict) -> dict:
    """The single-file key rules' parameters (keys.single_file_sources) from a family's UNet and VAE slots."""
    downs = {int(m[1]) for k in unet if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    ups = {int(m[1]) for k in unet if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    levels = {int(m[1]) for k in vae if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    return {"layers": len(downs), "attention_blocks": ups, "vae_blocks": len(levels)}


def _sources(part: str, part_targets: dict, single: bool, rules: dict) -> dict:
    if single:
        return keys.single_file_sources("unet" if part.endswith("unet") else part, part_targets, rules)
    return {k: Source(k) for k in part_targets}


def _fits(target: Target, source: Source, tensor) -> bool:
    if tensor is None:
        return False
    shape = list(tensor.shape)
    if source.rows:
        shape[0] //= source.rows[1]
    if source.transpose:
        shape = shape[::-1]
    if source.flatten:
        shape = [shape[0], math.prod(shape) // shape[0]]
    if target.kind == "float":
        return math.prod(shape) == math.prod(target.dims)
    n, blocks, _ = target.dims
    return len(shape) == 2 and shape[0] == n and (blocks - 1) * BLOCK_SIZE < shape[1] <= blocks * BLOCK_SIZE


def _text_layout(names: set) -> dict:
    out = {}
    for i in range(4):
        if f"{keys.EMBEDDERS}{i}.transformer.text_model.embeddings.token_embedding.weight" in names:
            out["text_encoder"] = i
        if f"{keys.EMBEDDERS}{i}.model.token_embedding.weight" in names:
            out["text_encoder_2"] = i
    return out


def diffusers_part(header: Header) -> str | None:
    """Which file of a diffusers folder this is, from its tensors' names (files may be dropped in any order,
    and their folder names are not always known)."""
    names = header.tensors
    if "conv_in.weight" in names and "time_embedding.linear_1.weight" in names:
        return "unet"
    if "decoder.conv_in.weight" in names or "encoder.conv_in.weight" in names:
        return "vae"
    token = ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight")
    if any(n in names for n in token):
        return "text_encoder_2" if "text_projection.weight" in names else "text_encoder"
    return None


def by_part(headers: dict) -> dict:
    """{file name: Header} of the files the visitor gave -> the detect() input: one single-file checkpoint, or
    the files of a diffusers folder by part. Raises CheckpointError when they are neither."""
    if len(headers) == 1:
        (name, header), = headers.items()
        if any(n.startswith((keys.UNET_PREFIX, keys.EMBEDDERS, keys.VAE_PREFIX)) for n in header.tensors):
            return {SINGLE: header}
    parts = {}
    for name, header in headers.items():
        part = diffusers_part(header)
        if part is None:
            if len(headers) == 1:
                return {SINGLE: header}  # named as neither: detect() says what it is
            raise CheckpointError(f"{name} is not a part of an SDXL diffusers folder (UNet, text encoder or VAE).")
        if part in parts:
            raise CheckpointError(f"two files hold the {part}: {parts[part][0]} and {name}.")
        parts[part] = (name, header)
    if "unet" not in parts:
        raise CheckpointError("these files have no UNet (unet/diffusion_pytorch_model.safetensors).")
    return {part: header for part, (_, header) in parts.items()}


def _plan(wanted, all_targets, text, single, tensor, file_of):
    """(plan, own VAE) when every tensor of the parts `wanted` is in the files with a shape its slot takes, else
    None. `tensor(part, key)` finds a source tensor, `file_of(part)` names its file."""
    plan, own_vae = {}, True
    for part in wanted:
        if part.startswith("text") and single and part not in text:
            return None
        unet = all_targets[part] if part.endswith("unet") else all_targets["unet"]
        rules = layout(unet, all_targets["vae_decoder"]) | text
        sources = _sources(part, all_targets[part], single, rules)
        checks = [(t, sources[k], tensor(part, sources[k].key)) for k, t in all_targets[part].items()]
        if part == "vae_decoder" and all(found is None for _, _, found in checks):
            own_vae = False  # SDXL's VAE stands in (the worker copies an installed model's)
            continue
        if not all(_fits(t, s, found) for t, s, found in checks):
            return None
        for t, s, found in checks:
            plan.setdefault((file_of(part), found.name), []).append((t, s))
    return plan, own_vae


def detect(headers: dict, templates: dict, borrowed=frozenset()) -> Found:
    """headers: {SINGLE: Header} or {diffusers folder part: Header}; templates: {family: {part: bytes}};
    borrowed: the parts another installed model gives (they need not be in the files)."""
    single = SINGLE in headers

    def file_of(part):
        return SINGLE if single else DIFFUSERS_FILES[part]

    def tensor(part, key):
        header = headers.get(file_of(part))
        if header is None:
            return None
        return header.tensors.get(key) or (header.tensors.get(key.removeprefix("text_model."))
                                           if part == "text_encoder" and not single else None)

    unet_file = headers.get(SINGLE if single else "unet")
    if unet_file is None:
        raise CheckpointError("the folder has no unet/diffusion_pytorch_model.safetensors.")
    _refuse_other_architectures(set(unet_file.tensors), lambda n: unet_file.tensors[n], single)
    names = set().union(*(h.tensors for h in headers.values()))
    text = _text_layout(names) if single else {}
    for family, parts in sorted(templates.items()):
        all_targets = {part: targets(part, raw) for part, raw in parts.items()}
        for kind, parts_of_kind in PARTS.items():
            wanted = [p for p in parts_of_kind if p not in borrowed]
            planned = _plan(wanted, all_targets, text, single, tensor, file_of)
            if planned:
                plan, own_vae = planned
                used = [p for p in wanted if own_vae or p != "vae_decoder"]
                floats = {headers[f].tensors[k].dtype for f, k in plan}
                return Found(kind, family, tuple(used), plan, "/".join(sorted(floats)),
                             sum(h.size for h in headers.values()), own_vae, {p: all_targets[p] for p in used})
    width = next((t.shape[0] for n, t in unet_file.tensors.items()
                  if n.endswith(("conv_in.weight", "input_blocks.0.0.weight"))), None)
    raise CheckpointError(f"this SDXL-like checkpoint (UNet width {width or '?'}) does not fit the model shapes this "
                          "app can build (SDXL base, Turbo, Lightning and fine-tunes, or the SDXL refiner).")
