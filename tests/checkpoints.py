"""The tiny SDXL checkpoint (models/make_tiny_checkpoint.py) converted on CPython, as the worker converts it."""

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np

from app.checkpoint import keys
from app.checkpoint.detect import SINGLE, detect, layout
from app.checkpoint.fill import data_size, fill, targets
from app.checkpoint.safetensors import read_header
from app.checkpoint.templates import BLOCK_SIZE
from conftest import run

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "models" / "tiny-sdxl-checkpoint"
SINGLE_FILE = CHECKPOINT / "tiny-sdxl.safetensors"
REFINER_FILE = CHECKPOINT / "tiny-sdxl-refiner.safetensors"
DIFFUSERS = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
             "text_encoder_2": "text_encoder_2/model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors"}
TEMPLATES = ROOT / "models" / "templates"
SHARED = ROOT / "models" / "sdxl"


def templates() -> dict:
    return {family.name: {p.stem: p.read_bytes() for p in family.glob("*.onnx")}
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


def convert(files: dict, out: Path, found_hook=None, on_bytes=None, scheduler=SHARED / "scheduler_config.json"):
    """Convert into a bundle folder the pipeline loads ({part}/model.onnx + model.onnx_data, and the
    tokenizers and scheduler SDXL bundles share); returns what detect() found."""
    async def go():
        headers, readers = await open_files(files)
        found = detect(headers, templates())
        if found_hook:
            found_hook(found)
        out.mkdir(parents=True, exist_ok=True)
        sizes = data_size(found.targets)
        handles = {}
        for part in found.parts:
            folder = out / ("unet" if part.endswith("unet") else part)
            folder.mkdir(exist_ok=True)
            (folder / "model.onnx").write_bytes(templates()[found.family][part])
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
            t = slots[part][key]
            shape = list(t.dims) if t.kind == "float" else [t.dims[0], t.dims[1] * BLOCK_SIZE]
            if source.transpose:
                shape = shape[::-1]
            if source.flatten:
                shape += [1, 1]
            if source.rows:
                shape[0] *= source.rows[1]
            if shapes.setdefault(source.key, shape) != shape:
                raise ValueError(f"{source.key}: two shapes")
    return shapes


def write_single_file(path: Path, shapes: dict, values=None) -> int:
    """An F16 safetensors file of these tensors: `values(name, shape)` gives each (streamed, one at a time), or
    none for a sparse file of zeros (enough for anything that reads only the header). Returns its size."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if values is None:
            f.truncate(8 + len(raw) + offset)
        else:
            for name, shape in shapes.items():
                f.write(np.ascontiguousarray(values(name, shape), np.float16).tobytes())
    return 8 + len(raw) + offset
