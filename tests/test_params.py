import pytest

from app.worker.params import InputError, parse_request

MODELS = {"tiny": {"name": "Tiny", "resolutions": [[64, 64], [64, 96]]}}
GOOD = {"prompt": "a cat", "seed": "42", "steps": "2", "resolution": "64x96", "model": "tiny"}


def test_a_good_request_is_parsed():
    r = parse_request(GOOD, MODELS)
    assert (r.prompt, r.seed, r.steps, r.height, r.width, r.model) == ("a cat", 42, 2, 64, 96, "tiny")


@pytest.mark.parametrize("field, value, message", [
    ("prompt", "   ", "Please enter a prompt"),
    ("prompt", "a cat " * 400, "The prompt is 2,399 characters long; Lantern takes up to 2,000"),
    ("seed", "abc", "Seed must be a whole number"),
    ("seed", "1.5", "Seed must be a whole number"),
    ("seed", "²", "Seed must be a whole number"),  # a digit to str.isdigit(), not to int()
    ("seed", "--5", "Seed must be a whole number"),
    ("seed", "9" * 5000, "Seed must be a whole number"),  # more digits than int() reads
    ("steps", "٣", "Steps must be a whole number"),
    ("seed", "-1", "Seed must be between 0 and"),
    ("seed", str(2**32), "Seed must be between 0 and"),
    ("steps", "0", "Steps must be between 1 and 4"),
    ("steps", "5", "Steps must be between 1 and 4"),
    ("steps", "two", "Steps must be a whole number"),
    ("resolution", "100x100", "Tiny cannot make 100x100 images. Choose one of: 64x64, 64x96."),
    ("resolution", "big", "Resolution must look like 512x512"),
    ("model", "nope", "Unknown model 'nope'"),
])
def test_bad_input_gets_a_clear_message_about_its_field(field, value, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")) as refused:
        parse_request({**GOOD, field: value}, MODELS)
    assert refused.value.field == field  # the page says it beside that control
