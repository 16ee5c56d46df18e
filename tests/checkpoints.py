"""The tiny SDXL checkpoint (models/make_tiny_checkpoint.py) converted on CPython, as the worker converts it."""

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np

from app.checkpoint import keys
from app.checkpoint.detect import SINGLE, detect, layout, with_graphs
from app.checkpoint.fill import _value, data_size, fill, targets
from app.checkpoint.safetensors import as_float32, read_header
from app.checkpoint.templates import BLOCK_SIZE, graphs as of_precision
from app.pipeline.bundle import to_uint8
from app.pipeline.refiner import SDXLRefiner
from app.runtime.ort import OrtRuntime
from conftest import run

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "models" / "tiny-sdxl-checkpoint"
SINGLE_FILE = CHECKPOINT / "tiny-sdxl.safetensors"
REFINER_FILE = CHECKPOINT / "tiny-sdxl-refiner.safetensors"
DIFFUSERS = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
             "text_encoder_2": "text_encoder_2/model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors"}
TEMPLATES = ROOT / "models" / "templates"
SHARED = ROOT / "models" / "sdxl"


def templates(precision="q4") -> dict:
    """{family: {part: graph}} of one precision, as the site lists them."""
    return {family.name: of_precision({p.stem: p.read_bytes() for p in family.glob("*.onnx")}, precision)
            for family in TEMPLATES.iterdir() if family.is_dir()}


def reader(path: Path):
    async def read(start, end):
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)
    return read


async def open_files(files: dict) -> tuple[dict, dict]:
    readers = {name: reader(path) for name, path in files.items()}
    headers = {name: await read_header(readers[name], path.stat().st_size, path.name) for name, path in files.items()}
    return headers, readers


def single_file(path=SINGLE_FILE) -> dict:
    return {SINGLE: path}


def diffusers_folder() -> dict:
    return {part: CHECKPOINT / "diffusers" / name for part, name in DIFFUSERS.items()}


def convert(files: dict, out: Path, found_hook=None, on_bytes=None, scheduler=SHARED / "scheduler_config.json",
            borrowed=frozenset(), precision="q4"):
    """Convert into a bundle folder the pipeline loads ({part}/model.onnx + model.onnx_data, and the
    tokenizers and scheduler SDXL bundles share); returns what detect() found. The `borrowed` parts are
    left for the caller to put in."""
    async def go():
        headers, readers = await open_files(files)
        found = detect(headers, templates(), borrowed)
        graphs = templates(precision)[found.family]
        found = with_graphs(found, graphs, precision)
        if found_hook:
            found_hook(found)
        out.mkdir(parents=True, exist_ok=True)
        sizes = data_size(found.targets)
        handles = {}
        for part in found.parts:
            folder = out / ("unet" if part.endswith("unet") else part)
            folder.mkdir(exist_ok=True)
            (folder / "model.onnx").write_bytes(graphs[part])
            handles[part] = open(folder / "model.onnx_data", "wb")
            handles[part].truncate(sizes[part])

        async def write_at(part, offset, raw):
            handles[part].seek(offset)
            handles[part].write(raw)
        try:
            await fill(found.plan, headers, readers, write_at, on_bytes)
        finally:
            for h in handles.values():
                h.close()
        for name in ("tokenizer", "tokenizer_2"):
            shutil.copytree(SHARED / name, out / name, dirs_exist_ok=True)
        shutil.copy(scheduler, out / "scheduler_config.json")
        return found
    return run(go())


def slot_shape(target) -> list:
    """The shape of the tensor a template slot takes (a linear weight's K as its blocks' full width)."""
    return list(target.dims) if target.kind == "float" else [target.dims[0], target.dims[1] * BLOCK_SIZE]


def single_file_shapes(family: str, parts=("unet", "text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder"),
                       text_layout=None) -> dict:
    """{SGM name: shape} of a single-file checkpoint that fits a family's templates exactly: app/checkpoint/keys.py's
    rules in reverse (a linear weight's K is taken as its blocks' full width)."""
    graphs = templates()[family]
    slots = {part: targets(part, graphs[part]) for part in graphs}
    text = text_layout or {"text_encoder": 0, "text_encoder_2": 1}
    shapes = {}
    for part in parts:
        rules = layout(slots[part if part.endswith("unet") else "unet"], slots["vae_decoder"]) | text
        for key, source in keys.single_file_sources("unet" if part.endswith("unet") else part, slots[part],
                                                    rules).items():
            shape = slot_shape(slots[part][key])
            if source.transpose:
                shape = shape[::-1]
            if source.flatten:
                shape += [1, 1]
            if source.rows:
                shape[0] *= source.rows[1]
            if shapes.setdefault(source.key, shape) != shape:
                raise ValueError(f"{source.key}: two shapes")
    return shapes


