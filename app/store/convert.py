"""The install-time conversion of a variant with "convert": "fp32-activations" (q4: the q4f16 download
made to compute in fp32, for GPUs without 16-bit shaders) or "external-data" (q4f16: each single-file
graph split into a small graph and its weights, so that onnxruntime-web never copies a 2 GB graph into
its wasm heap and the JSPI build can stream the weights to the GPU) or "distribution-mean" (a VAE encoder
split so, then cut to give its latent distribution's mean instead of a draw: app/onnx/mean.py).
app/onnx/fp32.py does the graph work.

Each converted part lands at `{part}/model.onnx` with its weights in `{part}/model.onnx_data` (the
layout the pipeline loads by default). Their bytes are hashed while they are written and stored under
their digest like downloaded files; installed.json records them ("converted": {path: [sha256, size]}),
so loading checks their presence and Verify re-hashes them. An interrupted conversion leaves only
`.partial` files, and the install converts again from the verified download.
"""

from ..onnx.fp32 import Conversion, convert_model
from ..onnx.mean import mean_output
from .download import Partial, storing
from .layout import PARTIAL
from .opfs import js_bytes, options, remove



def converted_paths(part: str) -> tuple[str, str]:
    return f"{part}/model.onnx", f"{part}/model.onnx_data"



async def _open(folder, name: str) -> Partial:
    part = Partial(await (await folder.getFileHandle(name, options(create=True))).createSyncAccessHandle(), name)
    part.access.truncate(0)  # what an interrupted conversion left
    return part


async def _commit(folder, part: Partial, name: str) -> tuple[str, int]:
    """Close a written file and store it under its digest; returns (sha256, size)."""
    part.flush()
    digest, size = await part.hasher.hexdigest(), part.have
    part.close()
    await remove(folder, digest)  # the same bytes from another part: one copy serves both
    with storing(name):
        await (await folder.getFileHandle(name)).move(digest)
    return digest, size


async def convert_bundle(folder, entry: dict, on_part) -> dict:
    """Convert every part that entry["convert"]["from"] names; {path: [sha256, size]} of the results.
    `await on_part(part)` is told which part is being converted."""
    by_path = {f["path"]: f for f in entry["files"]}
    out = {}
    for part, source in sorted(entry["convert"]["from"].items()):
        await on_part(part)
        file = await (await folder.getFileHandle(by_path[source]["sha256"])).getFile()

        async def read(start, end, file=file):
            return (await file.slice(start, end).arrayBuffer()).to_bytes()

        graph_path, data_path = converted_paths(part)
        data = await _open(folder, f"{part}-data{PARTIAL}")
        try:
            async def write_data(raw, data=data):
                await data.append(js_bytes(raw))

            graph = await convert_model(read, int(file.size), write_data, data_path.rpartition("/")[2],
                                        Conversion(fp32=entry["convert"]["to"] == "fp32-activations"))
            if entry["convert"]["to"] == "distribution-mean":
                graph = mean_output(graph)[0]
        except BaseException:
            data.close()
            raise
        out[data_path] = list(await _commit(folder, data, f"{part}-data{PARTIAL}"))
        written = await _open(folder, f"{part}-graph{PARTIAL}")
        try:
            await written.append(js_bytes(graph))
        except BaseException:
            written.close()
            raise
        out[graph_path] = list(await _commit(folder, written, f"{part}-graph{PARTIAL}"))
    return out
