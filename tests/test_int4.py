"""The in-browser int4 quantizer against onnxruntime's own (the oracle the bundles are judged by).

`quantize_matmul_4bits` is the kernel `MatMulNBitsQuantizer` (QOperator, 4 bits) calls on a MatMul's
`B` [K, N]: the bytes it writes are the bytes that tool puts in a model."""

import numpy as np
import pytest
from onnxruntime.capi._pybind_state import quantize_matmul_4bits

from app.checkpoint.int4 import quantize


def onnxruntime_quantize(weight: np.ndarray, block_size: int, symmetric: bool):
    """What MatMulNBitsQuantizer's DefaultWeightOnlyQuantizer.qbits_block_quant does, for weight [N, K]."""
    b = np.ascontiguousarray(weight.T.astype(np.float32))
    rows, cols = b.shape
    blocks = -(-rows // block_size)
    b = np.pad(b, ((0, blocks * block_size - rows), (0, 0)))
    packed = np.zeros((cols, blocks, block_size // 2), np.uint8)
    zero_points = np.zeros((cols, -(-blocks // 2)), np.uint8)
    scales = np.zeros((cols, blocks), np.float32)
    quantize_matmul_4bits(packed, b, scales, zero_points, block_size, cols, rows, symmetric)
    return packed, scales.reshape(-1), zero_points.reshape(-1)


def assert_identical(weight, block_size, symmetric):
    packed, scales, zero_points = quantize(weight, block_size, symmetric)
    want_packed, want_scales, want_zero_points = onnxruntime_quantize(weight, block_size, symmetric)
    assert packed.shape == want_packed.shape and packed.tobytes() == want_packed.tobytes()
    assert scales.tobytes() == want_scales.tobytes()
    if symmetric:
        assert zero_points is None
    else:
        assert zero_points.tobytes() == want_zero_points.tobytes()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_bytes_equal_onnxruntime_on_awkward_shapes(block_size, symmetric):
    rng = np.random.default_rng(block_size)
    for n, k in [(8, 64), (5, 96), (7, 100), (3, 33), (16, 320), (4, 257)]:
        weight = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        weight[0, :k // 2] = 0          # a block of zeros: scale 0
        weight[1] = 0.5                 # all positive and equal
        weight[2, ::7] = -weight[2, ::7] * 40  # outliers
        assert_identical(weight, block_size, symmetric)


def test_bytes_equal_onnxruntime_on_the_tiny_checkpoint():
    """Every weight of the tiny SDXL checkpoint that the templates quantize, as the conversion reads it."""
    from app.checkpoint.templates import BLOCK_SIZE, SYMMETRIC
    from checkpoints import single_file
    from test_checkpoint import _found, load_all
    from conftest import run

    found = run(_found(single_file()))
    values = load_all(next(iter(single_file().values())))
    from app.checkpoint.fill import _value
    quantized = [(_value(values[key], source), target) for (_, key), uses in found.plan.items()
                 for target, source in uses if target.kind == "int4"]
    assert len(quantized) == 12 + 13 + 48 + 4
    for weight, _ in quantized:
        assert_identical(weight, BLOCK_SIZE, SYMMETRIC)


def test_bytes_equal_onnxruntime_on_a_full_size_sdxl_weight():
    """SDXL's largest linear: a transformer block's feed-forward input, [10240, 1280], fp16 values."""
    from app.checkpoint.templates import BLOCK_SIZE, SYMMETRIC
    weight = (np.random.default_rng(1).standard_normal((10240, 1280)) * 0.02).astype(np.float16)
    assert_identical(weight.astype(np.float32), BLOCK_SIZE, SYMMETRIC)


def test_rejects_what_matmulnbits_cannot_hold():
    with pytest.raises(ValueError, match="2 dimensions"):
        quantize(np.zeros((2, 3, 4), np.float32), 32, True)
    with pytest.raises(ValueError, match="power of two"):
        quantize(np.zeros((2, 64), np.float32), 48, True)
