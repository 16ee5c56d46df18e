"""fp16-activation ONNX models (webnn/sdxl-turbo's q4f16) turned into fp32-activation ones, for GPUs
without 16-bit shaders: every float16 graph input, output, value_info, initializer, Constant and Cast
target becomes float32; MatMulNBits keeps its packed int4 weights (its scales and bias become float32,
which onnxruntime's MatMulNBits accepts); nothing else changes. The precision changes, not the function.

It streams: the source is read in windows (`await read(start, end)`), and the raw data of every
initializer of `EXTERNAL_MIN_BYTES` or more goes to an external-data file a window at a time as it is
met (`await write_data(bytes)`), so neither a 2 GB UNet nor one of its tensors sits whole in memory;
what comes back is the small graph, which names that file for its weights. With `Conversion(fp32=False)`
the same streaming only splits a single-file graph into that small graph and its weights, unchanged.
"""

from collections import Counter

import numpy as np

from .wire import (ATTR_G, ATTR_GRAPHS, ATTR_I, ATTR_NAME, ATTR_T, ATTR_TENSORS, ENTRY_KEY, ENTRY_VALUE, EXTERNAL,
                   FIXED32, FIXED64, FLOAT, FLOAT16, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_NODE, GRAPH_OUTPUT,
                   GRAPH_SPARSE_INITIALIZER, GRAPH_VALUE_INFO, LENGTH_DELIMITED, MAP_VALUE_TYPE, MODEL_FUNCTIONS,
                   MODEL_GRAPH, NODE_ATTRIBUTE, NODE_OP_TYPE, TENSOR_DATA_LOCATION, TENSOR_DATA_TYPE,
                   TENSOR_EXTERNAL_DATA, TENSOR_INT32_DATA, TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_TYPE_ELEM_TYPE, TYPE_MAP,
                   TYPE_OPTIONAL, TYPE_SEQUENCE, TYPE_SPARSE_TENSOR, TYPE_TENSOR, VALUE_INFO_TYPE, VARINT, fields,
                   message_field, read_varint, varint)

EXTERNAL_MIN_BYTES = 1024
WINDOW_BYTES = 4 << 20  # how much of the source is read at once
DTYPE_ATTRIBUTES = {("Cast", "to")}  # attributes that name an element type: float16 -> float


class Conversion:
    """What one conversion touched, for the log and the tests: (what, op type) -> count. With `fp32` false
    nothing is converted: the model only has its weights moved to the external-data file (what loading a
    single-file graph needs: onnxruntime-web copies a whole graph into its 4 GiB wasm heap to parse it)."""

    def __init__(self, fp32: bool = True):
        self.fp32 = fp32
        self.touched = Counter()
        self.consumers = {}  # initializer name -> op types that read it
        self.external_bytes = 0

    def table(self) -> list[tuple[str, str, int]]:
        return sorted((what, op, n) for (what, op), n in self.touched.items() if n)


def _varint_field(number: int, value: int) -> bytes:
    return varint(number << 3 | VARINT) + varint(value)


def _rewrite(buf, handlers) -> bytes:
    """`buf` (one message) with each field whose number has a handler replaced by what it returns."""
    out = []
    for number, wire, start, value, stop in fields(buf, 0, len(buf)):
        handler = handlers.get(number)
        out.append(handler(number, wire, buf[value:stop], buf[start:stop]) if handler else buf[start:stop])
    return b"".join(out)


def _elem_type(number, wire, value, field) -> bytes:
    if wire == VARINT and read_varint(value, 0)[0] == FLOAT16:
        return _varint_field(TENSOR_TYPE_ELEM_TYPE, FLOAT)
    return field


def convert_type(buf) -> bytes:
    """A TypeProto with its float16 element types made float."""
    def tensor(number, wire, value, field):
        return message_field(number, _rewrite(value, {TENSOR_TYPE_ELEM_TYPE: _elem_type}))

    def inner(number, wire, value, field):  # an element or value type: a TypeProto itself
        return message_field(number, convert_type(value))

    def nested(key):
        return lambda number, wire, value, field: message_field(number, _rewrite(value, {key: inner}))

    return _rewrite(buf, {TYPE_TENSOR: tensor, TYPE_SPARSE_TENSOR: tensor, TYPE_SEQUENCE: nested(1),
                          TYPE_OPTIONAL: nested(1), TYPE_MAP: nested(MAP_VALUE_TYPE)})


def convert_value_info(buf) -> bytes:
    return _rewrite(buf, {VALUE_INFO_TYPE: lambda number, wire, value, field: message_field(number,
                                                                                          convert_type(value))})


