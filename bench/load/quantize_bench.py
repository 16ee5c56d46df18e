#!/usr/bin/env python3
"""How fast the checkpoint conversion's arithmetic is at SDXL's real size (CPython + numpy; run it in a
venv with diffusers for the shapes):

    python bench/load/quantize_bench.py [--limit N]

It takes the real SDXL UNet's linear weights (shapes from diffusers' config on the meta device, no
weights), fills each with random fp16 values, and times what the conversion does to each: fp16 -> float32,
then int4 blocks (app/checkpoint/int4.py). Prints the totals, MB/s of fp16 source and the largest tensor's
time. The browser's numpy (Pyodide, wasm, one thread) is slower by a factor to be measured there.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from app.checkpoint.int4 import quantize  # noqa: E402
from app.checkpoint.templates import BLOCK_SIZE, SYMMETRIC  # noqa: E402

SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                        "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)


def linear_shapes() -> list:
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    return [(name, tuple(m.weight.shape)) for name, m in unet.named_modules() if isinstance(m, torch.nn.Linear)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=0, help="only the first N linears")
    args = parser.parse_args()
    shapes = linear_shapes()
    if args.limit:
        shapes = shapes[:args.limit]
    rng = np.random.default_rng(0)
    total_bytes = total_s = worst = 0.0
    for name, (n, k) in shapes:
        source = (rng.standard_normal((n, k), np.float32) * 0.02).astype(np.float16)
        t = time.perf_counter()
        quantize(source.astype(np.float32), BLOCK_SIZE, SYMMETRIC)
        took = time.perf_counter() - t
        total_s += took
        total_bytes += source.nbytes
        worst = max(worst, took)
    params = total_bytes / 2
    print(f"{len(shapes)} linear weights, {params / 1e9:.2f} G parameters ({total_bytes / 1e9:.2f} GB fp16)")
    print(f"int4 quantization: {total_s:.1f} s, {total_bytes / 1e6 / total_s:.0f} MB/s of fp16 source; "
          f"largest tensor {worst:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
