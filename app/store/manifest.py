"""The model manifest (schema 1): checking its entries, and a digest that names a bundle's exact bytes.

The format is documented in models_manifest/README.md and models_manifest/schema.json. Checking
happens both at build time and in the browser, so a broken entry is explained and left out
instead of failing a download halfway. Standard library only: this runs in Pyodide too.
"""

import hashlib
import json
import re

# A variant's install-time conversions (app/store/convert.py), each with the most bytes it writes per byte
# it converts: fp32 activations double every float16; a split only moves the weights out of the graph (and
# "distribution-mean" then cuts a VAE encoder's sampling to its mean: app/onnx/mean.py).
CONVERSIONS = {"fp32-activations": 2, "external-data": 1, "distribution-mean": 1}


def conversion_growth(entry: dict) -> int:
    """The most bytes a variant's conversion writes per byte it converts (0 when it converts nothing)."""
    return CONVERSIONS.get(entry.get("convert", {}).get("to"), 0)


# A variant made at install from SDXL safetensors checkpoint files (app/worker/checkpoint.py): its linear
# weights quantized to int4 into the family's graph templates, as a visitor's own checkpoint is imported.
# Only the converted model is kept; the downloaded files go once it is recorded.
CHECKPOINT = "checkpoint"
# A checkpoint file's header (names, shapes, offsets) depends on its writer; its tensor data does not.
# A file whose size the host gives may differ from the listed size by this much.
HEADER_SLACK = 1 << 20


def from_checkpoint(entry: dict) -> bool:
    return entry.get("convert", {}).get("from") == CHECKPOINT

SCHEMA = 1
PIPELINES = ("sdxl-turbo", "sdxl-refiner", "vae-encoder")
# An add-on is installed on first use of what needs it and loaded beside the model it serves: no
# defaults, resolutions or style of its own, never offered for generating.
ADDONS = ("vae-encoder",)
PRECISIONS = ("fp32", "fp16", "q4f16", "q4")
CHECKPOINT_PRECISIONS = ("q4f16", "q4")  # what a checkpoint converts to (app/checkpoint/templates.py)
# Every entry has REQUIRED_FIELDS; a model also MODEL_FIELDS, an add-on ADDON_FIELDS instead.
REQUIRED_FIELDS = ("id", "name", "description", "license", "pipeline", "vae_scaling_factor", "vae_scale_factor",
                   "variants")
MODEL_FIELDS = ("style", "defaults", "resolutions")
ADDON_FIELDS = ("encodes_for",)
VARIANT_REQUIRED_FIELDS = ("id", "precision", "requires", "gpu_memory_bytes", "disk_bytes", "files")
FILE_REQUIRED_FIELDS = ("path", "url", "size", "sha256")
PARTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")

_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A Hugging Face Hub file: the only host whose API gives a file's sha256 (see hub.py).
HUB_FILE = re.compile(r"https://huggingface\.co/([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)/resolve/([^/]+)/(.+)")
_REFRESH = "run models_manifest/refresh.py to fill it in"


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (as opposed to one bad entry in it)."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_size_pair(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)


def _path_problem(path) -> str | None:
    if not isinstance(path, str) or not path:
        return "the path is missing or empty."
    if path.startswith("/") or "\\" in path or ".." in path.split("/"):
        return 'the path must stay inside the model\'s folder (no "..", no leading "/", no "\\").'
    if ":" in path:
        return 'the path must not contain ":" (no drive letters or schemes).'
    if any(part in ("", ".") for part in path.split("/")):
        return 'the path must not have empty or "." segments.'
    return None


def _url_problem(url) -> str | None:
    ok = isinstance(url, str) and (
        (url.startswith("https://") and len(url) > len("https://") and not url[8:].startswith("/"))
        or (url.startswith("/") and not url.startswith("//"))
    ) and "\\" not in url and not any(c.isspace() for c in url)
    if ok:
        return None
    return 'the url must be an https:// address or a same-origin path starting with a single "/".'


