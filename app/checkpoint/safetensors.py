"""A streaming reader of safetensors files: an 8-byte little-endian header length, a JSON header that
gives each tensor's dtype, shape and byte range, then the raw tensors.

It reads through `await read(start, end)` (a `File`'s slices in the browser, a file on CPython) a
window at a time, in file order, and hands every byte it reads to `await on_window(raw)` so the caller
can hash the source in the same pass. Only the wanted tensors are kept, one at a time: a 6.5 GB
checkpoint is never whole in memory.
"""

import json
import struct
from dataclasses import dataclass

import numpy as np

WINDOW_BYTES = 16 << 20
MAX_HEADER_BYTES = 100 << 20  # the format's own limit
# safetensors dtypes -> numpy (bf16 is read as its upper half of a float32)
FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.uint16}
KNOWN = {*FLOATS, "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0",
         "F4", "F6_E2M3", "F6_E3M2", "C64"}
ITEM_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4,
              "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8}


class CheckpointError(ValueError):
    """The file is not a safetensors checkpoint this app can read; the message says why, in words."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte range in the file
    end: int


@dataclass(frozen=True)
class Header:
    tensors: dict  # name -> Tensor
    metadata: dict
    data_start: int
    size: int      # the file's size

    @property
    def dtypes(self) -> set:
        return {t.dtype for t in self.tensors.values()}


async def read_header(read, size: int, name: str = "the file") -> Header:
    if size < 8:
        raise CheckpointError(f"{name} is not a safetensors file: it is only {size} bytes.")
    (length,) = struct.unpack("<Q", await read(0, 8))
    if length < 2 or length > MAX_HEADER_BYTES:
        raise CheckpointError(f"{name} is not a safetensors file (it does not start with a safetensors header).")
    if 8 + length > size:
        raise CheckpointError(f"{name} is cut short: its header alone needs {8 + length:,} bytes, "
                              f"the file has {size:,}.")
    try:
        raw = json.loads(bytes(await read(8, 8 + length)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{name} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{name} is not a safetensors file (its header is not a JSON object).")
    metadata = raw.pop("__metadata__", None) or {}
    data_start = 8 + length
    tensors, end = {}, data_start
    for key, info in raw.items():
        try:
            dtype, shape, (begin, stop) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{name} has a damaged header (entry {key!r}).") from None
        if dtype in ITEM_BYTES and int(np.prod(shape, dtype=np.int64)) * ITEM_BYTES[dtype] != stop - begin:
            raise CheckpointError(f"{name} has a damaged header: {key!r} is {dtype} {list(shape)} "
                                  f"but spans {stop - begin:,} bytes.")
        tensors[key] = Tensor(key, dtype, shape, data_start + begin, data_start + stop)
        end = max(end, data_start + stop)
    if end > size:
        raise CheckpointError(f"{name} is cut short: it should be at least {end:,} bytes, it has {size:,} "
                              f"({(end - size) / 1e6:,.1f} MB missing). Was the download interrupted?")
    return Header(tensors, metadata, data_start, size)


def as_float32(tensor: Tensor, raw) -> np.ndarray:
    if tensor.dtype not in FLOATS:
        raise CheckpointError(f"tensor {tensor.name!r} is {tensor.dtype}; weights must be F16, BF16 or F32.")
    values = np.frombuffer(raw, FLOATS[tensor.dtype])
    if tensor.dtype == "BF16":
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32, copy=False).reshape(tensor.shape)


async def stream(read, header: Header, wanted, on_window=None, window: int = WINDOW_BYTES):
    """Yield (tensor, float32 array) for each name in `wanted`, in file order, reading the whole file
    once from byte 0 (every byte goes to `await on_window(raw)` in order, for hashing)."""
    queue = sorted((header.tensors[n] for n in wanted), key=lambda t: t.start)
    have, pos = [], 0
    while pos < header.size:
        stop = min(pos + window, header.size)
        raw = await read(pos, stop)
        if len(raw) != stop - pos:
            raise CheckpointError(f"the file could not be read past byte {pos + len(raw):,}.")
        if on_window:
            await on_window(raw)
        while queue:
            t = queue[0]
            if t.start >= stop:
                break
            have.append(bytes(raw[max(t.start, pos) - pos:min(t.end, stop) - pos]))
            if t.end > stop:
                break
            queue.pop(0)
            yield t, as_float32(t, b"".join(have))
            have = []
        pos = stop
