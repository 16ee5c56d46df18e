"""Image to image and guidance on CPython: the app's pipeline against diffusers' references on the tiny model
(models/make_tiny_vae_encoder.py), same weights, same noise; and the encoder add-on's install-time cut."""

import json

import numpy as np
import pytest

from app.onnx.mean import MEAN, mean_output
from app.pipeline.bundle import ENCODER_PATH
from app.pipeline.turbo import SDXLTurbo
from app.runtime.ort import OrtRuntime
from conftest import BUNDLE, REFERENCE, assert_close, run

from conftest import ENCODER_DOWNLOAD as DOWNLOADED


@pytest.fixture(scope="module")
def img2img_reference():
    with np.load(REFERENCE / "img2img.npz") as data:
        return json.loads((REFERENCE / "img2img.json").read_text())["cases"], dict(data)


@pytest.fixture(scope="module")
def pipe(manifest_entry, encoder_bundle):
    async def load():
        p = await SDXLTurbo.load(OrtRuntime(BUNDLE), manifest_entry)
        await p.load_encoder(OrtRuntime(encoder_bundle))
        return p
    return run(load())


def by_kind(cases, kind):
    return [c for c in cases if c["kind"] == kind]


def test_the_download_draws_noise_and_the_cut_gives_the_mean(img2img_reference, encoder_bundle):
    """The export (as Optimum's of late 2023) samples inside the graph: two runs differ. The cut one is
    deterministic, names its output latent_mean, and is diffusers' latent_dist.mode()."""
    import onnxruntime as ort

    cases, ref = img2img_reference
    case = cases[0]
    x = (ref[f"{case['key']}_source"].astype(np.float32) / 255 * 2 - 1).transpose(2, 0, 1)[None]
    sampled = ort.InferenceSession(str(DOWNLOADED), providers=["CPUExecutionProvider"])
    a, b = (sampled.run(None, {"sample": x})[0] for _ in range(2))
    assert np.abs(a - b).max() > 1e-2
    cut = ort.InferenceSession(str(encoder_bundle / ENCODER_PATH), providers=["CPUExecutionProvider"])
    assert [o.name for o in cut.get_outputs()] == [MEAN]
    assert not any(n.op_type.startswith("RandomNormal") for n in _nodes(encoder_bundle / ENCODER_PATH))
    mean = cut.run(None, {"sample": x})[0] * np.float32(0.13025)
    assert_close(mean[0], ref[f"{case['key']}_init_latents"], what="encoder mean")
    assert mean_output(cut_bytes := (encoder_bundle / ENCODER_PATH).read_bytes()) == (cut_bytes, False)


def _nodes(path):
    """Op types of a model's nodes, read with the app's own wire reader (no onnx package needed)."""
    from types import SimpleNamespace

    from app.onnx.mean import _node
    from app.onnx.wire import GRAPH_NODE, MODEL_GRAPH, messages

    buf = path.read_bytes()
    _, g, end = next(messages(buf, 0, len(buf), MODEL_GRAPH))
    graph = buf[g:end]
    return [SimpleNamespace(op_type=_node(graph[v:s])[0]) for _, v, s in messages(graph, 0, len(graph), GRAPH_NODE)]


def test_a_graph_without_a_sampled_output_is_refused():
    with pytest.raises(ValueError, match="latent_sample"):
        from app.onnx.mean import _cut_graph
        _cut_graph(b"")


@pytest.mark.parametrize("index", range(4))
def test_img2img_matches_diffusers(pipe, img2img_reference, index):
    """StableDiffusionXLImg2ImgPipeline, SDXL-Turbo configuration: strengths 0.3, 0.5 (64x96) and 1.0, and 0.5 with
    guidance 2.5 and a negative prompt."""
    cases, ref = img2img_reference
    c = by_kind(cases, "img2img")[index]
    image = run(pipe.generate(c["prompt"], c["seed"], c["steps"], c["height"], c["width"],
                              image=ref[f"{c['key']}_source"], strength=c["strength"], guidance_scale=c["guidance"],
                              negative_prompt=c["negative"] or ""))
    assert_close(image, ref[f"{c['key']}_image"], what=c["key"])


@pytest.mark.parametrize("index", range(3))
def test_guidance_matches_diffusers(pipe, img2img_reference, index):
    """StableDiffusionXLPipeline at guidance 1 (the negative prompt is ignored) and 2.5, with a negative prompt and
    with none (zeros, as diffusers' force_zeros_for_empty_prompt)."""
    cases, ref = img2img_reference
    c = by_kind(cases, "text2img")[index]
    image = run(pipe.generate(c["prompt"], c["seed"], c["steps"], c["height"], c["width"],
                              guidance_scale=c["guidance"], negative_prompt=c["negative"] or ""))
    assert_close(image, ref[f"{c['key']}_image"], what=c["key"])