def _file_problems(f) -> list[tuple[str, str]]:
    """(file label, problem) pairs for one file of a variant."""
    if not isinstance(f, dict):
        return [("", "a file must be a JSON object.")]
    label = f'file "{f.get("path")}"' if isinstance(f.get("path"), str) else "a file"
    out = []
    if (problem := _path_problem(f.get("path"))):
        out.append((label, problem))
    if (problem := _url_problem(f.get("url"))):
        out.append((label, problem))
    size, sha = f.get("size"), f.get("sha256")
    if size is None:
        out.append((label, f"the size is not known yet; {_REFRESH}."))
    elif not _is_int(size) or size < 0:
        out.append((label, "the size must be a whole number of bytes, 0 or more."))
    from_host = f.get("sha256_from") == "host"
    if "size_from" in f and not (f["size_from"] == "host" and from_host):
        out.append((label, '"size_from" can only be "host", and only for a file that takes its sha256 from there.'))
    if "sha256_from" in f and not from_host:
        out.append((label, '"sha256_from" can only be "host".'))
    if from_host and sha is not None:
        out.append((label, 'a pinned sha256 and "sha256_from": "host" exclude each other.'))
    if from_host and not HUB_FILE.fullmatch(f.get("url") or ""):
        out.append((label, 'only Hugging Face Hub files (https://huggingface.co/<owner>/<repo>/resolve/<revision>/<path>) '
                           'can take their sha256 from the host.'))
    if sha is None and not from_host:
        out.append((label, f"the sha256 is not known yet; {_REFRESH} (or take it from the host)."))
    elif sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        out.append((label, "the sha256 must be 64 lowercase hex digits."))
    return out


def _layout_problems(v) -> list[str]:
    """Problems with a variant's optional "parts", "conditioning_outputs", "convert" and "free_dimensions"."""
    out = []
    paths = {f.get("path") for f in v.get("files") or [] if isinstance(f, dict)}
    parts = v.get("parts", {})
    if not (isinstance(parts, dict) and all(isinstance(p, str) for p in parts.values())):
        out.append('"parts" must map pipeline parts to file paths.')
    else:
        out += [f'"parts" names {k!r}, which is not a pipeline part.' for k in parts if k not in PARTS]
        out += [f'"parts" gives {k!r} the file {p!r}, which is not one of the files.' for k, p in parts.items()
                if k in PARTS and p not in paths]
    outputs = v.get("conditioning_outputs", {})
    if not (isinstance(outputs, dict) and all(isinstance(k, str) and k.startswith("text_encoder") and
                                              isinstance(o, str) and re.fullmatch(r"hidden_states\.\d+", o)
                                              for k, o in outputs.items())):
        out.append('"conditioning_outputs" must map text encoders to outputs named "hidden_states.N".')
    convert = v.get("convert")
    if isinstance(convert, dict) and convert.get("from") == CHECKPOINT:
        out += _checkpoint_problems(v, convert)
    elif convert is not None:
        sources = convert.get("from") if isinstance(convert, dict) else None
        if not (isinstance(convert, dict) and convert.get("to") in CONVERSIONS and isinstance(sources, dict)
                and sources and all(k in PARTS and p in paths for k, p in sources.items())):
            out.append('"convert" must be {"from": {part: one of the files}, "to": "fp32-activations", '
                       '"external-data" or "distribution-mean"}.')
        elif "parts" in v:
            out.append('a converted variant loads its parts from where the conversion puts them: no "parts".')
        else:
            out += [f'"convert" would write {p!r}, which is one of the downloaded files.'
                    for k in sources for p in (f"{k}/model.onnx", f"{k}/model.onnx_data") if p in paths]
    out += [f'file "{f.get("path")}": only a variant converted from a checkpoint reuses files.'
            for f in v.get("files") or [] if isinstance(f, dict) and "reuse" in f and not from_checkpoint(v)]
    dims = v.get("free_dimensions", {})
    if not (isinstance(dims, dict) and all(isinstance(k, str) and k and _is_int(n) and n > 0 for k, n in dims.items())):
        out.append('"free_dimensions" must map dimension names to positive whole numbers.')
    return out


