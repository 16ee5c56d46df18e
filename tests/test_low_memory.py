"""Low-memory mode (app/runtime/one_at_a_time.py): at most one session alive, the same pictures."""

import numpy as np

from app.pipeline.turbo import SDXLTurbo
from app.runtime.one_at_a_time import OneAtATime
from app.runtime.ort import OrtRuntime
from conftest import BUNDLE, run


class Counting(OrtRuntime):
    """onnxruntime, counting the sessions alive at once (its own and its `peers'`)."""

    def __init__(self, root, peers=None):
        super().__init__(root)
        self.created, self.most_alive = 0, 0
        self.peers = peers if peers is not None else []
        self.peers.append(self)

    async def session(self, path, free_dimensions=None):
        s = await super().session(path, free_dimensions)
        self.created += 1
        self.most_alive = max(self.most_alive, sum(x._session is not None for r in self.peers for x in r._sessions))
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


def test_the_image_to_image_encoder_shares_the_one_live_session(manifest_entry, cpu_pipeline, encoder_bundle):
    """The add-on's runtime is another OneAtATime beside the model's: still one session alive across both."""
    model = Counting(BUNDLE)
    encoder = Counting(encoder_bundle, model.peers)
    pipe = run(SDXLTurbo.load(OneAtATime(model), manifest_entry))
    run(pipe.load_encoder(OneAtATime(encoder, beside=pipe.runtime)))
    picture = (np.random.default_rng(0).uniform(0, 255, (64, 64, 3))).astype(np.uint8)
    image = run(pipe.generate("a photo of a cat", 7, 2, 64, 64, image=picture, strength=0.5))
    assert model.most_alive == encoder.most_alive == 1 and encoder.created == 2  # at load, then for its run
    plain = run(SDXLTurbo.load(OrtRuntime(BUNDLE), manifest_entry))
    run(plain.load_encoder(OrtRuntime(encoder_bundle)))
    np.testing.assert_array_equal(image, run(plain.generate("a photo of a cat", 7, 2, 64, 64, image=picture,
                                                            strength=0.5)))
    pipe.release()
    assert all(x._session is None for r in (model, encoder) for x in r._sessions)
