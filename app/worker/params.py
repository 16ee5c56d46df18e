"""Checking what the user asked for, with messages a person can act on."""

import re
from dataclasses import asdict, dataclass

from ..pipeline.seeds import MAX_SEED

MIN_STEPS, MAX_STEPS = 1, 4
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


def parse_request(raw: dict, models: dict) -> Request:
    """A checked Request from the page's raw fields; `models` maps model id -> manifest entry."""
    model = str(raw.get("model") or "")
    if model not in models:
        raise InputError(f"Unknown model {model!r}. Choose one from the Model list.", "model")
    prompt = str(raw.get("prompt") or "").strip()
    if not prompt:
        raise InputError("Please enter a prompt describing the image you want.", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"The prompt is {len(prompt):,} characters long; Lantern takes up to {MAX_PROMPT_CHARS:,} "
                         "(and the model reads only about the first 300). Shorten it.", "prompt")
    seed = _integer(raw.get("seed", ""), "Seed", "seed")
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"Seed must be between 0 and {MAX_SEED}.", "seed")
    steps = _integer(raw.get("steps", ""), "Steps", "steps")
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise InputError(f"Steps must be between {MIN_STEPS} and {MAX_STEPS} (SDXL-Turbo needs only a few).", "steps")
    height, width = parse_resolution(raw.get("resolution", ""))
    allowed = [tuple(r) for r in models[model]["resolutions"]]
    if (height, width) not in allowed:
        choices = ", ".join(f"{h}x{w}" for h, w in allowed)
        raise InputError(f"{models[model]['name']} cannot make {height}x{width} images. Choose one of: {choices}.", "resolution")
    return Request(prompt, seed, steps, height, width, model)


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
