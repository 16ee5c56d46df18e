#!/usr/bin/env python3
"""Build the tiny SDXL-Turbo bundle in the layout of the real q4f16 one (webnn/sdxl-turbo).

Run from the repository root, after models/make_tiny_sdxl_turbo.py:

    python models/make_tiny_sdxl_turbo_q4f16.py            # convert, record references, verify
    python models/make_tiny_sdxl_turbo_q4f16.py --verify   # only re-check an existing bundle

Needs onnx and onnxruntime (`pip install -e '.[fixture]'`); no torch. The tiny
fp32 bundle's ONNX files are rewritten into the real q4f16 files' contract:
    onnx/text_encoder_model_q4f16.onnx    input_ids int32 [b,77] -> hidden_states.1 fp16 only
    onnx/text_encoder_2_model_q4f16.onnx  input_ids int64 [b,77] -> hidden_states.1, text_embeds fp16
    onnx/unet_model_q4f16.onnx            sample, timestep [1], encoder_hidden_states, text_embeds, time_ids
                                          (all fp16) -> out_sample fp16; one file, no external data
    onnx/vae_decoder_model_q4f16.onnx     latent_sample fp16 -> sample fp16
Every MatMul with a constant weight becomes com.microsoft MatMulNBits (4-bit, block 32, symmetric,
fp16 scales); everything else is fp16. As in the real bundle, each text encoder exports only the
penultimate hidden state (the encoders have 2 layers, so hidden_states.1). The tokenizers and the
scheduler config are the fp32 bundle's.

reference/: the images an independent onnxruntime + numpy loop (the fp32 generator's, over these
files) makes for a few cases. The output is deterministic: re-running gives byte-identical files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_ID = "tiny-sdxl-turbo-q4f16"
OUT = os.path.join(ROOT, "models", BUNDLE_ID)
BLOCK = 32
# part -> (file in the real layout, input_ids type, graph outputs kept)
PARTS = {
    "text_encoder": ("onnx/text_encoder_model_q4f16.onnx", np.int32, ["hidden_states.1"]),
    "text_encoder_2": ("onnx/text_encoder_2_model_q4f16.onnx", np.int64, ["hidden_states.1", "text_embeds"]),
    "unet": ("onnx/unet_model_q4f16.onnx", None, ["out_sample"]),
    "vae_decoder": ("onnx/vae_decoder_model_q4f16.onnx", None, ["sample"]),
}
COPIED = ["tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer.json",
          "tokenizer_2/tokenizer_config.json", "scheduler_config.json"]
CASES = [("a photo of a cat", 0, 1, 64, 64), ("a lighthouse at dusk, oil painting", 42, 2, 64, 96),
         ("a red bicycle", 1234, 4, 64, 64)]


def _load_base_script():
    spec = importlib.util.spec_from_file_location("make_tiny_sdxl_turbo", os.path.join(ROOT, "models", "make_tiny_sdxl_turbo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _load_base_script()


# ----------------------------------------------------------------------------
# conversion


def quantize_int4(w: np.ndarray, block: int = BLOCK):
    """[K, N] float weights -> (packed uint8 [N, K/block, block/2], scales [N * K/block]) as MatMulNBits
    reads them: symmetric, zero point 8 (its default), two values a byte, low nibble first."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    columns = padded.T.reshape(n, blocks, block)
    scales = np.abs(columns).max(axis=-1) / 7.0
    scales[scales == 0] = 1.0
    q = np.clip(np.round(columns / scales[..., None]) + 8, 0, 15).astype(np.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4), scales.reshape(-1).astype(np.float32)


