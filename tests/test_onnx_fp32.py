"""The q4f16 -> q4 conversion (app/onnx/fp32.py) on CPython: the tiny bundle in the webnn q4f16 layout
becomes fp32-activation graphs with their weights in external data, MatMulNBits keeps its int4 weights,
and the pictures stay those of the q4f16 model within fp16 tolerance."""

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from app.onnx import fp32
from app.onnx.wire import GRAPH_INITIALIZER, MODEL_GRAPH, messages
from app.pipeline.turbo import SDXLTurbo
from app.runtime.ort import OrtRuntime
from conftest import assert_close, run
from test_real_interfaces import CONDITIONING, FP16_FIDELITY, PARTS, Q4F16


def convert(src, dst, window=fp32.WINDOW_BYTES, to_fp32=True):
    """Convert one file the way the worker does (windowed reads, weights appended as met); returns
    (Conversion, largest single read). With `to_fp32` false it is only split into graph and weights."""
    data = src.read_bytes()
    reads = []

    async def read(start, end):
        reads.append(end - start)
        return data[start:end]

    chunks = []

    async def write_data(raw):
        chunks.append(raw)

    stats = fp32.Conversion(fp32=to_fp32)
    old, fp32.WINDOW_BYTES = fp32.WINDOW_BYTES, window
    try:
        model = run(fp32.convert_model(read, len(data), write_data, dst.name + "_data", stats))
    finally:
        fp32.WINDOW_BYTES = old
    dst.write_bytes(model)
    (dst.parent / (dst.name + "_data")).write_bytes(b"".join(chunks))
    return stats, max(reads)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("q4")
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(Q4F16 / name, out / name)
    shutil.copy(Q4F16 / "scheduler_config.json", out)
    stats = {part: convert(Q4F16 / path, out / f"{part}.onnx") for part, path in PARTS.items()}
    return out, stats


def test_every_float16_becomes_float32_and_matmulnbits_keeps_its_int4_weights(converted):
    out, stats = converted
    for part in PARTS:
        session = ort.InferenceSession(str(out / f"{part}.onnx"))
        types = {v.type for v in session.get_inputs() + session.get_outputs()}
        assert "tensor(float16)" not in types and types <= {"tensor(float)", "tensor(int32)", "tensor(int64)"}, part
        table = stats[part][0].table()
        assert any(op == "MatMulNBits" and n > 0 for _, op, n in table), table
        assert ("to = float16 -> float", "Cast") in {(w, op) for w, op, _ in table}
    unet = (out / "unet.onnx").read_bytes()
    assert len(unet) < 600_000 and (out / "unet.onnx_data").stat().st_size == stats["unet"][0].external_bytes
    assert b"MatMulNBits" in unet  # the op is kept, its packed weights now in the data file as they were


def test_the_converted_model_draws_the_q4f16_model_s_pictures_within_fp16_tolerance(converted, manifest_entry):
    out, _ = converted
    entry = dict(manifest_entry, conditioning_outputs=CONDITIONING)
    q4f16 = run(SDXLTurbo.load(OrtRuntime(Q4F16), dict(entry, parts=PARTS)))
    q4 = run(SDXLTurbo.load(OrtRuntime(out), dict(entry, parts={p: f"{p}.onnx" for p in PARTS})))
    assert q4.unet.inputs["sample"].dtype == np.float32 and q4.unet.inputs["timestep"].dtype == np.float32
    for steps in (1, 4):
        assert_close(run(q4.generate("a photo of a cat", 5, steps, 64, 64)),
                     run(q4f16.generate("a photo of a cat", 5, steps, 64, 64)), rel=FP16_FIDELITY, what=f"{steps} steps")


def largest_initializer(model: bytes) -> int:
    (graph,) = messages(model, 0, len(model), MODEL_GRAPH)
    return max(stop - start for start, _, stop in messages(model, graph[1], graph[2], GRAPH_INITIALIZER))


@pytest.mark.parametrize("part, window", [("unet", 8 * 1024), ("text_encoder_2", 64 * 1024)])
def test_reads_stay_within_a_window_whatever_the_file_or_tensor_size(tmp_path, part, window):
    """Memory stays flat: no read is larger than the window, not even for tensors larger than it (the
    text encoder's 2 MB token embedding), which go to the data file a window at a time."""
    src = Q4F16 / PARTS[part]
    _, largest = convert(src, tmp_path / "x.onnx", window=window)
    assert largest <= window < largest_initializer(src.read_bytes())


def test_converting_twice_gives_the_same_bytes(tmp_path):
    """Whatever the window: the converted files' sha256 can be recorded and checked again later."""
    src = Q4F16 / PARTS["unet"]
    for folder, window in (("a", fp32.WINDOW_BYTES), ("b", 100_000)):
        (tmp_path / folder).mkdir()
        convert(src, tmp_path / folder / "unet.onnx", window)
    for name in ("unet.onnx", "unet.onnx_data"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_split_graph_keeps_every_type_and_gives_the_same_pictures(tmp_path, manifest_entry):
    """The install-time split of a single-file graph (q4f16) moves its weights to a file of their own and
    changes nothing else: float16 stays float16, the graph keeps no large tensor, and the pictures are the
    same bits as from the single files."""
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(Q4F16 / name, tmp_path / name)
    shutil.copy(Q4F16 / "scheduler_config.json", tmp_path)
    for part, path in PARTS.items():
        stats, _ = convert(Q4F16 / path, tmp_path / f"{part}.onnx", to_fp32=False)
        assert stats.table() == [], part  # nothing converted
        graph = (tmp_path / f"{part}.onnx").read_bytes()
        assert largest_initializer(graph) < 1024 + 200 and len(graph) < (Q4F16 / path).stat().st_size, part
        types = {v.type for s in [ort.InferenceSession(str(tmp_path / f"{part}.onnx"))]
                 for v in s.get_inputs() + s.get_outputs()}
        assert "tensor(float16)" in types or part.startswith("text_encoder"), (part, types)
    entry = dict(manifest_entry, conditioning_outputs=CONDITIONING)
    whole = run(SDXLTurbo.load(OrtRuntime(Q4F16), dict(entry, parts=PARTS)))
    split = run(SDXLTurbo.load(OrtRuntime(tmp_path), dict(entry, parts={p: f"{p}.onnx" for p in PARTS})))
    np.testing.assert_array_equal(run(split.generate("a photo of a cat", 5, 2, 64, 64)),
                                  run(whole.generate("a photo of a cat", 5, 2, 64, 64)))
