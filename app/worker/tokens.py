"""The page's token counter: how much of a prompt CLIP reads, from the chosen model's own tokenizer.

Only the tokenizer files are read (no session is made), so it never waits for the GPU queue."""

import traceback

from ..pipeline.tokenizer import load_clip_tokenizer
from ..runtime.web import WebRuntime
from .messages import post


class TokenCounter:
    def __init__(self, models: dict, installer):
        self.models = models
        self.installer = installer
        self.loaded = {}  # model id -> ClipTokenizer

    async def handle(self, msg):
        """{type: "tokens", model, text} -> {type: "tokens", model, text, count, limit}; count is -1 when the
        model is not installed (its tokenizer is not here yet)."""
        model_id, text = msg.get("model"), str(msg.get("text") or "")
        answer = {"type": "tokens", "model": model_id, "text": text, "count": -1, "limit": 0}
        if model_id in self.models and self.installer.state(model_id) == "installed":
            try:
                tok = self.loaded.get(model_id)
                if tok is None:
                    runtime = WebRuntime(await self.installer.files_for_loading(model_id), "wasm")
                    tok = self.loaded[model_id] = await load_clip_tokenizer(runtime, "tokenizer")
                answer.update(count=tok.count(text), limit=tok.max_length - 2)
            except Exception:  # e.g. deleted meanwhile: the counter just shows nothing
                traceback.print_exc()
        post(answer)
