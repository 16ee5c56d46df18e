"""CLIP prompt tokenization from a model's `tokenizer.json` + `tokenizer_config.json`.

The BPE itself comes from Hugging Face's tokenizers (Python `tokenizers` on CPython,
`@huggingface/tokenizers` in the browser); truncation and padding are done here, the
same way for both, so the two libraries only have to agree on the raw ids.
"""


def without_length_rules(tokenizer_json: dict) -> dict:
    """The tokenizer definition with its own truncation/padding switched off."""
    return {**tokenizer_json, "truncation": None, "padding": None}


class ClipTokenizer:
    def __init__(self, encode, tokenizer_json: dict, config: dict):
        """`encode(text) -> list[int]`: raw ids, start/end tokens included."""
        self._encode = encode
        self.max_length = int(config.get("model_max_length", 77))
        vocab = tokenizer_json["model"]["vocab"]
        pad = config.get("pad_token", "<|endoftext|>")
        if isinstance(pad, dict):  # transformers may store AddedToken objects
            pad = pad["content"]
        self.pad_id = vocab[pad]

    def count(self, text: str) -> int:
        """Tokens in `text`, without the start and end tokens: CLIP reads the first max_length - 2."""
        return len(self._encode(text)) - 2

    def __call__(self, text: str) -> list[int]:
        ids = list(self._encode(text))
        if len(ids) > self.max_length:
            # Keep the start token and the first tokens, and keep the end token last.
            ids = ids[: self.max_length - 1] + ids[-1:]
        return ids + [self.pad_id] * (self.max_length - len(ids))


async def load_clip_tokenizer(runtime, folder: str) -> ClipTokenizer:
    """The tokenizer in a bundle folder (tokenizer.json + tokenizer_config.json), through the runtime's BPE."""
    tok_json = await runtime.read_json(f"{folder}/tokenizer.json")
    config = await runtime.read_json(f"{folder}/tokenizer_config.json")
    return ClipTokenizer(await runtime.tokenizer(without_length_rules(tok_json)), tok_json, config)
