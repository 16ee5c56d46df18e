import numpy as np
import onnxruntime as ort
import pytest

from app.onnx.external import Chunk, _external_tensors, external_locations, split_external_data
from conftest import BUNDLE

UNET = BUNDLE / "unet" / "model.onnx"


def outputs(model_path, feeds):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(model_path):
    """Random inputs for batch 1 and an 8x8 latent; the other dims come from the model."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    symbols = {"batch_size": 1, "height": 8, "width": 8}
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([symbols.get(d, d) for d in i.shape]).astype(np.float32)
            for i in session.get_inputs()}


@pytest.mark.parametrize("chunk_bytes", [262144, 65536])
def test_chunked_unet_gives_identical_outputs(tmp_path, chunk_bytes):
    data = (UNET.parent / "model.onnx_data").read_bytes()
    model, chunks = split_external_data(UNET.read_bytes(), chunk_bytes)
    assert len(chunks) > 2
    assert external_locations(model) == {c.name for c in chunks}
    for chunk in chunks:
        (tmp_path / chunk.name).write_bytes(data[chunk.start:chunk.end])
    (tmp_path / "model.onnx").write_bytes(model)

    feeds = random_feeds(UNET)
    assert {k: v.shape for k, v in feeds.items()} == {
        "sample": (1, 4, 8, 8), "timestep": (1,), "encoder_hidden_states": (1, 77, 36),
        "text_embeds": (1, 24), "time_ids": (1, 6)}
    for expected, got in zip(outputs(UNET, feeds), outputs(tmp_path / "model.onnx", feeds), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("chunk_bytes", [262144, 65536])
def test_chunks_hold_every_tensor_and_stay_within_size(chunk_bytes):
    original = UNET.read_bytes()
    model, chunks = split_external_data(original, chunk_bytes)
    by_name = {c.name: c for c in chunks}
    before, after = _external_tensors(original), _external_tensors(model)
    assert len(before) == len(after) == 89
    members = {c.name: [] for c in chunks}
    for old, new in zip(before, after, strict=True):
        chunk = by_name[new.location]
        assert (chunk.location, chunk.start + new.offset, new.length) == (old.location, old.offset, old.length)
        members[chunk.name].append(old)
    for chunk in chunks:
        tensors = members[chunk.name]
        assert chunk.start == min(t.offset for t in tensors)
        assert chunk.end == max(t.offset + t.length for t in tensors)
        assert chunk.end - chunk.start <= chunk_bytes or len(tensors) == 1
    assert any(chunk.end - chunk.start > chunk_bytes for chunk in chunks) == (chunk_bytes == 65536)


def test_model_without_external_data_is_unchanged():
    model = (BUNDLE / "vae_decoder" / "model.onnx").read_bytes()
    assert external_locations(model) == set()
    assert split_external_data(model, 65536) == (model, [])


# Hand-encoded protobuf, so the large-offset and bad-input cases need no `onnx` package.

def varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def field(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def external_tensor(name, **entries):
    out = field(8, name.encode()) + varint(2 << 3) + varint(1)  # name, data_type FLOAT
    for key, value in entries.items():
        out += field(13, field(1, key.encode()) + field(2, str(value).encode()))
    return field(5, out + varint(14 << 3) + varint(1))  # data_location EXTERNAL


def model(*initializers):
    node = field(1, field(1, b"a") + field(2, b"b") + field(4, b"Relu"))
    raw = field(5, field(8, b"inline") + varint(2 << 3) + varint(1) + field(9, b"\0" * 8))
    opset = field(8, field(2, b"") + varint(2 << 3) + varint(17))
    return varint(1 << 3) + varint(8) + field(7, node + b"".join(initializers) + raw) + opset


def test_offsets_above_4_gib_are_rewritten():
    base, gib = 2**32 + 100, 2**30
    original = model(
        external_tensor("a", location="big.bin", offset=base, length=gib),
        external_tensor("b", location="big.bin", offset=base + gib, length=gib),
        external_tensor("c", location="big.bin", offset=base + 2 * gib, length=3 * gib, checksum="x"),
        external_tensor("d", location="other.bin", length=16),
    )
    rewritten, chunks = split_external_data(original, 2 * gib)
    assert chunks == [
        Chunk("big.bin.chunk0", "big.bin", base, base + 2 * gib),
        Chunk("big.bin.chunk1", "big.bin", base + 2 * gib, base + 5 * gib),
        Chunk("other.bin.chunk0", "other.bin", 0, 16),
    ]
    assert rewritten == model(
        external_tensor("a", location="big.bin.chunk0", offset=0, length=gib),
        external_tensor("b", location="big.bin.chunk0", offset=gib, length=gib),
        external_tensor("c", location="big.bin.chunk1", offset=0, length=3 * gib, checksum="x"),
        external_tensor("d", location="other.bin.chunk0", length=16),
    )


@pytest.mark.parametrize("location", ["/etc/passwd", "../model.onnx_data", "w/../../x", "w\\x", "C:x", ""])
def test_escaping_location_is_refused(location):
    original = model(external_tensor("a", location=location, offset=0, length=4))
    with pytest.raises(ValueError, match="not a path inside"):
        split_external_data(original, 1024)
    with pytest.raises(ValueError, match="not a path inside"):
        external_locations(original)


def test_tensor_without_length_is_refused():
    original = model(external_tensor("a", location="w.bin", offset=0))
    assert external_locations(original) == {"w.bin"}
    with pytest.raises(ValueError, match="no length"):
        split_external_data(original, 1024)
