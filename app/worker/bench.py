"""A few-second device bench: median time of one UNet step at the model's smallest size.

Runs on whatever runtime the pipeline was loaded with, after one untimed warm-up step (shader
compilation and buffer allocation would otherwise dominate).
"""

import statistics
import time

from .device import assign_tier
from ..pipeline.scheduler import make_schedule


async def bench(pipe, runs: int = 3, on_run=None) -> dict:
    """`on_run(k, n)`, when given, is awaited after each of the n runs (the page shows it as progress)."""
    height, width = min((tuple(r) for r in pipe.entry["resolutions"]), key=lambda r: r[0] * r[1])
    embeds, pooled = await pipe.encode_prompt("benchmark")
    latents, noises = pipe.prepare_latents(0, height, width, 1)
    schedule = make_schedule(1, pipe.schedule_config)
    cond = (embeds, pooled, pipe.time_ids(height, width))
    latents = latents * schedule.init_noise_sigma
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        await pipe.denoise(latents, noises, cond, schedule)
        if i:  # the first run is the warm-up
            times.append((time.perf_counter() - t0) * 1000)
        if on_run:
            await on_run(i + 1, runs + 1)
    step_ms = statistics.median(times)
    return {"step_ms": round(step_ms, 1), "runs_ms": [round(t, 1) for t in times], "tier": assign_tier(step_ms),
            "size": f"{height}x{width}", "model": pipe.entry["id"]}