def with_matmulnbits(model):
    """Every MatMul whose weight is a 2-D initializer becomes MatMulNBits over its 4-bit weights."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes = []
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        packed, scales = quantize_int4(w)
        model.graph.initializer.extend([numpy_helper.from_array(packed, weight.name + "_q4"),
                                        numpy_helper.from_array(scales, weight.name + "_scales")])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], weight.name + "_q4", weight.name + "_scales"],
                                      list(node.output), name=node.name, domain="com.microsoft",
                                      K=w.shape[0], N=w.shape[1], bits=4, block_size=BLOCK))
        uses[weight.name] -= 1
        if uses[weight.name] == 0:
            model.graph.initializer.remove(weight)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def keep_outputs(model, names):
    """Only these graph outputs, and only the nodes they need."""
    outputs = {o.name: o for o in model.graph.output}
    del model.graph.output[:]
    model.graph.output.extend(outputs[n] for n in names)
    needed, kept = set(names), []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    used = needed | {i.name for i in model.graph.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return model


def with_input_type(model, name, dtype):
    """The graph input `name` takes `dtype`; a Cast gives its consumers the type they had."""
    from onnx import helper

    graph_input = next(i for i in model.graph.input if i.name == name)
    old = graph_input.type.tensor_type.elem_type
    new = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if old == new:
        return model
    graph_input.type.tensor_type.elem_type = new
    for node in model.graph.node:
        for i, value in enumerate(node.input):
            if value == name:
                node.input[i] = name + "_cast"
    model.graph.node.insert(0, helper.make_node("Cast", [name], [name + "_cast"], name=name + "_cast", to=old))
    return model


def to_float16(model):
    """Every float tensor fp16: initializers, Constant values, Cast targets, graph inputs and outputs.
    Resize's roi and scales stay float32, as the operator requires."""
    from onnx import TensorProto, helper, numpy_helper

    keep = {node.input[i] for node in model.graph.node if node.op_type == "Resize" for i in (1, 2) if i < len(node.input)} - {""}

    def half(tensor):
        if tensor.data_type != TensorProto.FLOAT or tensor.name in keep:
            return tensor
        converted = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)
        tensor.CopyFrom(converted)
        return tensor

    for init in model.graph.initializer:
        half(init)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == helper.AttributeProto.TENSOR and not (node.op_type == "Constant" and node.output[0] in keep):
                half(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for value in list(model.graph.input) + list(model.graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del model.graph.value_info[:]  # stale types; onnxruntime infers them
    return model


def convert(part):
    import onnx

    path, ids_type, outputs = PARTS[part]
    model = onnx.load(os.path.join(base.OUT, part, "model.onnx"))  # external data too
    model = to_float16(with_matmulnbits(keep_outputs(model, outputs)))
    if ids_type is not None:
        model = with_input_type(model, "input_ids", ids_type)
    model.doc_string = ""
    del model.metadata_props[:]
    onnx.checker.check_model(model)
    target = os.path.join(OUT, path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    onnx.save(model, target)


# ----------------------------------------------------------------------------
# references: the fp32 generator's independent loop, over the q4f16 files


class OrtQ4F16Pipeline(base.OrtPipeline):
    """The fp32 generator's onnxruntime + numpy loop, reading this layout: the part files above, ids in
    each encoder's own type, fp16 in and out (latents stay fp32 between steps, as the app keeps them)."""

    def __init__(self):
        super().__init__(OUT, {part: path for part, (path, _, _) in PARTS.items()})

    def encode(self, prompt):
        ids1 = self.tokenize(0, prompt)[None].astype(PARTS["text_encoder"][1])
        ids2 = self.tokenize(1, prompt)[None].astype(PARTS["text_encoder_2"][1])
        h1 = self.te1.run(["hidden_states.1"], {"input_ids": ids1})[0]
        h2, pooled = self.te2.run(["hidden_states.1", "text_embeds"], {"input_ids": ids2})
        return np.concatenate([h1, h2], axis=-1).astype(np.float32), pooled.astype(np.float32)

    def image(self, prompt, seed, steps, height, width):
        emb, pooled = self.encode(prompt)
        timesteps, sig = self.schedule(steps)
        rng = np.random.Generator(np.random.PCG64(seed))
        shape = (1, 4, height // base.VAE_SCALE_FACTOR, width // base.VAE_SCALE_FACTOR)
        latents = rng.standard_normal(shape, dtype=np.float32) * np.float32(sig.max())
        time_ids = np.array([[height, width, 0, 0, height, width]], dtype=np.float16)
        for i, t in enumerate(timesteps):
            s, s_next = np.float32(sig[i]), np.float32(sig[i + 1])
            x_in = latents / np.sqrt(s * s + np.float32(1))
            eps = self.unet.run(None, {"sample": x_in.astype(np.float16), "timestep": np.array([t], np.float16),
                                       "encoder_hidden_states": emb.astype(np.float16),
                                       "text_embeds": pooled.astype(np.float16), "time_ids": time_ids})[0]
            x0 = latents - s * eps.astype(np.float32)
            s_up = np.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
            s_down = np.sqrt(s_next**2 - s_up**2)
            latents = latents + (latents - x0) / s * (s_down - s)
            latents = (latents + rng.standard_normal(shape, dtype=np.float32) * s_up).astype(np.float32)
        feed = (latents / np.float32(base.VAE_SCALING_FACTOR)).astype(np.float16)
        sample = self.vae.run(None, {"latent_sample": feed})[0].astype(np.float32)
        return np.clip(sample / 2 + 0.5, 0, 1)[0].transpose(1, 2, 0)


def record_references():
    pipe = OrtQ4F16Pipeline()
    cases, arrays = [], {}
    for i, (prompt, seed, steps, h, w) in enumerate(CASES):
        key = base.case_key(i, prompt, seed, steps, h, w)
        cases.append({"key": key, "prompt": prompt, "seed": seed, "steps": steps, "height": h, "width": w})
        arrays[f"{key}_image"] = pipe.image(prompt, seed, steps, h, w)
    doc = {"description": ("Images from the q4f16 files by an onnxruntime + numpy loop independent of app/ "
                           "(models/make_tiny_sdxl_turbo_q4f16.py: OrtQ4F16Pipeline), fp16 in and out, "
                           "latents fp32 between steps. reference.npz keys: {key}_image (HWC float32 in [0,1])."),
           "cases": cases}
    base.write_json(os.path.join(OUT, "reference", "cases.json"), doc)
    base.save_npz_deterministic(os.path.join(OUT, "reference", "reference.npz"), arrays)


def verify() -> float:
    """The files' interfaces, and the references against a fresh run of the independent loop."""
    pipe = OrtQ4F16Pipeline()
    for part, session in zip(PARTS, (pipe.te1, pipe.te2, pipe.unet, pipe.vae)):
        ins = ", ".join(f"{i.name}:{i.type[7:-1]}{i.shape}" for i in session.get_inputs())
        outs = ", ".join(f"{o.name}:{o.type[7:-1]}{o.shape}" for o in session.get_outputs())
        print(f"  {PARTS[part][0]}: ({ins}) -> ({outs})")
    with open(os.path.join(OUT, "reference", "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    ref = np.load(os.path.join(OUT, "reference", "reference.npz"))
    worst = 0.0
    for c in cases:
        diff = float(np.abs(pipe.image(c["prompt"], c["seed"], c["steps"], c["height"], c["width"]) - ref[f"{c['key']}_image"]).max())
        worst = max(worst, diff)
        print(f"  {c['key']:40s} max|diff| {diff:.2e}")
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--verify", action="store_true", help="only verify the existing bundle")
    args = ap.parse_args()
    if not args.verify:
        if os.path.isdir(OUT):
            shutil.rmtree(OUT)
        for part in PARTS:
            convert(part)
        for path in COPIED:
            os.makedirs(os.path.dirname(os.path.join(OUT, path)), exist_ok=True)
            shutil.copyfile(os.path.join(base.OUT, path), os.path.join(OUT, path))
        record_references()
        for f in base.bundle_files(OUT, BUNDLE_ID):
            print(f"  {f['path']:45s} {f['size']:>10,d}  {f['sha256'][:16]}")
    worst = verify()
    if worst > 0:
        print("FAIL: the references do not reproduce")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