def test_guidance_changes_the_picture_and_one_pass_per_step_of_batch_two(pipe, img2img_reference):
    """Guidance 2.5 is not guidance 1; the unconditional pass rides in the same UNet call (batch 2)."""
    calls = []
    unet = pipe.unet
    original = unet.run

    async def counting(feeds, names):
        calls.append(feeds["sample"].shape[0])
        return await original(feeds, names)

    unet.run = counting
    try:
        guided = run(pipe.generate("a photo of a cat", 42, 2, 64, 64, guidance_scale=2.5, negative_prompt="blurry"))
    finally:
        unet.run = original
    plain = run(pipe.generate("a photo of a cat", 42, 2, 64, 64))
    assert calls == [2, 2]
    assert np.abs(guided - plain).max() > 0.05


def test_a_fixed_batch_of_one_runs_guidance_as_two_passes_with_the_same_result(manifest_entry, encoder_bundle,
                                                                                img2img_reference):
    """webnn's exports fix batch_size at 1: guidance then takes two UNet calls, and the picture is the same."""
    cases, ref = img2img_reference
    c = by_kind(cases, "text2img")[1]
    entry = dict(manifest_entry, free_dimensions={"batch_size": 1})
    one = run(SDXLTurbo.load(OrtRuntime(BUNDLE), entry))
    image = run(one.generate(c["prompt"], c["seed"], c["steps"], c["height"], c["width"], guidance_scale=c["guidance"],
                             negative_prompt=c["negative"]))
    assert_close(image, ref[f"{c['key']}_image"], what="two passes")


def test_strength_times_steps_below_one_is_refused(pipe, img2img_reference):
    _, ref = img2img_reference
    source = ref["tiled_source"][:64, :64]
    with pytest.raises(ValueError, match="leaves no denoising step"):
        run(pipe.generate("a cat", 0, 2, 64, 64, image=source, strength=0.3))


def test_same_seed_same_picture_and_resume_from_a_checkpoint(pipe, img2img_reference):
    _, ref = img2img_reference
    source = ref["tiled_source"][:64, :64]
    seen = []

    async def on_step(i, x, denoised):
        seen.append((i, x.copy()))

    first = run(pipe.generate("a cat", 5, 4, 64, 64, image=source, strength=0.5, on_step=on_step))
    again = run(pipe.generate("a cat", 5, 4, 64, 64, image=source, strength=0.5))
    assert np.array_equal(first, again)
    assert [i for i, _ in seen] == [2, 3]  # strength 0.5 of 4 steps: the schedule's last two
    resumed = run(pipe.generate("a cat", 5, 4, 64, 64, image=source, strength=0.5, resume=(3, seen[0][1])))
    assert np.array_equal(first, resumed)
    other = run(pipe.generate("a cat", 6, 4, 64, 64, image=source, strength=0.5))
    assert np.abs(first - other).max() > 0.01


def test_tiled_encode_matches_diffusers_tiled_encode(pipe, img2img_reference):
    """Against AutoencoderKL's own tiled encode (64-pixel tiles, overlap 0.25) within the 1e-4 standard: the same
    tiles and cross-fade."""
    _, ref = img2img_reference
    tiled = run(pipe.encode(ref["tiled_source"], tile=64))
    assert_close(tiled[0], ref["tiled_latents"], what="tiled encode")


async def pooling(x):
    """An encoder whose every latent depends on its own 8x8 pixels only."""
    h, w = x.shape[2] // 8, x.shape[3] // 8
    return np.tanh(x[:, :, :h * 8, :w * 8].reshape(1, 3, h, 8, w, 8).mean(axis=(3, 5)))[:, [0, 1, 2, 0]]


@pytest.mark.parametrize("shape, tile", [((128, 128), 32), ((96, 160), 64), ((72, 56), 32)])
def test_tiles_of_a_local_encoder_join_without_a_seam(shape, tile):
    from app.pipeline.bundle import tiled

    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, *shape)).astype(np.float32)
    whole, tiles = run(pooling(x)), run(tiled(pooling, x, tile, tile // 8))
    assert tiles.shape == whole.shape
    np.testing.assert_allclose(tiles, whole, atol=1e-6)


def test_tiled_encode_stays_near_the_whole_encode(pipe, img2img_reference):
    """Tiles cannot equal the whole pass: the encoder's mid-block attends over the whole picture and its
    convolutions and GroupNorms see only the tile. The tiny encoder's random weights make it far more
    sensitive to that context than a trained one: 64-pixel tiles of a 128x96 picture measured a mean |diff|
    of 0.087 x the latents' scale (max 0.92 x, where a tile's edge meets GroupNorm statistics of its own).
    So this bound only says that tiling stays near the whole pass; how the tiles join is checked exactly by
    the two tests above (a local encoder; diffusers' own tiled encode)."""
    _, ref = img2img_reference
    whole = run(pipe.encode(ref["tiled_source"]))[0]
    tiled = run(pipe.encode(ref["tiled_source"], tile=64))[0]
    assert_close(whole, ref["tiled_whole_latents"], what="whole encode")
    scale = float(np.abs(whole).max())
    diff = np.abs(tiled - whole)
    print(f"tiled (64 px) vs whole encode, 128x96: max {diff.max() / scale:.3f} x scale, mean {diff.mean() / scale:.4f} x")
    assert diff.mean() <= 0.11 * scale and diff.max() <= 1.1 * scale
    assert np.array_equal(run(pipe.encode(ref["tiled_source"], tile=128))[0], whole)  # one tile: the whole pass
