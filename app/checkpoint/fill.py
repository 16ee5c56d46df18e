"""Filling graph templates' weight slots from checkpoint tensors: the conversion itself.

One pass through each source file, in its own order (so the source is read once, and can be hashed in
the same pass); every tensor read is turned into the slots it feeds and written at their offsets in
the part's `model.onnx_data`: a float as its slot's float32 or float16 (q4f16 templates), a linear weight as
MatMulNBits' int4 blocks and scales (float32 or float16 as well).
"""

from dataclasses import dataclass

import numpy as np

from ..onnx.slots import FLOAT, FLOAT16, UINT8, slots as template_slots
from . import int4
from .keys import Source
from .safetensors import CheckpointError, stream
from .templates import BLOCK_SIZE, SYMMETRIC

SCALES = ".scales"
FLOATS = {FLOAT: "float32", FLOAT16: "float16"}


@dataclass(frozen=True)
class Target:
    part: str
    key: str
    kind: str        # "float" or "int4"
    dims: tuple      # the float slot's dims, or the int4 weight's [N, blocks, block/2]
    offset: int
    length: int
    scales_offset: int = 0
    scales_length: int = 0
    dtype: str = "float32"  # the float slot's, or the scales'


def targets(part: str, template: bytes) -> dict:
    """key -> Target for every weight of one template."""
    found = {s.name: s for s in template_slots(template)}
    out = {}
    for name, s in found.items():
        if name.endswith(SCALES) and name[:-len(SCALES)] in found:
            continue
        if s.data_type == UINT8:
            scales = found.get(name + SCALES)
            if scales is None or len(s.dims) != 3 or scales.data_type not in FLOATS:
                raise ValueError(f"template {part}: int4 slot {name} has no scales")
            out[name] = Target(part, name, "int4", s.dims, s.offset, s.length, scales.offset, scales.length,
                               FLOATS[scales.data_type])
        elif s.data_type in FLOATS:
            out[name] = Target(part, name, "float", s.dims, s.offset, s.length, dtype=FLOATS[s.data_type])
        else:
            raise ValueError(f"template {part}: slot {name} has element type {s.data_type}")
    return out


def _value(tensor: np.ndarray, source: Source) -> np.ndarray:
    if source.rows:
        i, n = source.rows
        size = tensor.shape[0] // n
        tensor = tensor[i * size:(i + 1) * size]
    if source.flatten:
        tensor = tensor.reshape(tensor.shape[0], -1)
    return tensor.T if source.transpose else tensor


def _slot_bytes(target: Target, value: np.ndarray) -> list[tuple[int, bytes]]:
    if target.kind == "float":
        if value.size != int(np.prod(target.dims)):
            raise CheckpointError(f"{target.key} has shape {list(value.shape)}; this model needs {list(target.dims)}.")
        out = np.ascontiguousarray(value.reshape(target.dims), target.dtype).tobytes()
        return [(target.offset, out)]
    n, blocks, _ = target.dims
    if value.ndim != 2 or value.shape[0] != n or not (blocks - 1) * BLOCK_SIZE < value.shape[1] <= blocks * BLOCK_SIZE:
        raise CheckpointError(f"{target.key} has shape {list(value.shape)}; this model needs [{n}, K] "
                              f"with K up to {blocks * BLOCK_SIZE}.")
    packed, scales, _ = int4.quantize(value, BLOCK_SIZE, SYMMETRIC)
    return [(target.offset, packed.tobytes()), (target.scales_offset, scales.astype(target.dtype).tobytes())]


def check_sources(plan: dict, headers: dict) -> None:
    """Every tensor the plan needs is in its file, is float, and has as many values as its slot."""
    missing = []
    for (file, source_key), wanted in plan.items():
        tensor = headers[file].tensors.get(source_key)
        if tensor is None:
            missing.append(source_key)
            continue
        if tensor.dtype not in ("F16", "BF16", "F32"):
            raise CheckpointError(f"{source_key} is {tensor.dtype}; weights must be F16, BF16 or F32.")
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensors this model needs: {shown}.")


async def fill(plan: dict, headers: dict, readers: dict, write_at, on_bytes=None) -> None:
    """plan: (file, source key) -> [(Target, Source)]. Reads each file once, in order; writes each
    slot's bytes with `await write_at(part, offset, raw)`; `await on_bytes(file, raw)` sees every byte read."""
    check_sources(plan, headers)
    for file, header in headers.items():
        wanted = [key for f, key in plan if f == file]

        async def window(raw, file=file):
            if on_bytes:
                await on_bytes(file, raw)

        async for tensor, values in stream(readers[file], header, wanted, window):
            for target, source in plan[(file, tensor.name)]:
                for offset, raw in _slot_bytes(target, _value(values, source)):
                    await write_at(target.part, offset, raw)


def data_size(parts_targets: dict) -> dict:
    """part -> bytes of its model.onnx_data."""
    return {part: max((max(t.offset + t.length, t.scales_offset + t.scales_length) for t in ts.values()), default=0)
            for part, ts in parts_targets.items()}