def _checkpoint_problems(v, convert) -> list[str]:
    out = []
    family = convert.get("family")
    if not (convert.get("to") in CHECKPOINT_PRECISIONS and isinstance(family, str) and _ID.fullmatch(family)
            and _is_int(convert.get("bytes")) and convert["bytes"] > 0 and set(convert) == {"from", "to", "family", "bytes"}):
        out.append('"convert" from a checkpoint must be {"from": "checkpoint", "to": "q4f16" or "q4", '
                   '"family": <graph templates>, "bytes": <the converted model\'s size>}.')
    if "parts" in v:
        out.append('a variant converted from a checkpoint loads its parts from where the conversion puts them: no "parts".')
    for f in v.get("files") or []:
        if not isinstance(f, dict):
            continue
        if not str(f.get("path", "")).endswith(".safetensors"):
            out.append(f'file "{f.get("path")}": a variant converted from a checkpoint downloads only .safetensors files.')
        reuse = f.get("reuse")
        if reuse is not None and not (isinstance(reuse, dict) and set(reuse) == {"model", "part", "if_same_as"}
                                      and isinstance(reuse["model"], str) and _ID.fullmatch(reuse["model"])
                                      and reuse["part"] in PARTS and f.get("sha256_from") == "host"
                                      and HUB_FILE.fullmatch(str(reuse["if_same_as"]))):
            out.append(f'file "{f.get("path")}": "reuse" must be {{"model": <id>, "part": <its part>, "if_same_as": '
                       '<a Hub file>}, on a file that takes its sha256 from the host.')
    return out


def _variant_problems(v) -> list[tuple[str, str]]:
    """(variant/file label, problem) pairs for one variant."""
    if not isinstance(v, dict):
        return [("", "a variant must be a JSON object.")]
    label = f'variant "{v.get("id")}"' if isinstance(v.get("id"), str) else "a variant"
    out = [(label, f'"{k}" is missing.') for k in VARIANT_REQUIRED_FIELDS if k not in v]
    if "id" in v and not (isinstance(v["id"], str) and _ID.fullmatch(v["id"])):
        out.append((label, "the variant id must be lowercase letters, digits and dashes."))
    if "precision" in v and v["precision"] not in PRECISIONS:
        out.append((label, f'the precision must be one of {", ".join(PRECISIONS)}.'))
    if "requires" in v:
        needs = v["requires"]
        if not (isinstance(needs, dict) and isinstance(needs.get("webgpu"), bool)
                and isinstance(needs.get("shader_f16"), bool)):
            out.append((label, '"requires" must give "webgpu" and "shader_f16" as true or false.'))
        elif "max_buffer_bytes" in needs and not (_is_int(needs["max_buffer_bytes"]) and needs["max_buffer_bytes"] > 0):
            out.append((label, '"requires.max_buffer_bytes" must be a positive whole number.'))
    if "gpu_memory_bytes" in v and not (_is_int(v["gpu_memory_bytes"]) and v["gpu_memory_bytes"] >= 0):
        out.append((label, '"gpu_memory_bytes" must be a whole number of bytes, 0 or more.'))
    if "external_data_chunk_bytes" in v:
        chunk = v["external_data_chunk_bytes"]
        if not (_is_int(chunk) and chunk > 0):
            out.append((label, '"external_data_chunk_bytes" must be a positive whole number of bytes.'))
    if "decode_tile" in v and not (_is_int(v["decode_tile"]) and v["decode_tile"] >= 16 and v["decode_tile"] % 8 == 0):
        out.append((label, '"decode_tile" must be a whole number of pixels, a multiple of 8, at least 16.'))
    out.extend((label, problem) for problem in _layout_problems(v))
    files = v.get("files")
    if "files" in v and not (isinstance(files, list) and files):
        out.append((label, '"files" must be a non-empty list.'))
        files = []
    seen = set()
    for f in files or []:
        for where, problem in _file_problems(f):
            out.append((f"{label}, {where}" if where else label, problem))
        path = f.get("path") if isinstance(f, dict) else None
        if isinstance(path, str):
            if path in seen:
                out.append((label, f'file "{path}" is listed twice.'))
            seen.add(path)
    if "disk_bytes" in v:
        disk = v["disk_bytes"]
        sizes = [f.get("size") for f in files or [] if isinstance(f, dict)]
        if disk is None:
            out.append((label, f'"disk_bytes" is not known yet; {_REFRESH}.'))
        elif not _is_int(disk) or disk < 0:
            out.append((label, '"disk_bytes" must be a whole number of bytes, 0 or more.'))
        elif all(_is_int(s) for s in sizes) and disk != sum(sizes):
            out.append((label, f'"disk_bytes" is {disk} but the files add up to {sum(sizes)}.'))
    return out