def _tensor_fp16_values(buf) -> tuple[np.ndarray | None, list]:
    """(the float16 values of a float16 TensorProto as float32, its other fields), or (None, []) if the
    tensor is not float16. Values come from raw_data or int32_data (which holds their bits)."""
    dtype, values, rest = None, None, []
    for number, wire, start, value, stop in fields(buf, 0, len(buf)):
        if number == TENSOR_DATA_TYPE and wire == VARINT:
            dtype = read_varint(buf, value)[0]
        elif number == TENSOR_RAW_DATA:
            values = np.frombuffer(bytes(buf[value:stop]), "<f2")
        elif number == TENSOR_INT32_DATA:
            bits = []
            if wire == LENGTH_DELIMITED:  # packed
                pos = value
                while pos < stop:
                    bit, pos = read_varint(buf, pos)
                    bits.append(bit)
            else:
                bits.append(read_varint(buf, value)[0])
            values = np.concatenate([values, np.array(bits, "<u2").view("<f2")]) if values is not None \
                else np.array(bits, "<u2").view("<f2")
        elif number == TENSOR_DATA_LOCATION and wire == VARINT and read_varint(buf, value)[0] == EXTERNAL:
            raise ValueError("a float16 tensor in external data cannot be converted here")
        else:
            rest.append(bytes(buf[start:stop]))
    if dtype != FLOAT16:
        return None, []
    return (values if values is not None else np.zeros(0, "<f2")).astype("<f4"), rest


def convert_tensor(buf) -> tuple[bytes, bool]:
    """(the TensorProto with float16 data made float32, raw_data; whether it was float16)."""
    values, rest = _tensor_fp16_values(buf)
    if values is None:
        return bytes(buf), False
    return (b"".join(rest) + _varint_field(TENSOR_DATA_TYPE, FLOAT)
            + message_field(TENSOR_RAW_DATA, values.tobytes())), True


def _external_entries(location: str, offset: int, length: int) -> bytes:
    """The fields that point a tensor at `length` bytes of `location` from `offset`."""
    entries = b"".join(message_field(TENSOR_EXTERNAL_DATA, message_field(ENTRY_KEY, k.encode())
                                     + message_field(ENTRY_VALUE, v.encode()))
                       for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))))
    return entries + _varint_field(TENSOR_DATA_LOCATION, EXTERNAL)


def _op_type(buf) -> str:
    for number, wire, start, value, stop in fields(buf, 0, len(buf)):
        if number == NODE_OP_TYPE:
            return str(buf[value:stop], "utf-8")
    return ""


def _input_names(buf) -> list[str]:
    return [str(buf[value:stop], "utf-8") for number, wire, start, value, stop in fields(buf, 0, len(buf))
            if number == 1 and wire == LENGTH_DELIMITED]


def convert_node(buf, stats: Conversion) -> bytes:
    op = _op_type(buf)
    for name in _input_names(buf):
        stats.consumers.setdefault(name, set()).add(op)

    def attribute(number, wire, value, field):
        name = next((str(value[v:s], "utf-8") for n, w, _, v, s in fields(value, 0, len(value)) if n == ATTR_NAME), "")

        def dtype(n, w, v, f):
            if (op, name) in DTYPE_ATTRIBUTES and w == VARINT and read_varint(v, 0)[0] == FLOAT16:
                stats.touched[f"{name} = float16 -> float", op] += 1
                return _varint_field(ATTR_I, FLOAT)
            return f

        def tensor(n, w, v, f):
            new, changed = convert_tensor(v)
            stats.touched[f"attribute {name}: float16 tensor -> float", op] += changed
            return message_field(n, new)

        def graph(n, w, v, f):
            return message_field(n, convert_graph(v, stats))

        return message_field(NODE_ATTRIBUTE, _rewrite(value, {ATTR_I: dtype, ATTR_T: tensor, ATTR_TENSORS: tensor,
                                                              ATTR_G: graph, ATTR_GRAPHS: graph}))

    return _rewrite(buf, {NODE_ATTRIBUTE: attribute})


def convert_graph(buf, stats: Conversion) -> bytes:
    """A (sub)graph held in memory, initializers kept inline."""
    def node(number, wire, value, field):
        return message_field(number, convert_node(value, stats))

    def initializer(number, wire, value, field):
        new, changed = convert_tensor(value)
        stats.touched["initializer: float16 -> float", "(subgraph)"] += changed
        return message_field(number, new)

    def info(number, wire, value, field):
        return message_field(number, convert_value_info(value))

    return _rewrite(buf, {GRAPH_NODE: node, GRAPH_INITIALIZER: initializer, GRAPH_INPUT: info, GRAPH_OUTPUT: info,
                          GRAPH_VALUE_INFO: info})


