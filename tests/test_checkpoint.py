"""Importing SDXL checkpoints: a tiny one, in both layouts, converted on CPython by the worker's code."""

import hashlib
import json
import math
import struct

import numpy as np
import pytest

from app.checkpoint import keys
from app.checkpoint.detect import SINGLE, detect
from app.checkpoint.fill import targets
from app.checkpoint.safetensors import CheckpointError, read_header, stream
from app.checkpoint.templates import BLOCK_SIZE
from checkpoints import (CHECKPOINT, REFINER_FILE, SINGLE_FILE, convert, diffusers_folder, open_files, reader,
                         single_file, single_file_shapes, templates, write_single_file)
from conftest import run


def load_all(path) -> dict:
    async def go():
        read = reader(path)
        header = await read_header(read, path.stat().st_size)
        return {t.name: v async for t, v in stream(read, header, header.tensors, window=4096)}
    return run(go())


def test_reader_hashes_the_whole_file_while_streaming_in_small_windows():
    digest = hashlib.sha256()

    async def go():
        read = reader(SINGLE_FILE)
        header = await read_header(read, SINGLE_FILE.stat().st_size)

        async def on_window(raw):
            digest.update(raw)
        wanted = sorted(header.tensors)[::3]
        got = [t.name async for t, _ in stream(read, header, wanted, on_window, window=1000)]
        assert sorted(got) == sorted(wanted)
        return header
    header = run(go())
    assert digest.hexdigest() == hashlib.sha256(SINGLE_FILE.read_bytes()).hexdigest()
    assert header.metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"


