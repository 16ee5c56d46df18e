"""PNG files that carry their own generation parameters.

The parameters go, as JSON, in a text chunk keyed "lantern", and once more as the "parameters" text that
Automatic1111 writes, which other image tools and sites read (each a tEXt chunk, or iTXt when its text is
not Latin-1); nothing time-dependent is written, so the same parameters and pixels always give the same
bytes. Reading them walks the chunks and never decodes a pixel, so a dropped 13000x13000 image or an
APNG of a million frames costs no more than its text; and such a file, larger or longer than any
Lantern writes, is refused before its text is read. A PNG from elsewhere gives what it can of the
settings that Automatic1111 or InvokeAI stored in it.
"""

import io
import json
import re
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

METADATA_KEY = "lantern"
A1111_KEY = "parameters"
INVOKEAI_KEY = "invokeai_metadata"
SAMPLER = "Euler a"  # Automatic1111's name for the ancestral Euler sampler SDXL-Turbo runs


def _quote(value) -> str:
    """A value as Automatic1111 writes it: as JSON when it holds a field or line separator, or a quote
    (its reader would take a value in quotes for JSON)."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') else text


def _short_hash(sha256) -> str | None:
    """Automatic1111's short ("AutoV2") hash: the first 10 hex digits of the sha256."""
    return sha256[:10] if sha256 else None


def a1111_text(parameters: dict) -> str:
    """The prompt, the negative prompt's line when there is one, then one line of "Key: value" fields, in
    Automatic1111's order and spelling; fields without a value are left out, as it does. An upscale is
    written as its "Hires. fix": Size is the picture it started from, times "Hires upscale"."""
    p = parameters
    refiner = p.get("refiner")
    if refiner and _short_hash(p.get("refiner_sha256")):
        refiner = f"{refiner} [{_short_hash(p['refiner_sha256'])}]"
    size = p.get("source") if p.get("upscale") else p
    fields = {
        "Steps": p.get("steps"),
        "Sampler": SAMPLER,
        "CFG scale": p.get("guidance", 1),  # 1: no guidance, as SDXL-Turbo runs by default
        "Seed": p.get("seed"),
        "Size": f"{size['width']}x{size['height']}" if "width" in size and "height" in size else None,
        "Model hash": _short_hash(p.get("model_sha256")),
        "Model": p.get("model"),
        "Denoising strength": p.get("strength", p.get("refiner_strength")),
        "Hires upscale": f"{p['upscale']:g}" if p.get("upscale") else None,
        "Hires steps": p.get("hires_steps"),
        "Hires upscaler": "Lanczos" if p.get("upscale") else None,
        "Refiner": refiner,
        "Version": f"Lantern {p['app_version']}" if p.get("app_version") else None,
    }
    line = ", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None)
    negative = f"\nNegative prompt: {p['negative_prompt']}" if p.get("negative_prompt") else ""
    return f"{p.get('prompt', '')}{negative}\n{line}"


def encode_png(rgb: np.ndarray, parameters: dict) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(parameters, sort_keys=True, ensure_ascii=False))
    info.add_text(A1111_KEY, a1111_text(parameters))
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 256 * 1024  # far more than any parameters Lantern writes


MAX_PIXELS = 4096 * 4096  # 16 times SDXL's own 1024x1024
MAX_FRAMES = 1  # Lantern writes still images, never an animation


class TextTooLong(ValueError):
    """The PNG's parameters are larger than any Lantern writes: not read."""


class TooLarge(ValueError):
    """The image has more pixels or frames than any Lantern writes: not read."""


def _check_size(kind: bytes, data: bytes):
    if kind == b"IHDR" and len(data) >= 8:
        width, height = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
        if width * height > MAX_PIXELS:
            raise TooLarge(f"{width}×{height} pixels")
    frames = int.from_bytes(data[0:4], "big") if kind == b"acTL" and len(data) >= 4 else 0
    if frames > MAX_FRAMES:
        raise TooLarge(f"an animation of {frames:,} frames")


def _text(kind: bytes, data: bytes) -> str:
    """The text of a tEXt or iTXt chunk."""
    rest = data.partition(b"\0")[2]  # past the keyword
    if kind == b"tEXt":
        return rest.decode("latin-1")
    compressed, rest = rest[:1] == b"\1", rest[2:]
    rest = rest.split(b"\0", 2)[-1]  # past the language tag and the translated keyword
    if compressed:
        inflate = zlib.decompressobj()
        rest = inflate.decompress(rest, MAX_TEXT_BYTES + 1)
        if len(rest) > MAX_TEXT_BYTES:
            raise TextTooLong(f"its text is over {MAX_TEXT_BYTES // 1024} KiB")
    return rest.decode("utf-8")


