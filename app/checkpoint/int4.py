"""Blockwise 4-bit quantization of linear weights into MatMulNBits' layout, in numpy.

It gives the bytes onnxruntime's `MatMulNBitsQuantizer` (QOperator format, 4 bits) writes, so that a
model quantized in the browser is the model that tool would have made: the same float32 arithmetic
as MLAS' `BlockwiseQuantizer` (scale from the block's range, `v * (1/scale) + zp`, `roundf`, clamp to
[0, 15]), packed two values a byte, low nibble first.

A torch/diffusers linear weight is `[N, K]` (out, in): MatMulNBits' `B` layout, blocks running along K.
"""

import numpy as np

BITS = 4
MAX = 15.0
MID = 8


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero (numpy's round goes to even)."""
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= 0.5, np.sign(x), 0).astype(x.dtype)


def quantize(weight: np.ndarray, block_size: int, symmetric: bool):
    """`weight` [N, K] (any float dtype) -> (packed uint8 [N, K_blocks, block_size / 2],
    scales float32 [N * K_blocks], zero points uint8 [N * ceil(K_blocks / 2)] or None when symmetric)."""
    if weight.ndim != 2:
        raise ValueError(f"a linear weight has 2 dimensions, got shape {weight.shape}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block size must be a power of two of at least 16, got {block_size}")
    n, k = weight.shape
    blocks = -(-k // block_size)
    w = np.zeros((n, blocks * block_size), np.float32)
    w[:, :k] = weight
    w = w.reshape(n, blocks, block_size)
    # A block's range is taken over its real values only (the padding is not part of it).
    valid = (np.arange(blocks * block_size) < k).reshape(blocks, block_size)
    lo = np.where(valid, w, np.float32(np.inf)).min(axis=2)
    hi = np.where(valid, w, np.float32(-np.inf)).max(axis=2)
    if symmetric:
        peak = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        scale = (-peak / np.float32(MID)).astype(np.float32)
        zp = np.full((n, blocks), MID, np.float32)
    else:
        lo, hi = np.minimum(lo, np.float32(0)), np.maximum(hi, np.float32(0))
        scale = ((hi - lo) / np.float32(MAX)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp_f = np.where(scale != 0, np.float32(0) - lo / np.where(scale != 0, scale, 1), lo).astype(np.float32)
        zp = np.where(zp_f < 0, 0, np.where(zp_f > MAX, MAX, _roundf(zp_f))).astype(np.float32)
    with np.errstate(divide="ignore"):
        reciprocal = np.where(scale != 0, np.float32(1) / np.where(scale != 0, scale, 1), 0).astype(np.float32)
    q = _roundf(w * reciprocal[:, :, None] + zp[:, :, None])
    q = np.clip(q, 0, MAX).astype(np.uint8)
    q[:, ~valid] = 0
    if k % 2:
        # MLAS packs pairs from a two-value buffer kept across the pairs of a span of two blocks, so the
        # unpaired last value of an odd K shares its byte with the value before it, if that is in its span.
        flat = q.reshape(n, -1)
        flat[:, k] = flat[:, k - 2] if (k - 1) % (2 * block_size) else 0
    packed = q[:, :, 0::2] | q[:, :, 1::2] << 4
    if symmetric:
        return packed, scale.reshape(-1), None
    zp8 = zp.astype(np.uint8)
    if blocks % 2:
        zp8 = np.concatenate([zp8, np.full((n, 1), MID, np.uint8)], axis=1)
    return packed, scale.reshape(-1), (zp8[:, 0::2] | zp8[:, 1::2] << 4).reshape(-1)


def dequantize(packed: np.ndarray, scales: np.ndarray, k: int, zero_points: np.ndarray | None = None) -> np.ndarray:
    """The float32 weight [N, K] that MatMulNBits computes with: (q - zero point) * scale, per block."""
    n, blocks, _ = packed.shape
    q = np.empty((n, blocks, packed.shape[2] * 2), np.float32)
    q[:, :, 0::2], q[:, :, 1::2] = packed & 0xF, packed >> 4
    if zero_points is None:
        zp = np.full((n, blocks), MID, np.float32)
    else:
        pairs = zero_points.reshape(n, -1)
        zp = np.stack([pairs & 0xF, pairs >> 4], axis=2).reshape(n, -1)[:, :blocks].astype(np.float32)
    w = (q - zp[:, :, None]) * scales.reshape(n, blocks)[:, :, None]
    return w.reshape(n, -1)[:, :k]
