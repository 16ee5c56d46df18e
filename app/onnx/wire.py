"""The protobuf wire format, as much of it as ONNX files need: reading fields in place, writing them.

Field numbers from onnx.proto are named here, once, for every module of this package."""

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

# ModelProto
MODEL_GRAPH = 7
MODEL_FUNCTIONS = 25
# GraphProto
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
GRAPH_SPARSE_INITIALIZER = 15
# NodeProto
NODE_OP_TYPE, NODE_ATTRIBUTE = 4, 5
# AttributeProto
ATTR_NAME, ATTR_I, ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS = 1, 3, 5, 6, 10, 11
# TensorProto
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_INT32_DATA, TENSOR_NAME, TENSOR_RAW_DATA = 1, 2, 5, 8, 9
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2  # StringStringEntryProto
EXTERNAL = 1  # TensorProto.DataLocation
# ValueInfoProto, TypeProto and its kinds
VALUE_INFO_TYPE = 2
TYPE_TENSOR, TYPE_SEQUENCE, TYPE_MAP, TYPE_SPARSE_TENSOR, TYPE_OPTIONAL = 1, 4, 5, 8, 9
TENSOR_TYPE_ELEM_TYPE = 1
MAP_VALUE_TYPE = 2
# TensorProto.DataType
FLOAT, FLOAT16 = 1, 10


# Reading

def read_varint(buf, pos: int) -> tuple[int, int]:
    try:
        byte = buf[pos]
        if byte < 0x80:  # most keys and lengths: worth the shortcut in Pyodide
            return byte, pos + 1
        result = shift = 0
        while byte >= 0x80:
            result |= (byte & 0x7F) << shift
            shift += 7
            pos += 1
            byte = buf[pos]
        return result | byte << shift, pos + 1
    except IndexError:
        raise ValueError("truncated varint in model") from None


def fields(buf, pos: int, end: int):
    """Yield (number, wire type, field start, value start, field end) for each field in buf[pos:end].

    The value of a length-delimited field is its payload; of the others, its raw bytes."""
    while pos < end:
        start = pos
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            _, stop = read_varint(buf, pos)
        elif wire == FIXED64:
            stop = pos + 8
        elif wire == LENGTH_DELIMITED:
            size, pos = read_varint(buf, pos)
            stop = pos + size
        elif wire == FIXED32:
            stop = pos + 4
        else:  # groups are not used by onnx.proto
            raise ValueError(f"unsupported protobuf wire type {wire} in model")
        if stop > end:
            raise ValueError("truncated field in model")
        yield number, wire, start, pos, stop
        pos = stop


def messages(buf, pos: int, end: int, number: int):
    """(field start, payload start, field end) of each length-delimited field `number`."""
    for n, wire, start, value, stop in fields(buf, pos, end):
        if n == number and wire == LENGTH_DELIMITED:
            yield start, value, stop


# Writing

def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def message_field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | LENGTH_DELIMITED) + varint(len(payload)) + payload


def spliced(buf, pos: int, end: int, replacements) -> bytes:
    """buf[pos:end] with each (start, stop, new bytes) range replaced; ranges in order."""
    out = []
    for start, stop, new in replacements:
        out += (buf[pos:start], new)
        pos = stop
    out.append(buf[pos:end])
    return b"".join(out)