def _entry_problems(entry) -> list[tuple[str, str]]:
    """(label below the model, problem) pairs; the label is "" for the model itself."""
    if not isinstance(entry, dict):
        return [("", "a model entry must be a JSON object.")]
    addon = entry.get("pipeline") in ADDONS
    required = REQUIRED_FIELDS + (ADDON_FIELDS if addon else MODEL_FIELDS)
    out = [("", f'"{k}" is missing.') for k in required if k not in entry]
    if "id" in entry and not (isinstance(entry["id"], str) and _ID.fullmatch(entry["id"])):
        out.append(("", "the id must be lowercase letters, digits and dashes, starting with a letter or digit."))
    for key in ("name", "style", "description", "license"):
        if key in entry and not (isinstance(entry[key], str) and entry[key].strip()):
            out.append(("", f'"{key}" must be non-empty text.'))
    pipeline = entry.get("pipeline")
    if "pipeline" in entry and pipeline not in PIPELINES:
        out.append(("", f'the pipeline "{pipeline}" is unknown; it must be one of {", ".join(PIPELINES)}.'))
    refines = entry.get("refines")
    if pipeline == "sdxl-refiner" and not (isinstance(refines, list) and refines
                                           and all(isinstance(r, str) for r in refines)):
        out.append(("", 'a refiner must name the models it refines in "refines".'))
    if pipeline != "sdxl-refiner" and "refines" in entry:
        out.append(("", 'only refiners have "refines".'))
    encodes = entry.get("encodes_for")
    if pipeline == "vae-encoder" and not (isinstance(encodes, list) and encodes and all(isinstance(r, str) for r in encodes)):
        out.append(("", 'a VAE encoder must name the models it encodes pictures for in "encodes_for".'))
    if pipeline != "vae-encoder" and "encodes_for" in entry:
        out.append(("", 'only VAE encoders have "encodes_for".'))
    for key in ("style", "defaults", "resolutions", "tier_resolutions", "bench", "refines"):
        if addon and key in entry:
            out.append(("", f'an add-on has no "{key}".'))
    resolutions = entry.get("resolutions")
    if "resolutions" in entry and not (isinstance(resolutions, list) and resolutions
                                       and all(_is_size_pair(r) for r in resolutions)):
        out.append(("", '"resolutions" must be a non-empty list of [height, width] pairs.'))
        resolutions = None
    defaults = entry.get("defaults")
    if "defaults" in entry:
        if not (isinstance(defaults, dict) and all(_is_int(defaults.get(k)) and defaults[k] > 0
                                                   for k in ("steps", "height", "width"))):
            out.append(("", '"defaults" must give "steps", "height" and "width" as positive whole numbers.'))
        elif resolutions and [defaults["height"], defaults["width"]] not in resolutions:
            out.append(("", "the default height and width must be one of the resolutions."))
        if pipeline == "sdxl-refiner" and not (isinstance(defaults, dict) and _is_number(defaults.get("strength"))
                                               and 0 < defaults["strength"] <= 1):
            out.append(("", 'a refiner\'s "defaults" must give "strength" between 0 and 1.'))
    tiers = entry.get("tier_resolutions")
    if "tier_resolutions" in entry and not (isinstance(tiers, dict) and all(_is_size_pair(r) for r in tiers.values())):
        out.append(("", '"tier_resolutions" must map tiers to [height, width] pairs.'))
    if "bench" in entry and not isinstance(entry["bench"], bool):
        out.append(("", '"bench" must be true or false.'))
    scaling = entry.get("vae_scaling_factor")
    if "vae_scaling_factor" in entry and not (_is_number(scaling) and scaling > 0):
        out.append(("", '"vae_scaling_factor" must be a positive number.'))
    if "vae_scale_factor" in entry and not (_is_int(entry["vae_scale_factor"]) and entry["vae_scale_factor"] > 0):
        out.append(("", '"vae_scale_factor" must be a positive whole number.'))
    for old in ("base_url", "files", "requires"):
        if old in entry:
            out.append(("", f'"{old}" belongs to the old format; files and requirements now live in "variants".'))
    variants = entry.get("variants")
    if "variants" in entry:
        if not (isinstance(variants, list) and variants):
            out.append(("", '"variants" must be a non-empty list.'))
            variants = []
        ids = [v.get("id") for v in variants if isinstance(v, dict)]
        for vid in sorted({i for i in ids if isinstance(i, str) and ids.count(i) > 1}):
            out.append(("", f'variant "{vid}" is listed twice.'))
        for v in variants:
            out.extend(_variant_problems(v))
    return out


