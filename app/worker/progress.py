"""A run's progress as the page sees it: stages and steps (with the share of the progress bar),
a checkpoint after every step (the page resumes from it after a device loss), and previews."""

import asyncio
import time

import numpy as np

from ..pipeline.bundle import to_uint8
from ..pipeline.preview import approximate_rgb, half_size, preview_kind
from .messages import float32_array, image_bitmap, post

# Share of the progress bar given to each stage; denoise is split evenly between its steps.
STAGES = {"load": (0.0, 0.25), "install encoder": (0.2, 0.25), "encode prompt": (0.25, 0.28), "encode image": (0.28, 0.3), "denoise": (0.3, 0.9),
          "refine": (0.3, 0.9), "decode": (0.9, 1.0)}


def stage_fraction(stage, step, steps):
    start, end = STAGES["load" if stage.startswith("load") else stage]
    return start + (end - start) * (step / steps if stage in ("denoise", "refine") else 0.0)


class Progress:
    """The pipeline's `on_stage` and `on_step` callbacks for one job. `steps` and `pipe` are set once
    known (the refiner knows its step count only once loaded); a cancel takes effect at each report."""

    def __init__(self, job_id, queue, steps, step_stage, preview_every):
        self.job_id = job_id
        self.queue = queue
        self.steps = steps
        self.step_stage = step_stage  # "denoise" or "refine"
        self.preview_every = preview_every
        self.pipe = None
        self.first = 0  # the schedule step a run from a picture starts at: steps are counted from there
        self.preview_ms = 0.0
        self.stage = ""

    async def on_stage(self, stage, step=0):
        self.queue.check(self.job_id)
        self.stage = stage  # where a failure happened (an out-of-memory while loading is retried differently)
        step, steps = max(step - self.first, 0), self.steps - self.first
        post({"type": "progress", "id": self.job_id, "stage": stage, "step": step, "steps": steps,
              "fraction": stage_fraction(stage, step, steps)})
        await asyncio.sleep(0)

    async def on_step(self, i, x: np.ndarray, denoised: np.ndarray):
        latents = float32_array(x)  # the page keeps it to resume after a device loss
        post({"type": "checkpoint", "id": self.job_id, "step": i + 1, "latents": latents}, transfer=[latents.buffer])
        kind = preview_kind(i + 1 - self.first, self.steps - self.first, self.preview_every)
        if kind:
            t0 = time.perf_counter()
            if kind == "approx":
                rgb = approximate_rgb(denoised, self.pipe.entry)
            else:  # a real decode, at half size (a quarter of the cost): enough for a preview
                rgb = to_uint8(await self.pipe.decode(half_size(denoised)))
            bitmap = await image_bitmap(rgb)
            post({"type": "preview", "id": self.job_id, "step": i + 1, "kind": kind, "bitmap": bitmap},
                 transfer=[bitmap])
            self.preview_ms += (time.perf_counter() - t0) * 1000
        await self.on_stage(self.step_stage, i + 1)
