"""The pipeline reads the real bundles' interfaces from their sessions: the tiny bundle in the layout of
webnn/sdxl-turbo q4f16 (models/make_tiny_sdxl_turbo_q4f16.py: file names under onnx/, MatMulNBits int4
weights, fp16 in and out, int32 ids for the first encoder and int64 for the second, an fp16 timestep of
shape [1], only the penultimate hidden state exported) runs through the same code as the fp32 one."""

import hashlib
import json

import numpy as np
import pytest

from app.pipeline.bundle import conditioning_output
from app.pipeline.turbo import SDXLTurbo
from app.runtime.ort import OrtRuntime
from app.store.manifest import model_problems
from conftest import ROOT, assert_close, run

Q4F16 = ROOT / "models" / "tiny-sdxl-turbo-q4f16"
PARTS = {"text_encoder": "onnx/text_encoder_model_q4f16.onnx", "text_encoder_2": "onnx/text_encoder_2_model_q4f16.onnx",
         "unet": "onnx/unet_model_q4f16.onnx", "vae_decoder": "onnx/vae_decoder_model_q4f16.onnx"}
CONDITIONING = {"text_encoder": "hidden_states.1", "text_encoder_2": "hidden_states.1"}
# fp16 activations: the app and the reference loop round the same fp32 latents to fp16 at the same
# points, and differ only in the order of their fp32 arithmetic (seen: up to 2.4e-4 after 4 steps, 0 for
# 1-2). An fp16 step is ~1e-3 of a value; 5e-3 leaves room for a few of them, and a wiring mistake
# (wrong hidden state, ids, timestep, scaling factor) moves the image by 1e-2 to 1e-1.
FP16_FIDELITY = 5e-3
FREE_DIMENSIONS = {"batch_size": 1, "sequence_length": 77}  # as the real entry says; the fixture has no sequence_length


@pytest.fixture(scope="module")
def q4f16_entry(manifest_entry):
    return dict(manifest_entry, parts=PARTS, conditioning_outputs=CONDITIONING)


@pytest.fixture(scope="module")
def q4f16_pipeline(q4f16_entry):
    return run(SDXLTurbo.load(OrtRuntime(Q4F16), q4f16_entry))


def test_the_fixture_has_the_real_q4f16_contract(q4f16_pipeline):
    pipe = q4f16_pipeline
    assert pipe.text_encoder.inputs["input_ids"].dtype == np.int32
    assert pipe.text_encoder.output_names == ["hidden_states.1"]  # the only hidden state, as in the real file
    assert pipe.text_encoder_2.inputs["input_ids"].dtype == np.int64
    assert sorted(pipe.text_encoder_2.output_names) == ["hidden_states.1", "text_embeds"]
    assert pipe.unet.inputs["timestep"].dtype == np.float16 and pipe.unet.inputs["timestep"].rank == 1
    assert {k: v.dtype for k, v in pipe.unet.inputs.items()} == dict.fromkeys(
        ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"], np.float16)
    assert pipe.vae_decoder.inputs["latent_sample"].dtype == np.float16


def test_named_free_dimensions_are_fixed_as_the_manifest_says(q4f16_entry, q4f16_pipeline):
    """"free_dimensions" reach every session (names a graph lacks are ignored) and change no pixel."""
    fixed = run(SDXLTurbo.load(OrtRuntime(Q4F16), dict(q4f16_entry, free_dimensions=FREE_DIMENSIONS)))
    for part in ("text_encoder", "text_encoder_2", "unet", "vae_decoder"):
        assert all(i.shape[0] == 1 for i in getattr(fixed, part)._session.get_inputs() if len(i.shape) > 1), part
        assert getattr(q4f16_pipeline, part)._session.get_inputs()[0].shape[0] == "batch_size"
    assert fixed.unet._session.get_inputs()[0].shape == [1, 4, "height", "width"]  # resolutions stay free
    expected = run(q4f16_pipeline.generate("a photo of a cat", 3, 2, 64, 64))
    assert_close(run(fixed.generate("a photo of a cat", 3, 2, 64, 64)), expected, what="with free dimensions fixed")


def test_q4f16_images_match_an_independent_loop_over_the_same_files(q4f16_pipeline):
    cases = json.loads((Q4F16 / "reference" / "cases.json").read_text())["cases"]
    with np.load(Q4F16 / "reference" / "reference.npz") as reference:
        for c in cases:
            image = run(q4f16_pipeline.generate(c["prompt"], c["seed"], c["steps"], c["height"], c["width"]))
            assert image.dtype == np.float32 and np.isfinite(image).all()
            assert_close(image, reference[f"{c['key']}_image"], rel=FP16_FIDELITY, what=c["key"])


def test_q4f16_and_fp32_bundles_draw_the_same_picture(q4f16_pipeline, cpu_pipeline):
    """int4 weights move pixels, not the picture: the two layouts of one model agree on average."""
    q4 = run(q4f16_pipeline.generate("a photo of a cat", 5, 2, 64, 64))
    fp32 = run(cpu_pipeline.generate("a photo of a cat", 5, 2, 64, 64))
    other = run(cpu_pipeline.generate("a photo of a cat", 6, 2, 64, 64))
    assert np.abs(q4 - fp32).mean() < 0.5 * np.abs(other - fp32).mean()


def test_the_conditioning_output_is_declared_or_read_from_the_layer_count(manifest_entry):
    every_layer = ["last_hidden_state", "pooler_output"] + [f"hidden_states.{i}" for i in range(13)]
    assert conditioning_output({}, "text_encoder", every_layer) == "hidden_states.11"  # 12 layers
    assert conditioning_output({"conditioning_outputs": {"text_encoder": "hidden_states.11"}},
                               "text_encoder", ["hidden_states.11"]) == "hidden_states.11"
    with pytest.raises(ValueError, match="conditioning_outputs"):
        conditioning_output({}, "text_encoder", ["hidden_states.11"])  # the real q4f16 file: not guessed
    with pytest.raises(ValueError, match="conditioning_outputs"):
        conditioning_output({}, "text_encoder", ["hidden_states.0", "hidden_states.5", "hidden_states.7"])
    with pytest.raises(ValueError, match="no output"):
        conditioning_output({"conditioning_outputs": {"text_encoder": "hidden_states.30"}}, "text_encoder",
                            ["hidden_states.11"])


def test_without_the_declaration_the_q4f16_bundle_is_refused_not_misread(manifest_entry):
    pipe = run(SDXLTurbo.load(OrtRuntime(Q4F16), dict(manifest_entry, parts=PARTS)))
    with pytest.raises(ValueError, match="conditioning_outputs"):
        run(pipe.encode_prompt("a photo of a cat"))


def q4f16_files():
    """The q4f16 fixture's files (its references aside) as manifest file entries, served under /models/."""
    return [{"path": rel, "url": f"/models/{Q4F16.name}/{rel}", "size": p.stat().st_size,
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(Q4F16.rglob("*")) if p.is_file() and "reference" not in p.parts
            for rel in [p.relative_to(Q4F16).as_posix()]]


def test_the_manifest_can_describe_the_q4f16_layout(manifest_entry):
    files = q4f16_files()
    entry = json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo.json").read_text())
    entry["variants"].insert(0, {"id": "q4f16", "precision": "q4f16", "requires": {"webgpu": True, "shader_f16": True},
                                 "gpu_memory_bytes": 100_000_000, "disk_bytes": sum(f["size"] for f in files),
                                 "parts": PARTS, "conditioning_outputs": CONDITIONING, "files": files})
    assert model_problems(entry) == []
