"""Checking what the user asked for, with messages a person can act on."""

import re
from dataclasses import asdict, dataclass

from ..pipeline.seeds import MAX_SEED

MIN_STEPS, MAX_STEPS = 1, 4
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 20.0  # 1: off (one UNet pass per step, as SDXL-Turbo is trained)
UPSCALES = ("1.5", "2")
FITS = ("crop", "pad")
# The text encoders read 77 tokens (about 300 characters of English) and cut the rest; a prompt many times
# that is a paste gone wrong, not something a person means.
MAX_PROMPT_CHARS = 2000


class InputError(ValueError):
    """A request the app refuses; the message is shown to the user as is, next to `field` (the id of the
    page's control it is about) when there is one."""

    def __init__(self, message, field=""):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Request:
    prompt: str
    seed: int
    steps: int
    height: int
    width: int
    model: str
    negative_prompt: str = ""
    guidance: float = 1.0
    strength: float | None = None  # from a picture: how much of it is redone (None: from noise)
    fit: str = "crop"  # how a picture of another shape is fitted: "crop" or "pad"
    upscale: float | None = None  # a result made larger by this factor (hires fix)

    def as_dict(self):
        return asdict(self)


def _integer(value, what, field):
    # ASCII digits only, and few of them: str.isdigit() also takes "²", which int() refuses, and int()
    # refuses numbers of more than 4,300 digits.
    text = str(value).strip()
    if not re.fullmatch(r"-?[0-9]{1,30}", text):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise InputError(f"{what} must be a whole number, not {shown!r}.", field)
    return int(text)


def parse_resolution(value) -> tuple[int, int]:
    """'64x96' (height x width), or a [height, width] pair."""
    try:
        h, w = (value.lower().split("x") if isinstance(value, str) else value)
        return int(h), int(w)
    except (ValueError, TypeError, AttributeError):
        raise InputError(f"Resolution must look like 512x512, not {value!r}.", "resolution") from None


def _number(value, what, field, low, high):
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:  # also refuses nan and inf
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise InputError(f"{what} must be a number from {low:g} to {high:g}, not {shown!r}.", field)
    return number


def _text(raw, key, what, field):
    text = str(raw.get(key) or "").strip()
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"The {what} is {len(text):,} characters long; Lantern takes up to {MAX_PROMPT_CHARS:,} "
                         "(and the model reads only about the first 300). Shorten it.", field)
    return text


def parse_request(raw: dict, models: dict, picture: bool = False) -> Request:
    """A checked Request from the page's raw fields; `models` maps model id -> manifest entry. `picture`: the
    run starts from a picture (strength, fit and upscale apply)."""
    model = str(raw.get("model") or "")
    if model not in models:
        raise InputError(f"Unknown model {model!r}. Choose one from the Model list.", "model")
    prompt = _text(raw, "prompt", "prompt", "prompt")
    if not prompt:
        raise InputError("Please enter a prompt describing the image you want.", "prompt")
    seed = _integer(raw.get("seed", ""), "Seed", "seed")
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"Seed must be between 0 and {MAX_SEED}.", "seed")
    steps = _integer(raw.get("steps", ""), "Steps", "steps")
    most = int(models[model].get("max_steps", MAX_STEPS))  # a base-like model of the visitor's own runs more
    if not MIN_STEPS <= steps <= most:
        why = "SDXL-Turbo needs only a few" if most == MAX_STEPS else "this model's range"
        raise InputError(f"Steps must be between {MIN_STEPS} and {most} ({why}).", "steps")
    height, width = parse_resolution(raw.get("resolution", ""))
    allowed = [tuple(r) for r in models[model]["resolutions"]]
    upscale = str(raw.get("upscale") or "") if picture else ""
    if upscale and upscale not in UPSCALES:
        raise InputError(f"Upscale must be ×{' or ×'.join(UPSCALES)}, not {upscale!r}.")
    if (height, width) not in allowed and not upscale:  # an upscale's size comes from its picture
        choices = ", ".join(f"{h}x{w}" for h, w in allowed)
        raise InputError(f"{models[model]['name']} cannot make {height}x{width} images. Choose one of: {choices}.", "resolution")
    guidance = _number(raw.get("guidance") or 1, "Guidance", "guidance", MIN_GUIDANCE, MAX_GUIDANCE)
    negative = _text(raw, "negative_prompt", "negative prompt", "negative-prompt") if guidance > 1 else ""
    strength, fit = None, "crop"
    if picture:
        strength = _number(raw.get("strength") or "", "Strength", "strength", 0.01, 1.0)
        if int(steps * strength) < 1:  # diffusers' rule: the strength must leave at least one step to run
            raise InputError(f"Strength {strength:g} of {steps} step{'s' if steps > 1 else ''} leaves no step to run: "
                             f"raise the strength to at least {1 / steps:g} or the steps.", "strength")
        fit = str(raw.get("fit") or "crop")
        if fit not in FITS:
            raise InputError(f"Fit must be crop or pad, not {fit!r}.", "fit")
    return Request(prompt, seed, steps, height, width, model, negative, guidance, strength, fit,
                   float(upscale) if upscale else None)


def parse_preview_every(raw: dict) -> int:
    """Steps between previews (0 = none); not part of what makes the image."""
    every = _integer(raw.get("preview_every", 0) or 0, "Preview every", "preview-every")
    if not 0 <= every <= MAX_STEPS:
        raise InputError(f"Preview every must be between 0 (no previews) and {MAX_STEPS} steps.", "preview-every")
    return every


MEMORY_MODES = {"": (False, False), "tiles": (True, False), "parts": (False, True), "parts+tiles": (True, True)}


def parse_memory(raw: dict) -> tuple[bool, bool]:
    """(decode in tiles, load one part at a time) from the page's "memory" choice ("" = neither)."""
    value = str(raw.get("memory") or "")
    if value not in MEMORY_MODES:
        raise InputError(f"Memory use must be one of the listed choices, not {value!r}.", "memory")
    return MEMORY_MODES[value]
