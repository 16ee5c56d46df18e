"""A VAE encoder that draws its own noise, cut to give its latent distribution's mean.

Optimum's exporter of late 2023 (SDXL-Turbo's official vae_encoder) wrote `latent_sample =
vae.encode(x).latent_dist.sample()`: mean + exp(logvar / 2) * RandomNormalLike(mean), inside the graph,
so the same picture encodes differently each run and a seed no longer fixes the result. The cut keeps
only what computes the mean (diffusers' `retrieve_latents(..., sample_mode="argmax")`) and names it
`latent_mean`. It works on the small graph left once the weights are external, in memory.
"""

from .wire import (GRAPH_NODE, GRAPH_OUTPUT, LENGTH_DELIMITED, MODEL_GRAPH, NODE_OP_TYPE, fields, message_field,
                   messages, spliced)

SAMPLED, MEAN = "latent_sample", "latent_mean"
NODE_INPUT, NODE_OUTPUT, NODE_NAME = 1, 2, 3
VALUE_INFO_NAME = 1


def _node(buf) -> tuple[str, list[str], list[str]]:
    op, inputs, outputs = "", [], []
    for number, wire, _, value, stop in fields(buf, 0, len(buf)):
        text = str(buf[value:stop], "utf-8") if number in (NODE_INPUT, NODE_OUTPUT, NODE_OP_TYPE) else ""
        if number == NODE_OP_TYPE:
            op = text
        elif number == NODE_INPUT:
            inputs.append(text)
        elif number == NODE_OUTPUT:
            outputs.append(text)
    return op, inputs, outputs


def _value_info_name(buf) -> str:
    return next((str(buf[v:s], "utf-8") for n, _, _, v, s in fields(buf, 0, len(buf)) if n == VALUE_INFO_NAME), "")


def _cut_graph(graph: bytes) -> bytes:
    nodes = [(start, stop, _node(graph[value:stop])) for start, value, stop in messages(graph, 0, len(graph), GRAPH_NODE)]
    producer = {out: i for i, (_, _, (_, _, outputs)) in enumerate(nodes) for out in outputs}

    def ancestors(tensor) -> set[int]:
        seen, todo = set(), [tensor]
        while todo:
            i = producer.get(todo.pop())
            if i is not None and i not in seen:
                seen.add(i)
                todo += nodes[i][2][1]
        return seen

    def random(tensor) -> bool:
        return any(nodes[i][2][0].startswith("RandomNormal") for i in ancestors(tensor))

    if SAMPLED not in producer or not random(SAMPLED):
        raise ValueError(f"the VAE encoder has no {SAMPLED!r} drawn inside the graph to cut")
    op, inputs, _ = nodes[producer[SAMPLED]][2]
    means = [t for t in inputs if not random(t)]
    if op != "Add" or len(inputs) != 2 or len(means) != 1:
        raise ValueError(f"the VAE encoder's {SAMPLED!r} is not mean + noise; it cannot be cut to the mean")
    keep = ancestors(means[0])
    identity = message_field(NODE_INPUT, means[0].encode()) + message_field(NODE_OUTPUT, MEAN.encode()) + \
        message_field(NODE_NAME, MEAN.encode()) + message_field(NODE_OP_TYPE, b"Identity")
    edits = [(start, stop, b"") for i, (start, stop, _) in enumerate(nodes) if i not in keep]
    for start, value, stop in messages(graph, 0, len(graph), GRAPH_OUTPUT):
        info = graph[value:stop]
        if _value_info_name(info) == SAMPLED:
            renamed = b"".join(message_field(VALUE_INFO_NAME, MEAN.encode()) if n == VALUE_INFO_NAME else info[a:s]
                               for n, _, a, _, s in fields(info, 0, len(info)))
            edits.append((start, stop, message_field(GRAPH_OUTPUT, renamed)))
    edits.sort()
    return spliced(graph, 0, len(graph), edits) + message_field(GRAPH_NODE, identity)


def mean_output(model: bytes) -> tuple[bytes, bool]:
    """(the ModelProto with its sampled output replaced by the mean, whether it changed). A graph that gives
    its distribution's parameters (`latent_parameters`) or its mean already is returned as it is."""
    out, changed = [], False
    for number, wire, start, value, stop in fields(model, 0, len(model)):
        if number == MODEL_GRAPH and wire == LENGTH_DELIMITED:
            graph = model[value:stop]
            names = [_value_info_name(graph[v:s]) for _, v, s in messages(graph, 0, len(graph), GRAPH_OUTPUT)]
            if SAMPLED in names:
                out.append(message_field(MODEL_GRAPH, _cut_graph(graph)))
                changed = True
                continue
        out.append(model[start:stop])
    return b"".join(out), changed
