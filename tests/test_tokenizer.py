"""Prompt token ids equal Hugging Face's own tokenizers (and transformers' CLIPTokenizer references)."""

import json

import pytest
from tokenizers import Tokenizer

from app.pipeline.tokenizer import ClipTokenizer, without_length_rules
from conftest import BUNDLE

PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo   of a CAT\n\twith  odd   spacing",
    "Hello, world!!! (really?) [yes]; {no}: 'quotes' \"double\" -- dash…",
    "Ünïcödé café, naïve façade, 東京の夜景, Ελληνικά, русский",
    "emoji 🐱🚀👩‍👩‍👧 ✨ and flags 🇫🇷",
    " ".join(["a very long prompt"] * 40),  # far beyond 77 tokens
    "<b>html</b> &amp; <script>alert(1)</script>",
]


def load(folder):
    tok_json = json.loads((BUNDLE / folder / "tokenizer.json").read_text())
    config = json.loads((BUNDLE / folder / "tokenizer_config.json").read_text())
    return tok_json, config


@pytest.mark.parametrize("folder", ["tokenizer", "tokenizer_2"])
def test_ids_equal_hf_tokenizers_with_its_own_padding_and_truncation(folder):
    tok_json, config = load(folder)
    raw = Tokenizer.from_str(json.dumps(without_length_rules(tok_json)))
    ours = ClipTokenizer(lambda t: raw.encode(t).ids, tok_json, config)
    hf = Tokenizer.from_str(json.dumps(tok_json))
    hf.enable_truncation(77)
    hf.enable_padding(length=77, pad_id=ours.pad_id, pad_token=config["pad_token"]
                      if isinstance(config["pad_token"], str) else config["pad_token"]["content"])
    for prompt in PROMPTS:
        ids = ours(prompt)
        assert len(ids) == 77
        assert ids == hf.encode(prompt).ids, prompt


def test_ids_equal_transformers_references(cases):
    toks = []
    for folder in ("tokenizer", "tokenizer_2"):
        tok_json, config = load(folder)
        raw = Tokenizer.from_str(json.dumps(without_length_rules(tok_json)))
        toks.append(ClipTokenizer(lambda t, raw=raw: raw.encode(t).ids, tok_json, config))
    assert len(cases["tokenizer_cases"]) >= 5
    for case in cases["tokenizer_cases"]:
        assert toks[0](case["prompt"]) == case["ids1"], case["prompt"]
        assert toks[1](case["prompt"]) == case["ids2"], case["prompt"]


def test_clip_ids_and_padding_tokens():
    tok_json, config = load("tokenizer")
    raw = Tokenizer.from_str(json.dumps(without_length_rules(tok_json)))
    ids = ClipTokenizer(lambda t: raw.encode(t).ids, tok_json, config)("a photo of a cat")
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert set(ids[7:]) == {49407}
    tok_json, config = load("tokenizer_2")
    raw = Tokenizer.from_str(json.dumps(without_length_rules(tok_json)))
    assert set(ClipTokenizer(lambda t: raw.encode(t).ids, tok_json, config)("a photo of a cat")[7:]) == {0}
