"""Split an ONNX model's external-data file into chunks that each fit one browser buffer.

onnxruntime-web takes external data as `[{path, data}]`, one buffer per `location` named in the
model, and a browser buffer holds ~2 GB while a fp32 SDXL UNet keeps 10 GB in one file. So the
small .onnx is rewritten to name several chunks, each a contiguous byte range of the original
file; the stored file stays as it is and each chunk is a slice of it.

Only the protobuf wire format is read (no `onnx` package in Pyodide): the graph and the
initializers that point at external data are re-encoded, every other byte is copied as is.
"""

from dataclasses import dataclass

from .wire import (ENTRY_KEY, ENTRY_VALUE, EXTERNAL, GRAPH_INITIALIZER, LENGTH_DELIMITED, MODEL_GRAPH,
                   TENSOR_DATA_LOCATION, TENSOR_EXTERNAL_DATA, VARINT, fields, message_field, messages, read_varint,
                   spliced)


@dataclass(frozen=True)
class Chunk:
    name: str        # the location written into the model for the tensors in this chunk
    location: str    # the original external-data file, relative to the .onnx's folder
    start: int       # byte range [start, end) of that file
    end: int


@dataclass(frozen=True)
class _Tensor:
    graph: tuple[int, int, int]   # the graph field holding it: (start, payload start, end) in the model
    field: tuple[int, int, int]   # its initializer field, likewise
    entries: tuple[tuple[int, int, str], ...]  # (start, end, key) of its "location" and "offset" entries
    location: str
    offset: int
    length: int | None


def external_locations(model: bytes) -> set[str]:
    """The external-data files that the graph's initializers read from (empty if none)."""
    return {t.location for t in _external_tensors(model)}


def split_external_data(model: bytes, chunk_bytes: int) -> tuple[bytes, list[Chunk]]:
    """The model with its tensors pointing at chunks of at most `chunk_bytes`, and those chunks.

    Tensors of each file, by offset, fill chunks greedily; a tensor larger than `chunk_bytes`
    gets a chunk of its own. A model without external data comes back unchanged with no chunks.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    tensors = _external_tensors(model)
    if not tensors:
        return model, []
    for t in tensors:
        if t.length is None:  # the next tensor's offset is no bound: files may have gaps or overlaps
            raise ValueError(f"external tensor in {t.location!r} at offset {t.offset} has no length")
    chunks, placed = [], []
    for location in sorted({t.location for t in tensors}):
        members = sorted((t for t in tensors if t.location == location), key=lambda t: (t.offset, t.length))
        groups = []
        for t in members:
            group = groups[-1] if groups else None
            if group and max(group[1], t.offset + t.length) - group[0] <= chunk_bytes:
                group[1] = max(group[1], t.offset + t.length)
                group[2].append(t)
            else:
                groups.append([t.offset, t.offset + t.length, [t]])
        for i, (start, end, group_tensors) in enumerate(groups):
            chunk = Chunk(f"{location}.chunk{i}", location, start, end)
            chunks.append(chunk)
            placed += ((t, chunk.name, t.offset - start) for t in group_tensors)
    return _rewrite_model(model, placed), chunks


# Reading

def _entry(buf, pos: int, end: int) -> tuple[str, str]:
    key = value = ""
    for n, wire, _, start, stop in fields(buf, pos, end):
        if wire == LENGTH_DELIMITED and n == ENTRY_KEY:
            key = str(buf[start:stop], "utf-8")
        elif wire == LENGTH_DELIMITED and n == ENTRY_VALUE:
            value = str(buf[start:stop], "utf-8")
    return key, value


def _external_tensors(model) -> list[_Tensor]:
    tensors = []
    for graph in messages(model, 0, len(model), MODEL_GRAPH):
        for field in messages(model, graph[1], graph[2], GRAPH_INITIALIZER):
            values, spans, data_location = {}, [], 0
            for n, wire, start, value, stop in fields(model, field[1], field[2]):
                if n == TENSOR_EXTERNAL_DATA and wire == LENGTH_DELIMITED:
                    key, entry_value = _entry(model, value, stop)
                    values[key] = entry_value
                    if key in ("location", "offset"):
                        spans.append((start, stop, key))
                elif n == TENSOR_DATA_LOCATION and wire == VARINT:
                    data_location = read_varint(model, value)[0]
            if data_location != EXTERNAL:
                continue
            location = values.get("location", "")
            _check_location(location)
            length = values.get("length")
            tensors.append(_Tensor(graph, field, tuple(spans), location, int(values.get("offset", 0)),
                                   None if length is None else int(length)))
    return tensors


def _check_location(location: str) -> None:
    """Locations are relative paths inside the model's folder, as the ONNX checker requires."""
    if (not location or location.startswith("/") or "\\" in location or location[1:2] == ":"
            or ".." in location.split("/")):
        raise ValueError(f"external data location {location!r} is not a path inside the model's folder")


# Writing

def _rewrite_model(model, placed: list[tuple[_Tensor, str, int]]) -> bytes:
    """The model with each placed tensor's location and offset replaced."""
    by_graph = {}
    for tensor, location, offset in placed:
        by_graph.setdefault(tensor.graph, []).append(_rewrite_tensor(model, tensor, location, offset))
    graphs = [(start, end, message_field(MODEL_GRAPH, spliced(model, payload, end, sorted(tensors))))
              for (start, payload, end), tensors in sorted(by_graph.items())]
    return spliced(model, 0, len(model), graphs)


def _rewrite_tensor(model, tensor: _Tensor, location: str, offset: int) -> tuple[int, int, bytes]:
    new_values = {"location": location, "offset": str(offset)}
    entries = [(start, stop, message_field(TENSOR_EXTERNAL_DATA, message_field(ENTRY_KEY, key.encode())
                                            + message_field(ENTRY_VALUE, new_values[key].encode())))
               for start, stop, key in tensor.entries]
    # A tensor without an "offset" entry sits at 0, so it opens a chunk that starts at 0: still 0.
    at, pos, end = tensor.field
    return at, end, message_field(GRAPH_INITIALIZER, spliced(model, pos, end, entries))
