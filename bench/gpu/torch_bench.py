#!/usr/bin/env python3
"""PyTorch eager on the weights of a make_bundle.py bundle: what a native user of the same GPU gets.

    python3 bench/gpu/torch_bench.py --bundle DIR [--sizes 512x512:1,1024x1024:1] [--dtypes fp16,fp32]

Rebuilds each part from make_bundle.py's seeds, checks its weights against DIR/weights.json, and times
(median of --runs, after a warm-up, with PyTorch's SDPA attention, as diffusers uses by default) the prompt
encoding, one UNet step and the VAE decode per size, in each dtype. Prints a table and writes
DIR/torch.json, which run.sh --reference turns into app / PyTorch ratios (the stage names match
gpu_bench.py's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("make_bundle", os.path.join(HERE, "make_bundle.py"))
bundle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bundle)
DTYPES = ("fp16", "fp32")


def timed(fn, device, runs):
    """Median ms of `fn()` over `runs` calls after one warm-up, the device's queue drained each time."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def load(part, config, digests, device):
    from diffusers.models.attention_processor import AttnProcessor2_0

    model = bundle.build_part(part, config)
    if digests.get(part) and bundle.weights_sha256(model) != digests[part]:
        raise SystemExit(f"{part}: these weights differ from the bundle's (another torch or diffusers version?)")
    if hasattr(model, "set_attn_processor"):  # diffusers' UNet and VAE
        model.set_attn_processor(AttnProcessor2_0())
    else:  # transformers' CLIP
        model.set_attn_implementation("sdpa")
    return model.to(device)


def measure(parts, dtype, sizes, device, runs):
    import torch

    te1, te2, unet, vae = (m.to(dtype) for m in parts)
    ids = torch.full((1, 77), bundle.base.EOS_ID, dtype=torch.int64, device=device)
    ids[0, 0] = bundle.base.BOS_ID
    times = {}
    with torch.inference_mode():
        def encode():
            h1 = te1(ids, output_hidden_states=True).hidden_states[-2]
            out = te2(ids, output_hidden_states=True)
            return torch.cat([h1, out.hidden_states[-2]], dim=-1), out.text_embeds

        times["encode prompt"] = timed(encode, device, runs)
        embeds, pooled = encode()
        for height, width in sizes:
            sample = torch.randn(1, 4, height // 8, width // 8, device=device, dtype=dtype)
            time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
            t = torch.tensor([999.0], device=device, dtype=dtype)
            cond = {"text_embeds": pooled, "time_ids": time_ids}
            times[f"unet step {height}x{width}"] = timed(
                lambda: unet(sample, t, encoder_hidden_states=embeds, added_cond_kwargs=cond), device, runs)
            times[f"decode {height}x{width}"] = timed(lambda: vae.decode(sample), device, runs)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="make_bundle.py's --out folder")
    ap.add_argument("--sizes", default="512x512:1,1024x1024:1", help="HEIGHTxWIDTH[:STEPS],... (steps are ignored)")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to try the script without a GPU")
    args = ap.parse_args()
    bundle.base.prepare_torch()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    with open(os.path.join(args.bundle, "weights.json"), encoding="utf-8") as f:
        weights = json.load(f)
    config = bundle.CONFIGS[weights["config"]]
    device = torch.device(args.device)
    sizes = list(dict.fromkeys(tuple(int(v) for v in s.split(":")[0].split("x")) for s in args.sizes.split(",")))
    parts = [load(part, config, weights["sha256"], device) for part in bundle.PARTS]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    result = {"device": name, "torch": torch.__version__, "times": {}}
    # fp32 first: .to(float16) rounds the weights in place.
    for dtype in sorted(args.dtypes.split(","), key=lambda d: d != "fp32"):
        result["times"][dtype] = measure(parts, {"fp16": torch.float16, "fp32": torch.float32}[dtype], sizes, device,
                                         args.runs)
    stages = list(next(iter(result["times"].values())))
    print(f"PyTorch {torch.__version__} eager on {name}, median of {args.runs} ms:\n| stage | "
          + " | ".join(result["times"]) + " |\n|---|" + "---|" * len(result["times"]))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(f"{t[stage]:.1f}" for t in result["times"].values()) + " |")
    bundle.base.write_json(os.path.join(args.bundle, "torch.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
