"""What SDXL-Turbo and the SDXL refiner share: loading a bundle's tokenizers, sessions and scheduler
config through a runtime, the penultimate hidden state SDXL conditions on, the latent shape and the
VAE decode."""

import re

import numpy as np

from .tokenizer import load_clip_tokenizer

LATENT_CHANNELS = 4
DECODE_TILE = 512  # pixels: a tiled decode's tile, unless the manifest entry gives "decode_tile"


def conditioning_output(entry, part, output_names):
    """The output of text encoder `part` that SDXL conditions on: the penultimate layer's hidden state.

    Declared by the manifest ("conditioning_outputs", e.g. {"text_encoder": "hidden_states.11"}) for
    exports that keep only some hidden states; otherwise read from the model: an export of every
    layer's hidden state (hidden_states.0 = the embeddings .. hidden_states.L) has L layers, and the
    penultimate one is hidden_states.{L-1}. Never guessed from a partial list."""
    declared = entry.get("conditioning_outputs", {}).get(part)
    if declared is not None:
        if declared not in output_names:
            raise ValueError(f"{part} has no output {declared!r} (it exports {', '.join(output_names)})")
        return declared
    layers = sorted(int(m.group(1)) for name in output_names if (m := re.fullmatch(r"hidden_states\.(\d+)", name)))
    if len(layers) < 2 or layers != list(range(len(layers))):
        raise ValueError(f"{part} does not export every layer's hidden state; the manifest must name the "
                         "penultimate one in \"conditioning_outputs\"")
    return f"hidden_states.{layers[-1] - 1}"


async def report(on_stage, name):
    """Tell the caller a stage begins (progress, and the place where a cancel takes effect)."""
    if on_stage is not None:
        await on_stage(name)


class SDXLBundle:
    """A loaded bundle: its tokenizers (TOKENIZERS folders), one session per ONNX part (PARTS, as
    attributes of the same names; the file is `{part}/model.onnx` unless the manifest's "parts" names
    another; named free dimensions fixed as its "free_dimensions" says) and its scheduler config (read
    with SCHEDULE_CONFIG)."""

    TOKENIZERS: tuple = ()
    PARTS: tuple = ()
    SCHEDULE_CONFIG = None

    def __init__(self, runtime, entry, tokenizers, sessions, schedule_config):
        self.runtime = runtime
        self.entry = entry
        self.tokenizers = tokenizers
        for part, session in zip(self.PARTS, sessions, strict=True):
            setattr(self, part, session)
        self.schedule_config = schedule_config
        self.vae_scaling_factor = float(entry.get("vae_scaling_factor", 0.13025))
        self.vae_scale_factor = int(entry.get("vae_scale_factor", 8))

    @classmethod
    async def load(cls, runtime, entry, on_stage=None):
        tokenizers = []
        for folder in cls.TOKENIZERS:
            await report(on_stage, f"load {folder}")
            tokenizers.append(await load_clip_tokenizer(runtime, folder))
        sessions = []
        for part in cls.PARTS:
            await report(on_stage, f"load {part}")
            sessions.append(await runtime.session(entry.get("parts", {}).get(part, f"{part}/model.onnx"),
                                                  entry.get("free_dimensions")))
        schedule_config = cls.SCHEDULE_CONFIG.from_dict(await runtime.read_json("scheduler_config.json"))
        return cls(runtime, entry, tokenizers, sessions, schedule_config)

    def release(self):
        self.runtime.release()

    def latent_shape(self, height, width):
        return (1, LATENT_CHANNELS, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def unet_conditioning(self, prompt_embeds, pooled, time_ids):
        """The UNet's conditioning feeds: the same for every step of a run."""
        inputs = self.unet.inputs
        return {
            "encoder_hidden_states": inputs["encoder_hidden_states"].coerce(prompt_embeds),
            "text_embeds": inputs["text_embeds"].coerce(pooled),
            "time_ids": inputs["time_ids"].coerce(time_ids),
        }

    async def predict_noise(self, conditioning, sample, timestep):
        """One UNet call: the noise it predicts in `sample` (already scaled) at `timestep`."""
        inputs = self.unet.inputs
        feeds = dict(conditioning, sample=inputs["sample"].coerce(sample), timestep=inputs["timestep"].coerce(timestep))
        return (await self.unet.run(feeds, ["out_sample"]))["out_sample"]

    async def decode(self, latents, tile=None):
        """Float image [H, W, 3] in [0, 1]; decoded in overlapping tiles of `tile` pixels when the image is
        larger than one (memory then peaks at one tile's activations, not the whole image's)."""
        scaled = latents / np.float32(self.vae_scaling_factor)
        if tile and max(scaled.shape[2:]) * self.vae_scale_factor > tile:
            sample = await tiled(self._decode, scaled, tile // self.vae_scale_factor, self.vae_scale_factor)
        else:
            sample = await self._decode(scaled)
        return np.clip(sample[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)

    async def _decode(self, scaled):
        feed = self.vae_decoder.inputs["latent_sample"].coerce(scaled)
        return (await self.vae_decoder.run({"latent_sample": feed}, ["sample"]))["sample"].astype(np.float32)


TILE_OVERLAP = 0.25  # as diffusers' AutoencoderKL tiling


async def tiled(decode, z, tile, scale):
    """`decode` (latents [1, C, h, w] -> pixels [1, 3, h*scale, w*scale]) over overlapping tiles of `tile`
    latents, as diffusers' `AutoencoderKL.tiled_decode`: tiles start every tile * 0.75, each is blended into
    its upper and left neighbours with a linear cross-fade over the overlap, then cut to the stride."""
    stride = int(tile * (1 - TILE_OVERLAP))
    blend = int(tile * scale * TILE_OVERLAP)
    keep = tile * scale - blend
    rows = [[await decode(z[:, :, i:i + tile, j:j + tile]) for j in range(0, z.shape[3], stride)]
            for i in range(0, z.shape[2], stride)]
    out = []
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            if i > 0:
                t = _blend(rows[i - 1][j], t, blend, axis=2)
            if j > 0:
                t = _blend(row[j - 1], t, blend, axis=3)
            row[j] = t
        out.append(np.concatenate([t[:, :, :keep, :keep] for t in row], axis=3))
    return np.concatenate(out, axis=2)


def _blend(before, tile, extent, axis):
    """`tile` with its first `extent` rows (axis 2) or columns (axis 3) faded in from the end of `before`."""
    extent = min(before.shape[axis], tile.shape[axis], extent)
    weight = (np.arange(extent, dtype=np.float32) / extent).reshape((-1, 1) if axis == 2 else (1, -1))
    tile = tile.copy()
    head = [slice(None)] * 4
    head[axis] = slice(0, extent)
    tail = [slice(None)] * 4
    tail[axis] = slice(before.shape[axis] - extent, before.shape[axis])
    tile[tuple(head)] = before[tuple(tail)] * (1 - weight) + tile[tuple(head)] * weight
    return tile


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((image * 255).round().astype(np.uint8))
