"""The weight slots of a graph template: its initializers that point at external data.

A template is an ONNX graph whose large initializers are named after the checkpoint tensor each is
filled from and already point at their byte range of `model.onnx_data`; filling them in that order
gives a loadable model without touching the graph (app/checkpoint/fill.py).
"""

from dataclasses import dataclass

from .wire import (ENTRY_KEY, ENTRY_VALUE, EXTERNAL, GRAPH_INITIALIZER, LENGTH_DELIMITED, MODEL_GRAPH, TENSOR_DATA_LOCATION,
                   TENSOR_DATA_TYPE, TENSOR_DIMS, TENSOR_EXTERNAL_DATA, TENSOR_NAME, VARINT, fields, messages, read_varint)

UINT8, FLOAT, FLOAT16 = 2, 1, 10


@dataclass(frozen=True)
class Slot:
    name: str
    data_type: int
    dims: tuple[int, ...]
    location: str
    offset: int
    length: int


def slots(model: bytes) -> list[Slot]:
    """The external initializers of the main graph, by offset."""
    out = []
    for graph in messages(model, 0, len(model), MODEL_GRAPH):
        for _, start, end in messages(model, graph[1], graph[2], GRAPH_INITIALIZER):
            name, data_type, dims, entries, location = "", 0, [], {}, 0
            for n, wire, _, value, stop in fields(model, start, end):
                if n == TENSOR_NAME and wire == LENGTH_DELIMITED:
                    name = str(model[value:stop], "utf-8")
                elif n == TENSOR_DATA_TYPE and wire == VARINT:
                    data_type = read_varint(model, value)[0]
                elif n == TENSOR_DIMS and wire == VARINT:
                    dims.append(read_varint(model, value)[0])
                elif n == TENSOR_DIMS and wire == LENGTH_DELIMITED:  # packed
                    pos = value
                    while pos < stop:
                        d, pos = read_varint(model, pos)
                        dims.append(d)
                elif n == TENSOR_EXTERNAL_DATA and wire == LENGTH_DELIMITED:
                    key = val = ""
                    for m, w, _, v, s in fields(model, value, stop):
                        if m == ENTRY_KEY:
                            key = str(model[v:s], "utf-8")
                        elif m == ENTRY_VALUE:
                            val = str(model[v:s], "utf-8")
                    entries[key] = val
                elif n == TENSOR_DATA_LOCATION and wire == VARINT:
                    location = read_varint(model, value)[0]
            if location == EXTERNAL:
                out.append(Slot(name, data_type, tuple(dims), entries["location"], int(entries.get("offset", 0)),
                                int(entries["length"])))
    return sorted(out, key=lambda s: s.offset)
