import numpy as np
import pytest

from app.pipeline.sampling import sample_euler_ancestral
from app.pipeline.scheduler import make_schedule
from conftest import assert_close, run


def test_schedule_matches_diffusers_for_every_recorded_case(cases, reference):
    for case in cases["cases"]:
        s = make_schedule(case["steps"])
        np.testing.assert_allclose(s.timesteps, reference[f"{case['key']}_timesteps"], rtol=0, atol=1e-4)
        # numpy float math against diffusers': rtol 1e-5 is ~80 float32 steps of each sigma
        np.testing.assert_allclose(s.sigmas, reference[f"{case['key']}_sigmas"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_trailing_spacing_starts_at_the_last_training_step(steps):
    s = make_schedule(steps)
    assert s.timesteps[0] == 999
    assert len(s.sigmas) == steps + 1 and s.sigmas[-1] == 0
    assert np.all(np.diff(s.sigmas) < 0)


def test_euler_ancestral_with_a_perfect_denoiser_lands_on_it():
    """If the model always predicts the clean image, the last step (sigma -> 0) returns it exactly."""
    target = np.full((1, 4, 2, 2), 0.5, np.float32)
    s = make_schedule(4)

    async def model(x, i):
        return target

    seen = []

    async def callback(i, x, denoised):
        seen.append(i)

    x0 = np.random.default_rng(0).standard_normal(target.shape).astype(np.float32) * s.sigmas[0]
    noises = [np.ones_like(target)] * 4
    out = run(sample_euler_ancestral(model, x0, s.sigmas, noises, callback))
    assert_close(out, target, rel=1e-5, what="last step")  # float32 rounding only
    assert seen == [0, 1, 2, 3]
