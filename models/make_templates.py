#!/usr/bin/env python3
"""Graph templates: SDXL's ONNX graphs without weights, for converting checkpoints in the browser.

Run from the repository root (torch, diffusers, transformers, onnx):

    python models/make_templates.py            # the full-size family: models/templates/sdxl/
    python models/make_templates.py --check    # rebuild in a scratch folder; fail if any byte differs

The tiny family (models/templates/tiny-sdxl/) is written by make_tiny_checkpoint.py with the same
`write_template`. In a template every weight is an initializer named after its diffusers key that points at
its byte range of model.onnx_data; every MatMul over a linear weight is MatMulNBits (4-bit, block 32,
symmetric, float32 scales: slots `<key>` and `<key>.scales`); everything else is float32. These are the q4
graphs; models/make_f16_templates.py derives the q4f16 ones (`<part>.f16.onnx`) from them: run it after.

How: each part is exported with `export_params=False` and no constant folding, so every weight stays a graph
input named after its parameter: nothing is folded, transposed or merged into an anonymous constant, and no
weight needs to be in memory twice (the full-size UNet's export fits in 11 GB). The exporter merges
parameters of equal value, so each first gets a distinct constant. The weight inputs then become the slots,
and each Transpose -> MatMul over a linear weight becomes one MatMulNBits. The output is deterministic.
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "models"))
import make_tiny_sdxl_turbo as base  # noqa: E402

from app.checkpoint.templates import BLOCK_SIZE  # noqa: E402

TEMPLATES = os.path.join(ROOT, "models", "templates", "sdxl")
PARTS = ("unet", "refiner_unet", "text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder")
# The published configurations (config.json) of stabilityai/sdxl-turbo and stable-diffusion-xl-refiner-1.0.
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
             hidden_act="gelu", projection_dim=1280)
UNET = dict(block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=2048, projection_class_embeddings_input_dim=2816)
REFINER_UNET = dict(block_out_channels=(384, 768, 1536, 1536), attention_head_dim=(6, 12, 24, 24),
                    transformer_layers_per_block=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    cross_attention_dim=1280, projection_class_embeddings_input_dim=2560)
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


def key_of(module):
    """The diffusers/transformers key of each of a part's parameters (CLIP-L under `text_model.`, as the
    published files name it; transformers 5 drops that level in memory)."""
    from transformers import CLIPTextModel

    prefix = "text_model." if type(module) is CLIPTextModel else ""
    return lambda name: name if name.startswith(prefix) else prefix + name


# ----------------------------------------------------------------------------
# export


def distinct(module) -> None:
    """A distinct constant in every parameter, so the exporter merges none (it merges equal values)."""
    import torch

    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.fill_(1.0 + i / 4096)


def export_graph(wrapper, args, input_names, output_names, dynamic_axes):
    """The wrapper's graph with its parameters as inputs named `model.<name>`."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            torch.onnx.export(wrapper, args, path, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=base.OPSET, export_params=False,
                              do_constant_folding=False, dynamo=False)
        return onnx.load(path)


