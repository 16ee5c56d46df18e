"""Low-memory mode (app/runtime/one_at_a_time.py): at most one session alive, the same pictures."""

import numpy as np

from app.pipeline.turbo import SDXLTurbo
from app.runtime.one_at_a_time import OneAtATime
from app.runtime.ort import OrtRuntime
from conftest import BUNDLE, run


class Counting(OrtRuntime):
    """onnxruntime, counting the sessions alive at once."""

    def __init__(self, root):
        super().__init__(root)
        self.created, self.most_alive = 0, 0

    async def session(self, path, free_dimensions=None):
        s = await super().session(path, free_dimensions)
        self.created += 1
        self.most_alive = max(self.most_alive, sum(x._session is not None for x in self._sessions))
        return s


def test_one_part_at_a_time_gives_the_same_image_with_one_session_alive(manifest_entry, cpu_pipeline):
    runtime = Counting(BUNDLE)
    pipe = run(SDXLTurbo.load(OneAtATime(runtime), manifest_entry))
    image = run(pipe.generate("a photo of a cat", 7, 2, 64, 64))
    np.testing.assert_array_equal(image, run(cpu_pipeline.generate("a photo of a cat", 7, 2, 64, 64)))
    assert runtime.most_alive == 1
    assert runtime.created == 4 + 4  # each part once at load, and again when it runs (the UNet once for 2 steps)
    run(pipe.generate("a photo of a cat", 7, 2, 64, 64))
    assert runtime.created == 12 and runtime.most_alive == 1
    pipe.release()
    assert all(x._session is None for x in runtime._sessions)