def f16_header(shapes: dict, metadata=None) -> tuple[bytes, int]:
    """(the JSON header padded to 8, the data's size) of an F16 safetensors file of these tensors, in this order."""
    header, offset = ({"__metadata__": metadata} if metadata else {}), 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8), offset


def write_single_file(path: Path, shapes: dict, values=None) -> int:
    """An F16 safetensors file of these tensors: `values(name, shape)` gives each (streamed, one at a time), or
    none for a sparse file of zeros (enough for anything that reads only the header). Returns its size."""
    raw, offset = f16_header(shapes)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if values is None:
            f.truncate(8 + len(raw) + offset)
        else:
            for name, shape in shapes.items():
                f.write(np.ascontiguousarray(values(name, shape), np.float16).tobytes())
    return 8 + len(raw) + offset


# Where the parts of an SDXL refiner lie in its Hub repository (the fp16 files the site's entry downloads).
REFINER_REPO_FILES = {"refiner_unet": "unet/diffusion_pytorch_model.fp16.safetensors",
                      "text_encoder_2": "text_encoder_2/model.fp16.safetensors",
                      "vae_decoder": "vae/diffusion_pytorch_model.fp16.safetensors"}


def as_diffusers_files(path: Path, out: Path, names=REFINER_REPO_FILES) -> dict:
    """A single-file checkpoint's parts written as a diffusers folder's files ({repo path: file}): each tensor
    under its diffusers name, as its template slot takes it (the same values, in F16)."""
    async def go():
        headers, readers = await open_files(single_file(path))
        found = detect(headers, templates())
        values = {}
        for (file, key), uses in found.plan.items():
            tensor = headers[file].tensors[key]
            array = as_float32(tensor, await readers[file](tensor.start, tensor.end))
            for target, source in uses:
                values.setdefault(target.part, {})[target.key] = _value(array, source)
        return values
    files = {}
    for part, tensors in run(go()).items():
        files[names[part]] = out / names[part]
        files[names[part]].parent.mkdir(parents=True, exist_ok=True)
        write_single_file(files[names[part]], {k: list(v.shape) for k, v in sorted(tensors.items())},
                          lambda name, shape, tensors=tensors: tensors[name])
    return files


def converted_bytes(family: str, parts=("refiner_unet", "text_encoder_2", "vae_decoder"), precision="q4") -> int:
    """What the worker keeps of a conversion of these parts (app/worker/checkpoint.py `_converted_bytes`): the
    weights, the graphs, and the tokenizers and scheduler config SDXL bundles share."""
    graphs = templates(precision)[family]
    weights = data_size({part: targets(part, graphs[part]) for part in parts})
    shared = sum(f.stat().st_size for f in SHARED.rglob("*") if f.is_file())
    return sum(weights.values()) + sum(len(graphs[part]) for part in parts) + shared


def diffusers_file_size(family: str, parts) -> int:
    """The size of a diffusers fp16 .safetensors file of these template parts, as the safetensors library writes
    one: 8 bytes, a JSON header (with {"format": "pt"}, tensors in name order) padded to 8, then the data."""
    graphs = templates()[family]
    shapes = {key: slot_shape(t) for part in parts for key, t in targets(part, graphs[part]).items()}
    raw, offset = f16_header(dict(sorted(shapes.items())), {"format": "pt"})
    return 8 + len(raw) + offset


def cpython_refined(bundle: Path, cpu_pipeline, prompt: str, seed: int = 90) -> np.ndarray:
    """What the refiner in `bundle` (with the tiny family's refiner schedule) makes of the tiny SDXL-Turbo's
    picture (2 steps, 64x64) on CPython."""
    last = {}

    async def keep(i, x, denoised):
        last["x"] = x

    run(cpu_pipeline.generate(prompt, seed, 2, 64, 64, on_step=keep))
    family = json.loads((TEMPLATES / "tiny-sdxl" / "family.json").read_text())["refiner"]
    (bundle / "scheduler_config.json").write_text(json.dumps(family["scheduler"]))
    entry = json.loads((ROOT / "models_manifest" / "tiny-sdxl-refiner.json").read_text())
    refiner = run(SDXLRefiner.load(OrtRuntime(bundle), entry))
    d = family["defaults"]
    return to_uint8(run(refiner.refine(prompt, seed, last["x"], d["strength"], d["steps"]))).astype(int)