def fold_constants(graph, opset: int) -> None:
    """Evaluate every node whose inputs are all constants, as the exporter's folding would (some such nodes,
    a Cast to double for one, have no kernel in onnxruntime-web); their results become initializers."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    known, kept = {}, []
    for node in graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            known[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.domain in ("", "ai.onnx") and all(not i or i in known for i in node.input):
            feeds = {i: known[i] for i in node.input if i}
            inputs = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                      for i, v in feeds.items()]
            outputs = [helper.make_empty_tensor_value_info(o) for o in node.output]
            single = helper.make_model(helper.make_graph([node], "fold", inputs, outputs),
                                       opset_imports=[helper.make_opsetid("", opset)])
            known.update(zip(node.output, ReferenceEvaluator(single).run(None, feeds)))
        else:
            kept.append(node)
    used = {i for node in kept for i in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(known[name]), name)
                             for name in sorted(used & set(known)))


def to_template(model, inputs: list, params: dict, out: str) -> None:
    """`model` with each weight input (params: input name -> (key, shape)) made a slot of model.onnx_data named
    `key`; Transpose -> MatMul over a linear weight becomes MatMulNBits."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    fold_constants(graph, base.OPSET)
    weights = [i.name for i in graph.input if i.name not in inputs]
    unknown = [name for name in weights if name not in params]
    if unknown:
        raise SystemExit(f"{out}: graph inputs that are no parameter: {unknown[:5]}")
    consumers = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))

    def linear(name):
        """The Transpose a linear weight is used through, when every use is MatMul's second input."""
        users = consumers.get(name, [])
        if len(users) != 1 or users[0][0].op_type != "Transpose" or len(params[name][1]) != 2:
            return None
        transpose = users[0][0]
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [1, 0])
        after = consumers.get(transpose.output[0], [])
        if perm == [1, 0] and after and all(n.op_type == "MatMul" and i == 1 for n, i in after):
            return transpose
        return None

    dropped, replaced, slots = set(), {}, []
    for name in weights:
        key, shape = params[name]
        transpose = linear(name)
        if transpose is None:
            slots.append((key, TensorProto.FLOAT, list(shape)))
            continue
        n, k = shape
        blocks = -(-k // BLOCK_SIZE)
        slots += [(key, TensorProto.UINT8, [n, blocks, BLOCK_SIZE // 2]), (key + ".scales", TensorProto.FLOAT, [n * blocks])]
        dropped.add(id(transpose))
        for matmul, _ in consumers[transpose.output[0]]:
            replaced[id(matmul)] = helper.make_node(
                "MatMulNBits", [matmul.input[0], key, key + ".scales"], list(matmul.output), name=matmul.name,
                domain="com.microsoft", K=k, N=n, bits=4, block_size=BLOCK_SIZE)
    rename = {name: params[name][0] for name in weights}
    nodes = []
    for node in graph.node:
        if id(node) in dropped:
            continue
        node = replaced.get(id(node), node)
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.doc_string = ""
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    kept_inputs = [i for i in graph.input if i.name in inputs]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    offset = 0
    for key, data_type, dims in slots:
        tensor = TensorProto(name=key, data_type=data_type, dims=dims, data_location=TensorProto.EXTERNAL)
        length = int(np.prod(dims)) * (1 if data_type == TensorProto.UINT8 else 4)
        for k, v in (("location", "model.onnx_data"), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = k, v
        graph.initializer.append(tensor)
        offset += length
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.doc_string = ""
    model.producer_name, model.producer_version = "lantern-template", "1"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(model.SerializeToString())


def encoder_mean(vae):
    """The VAE's encode, to the latent distribution's mean, alone."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = vae

        def forward(self, sample):
            return self.model.encode(sample, return_dict=False)[0].mode()

    return Encoder()


def write_template(part: str, module, out: str, text_dims=None) -> None:
    """Export one part of `module` (changed in place: its weights become distinct constants) as a template.
    text_dims: (CLIP-L width, bigG width, bigG projection) for the UNets' example inputs."""
    import torch

    distinct(module)
    key = key_of(module)
    axes = {0: "batch_size", 2: "height", 3: "width"}
    if part in ("unet", "refiner_unet"):
        te1, te2, pooled = text_dims
        context, time_ids = (te1 + te2, 6) if part == "unet" else (te2, 5)
        args = (torch.randn(1, 4, 8, 8), torch.tensor([999.0]), torch.randn(1, base.MAX_LEN, context),
                torch.randn(1, pooled), torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0][:time_ids]]))
        wrapper, names = base.unet_module(module), (base.UNET_INPUTS, base.UNET_OUTPUTS, base.UNET_DYNAMIC_AXES)
    elif part.startswith("text_encoder"):
        with_projection = part == "text_encoder_2"
        ids = torch.full((1, base.MAX_LEN), base.EOS_ID, dtype=torch.int32 if with_projection else torch.int64)
        ids[0, 0] = base.BOS_ID
        n = module.config.num_hidden_layers
        outs = (["text_embeds", "last_hidden_state"] if with_projection else ["last_hidden_state", "pooler_output"]) \
            + [f"hidden_states.{i}" for i in range(n + 1)]
        wrapper, args = base.text_encoder_module(module, with_projection), (ids,)
        names = (["input_ids"], outs, {name: {0: "batch_size"} for name in ["input_ids", *outs]})
    elif part == "vae_decoder":
        wrapper, args = base.vae_decoder_module(module), (torch.randn(1, 4, 8, 8),)
        names = (["latent_sample"], ["sample"], {"latent_sample": axes, "sample": axes})
    else:
        wrapper, args = encoder_mean(module), (torch.randn(1, 3, 64, 64),)
        names = (["sample"], ["latent_mean"], {"sample": axes, "latent_mean": axes})
    params = {"model." + name: (key(name), tuple(p.shape)) for name, p in module.named_parameters()}
    to_template(export_graph(wrapper, args, *names), names[0], params, out)


# ----------------------------------------------------------------------------
# the full-size family


def build(part: str, weights: bool = True):
    """One full-size part as a torch module, its weights left uninitialised (the template needs none); without
    `weights`, on the meta device (its configuration only)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    clip = dict(vocab_size=base.VOCAB_SIZE, max_position_embeddings=base.MAX_LEN, bos_token_id=base.BOS_ID,
                eos_token_id=base.EOS_ID, pad_token_id=1, attn_implementation="eager")
    with torch.device("meta"):
        if part == "text_encoder":
            module = CLIPTextModel(CLIPTextConfig(**clip, **CLIP_L))
        elif part == "text_encoder_2":
            module = CLIPTextModelWithProjection(CLIPTextConfig(**clip, **BIG_G))
        elif part.endswith("unet"):
            module = UNet2DConditionModel(in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
                                          addition_embed_type="text_time", addition_time_embed_dim=256,
                                          use_linear_projection=True, sample_size=128,
                                          **(UNET if part == "unet" else REFINER_UNET))
        else:
            module = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                   up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=1024,
                                   scaling_factor=base.VAE_SCALING_FACTOR, force_upcast=False, **VAE)
    if not weights:
        return module
    module = module.to_empty(device="cpu").eval()
    for name, buffer in module.named_buffers():  # CLIP's position ids: the only buffer, and an index
        buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    if hasattr(module, "set_attn_processor"):
        module.set_attn_processor(AttnProcessor())
    return module


def build_family(folder: str) -> None:
    import gc

    for part in PARTS:
        write_template(part, build(part), os.path.join(folder, part + ".onnx"),
                       (CLIP_L["hidden_size"], BIG_G["hidden_size"], BIG_G["projection_dim"]))
        gc.collect()
        print(f"{os.path.getsize(os.path.join(folder, part + '.onnx')):>10,}  {part}.onnx", flush=True)


def main() -> int:
    base.prepare_torch()
    if "--check" not in sys.argv[1:]:
        build_family(TEMPLATES)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build_family(tmp)
        differ = [p for p in PARTS if not filecmp.cmp(os.path.join(tmp, p + ".onnx"),
                                                      os.path.join(TEMPLATES, p + ".onnx"), shallow=False)]
    print("\n".join(f"differs: {p}.onnx" for p in differ) or "every template is as committed")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
