"""The SDXL refiner second pass on CPython reproduces diffusers' StableDiffusionXLImg2ImgPipeline."""

import json

import numpy as np
import pytest

from app.pipeline.bundle import to_uint8
from app.pipeline.refiner import SDXLRefiner
from app.runtime.ort import OrtRuntime
from app.pipeline.sampling import sample_euler
from app.pipeline.scheduler import EulerConfig, img2img_schedule, make_euler_schedule, make_schedule, strength_start
from app.pipeline.seeds import refiner_noise, seeded_noise
from conftest import ROOT, assert_close, run

BUNDLE = ROOT / "models" / "tiny-sdxl-refiner"
REFERENCE = BUNDLE / "reference"


@pytest.fixture(scope="module")
def refiner_entry():
    from app.worker.device import pick_variant

    return pick_variant(json.loads((ROOT / "models_manifest" / "tiny-sdxl-refiner.json").read_text()), {})


@pytest.fixture(scope="module")
def refiner_cases():
    return json.loads((REFERENCE / "cases.json").read_text())["cases"]


@pytest.fixture(scope="module")
def refiner_reference():
    with np.load(REFERENCE / "reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def refiner(refiner_entry):
    r = run(SDXLRefiner.load(OrtRuntime(BUNDLE), refiner_entry))
    yield r
    r.release()


def refine(refiner, case, base_latents, **overrides):
    kwargs = dict(
        prompt=case["prompt"],
        seed=case["seed"],
        base_latents=base_latents,
        strength=case["strength"],
        steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        negative_prompt=case["negative_prompt"],
        aesthetic_score=case["aesthetic_score"],
        negative_aesthetic_score=case["negative_aesthetic_score"],
    )
    kwargs.update(overrides)
    return run(refiner.refine(**kwargs))


def test_cases_cover_strengths_steps_sizes_and_guidance(refiner_cases):
    assert {c["strength"] for c in refiner_cases} >= {0.3, 0.5}
    assert {c["steps"] for c in refiner_cases} >= {4, 10}
    assert {(c["height"], c["width"]) for c in refiner_cases} >= {(64, 64), (64, 96)}
    assert {c["guidance_scale"] for c in refiner_cases} >= {0.0, 5.0}


def test_schedule_matches_diffusers_for_every_recorded_case(refiner, refiner_cases, refiner_reference):
    config = EulerConfig.from_dict(json.loads((BUNDLE / "scheduler_config.json").read_text()))
    assert config.timestep_spacing == "leading" and config.steps_offset == 1
    for case in refiner_cases:
        key = case["key"]
        full = make_euler_schedule(case["steps"], config)
        np.testing.assert_array_equal(full.timesteps, refiner_reference[f"{key}_timesteps"])
        # numpy float math against diffusers': rtol 1e-5 is ~80 float32 steps of each sigma
        np.testing.assert_allclose(full.sigmas, refiner_reference[f"{key}_sigmas"], rtol=1e-5, atol=1e-5)
        schedule, start = img2img_schedule(case["steps"], case["strength"], config)
        assert start == case["start"] and len(schedule.timesteps) == case["refiner_steps"]
        np.testing.assert_array_equal(schedule.timesteps, refiner_reference[f"{key}_unet_timesteps"])
        np.testing.assert_allclose(schedule.sigmas, refiner_reference[f"{key}_sigmas"][start:], rtol=1e-5, atol=1e-5)
        assert refiner.denoise_steps(case["steps"], case["strength"]) == case["refiner_steps"]


def test_leading_spacing_starts_after_the_offset():
    config = EulerConfig(timestep_spacing="leading", steps_offset=1)
    np.testing.assert_array_equal(make_euler_schedule(4, config).timesteps, [751, 501, 251, 1])
    # Trailing spacing gives the turbo schedule.
    trailing = make_euler_schedule(3, EulerConfig(timestep_spacing="trailing"))
    np.testing.assert_array_equal(trailing.timesteps, make_schedule(3).timesteps)
    np.testing.assert_array_equal(trailing.sigmas, make_schedule(3).sigmas)


def test_strength_picks_the_last_steps_like_diffusers():
    assert strength_start(4, 0.3) == 3  # int(1.2) = 1 step
    assert strength_start(10, 0.3) == 7
    assert strength_start(4, 1.0) == 0
    with pytest.raises(ValueError):
        strength_start(4, 0.2)  # int(0.8) = 0 steps left
    with pytest.raises(ValueError):
        strength_start(4, 1.5)


def test_config_refuses_what_is_not_implemented():
    with pytest.raises(ValueError):
        EulerConfig.from_dict({"_class_name": "EulerAncestralDiscreteScheduler"})
    with pytest.raises(ValueError):
        EulerConfig.from_dict({"use_karras_sigmas": True})
    with pytest.raises(ValueError):
        EulerConfig.from_dict({"prediction_type": "v_prediction"})


def test_every_recorded_case_matches_diffusers(refiner, refiner_cases, refiner_reference):
    assert len(refiner_cases) >= 6
    for case in refiner_cases:
        key = case["key"]
        image = refine(refiner, case, refiner_reference[f"{key}_base_latents"])
        assert image.shape == (case["height"], case["width"], 3)
        assert_close(image, refiner_reference[f"{key}_image"], what=key)


def test_prompt_embeddings_match_diffusers(refiner, refiner_cases, refiner_reference):
    case = refiner_cases[0]
    embeds, pooled = run(refiner.encode_prompt(case["prompt"]))
    assert_close(embeds[0], refiner_reference[f"{case['key']}_prompt_embeds"], what="prompt embeds")
    assert_close(pooled[0], refiner_reference[f"{case['key']}_pooled"], what="pooled")
    embeds, pooled = run(refiner.encode_prompt(""))
    assert_close(embeds[0], refiner_reference[f"{case['key']}_negative_prompt_embeds"], what="negative prompt embeds")
    assert_close(pooled[0], refiner_reference[f"{case['key']}_negative_pooled"], what="negative pooled")


def test_time_ids_carry_the_aesthetic_score(refiner_cases, refiner_reference):
    np.testing.assert_array_equal(SDXLRefiner.time_ids(64, 96, 6.0), [[64, 96, 0, 0, 6.0]])
    for case in refiner_cases:
        h, w = case["height"], case["width"]
        rows = [SDXLRefiner.time_ids(h, w, case["aesthetic_score"])]
        if case["guidance_scale"] > 1:  # diffusers batches the negative condition first
            rows.insert(0, SDXLRefiner.time_ids(h, w, case["negative_aesthetic_score"]))
        np.testing.assert_array_equal(np.concatenate(rows), refiner_reference[f"{case['key']}_time_ids"])


def test_base_latents_are_the_base_pipelines_final_latents(cpu_pipeline, refiner_cases, refiner_reference):
    case = refiner_cases[0]
    last = []

    async def keep(i, x, denoised):
        last[:] = [x.copy()]

    run(cpu_pipeline.generate(case["prompt"], case["seed"], case["base_steps"], case["height"], case["width"], on_step=keep))
    assert_close(last[0], refiner_reference[f"{case['key']}_base_latents"], what="base latents")


def test_strength_changes_the_result(refiner, refiner_cases, refiner_reference):
    case = next(c for c in refiner_cases if c["steps"] == 10 and c["guidance_scale"] == 0)
    latents = refiner_reference[f"{case['key']}_base_latents"]
    weak = to_uint8(refine(refiner, case, latents, strength=0.3))
    strong = to_uint8(refine(refiner, case, latents, strength=0.5))
    assert not np.array_equal(weak, strong)
    assert np.array_equal(weak, to_uint8(refine(refiner, case, latents, strength=0.3)))


def test_the_refined_image_differs_from_the_base_image(refiner, refiner_cases, refiner_reference):
    for case in refiner_cases:
        latents = refiner_reference[f"{case['key']}_base_latents"]
        base_image = run(refiner.decode(latents))
        refined = refiner_reference[f"{case['key']}_image"]
        assert np.abs(refined - base_image).max() > 1e-3, case["key"]
        assert not np.array_equal(to_uint8(refined), to_uint8(base_image)), case["key"]


def test_seed_prompt_and_aesthetic_score_each_change_the_result(refiner, refiner_cases, refiner_reference):
    case = next(c for c in refiner_cases if c["guidance_scale"] > 1)
    latents = refiner_reference[f"{case['key']}_base_latents"]
    image = to_uint8(refine(refiner, case, latents))
    assert not np.array_equal(image, to_uint8(refine(refiner, case, latents, seed=case["seed"] + 1)))
    assert not np.array_equal(image, to_uint8(refine(refiner, case, latents, prompt="a red bicycle")))
    assert not np.array_equal(image, to_uint8(refine(refiner, case, latents, aesthetic_score=2.0)))
    assert not np.array_equal(image, to_uint8(refine(refiner, case, latents, guidance_scale=0.0)))


def test_resuming_from_any_step_checkpoint_gives_the_same_image(refiner, refiner_cases, refiner_reference):
    case = next(c for c in refiner_cases if c["refiner_steps"] >= 3)
    latents = refiner_reference[f"{case['key']}_base_latents"]
    checkpoints = []

    async def keep(i, x, denoised):
        checkpoints.append((i + 1, x.copy()))

    full = refine(refiner, case, latents, on_step=keep)
    assert [c[0] for c in checkpoints] == list(range(1, case["refiner_steps"] + 1))
    for done, x in checkpoints[:-1]:
        assert np.array_equal(refine(refiner, case, latents, resume=(done, x)), full), done


def test_refiner_noise_is_a_stream_of_its_own():
    shape = (1, 4, 8, 12)
    noise = refiner_noise(5, shape)
    assert noise.dtype == np.float32 and noise.shape == shape
    assert np.array_equal(noise, refiner_noise(5, shape))
    expected = np.random.Generator(np.random.PCG64([5, 1])).standard_normal(shape, dtype=np.float32)
    assert np.array_equal(noise, expected)
    latents, noises = seeded_noise(5, shape, 4)
    assert not any(np.array_equal(noise, n) for n in [latents, *noises])


def test_euler_with_a_perfect_denoiser_lands_on_it():
    target = np.full((1, 4, 2, 2), 0.5, np.float32)
    schedule, _ = img2img_schedule(10, 0.5, EulerConfig(timestep_spacing="leading", steps_offset=1))

    async def model(x, i):
        return target

    seen = []

    async def callback(i, x, denoised):
        seen.append(i)

    x0 = target + np.random.default_rng(0).standard_normal(target.shape).astype(np.float32) * schedule.sigmas[0]
    out = run(sample_euler(model, x0, schedule.sigmas, callback))
    assert_close(out, target, rel=1e-5, what="last step")  # float32 rounding only
    assert out.dtype == np.float32 and seen == [0, 1, 2, 3, 4]


def test_wrong_base_latents_are_refused(refiner):
    with pytest.raises(ValueError):
        run(refiner.refine("a cat", 0, np.zeros((1, 3, 8, 8), np.float32), 0.5, 4))


def test_manifest_lists_the_bundle(refiner_entry):
    from app.worker.device import pick_variant
    from app.store.manifest import bundle_sha256

    assert refiner_entry["id"] == "tiny-sdxl-refiner" and refiner_entry["pipeline"] == "sdxl-refiner"
    assert refiner_entry["refines"] == ["tiny-sdxl-turbo"]
    assert all(f["url"] == "/models/tiny-sdxl-refiner/" + f["path"] for f in refiner_entry["files"])
    base = pick_variant(json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo.json").read_text()), {})
    assert refiner_entry["resolutions"] == base["resolutions"]
    paths = {f["path"] for f in refiner_entry["files"]}
    assert paths == {
        "scheduler_config.json", "text_encoder_2/model.onnx", "tokenizer_2/tokenizer.json",
        "tokenizer_2/tokenizer_config.json", "unet/model.onnx", "vae_decoder/model.onnx",
    }
    import hashlib

    for f in refiner_entry["files"]:
        data = (BUNDLE / f["path"]).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
    # the text encoder, tokenizer and VAE are the base model's own files
    shared = {f["path"]: f["sha256"] for f in base["files"]}
    for f in refiner_entry["files"]:
        if f["path"].startswith(("text_encoder_2/", "tokenizer_2/", "vae_decoder/")):
            assert shared[f["path"]] == f["sha256"], f["path"]
    assert len(bundle_sha256(refiner_entry)) == 64
