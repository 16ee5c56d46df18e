"""The pipeline on CPython reproduces diffusers' StableDiffusionXLPipeline (recorded references)."""

import numpy as np

from app.pipeline.bundle import to_uint8
from app.pipeline.turbo import SDXLTurbo
from conftest import assert_close, run


def test_every_recorded_case_matches_diffusers(cpu_pipeline, cases, reference):
    assert len(cases["cases"]) >= 6
    for case in cases["cases"]:
        image = run(cpu_pipeline.generate(case["prompt"], case["seed"], case["steps"], case["height"], case["width"]))
        assert_close(image, reference[f"{case['key']}_image"], what=case["key"])


def test_prompt_embeddings_match_diffusers(cpu_pipeline, cases, reference):
    case = cases["cases"][0]
    embeds, pooled = run(cpu_pipeline.encode_prompt(case["prompt"]))
    assert_close(embeds[0], reference[f"{case['key']}_prompt_embeds"], what="prompt embeds")
    assert_close(pooled[0], reference[f"{case['key']}_pooled"], what="pooled")


def test_seed_prompt_and_steps_each_change_the_image(cpu_pipeline):
    def make(prompt="a photo of a cat", seed=1, steps=2):
        return to_uint8(run(cpu_pipeline.generate(prompt, seed, steps, 64, 64)))

    base = make()
    assert np.array_equal(base, make())
    assert not np.array_equal(base, make(seed=2))
    assert not np.array_equal(base, make(prompt="a red bicycle"))
    assert not np.array_equal(base, make(steps=3))


def test_time_ids_follow_sdxl_layout():
    np.testing.assert_array_equal(SDXLTurbo.time_ids(64, 96), [[64, 96, 0, 0, 64, 96]])


def test_resuming_from_any_step_checkpoint_gives_the_same_image(cpu_pipeline):
    checkpoints = []

    async def keep(i, x, denoised):
        checkpoints.append((i + 1, x.copy()))

    full = run(cpu_pipeline.generate("a photo of a cat", 11, 4, 64, 64, on_step=keep))
    assert [c[0] for c in checkpoints] == [1, 2, 3, 4]
    for done, x in checkpoints[:3]:
        resumed = run(cpu_pipeline.generate("a photo of a cat", 11, 4, 64, 64, resume=(done, x)))
        assert np.array_equal(resumed, full), done
