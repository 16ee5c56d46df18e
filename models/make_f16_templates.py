#!/usr/bin/env python3
"""The q4f16 graph templates, derived from the q4 ones: fp16 activations for GPUs with shader-f16.

Run from the repository root (onnx), after make_templates.py or make_tiny_checkpoint.py:

    python models/make_f16_templates.py            # models/templates/<family>/<part>.f16.onnx
    python models/make_f16_templates.py --check    # derive again in memory; fail if any byte differs

For the UNets and the text encoders (the VAE stays fp32: SDXL's VAE overflows fp16), every float tensor
becomes float16: graph inputs and outputs, weight slots (their offsets in model.onnx_data recomputed),
MatMulNBits scales, folded constants, Constant and ConstantOfShape values and Cast targets. Two things
stay fp32:
  - Resize's roi and scales (ORT takes them only as float);
  - the UNet's timestep and time-id embeddings: the nodes from the `timestep` and `time_ids` inputs up to
    the first MatMul, while they mix with nothing else (sinusoids of values up to 1000 lose their phase in
    fp16: a tiny random UNet moves 6 % with them in fp16, 0.7 % without). One Cast to fp16 follows each
    tensor they hand to the rest.
The slots keep their names and shapes, so the same plan fills either set (app/checkpoint/fill.py).
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "models", "templates")
PARTS = ("unet", "refiner_unet", "text_encoder", "text_encoder_2")
SUFFIX = ".f16"  # <part>.f16.onnx beside <part>.onnx
FP32_INPUTS = ("timestep", "time_ids")
WEIGHT_OPS = {"MatMulNBits", "MatMul", "Gemm"}
RESIZE_FLOAT_INPUTS = (1, 2)  # roi, scales


def _float_tensors(model) -> set:
    import onnx
    from onnx import TensorProto

    graph = onnx.shape_inference.infer_shapes(model).graph
    values = list(graph.value_info) + list(graph.input) + list(graph.output)
    return {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT} | \
        {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}


def island(graph, floats: set) -> set:
    """Names of the nodes that stay fp32: reached from the fp32 inputs, no MatMul, and mixing with no float
    tensor of the rest."""
    starts = [i.name for i in graph.input if i.name in FP32_INPUTS]
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                        for o in n.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    inside, tensors, frontier = set(), set(starts), list(starts)
    while frontier:
        for node in consumers[frontier.pop()]:
            if node.op_type in WEIGHT_OPS or node.name in inside:
                continue
            if any(i in floats and i not in tensors and i not in constants for i in node.input):
                continue
            inside.add(node.name)
            tensors.update(node.output)
            frontier.extend(node.output)
    return inside


def _half(tensor):
    """fp16 values, the fp32 extremes (CLIP's causal mask is float32's lowest) clipped to fp16's."""
    from onnx import numpy_helper

    limit = float(np.finfo(np.float16).max)
    values = np.clip(numpy_helper.to_array(tensor), -limit, limit)
    return numpy_helper.from_array(values.astype(np.float16), tensor.name)


def to_f16(model):
    """The q4f16 template of a q4 template (a ModelProto, changed in place)."""
    from onnx import TensorProto, helper

    graph = model.graph
    if len({n.name for n in graph.node}) != len(graph.node):
        raise SystemExit("every node needs a distinct name")
    floats = _float_tensors(model)
    kept = island(graph, floats)
    kept_tensors = {i.name for i in graph.input if i.name in FP32_INPUTS} | \
        {o for n in graph.node if n.name in kept for o in n.output}
    resize_inputs = {n.input[k] for n in graph.node if n.op_type == "Resize"
                     for k in RESIZE_FLOAT_INPUTS if k < len(n.input) and n.input[k]}
    # Initializers the island reads: fp32 copies when the rest reads them too.
    initializers = {t.name: t for t in graph.initializer}
    island_reads = {i for n in graph.node if n.name in kept for i in n.input if i in initializers}
    rest_reads = {i for n in graph.node if n.name not in kept for i in n.input if i in initializers}
    copies = []  # (kept fp32)
    for name in sorted(island_reads & rest_reads):
        if initializers[name].data_location == TensorProto.EXTERNAL:
            raise SystemExit(f"weight {name} feeds both the fp32 island and the rest")
        copy = TensorProto()
        copy.CopyFrom(initializers[name])
        copy.name = name + ".f32"
        copies.append(copy)
        for node in graph.node:
            if node.name in kept:
                node.input[:] = [copy.name if i == name else i for i in node.input]
    fp32 = (island_reads - rest_reads) | resize_inputs | {c.name for c in copies}
    offset, out = 0, []
    for t in list(graph.initializer) + copies:
        if t.data_type == TensorProto.FLOAT and t.name not in fp32:
            if t.data_location == TensorProto.EXTERNAL:
                t.data_type = TensorProto.FLOAT16
            else:
                t = _half(t)
        if t.data_location == TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            length = int(np.prod(t.dims)) * (1 if t.data_type == TensorProto.UINT8 else
                                             2 if t.data_type == TensorProto.FLOAT16 else 4)
            del t.external_data[:]
            for k, v in (("location", entries["location"]), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
            offset += length
        out.append(t)
    del graph.initializer[:]
    graph.initializer.extend(out)
    nodes, cast = [], {}
    for node in graph.node:
        if node.name not in kept:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
                elif node.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and \
                        a.t.data_type == TensorProto.FLOAT and node.output[0] not in resize_inputs:
                    a.t.CopyFrom(_half(a.t))
            for k, name in enumerate(node.input):
                if name in kept_tensors and not (node.op_type == "Resize" and k in RESIZE_FLOAT_INPUTS) and \
                        name in floats:
                    if name not in cast:
                        cast[name] = name + SUFFIX
                        nodes.append(helper.make_node("Cast", [name], [cast[name]], to=TensorProto.FLOAT16,
                                                      name=name + ".to_f16"))
                    node.input[k] = cast[name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    for value in list(graph.input) + list(graph.output):
        if value.name not in FP32_INPUTS and value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    return model


def derived() -> dict:
    """path -> bytes of every q4f16 template, from the q4 templates as committed."""
    import onnx

    out = {}
    for family in sorted(os.listdir(TEMPLATES)):
        for part in PARTS:
            source = os.path.join(TEMPLATES, family, part + ".onnx")
            if os.path.isfile(source):
                model = onnx.load(source, load_external_data=False)
                out[os.path.join(TEMPLATES, family, part + SUFFIX + ".onnx")] = to_f16(model).SerializeToString()
    return out


def main() -> int:
    graphs = derived()
    if "--check" in sys.argv[1:]:
        differ = [p for p, data in graphs.items() if not os.path.isfile(p) or open(p, "rb").read() != data]
        print("\n".join(f"differs: {os.path.relpath(p, ROOT)}" for p in differ) or "every q4f16 template is as committed")
        return 1 if differ else 0
    for path, data in graphs.items():
        with open(path, "wb") as f:
            f.write(data)
        print(f"{len(data):>10,}  {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