def test_single_file_names_map_to_the_diffusers_weights_exactly():
    """keys.py's rules (the inverse of diffusers' single-file loader) take every diffusers weight from the
    single file: the same values, for UNet, CLIP-L, bigG (split in_proj, transposed projection) and VAE."""
    single = load_all(SINGLE_FILE)
    found = run(_found(single_file()))
    checked = 0
    for part in found.parts:
        folder = load_all(CHECKPOINT / "diffusers" / {"unet": "unet/diffusion_pytorch_model.safetensors",
                                                       "text_encoder": "text_encoder/model.safetensors",
                                                       "text_encoder_2": "text_encoder_2/model.safetensors",
                                                       "vae_decoder": "vae/diffusion_pytorch_model.safetensors"}[part])
        for (file, source_key), uses in found.plan.items():
            for target, source in uses:
                if target.part != part:
                    continue
                value = single[source_key]
                if source.rows:
                    i, n = source.rows
                    value = value[i * value.shape[0] // n:(i + 1) * value.shape[0] // n]
                value = value.T if source.transpose else value
                want = folder[target.key]
                np.testing.assert_array_equal(value.reshape(want.shape), want)
                checked += 1
    assert checked == sum(len(t) for t in found.targets.values())


async def _found(files):
    headers, _ = await open_files(files)
    return detect(headers, templates())


def test_detects_what_the_checkpoint_holds():
    found = run(_found(single_file()))
    assert (found.kind, found.family, found.own_vae) == ("sdxl", "tiny-sdxl", True)
    assert found.describe() == "SDXL UNet + CLIP-L + bigG + VAE, f16, 4.3 MB"
    refiner = run(_found(single_file(REFINER_FILE)))
    assert refiner.kind == "sdxl-refiner" and refiner.parts == ("refiner_unet", "text_encoder_2", "vae_decoder")
    assert run(_found(diffusers_folder())).kind == "sdxl"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = {}
    for name, files in (("single", single_file()), ("diffusers", diffusers_folder())):
        out[name] = tmp_path_factory.mktemp(name)
        convert(files, out[name])
    return out


def test_both_layouts_convert_to_the_same_model(converted):
    for part in ("unet", "text_encoder", "text_encoder_2", "vae_decoder"):
        for f in ("model.onnx", "model.onnx_data"):
            assert (converted["single"] / part / f).read_bytes() == (converted["diffusers"] / part / f).read_bytes()


def generate(bundle, case, manifest_entry):
    from app.pipeline.turbo import SDXLTurbo
    from app.runtime.ort import OrtRuntime

    async def go():
        pipe = await SDXLTurbo.load(OrtRuntime(bundle), manifest_entry)
        return await pipe.generate(case["prompt"], case["seed"], case["steps"], case["height"], case["width"])
    return run(go())


def references():
    cases = json.loads((CHECKPOINT / "reference.json").read_text())["cases"]
    with np.load(CHECKPOINT / "reference.npz") as data:
        return [(case, data[case["key"]], data[case["key"] + "_int4"]) for case in cases]


# diffusers with the int4 values of the quantized weights: the same computation, so only float32 rounding
# differs (measured max |diff| ~1e-6 of the [0, 1] range).
SAME_WEIGHTS = 1e-4
# diffusers with the checkpoint's own weights: the cost of int4. The tiny model's random weights, in blocks of
# 32 across widths of 16 to 64, are as hard on 4 bits as weights get (measured mean |diff| 0.023 and 0.015).
INT4_MEAN = 0.04


def test_converted_checkpoint_generates_as_diffusers_within_int4_tolerance(converted, manifest_entry):
    for case, want, want_int4 in references():
        got = generate(converted["single"], case, manifest_entry)
        assert got.shape == want.shape
        same, int4 = np.abs(got - want_int4), np.abs(got - want)
        print(f"{case['key']}: vs diffusers on the int4 values max |diff| {same.max():.2e}; "
              f"vs the checkpoint's weights mean {int4.mean():.4f}, max {int4.max():.3f}")
        assert same.max() < SAME_WEIGHTS
        assert int4.mean() < INT4_MEAN
        again = generate(converted["single"], case, manifest_entry)
        assert again.tobytes() == got.tobytes()


# The same int4 weights with fp16 math (q4f16): fp16's rounding of activations on top (measured mean |diff|
# 1e-4, max 1e-3 on the [0, 1] range; a wrong key mapping moves 0.02 to 0.05 mean).
FP16_MEAN, FP16_MAX = 2e-3, 2e-2


def session_types(path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {v.name: v.type for v in session.get_inputs() + session.get_outputs()}


def test_the_q4f16_conversion_computes_in_fp16_and_generates_as_diffusers_within_fp16_rounding(
        converted, tmp_path, manifest_entry):
    """For GPUs with shader-f16: the same int4 weights, every other weight and activation fp16, except the VAE
    (SDXL's overflows fp16) and the UNet's timestep and time-id embeddings (fp32 inputs)."""
    found = convert(single_file(), tmp_path, precision="q4f16")
    assert found.precision == "q4f16"
    unet = session_types(tmp_path / "unet" / "model.onnx")
    assert {unet[n] for n in ("sample", "encoder_hidden_states", "text_embeds", "out_sample")} == {"tensor(float16)"}
    assert unet["timestep"] == unet["time_ids"] == "tensor(float)"
    assert session_types(tmp_path / "text_encoder_2" / "model.onnx")["text_embeds"] == "tensor(float16)"
    assert set(session_types(tmp_path / "vae_decoder" / "model.onnx").values()) == {"tensor(float)"}
    for part in ("unet", "text_encoder", "text_encoder_2"):  # floats halved, int4 blocks the same
        size = {p: (p / part / "model.onnx_data").stat().st_size for p in (tmp_path, converted["single"])}
        assert size[tmp_path] < 0.6 * size[converted["single"]], part
    for case, _, want_int4 in references():
        got = generate(tmp_path, case, manifest_entry)
        diff = np.abs(got - want_int4)
        print(f"q4f16 {case['key']}: vs diffusers on the int4 values mean |diff| {diff.mean():.1e}, max {diff.max():.1e}")
        assert diff.mean() < FP16_MEAN and diff.max() < FP16_MAX
        assert generate(tmp_path, case, manifest_entry).tobytes() == got.tobytes()


def test_an_import_is_converted_to_q4f16_where_the_gpu_has_shader_f16_and_to_q4_elsewhere():
    from app.worker.device import variant_for
    from conftest import ROOT

    for family in ("sdxl", "tiny-sdxl"):
        meta = json.loads((ROOT / "models" / "templates" / family / "family.json").read_text())
        with_f16 = variant_for(meta, {"backend": "webgpu", "shader_f16": True})
        assert (with_f16["id"], with_f16["precision"]) == ("q4f16", "q4f16")
        assert variant_for(meta, {"backend": "webgpu", "shader_f16": False})["precision"] == "q4"
    sdxl = json.loads((ROOT / "models" / "templates" / "sdxl" / "family.json").read_text())
    assert variant_for(sdxl, {"backend": "wasm"})["precision"] == "q4"  # none fits: the last, the page says why


def test_the_q4f16_templates_are_the_q4_ones_in_fp16_as_committed():
    """models/make_f16_templates.py derives every q4f16 graph from its q4 graph: the same slots (names,
    shapes, int4 blocks) with fp16 floats and scales; the VAE has none (it stays fp32)."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("make_f16_templates", ROOT / "models" / "make_f16_templates.py")
    make_f16_templates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_f16_templates)
    for path, data in make_f16_templates.derived().items():
        assert open(path, "rb").read() == data, f"{path} is not what models/make_f16_templates.py derives"
    for family in ("sdxl", "tiny-sdxl"):
        q4, f16 = templates("q4")[family], templates("q4f16")[family]
        for part in q4:
            a, b = targets(part, q4[part]), targets(part, f16[part])
            assert [(k, t.kind, t.dims) for k, t in a.items()] == [(k, t.kind, t.dims) for k, t in b.items()]
            assert {t.dtype for t in b.values()} == ({"float32"} if part.startswith("vae") else {"float16"}), part


def _swap(key, a, b):
    return key.replace(a, b) if a in key else key.replace(b, a)


@pytest.mark.parametrize("wrong", ["bigG's k and v rows swapped", "UNet attn1 and attn2 outputs swapped",
                                   "CLIP-L's last two layers swapped"])
def test_a_wrong_key_mapping_moves_the_picture_far_more(tmp_path, manifest_entry, monkeypatch, wrong):
    """Each mistake keeps every shape, so only the picture can show it: it moves far more than the
    tolerance above (100x at least; measured 0.02 to 0.05 mean, against ~1e-6)."""
    if wrong.startswith("bigG"):
        original = keys.bigg_source

        def mistaken(key):
            s = original(key)
            return keys.Source(s.key, ({1: 2, 2: 1}.get(s.rows[0], 0), 3)) if s.rows else s
        monkeypatch.setattr(keys, "bigg_source", mistaken)
    elif wrong.startswith("UNet"):
        original = keys.unet_source
        monkeypatch.setattr(keys, "unet_source",
                            lambda key, layers, blocks: original(_swap(key, "attn1.to_out", "attn2.to_out"), layers,
                                                                 blocks))
    else:
        original = keys.single_file_sources

        def mistaken(part, keys_, layout):
            out = original(part, keys_, layout)
            if part == "text_encoder":
                out = {k: keys.Source(_swap(v.key, "layers.0.", "layers.1.")) for k, v in out.items()}
            return out
        monkeypatch.setattr(keys, "single_file_sources", mistaken)
    convert(single_file(), tmp_path)
    for case, _, want_int4 in references():
        diff = np.abs(generate(tmp_path, case, manifest_entry) - want_int4)
        print(f"{wrong}, {case['key']}: mean |diff| {diff.mean():.4f}, max {diff.max():.3f}")
        assert diff.max() > 100 * SAME_WEIGHTS


def _header_file(tmp_path, tensors: dict, data: bytes = b"", cut: int = 0, raw_header: bytes | None = None):
    header = raw_header if raw_header is not None else json.dumps(tensors).encode()
    body = struct.pack("<Q", len(header)) + header + data
    path = tmp_path / "model.safetensors"
    path.write_bytes(body[:len(body) - cut])
    return {SINGLE: path}


def _fake(names: dict) -> dict:
    """A header whose tensors are all [rows, cols] F16 (no data needed past the header for detection)."""
    out, offset = {}, 0
    for name, shape in names.items():
        size = 2 * int(np.prod(shape))
        out[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    return out, b"\0" * offset


def _refusal(files) -> str:
    with pytest.raises(CheckpointError) as caught:
        run(_found(files))
    return str(caught.value)


def test_clear_errors_for_what_cannot_be_imported(tmp_path):
    path = tmp_path / "photo.safetensors"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    assert "not a safetensors file" in _refusal({SINGLE: path})
    path.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 10)
    assert "header is not JSON" in _refusal({SINGLE: path})

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(SINGLE_FILE.read_bytes()[:-5000])
    message = _refusal({SINGLE: cut})
    assert "cut short" in message and "Was the download interrupted?" in message

    sd15, data = _fake({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
                        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
                        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)})
    assert "Stable Diffusion 1.x" in _refusal(_header_file(tmp_path, sd15, data))
    sd2, data = _fake({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)})
    assert "Stable Diffusion 2.x" in _refusal(_header_file(tmp_path, sd2, data))
    flux, data = _fake({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": (9216, 3072)})
    assert "Flux" in _refusal(_header_file(tmp_path, flux, data))
    lora, data = _fake({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)})
    assert "LoRA" in _refusal(_header_file(tmp_path, lora, data))
    vae, data = _fake({"first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3)})
    assert "only a VAE" in _refusal(_header_file(tmp_path, vae, data))
    half, data = _fake({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
                        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816)})
    assert "(UNet width 320) does not fit the model shapes" in _refusal(_header_file(tmp_path, half, data))


# Parameters of the published models (diffusers' UNet2DConditionModel and AutoencoderKL, transformers' CLIP).
SDXL_PARAMETERS = {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                   "vae": 83_653_863}


def test_a_full_size_sdxl_checkpoint_fits_the_sdxl_templates(tmp_path):
    """The full-size templates hold exactly SDXL's parameters, and a single file of SDXL's real shapes (a header over
    sparse zeros: detection reads only headers) is found as an SDXL checkpoint of that family, or as the refiner."""
    graphs = templates()["sdxl"]
    count = {part: sum(math.prod(t.dims) if t.kind == "float" else t.dims[0] * t.dims[1] * BLOCK_SIZE
                       for t in targets(part, raw).values()) for part, raw in graphs.items()}
    count["vae"] = count.pop("vae_decoder") + count.pop("vae_encoder")
    assert {p: count[p] for p in SDXL_PARAMETERS} == SDXL_PARAMETERS

    path = tmp_path / "sd_xl_base.safetensors"
    size = write_single_file(path, single_file_shapes("sdxl"))
    assert abs(size - 6_938_078_334) < 1e6  # stabilityai's sd_xl_base_1.0.safetensors, a few unused tensors aside
    found = run(_found(single_file(path)))
    assert (found.kind, found.family, found.own_vae) == ("sdxl", "sdxl", True)
    assert found.describe() == "SDXL UNet + CLIP-L + bigG + VAE, f16, 6.94 GB"
    refiner = tmp_path / "sd_xl_refiner.safetensors"
    write_single_file(refiner, single_file_shapes("sdxl", ("refiner_unet", "text_encoder_2", "vae_decoder"),
                                                  {"text_encoder_2": 0}))
    found = run(_found(single_file(refiner)))
    assert (found.kind, found.family, found.parts) == ("sdxl-refiner", "sdxl", ("refiner_unet", "text_encoder_2",
                                                                                "vae_decoder"))


def test_an_unknown_dtype_or_a_wider_sdxl_is_named(tmp_path):
    """The tiny checkpoint's header with one weight's dtype changed, or one shape changed: refused in words."""
    read = reader(SINGLE_FILE)
    header = run(read_header(read, SINGLE_FILE.stat().st_size))
    length = struct.unpack("<Q", SINGLE_FILE.read_bytes()[:8])[0]
    raw = json.loads(SINGLE_FILE.read_bytes()[8:8 + length])
    data = SINGLE_FILE.read_bytes()[8 + length:]
    name = "model.diffusion_model.input_blocks.0.0.weight"
    odd = json.loads(json.dumps(raw))
    odd[name]["dtype"] = "F8_E4M3"
    odd[name]["data_offsets"][1] = odd[name]["data_offsets"][0] + int(np.prod(odd[name]["shape"]))
    with pytest.raises(CheckpointError, match="F8_E4M3; weights must be F16, BF16 or F32"):
        convert(_header_file(tmp_path, odd, data), tmp_path / "out")
    wide = json.loads(json.dumps(raw))
    wide[name]["shape"] = [wide[name]["shape"][0] // 2, *wide[name]["shape"][1:]]
    wide[name]["data_offsets"][1] = wide[name]["data_offsets"][0] + 2 * int(np.prod(wide[name]["shape"]))
    assert "does not fit the model shapes" in _refusal(_header_file(tmp_path, wide, data))
    assert header.tensors[name].dtype == "F16"


def test_a_checkpoint_without_vae_says_sdxls_vae_will_be_used(tmp_path):
    raw_all = SINGLE_FILE.read_bytes()
    length = struct.unpack("<Q", raw_all[:8])[0]
    raw = json.loads(raw_all[8:8 + length])
    kept = {k: v for k, v in raw.items() if not k.startswith("first_stage_model.")}
    found = run(_found(_header_file(tmp_path, kept, raw_all[8 + length:])))
    assert found.parts == ("unet", "text_encoder", "text_encoder_2") and not found.own_vae
    assert "no VAE inside: SDXL's VAE will be used" in found.describe()


def test_the_files_of_a_diffusers_folder_are_told_apart_by_their_tensors():
    from app.checkpoint.detect import by_part

    async def headers(files):
        return {path.name + str(i): await read_header(reader(path), path.stat().st_size)
                for i, path in enumerate(files)}
    folder = list(diffusers_folder().values())[::-1]
    assert set(by_part(run(headers(folder)))) == {"unet", "text_encoder", "text_encoder_2", "vae"}
    assert set(by_part(run(headers([SINGLE_FILE])))) == {SINGLE}
    with pytest.raises(CheckpointError, match="two files hold the vae"):
        by_part(run(headers(folder + folder[:1])))
    with pytest.raises(CheckpointError, match="no UNet"):
        by_part(run(headers(folder[:-1])))


@pytest.mark.parametrize("precision, tolerance", [("q4", SAME_WEIGHTS), ("q4f16", FP16_MAX)])
def test_the_refiner_converted_from_safetensors_refines_as_diffusers(tmp_path, precision, tolerance):
    """tiny-sdxl-refiner.safetensors (UNet, bigG, VAE in the single-file layout) converted, then run through the
    app's refine path: the pictures diffusers' img2img pipeline makes from the same (int4) weights and base latents
    (q4f16: but for fp16 rounding)."""
    from app.pipeline.refiner import SDXLRefiner
    from app.runtime.ort import OrtRuntime
    from app.worker.device import pick_variant
    from conftest import ROOT

    refiner_bundle = ROOT / "models" / "tiny-sdxl-refiner"
    found = convert(single_file(REFINER_FILE), tmp_path, scheduler=refiner_bundle / "scheduler_config.json",
                    precision=precision)
    assert (found.kind, found.precision) == ("sdxl-refiner", precision)
    entry = pick_variant(json.loads((ROOT / "models_manifest" / "tiny-sdxl-refiner.json").read_text()), {})
    refiner = run(SDXLRefiner.load(OrtRuntime(tmp_path), entry))
    cases = json.loads((CHECKPOINT / "reference.json").read_text())["refiner_cases"]
    assert any(c["guidance_scale"] > 1 for c in cases)
    with np.load(CHECKPOINT / "reference.npz") as data:
        for case in cases:
            got = run(refiner.refine(case["prompt"], case["seed"], data[f"refiner_{case['key']}_base_latents"],
                                     case["strength"], case["steps"], guidance_scale=case["guidance_scale"],
                                     negative_prompt=case["negative_prompt"], aesthetic_score=case["aesthetic_score"],
                                     negative_aesthetic_score=case["negative_aesthetic_score"]))
            diff = np.abs(got - data[f"refiner_{case['key']}"])
            print(f"refiner {precision} {case['key']}: max |diff| {diff.max():.2e}")
            assert diff.max() < tolerance
    refiner.release()


def test_refine_takes_the_visitors_own_refiner_first_and_one_imported_for_a_family():
    from app.store.manifest import refiner_for

    models = {"tiny-sdxl-turbo": {}, "tiny-sdxl-refiner": {"refines": ["tiny-sdxl-turbo"]},
              "own-base": {"own": True, "family": "tiny-sdxl"}, "own-other": {"own": True, "family": "sdxl"},
              "own-refiner": {"own": True, "refines": ["tiny-sdxl-turbo"], "refines_family": "tiny-sdxl"}}
    assert refiner_for(models, "tiny-sdxl-turbo") == "own-refiner"
    assert refiner_for(models, "own-base") == "own-refiner"
    assert refiner_for(models, "own-other") is None
    del models["own-refiner"]
    assert refiner_for(models, "tiny-sdxl-turbo") == "tiny-sdxl-refiner"
    assert refiner_for(models, "own-base") is None