def _text_chunks(png: bytes, keys) -> dict:
    """{key: (chunk type, chunk data)} of the first tEXt or iTXt chunk of each of `keys` in `png`, found
    in one walk that ends once all are found. ValueError, TextTooLong and TooLarge as `read_parameters`."""
    if not png.startswith(SIGNATURE):
        raise ValueError("not a PNG")
    wanted, found = {key.encode(): key for key in keys}, {}
    pos = len(SIGNATURE)
    while pos + 12 <= len(png):
        length, kind = int.from_bytes(png[pos:pos + 4], "big"), png[pos + 4:pos + 8]
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(png):
            break
        if kind == b"IEND":
            return found
        _check_size(kind, png[start:end])
        if kind in (b"tEXt", b"iTXt"):
            keyword, nul, _ = png[start:min(end, start + 80)].partition(b"\0")  # keywords are 1-79 bytes
            key = wanted.get(keyword) if nul else None
            if key and key not in found:
                if length > MAX_TEXT_BYTES:
                    raise TextTooLong(f"its text is {length / 2**20:.1f} MiB")
                found[key] = kind, png[start:end]
                if len(found) == len(wanted):
                    return found
        pos = end + 4  # past the CRC
    raise ValueError("the PNG is cut short")


def read_parameters(png: bytes) -> dict | None:
    """The parameters stored by `encode_png`, or None for a PNG from elsewhere. ValueError for a file
    that is not a whole PNG; TextTooLong for parameters larger than Lantern writes; TooLarge for an image
    with more pixels or frames than Lantern writes."""
    found = _text_chunks(png, [METADATA_KEY]).get(METADATA_KEY)
    return None if found is None else json.loads(_text(*found))


# Automatic1111's pattern for one "Key: value" field, a value in quotes being JSON; the key is bounded
# here so that a long line without a colon is not searched again from each of its characters.
A1111_FIELD = re.compile(r'\s*(\w[\w \-/]{0,99}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
WHOLE = re.compile(r"[0-9]{1,30}")
DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")  # int() of far longer digit strings is slow, or refused
SIZE = re.compile(r"([0-9]{1,30})x([0-9]{1,30})")


def _a1111_value(value: str) -> str:
    """A field's value as Automatic1111 reads it: one in quotes is JSON."""
    value = value.strip()
    if len(value) > 1 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            pass  # Automatic1111 also keeps such a value as it is written
    return value


def parse_a1111(text: str) -> dict:
    """What Automatic1111's "parameters" text gives of prompt, negative prompt, seed, steps, width, height,
    model, CFG scale (guidance) and denoising strength. Its last line starting "Steps:" holds the fields;
    the lines before it are the prompt, then from "Negative prompt:" on the negative prompt."""
    lines = text.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip().startswith("Steps:")), default=None)
    if last is None:
        return {}
    fields = {key: _a1111_value(value) for key, value in A1111_FIELD.findall(lines[last])}
    prompt, negative = [], None
    for line in lines[:last]:
        if negative is None and line.strip().startswith("Negative prompt:"):
            negative = [line.strip()[len("Negative prompt:"):]]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    size = SIZE.fullmatch(fields.get("Size", ""))  # width x height
    numbers = {"seed": fields.get("Seed"), "steps": fields.get("Steps"),
               "width": size and size[1], "height": size and size[2]}
    found = {name: int(value) for name, value in numbers.items() if value and WHOLE.fullmatch(value)}
    for name, key in (("guidance", "CFG scale"), ("strength", "Denoising strength")):
        if DECIMAL.fullmatch(fields.get(key, "")):
            found[name] = float(fields[key])
    texts = {"prompt": "\n".join(prompt).strip(), "model": fields.get("Model"),
             "negative_prompt": "\n".join(negative or []).strip()}
    return dict(found, **{name: value for name, value in texts.items() if value})


def parse_invokeai(text: str) -> dict:
    """What InvokeAI's "invokeai_metadata" JSON gives of prompt, seed, steps, width, height and model,
    as the JSON has them (the caller checks their types)."""
    meta = json.loads(text)
    if not isinstance(meta, dict):
        return {}
    model = meta.get("model")
    if isinstance(model, dict):  # {"name": ...} from InvokeAI 4 on, {"model_name": ...} before
        model = model.get("name") or model.get("model_name")
    found = {"prompt": meta.get("positive_prompt"), "seed": meta.get("seed"), "steps": meta.get("steps"),
             "width": meta.get("width"), "height": meta.get("height"), "model": model}
    return {name: value for name, value in found.items() if value is not None}


# InvokeAI's first: its JSON says exactly which value is which.
FOREIGN = {INVOKEAI_KEY: ("invokeai", parse_invokeai), A1111_KEY: ("a1111", parse_a1111)}


def read_foreign_settings(png: bytes) -> tuple[str, dict] | None:
    """("invokeai" or "a1111", what that tool's text chunk gives of the settings), or None when neither
    chunk gives anything. Errors as `read_parameters`; a chunk whose text is broken is passed over."""
    chunks = _text_chunks(png, FOREIGN)
    for key, (source, parse) in FOREIGN.items():
        if key not in chunks:
            continue
        try:
            found = parse(_text(*chunks[key]))
        except TextTooLong:
            raise
        except (ValueError, RecursionError, zlib.error):  # broken UTF-8, JSON or deflate
            continue
        if found:
            return source, found
    return None
