"""What SDXL-Turbo and the SDXL refiner share: loading a bundle's tokenizers, sessions and scheduler
config through a runtime, the penultimate hidden state SDXL conditions on, the latent shape, the UNet call
(with classifier-free guidance), and the VAE: decode, and encode through an add-on's encoder, whole or tiled."""

import re

import numpy as np

from .tokenizer import load_clip_tokenizer

LATENT_CHANNELS = 4
ENCODER_PATH = "vae_encoder/model.onnx"
# What a VAE encoder may give: its mean (a sampling graph cut at install, app/onnx/mean.py), or mean || logvar
ENCODER_OUTPUTS = ("latent_mean", "latent_parameters")
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
        self.encoder_runtime = self.vae_encoder = self.encoder_output = None  # image to image's add-on, once loaded

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
        if self.encoder_runtime is not None:
            self.encoder_runtime.release()

    def latent_shape(self, height, width):
        return (1, LATENT_CHANNELS, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def unet_conditioning(self, prompt_embeds, pooled, time_ids, uncond=None):
        """The UNet's conditioning for every step of a run: a list of feeds, one per UNet call of a step.

        With `uncond` (prompt_embeds, pooled, time_ids of the negative prompt: classifier-free guidance) the
        unconditional pass is batched before the conditional one, as diffusers does; where the manifest fixes
        the batch size at 1 (webnn's exports), it is a second call of batch 1 instead: the same arithmetic."""
        passes = [(prompt_embeds, pooled, time_ids)] if uncond is None else [uncond, (prompt_embeds, pooled, time_ids)]
        if len(passes) == 2 and self.entry.get("free_dimensions", {}).get("batch_size") != 1:
            passes = [tuple(np.concatenate(p, axis=0) for p in zip(*passes))]
        inputs = self.unet.inputs
        return [{"encoder_hidden_states": inputs["encoder_hidden_states"].coerce(embeds),
                 "text_embeds": inputs["text_embeds"].coerce(text_embeds),
                 "time_ids": inputs["time_ids"].coerce(ids)} for embeds, text_embeds, ids in passes]

    async def predict_noise(self, conditioning, sample, timestep, guidance_scale=1.0):
        """The noise the UNet predicts in `sample` (already scaled) at `timestep`; with guidance (conditioning
        for two passes), uncond + guidance_scale * (cond - uncond)."""
        inputs = self.unet.inputs
        eps = []
        for feeds in conditioning:
            batch = feeds["encoder_hidden_states"].shape[0]
            x = inputs["sample"].coerce(np.concatenate([sample] * batch, axis=0) if batch > 1 else sample)
            feeds = dict(feeds, sample=x, timestep=inputs["timestep"].coerce(timestep))
            eps.append((await self.unet.run(feeds, ["out_sample"]))["out_sample"])
        eps = np.concatenate(eps, axis=0) if len(eps) > 1 else eps[0]
        if eps.shape[0] == 2:
            uncond, cond = eps[:1], eps[1:]
            eps = uncond + np.float32(guidance_scale) * (cond - uncond)
        return eps

    async def load_encoder(self, runtime, on_stage=None):
        """Attach the VAE encoder (image to image) from `runtime`, bound to the encoder's own bundle."""
        await report(on_stage, "load vae_encoder")
        session = await runtime.session(ENCODER_PATH)
        names = session.output_names
        self.encoder_output = next((n for n in ENCODER_OUTPUTS if n in names), None)
        if self.encoder_output is None:
            runtime.release()
            raise ValueError(f"the VAE encoder gives none of {', '.join(ENCODER_OUTPUTS)} (it gives {', '.join(names)}): "
                             "one that draws its own noise must be cut to its mean at install")
        self.encoder_runtime, self.vae_encoder = runtime, session

    async def encode(self, pixels, tile=None):
        """Scaled latents [1, 4, H/8, W/8] of a picture (uint8 [H, W, 3]): its latent distribution's mean, as
        diffusers' retrieve_latents(..., sample_mode="argmax"), so a seed alone decides what a run adds. Encoded
        in overlapping tiles of `tile` pixels when the picture is larger than one."""
        x = (np.asarray(pixels, np.float32) / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0)
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        if tile and max(x.shape[2:]) > tile:
            mean = await tiled(self._encode, x, tile, tile // self.vae_scale_factor)
        else:
            mean = await self._encode(x)
        return mean * np.float32(self.vae_scaling_factor)

    async def _encode(self, x):
        feed = self.vae_encoder.inputs["sample"].coerce(x)
        out = (await self.vae_encoder.run({"sample": feed}, [self.encoder_output]))[self.encoder_output]
        return out[:, :LATENT_CHANNELS].astype(np.float32)  # latent_parameters: the mean, then the log-variance

    async def decode(self, latents, tile=None):
        """Float image [H, W, 3] in [0, 1]; decoded in overlapping tiles of `tile` pixels when the image is
        larger than one (memory then peaks at one tile's activations, not the whole image's)."""
        scaled = latents / np.float32(self.vae_scaling_factor)
        if tile and max(scaled.shape[2:]) * self.vae_scale_factor > tile:
            latent_tile = tile // self.vae_scale_factor
            sample = await tiled(self._decode, scaled, latent_tile, latent_tile * self.vae_scale_factor)
        else:
            sample = await self._decode(scaled)
        return np.clip(sample[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)

    async def _decode(self, scaled):
        feed = self.vae_decoder.inputs["latent_sample"].coerce(scaled)
        return (await self.vae_decoder.run({"latent_sample": feed}, ["sample"]))["sample"].astype(np.float32)


TILE_OVERLAP = 0.25  # as diffusers' AutoencoderKL tiling


async def tiled(code, z, tile, out_tile):
    """`code` (decode: latents -> pixels, or encode: pixels -> latents) over overlapping tiles of `tile` along
    h and w, each giving `out_tile`, as diffusers' `AutoencoderKL.tiled_decode` and `tiled_encode`: tiles
    start every tile * 0.75, each is blended into its upper and left neighbours with a linear cross-fade over
    the overlap, then cut to the stride."""
    stride = int(tile * (1 - TILE_OVERLAP))
    blend = int(out_tile * TILE_OVERLAP)
    keep = out_tile - blend
    rows = [[await code(z[:, :, i:i + tile, j:j + tile]) for j in range(0, z.shape[3], stride)]
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