def _model_label(entry) -> str:
    return entry["id"] if isinstance(entry, dict) and isinstance(entry.get("id"), str) else "?"


def model_problems(entry) -> list[str]:
    """Every problem with one manifest entry, in plain words naming the model, variant and file;
    [] when the entry is usable."""
    head = f'Model "{_model_label(entry)}"'
    return [f"{head}, {where}: {problem}" if where else f"{head}: {problem}"
            for where, problem in _entry_problems(entry)]


def load_manifest(data) -> tuple[list[dict], list[str]]:
    """The usable entries of a site manifest (parsed JSON, or its text), and one message per
    rejected entry. Raises ManifestError when the manifest as a whole cannot be used."""
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ManifestError(f"The model list is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ManifestError("The model list must be a JSON object.")
    if "schema" not in data:
        raise ManifestError(f'The model list has no "schema" version; this app reads schema {SCHEMA}.')
    if not _is_int(data["schema"]) or data["schema"] != SCHEMA:
        raise ManifestError(f"The model list uses schema {data['schema']!r}; this app reads schema {SCHEMA}.")
    models = data.get("models")
    if not isinstance(models, list):
        raise ManifestError('The model list has no "models" list.')
    ids = [m.get("id") for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ManifestError("The model list names " + ", ".join(f'"{i}"' for i in twice) + " more than once.")
    good, rejected = [], []
    for n, entry in enumerate(models, 1):
        problems = _entry_problems(entry)
        if not problems:
            good.append(entry)
            continue
        label = _model_label(entry) if _model_label(entry) != "?" else f"#{n}"
        details = "; ".join(f"{where}: {problem}" if where else problem for where, problem in problems)
        rejected.append(f'Model "{label}" was rejected: {details}')
    return good, rejected


def bundle_sha256(entry: dict) -> str:
    """sha256 over "path sha256" lines of every file of the chosen variant (the entry as merged by
    device.pick_variant): changes whenever any file of the bundle does."""
    lines = sorted(f"{f['path']} {f['sha256']}\n" for f in entry["files"])
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def is_addon(entry: dict) -> bool:
    return entry.get("pipeline") in ADDONS


def encoder_for(models: dict, model_id: str):
    """The id of the VAE encoder add-on that serves `model_id` (image to image), or None."""
    return next((m for m, e in models.items() if model_id in e.get("encodes_for", [])), None)


def models_by_id(manifest: dict) -> dict:
    return {m["id"]: m for m in manifest["models"]}


def refiner_for(models: dict, model_id: str):
    """The refiner of Refine's second pass for `model_id`: one that names it, or a visitor's refiner imported for
    its family; the visitor's own first."""
    family = models.get(model_id, {}).get("family")
    fits = [m for m, e in models.items()
            if model_id in e.get("refines", []) or (family and e.get("refines_family") == family)]
    return next((m for m in fits if models[m].get("own")), fits[0] if fits else None)