class _Source:
    """Reads of a file through a window, so that many small fields cost one read."""

    def __init__(self, read, size: int):
        self._read, self.size = read, size
        self._start, self._data = 0, b""

    async def bytes(self, start: int, end: int) -> bytes:
        if not (self._start <= start and end <= self._start + len(self._data)):
            self._start = start
            self._data = bytes(await self._read(start, min(max(end, start + WINDOW_BYTES), self.size)))
        return self._data[start - self._start:end - self._start]

    async def header(self, pos: int, end: int) -> tuple[int, int, int, int]:
        """(field number, wire type, value start, field end) of the field at `pos`."""
        head = await self.bytes(pos, min(pos + 20, end))
        key, i = read_varint(head, 0)
        number, wire = key >> 3, key & 7
        if wire == LENGTH_DELIMITED:
            size, i = read_varint(head, i)
            return number, wire, pos + i, pos + i + size
        if wire == VARINT:
            return number, wire, pos + i, pos + read_varint(head, i)[1]
        if wire in (FIXED64, FIXED32):
            return number, wire, pos + i, pos + i + (8 if wire == FIXED64 else 4)
        raise ValueError(f"unsupported protobuf wire type {wire} in model")


async def convert_model(read, size: int, write_data, location: str, stats: Conversion | None = None) -> bytes:
    """The converted ModelProto (weights in `location`, written through `write_data`) of the model of
    `size` bytes that `await read(start, end)` reads."""
    stats = stats if stats is not None else Conversion()
    source, out, pos = _Source(read, size), [], 0
    while pos < size:
        number, wire, value, end = await source.header(pos, size)
        if number == MODEL_FUNCTIONS:
            raise ValueError("models with local functions are not supported")
        if number == MODEL_GRAPH and wire == LENGTH_DELIMITED:
            out.append(message_field(MODEL_GRAPH, await _convert_main_graph(source, value, end, write_data, location,
                                                                             stats)))
        else:
            out.append(await source.bytes(pos, end))
        pos = end
    return b"".join(out)


async def _convert_main_graph(source, pos, end, write_data, location, stats) -> bytes:
    out = []
    while pos < end:
        number, wire, value, stop = await source.header(pos, end)
        if number == GRAPH_INITIALIZER and wire == LENGTH_DELIMITED:
            out.append(message_field(GRAPH_INITIALIZER, await _initializer(source, value, stop, write_data, location,
                                                                           stats)))
        elif number == GRAPH_SPARSE_INITIALIZER:
            raise ValueError("sparse initializers are not supported")
        else:
            field = await source.bytes(pos, stop)
            converted = convert_graph(field, stats) if stats.fp32 else field
            stats.touched["graph input/output/value_info: float16 -> float", "-"] += (
                number in (GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO) and converted != field)
            out.append(converted)
        pos = stop
    return b"".join(out)


async def _initializer(source, pos, end, write_data, location, stats) -> bytes:
    """One initializer of the main graph, converted; raw data of EXTERNAL_MIN_BYTES or more is streamed
    to the data file a window at a time, so that no tensor (a 59 MB float16 convolution) is ever whole
    in memory."""
    rest, raw = [], None
    while pos < end:
        number, wire, value, stop = await source.header(pos, end)
        if number == TENSOR_RAW_DATA and wire == LENGTH_DELIMITED and stop - value >= EXTERNAL_MIN_BYTES:
            raw = (value, stop)
        else:
            rest.append(await source.bytes(pos, stop))
        pos = stop
    head = b"".join(rest)
    if raw is None:  # small, or its values are not in raw_data: converted whole, kept inline
        tensor, changed = convert_tensor(head) if stats.fp32 else (head, False)
    else:
        changed = stats.fp32 and any(n == TENSOR_DATA_TYPE and read_varint(head, v)[0] == FLOAT16
                      for n, w, _, v, _ in fields(head, 0, len(head)))
        if changed:
            head = _rewrite(head, {TENSOR_DATA_TYPE: lambda number, wire, value, field: _varint_field(number, FLOAT)})
        offset = stats.external_bytes
        for start in range(raw[0], raw[1], WINDOW_BYTES):  # WINDOW_BYTES is even: float16 values stay whole
            piece = await source.bytes(start, min(start + WINDOW_BYTES, raw[1]))
            if changed:
                piece = np.frombuffer(piece, "<f2").astype("<f4").tobytes()
            await write_data(piece)
            stats.external_bytes += len(piece)
        tensor = head + _external_entries(location, offset, stats.external_bytes - offset)
    if changed:
        ops = ",".join(sorted(stats.consumers.get(_tensor_name(tensor), {"(unused)"})))
        stats.touched["initializer: float16 -> float", ops] += 1
    return tensor


def _tensor_name(buf) -> str:
    return next((str(buf[v:s], "utf-8") for n, w, _, v, s in fields(buf, 0, len(buf)) if n == TENSOR_NAME), "")
