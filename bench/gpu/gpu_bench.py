"""The measuring half of the GPU benchmark, run in Pyodide by run.mjs: the app's own runtime and pipeline
(app/, as the worker runs them) over one bundle, printing per-stage times, the UNet step against the same
session run from plain JS and against PyTorch eager on the same weights (torch_bench.py's figures, when
given), peak process memory during session creation, and the device bench's tier."""

import json
import statistics
import time

import gpu_host
import js
import numpy as np

from app.pipeline.turbo import SDXLTurbo
from app.runtime.web import WebRuntime, _js, to_tensor
from app.worker.bench import bench as device_bench
from app.worker.capabilities import capabilities
from app.worker.device import pick_variant, unsuitable


def ms_since(t0):
    return (time.perf_counter() - t0) * 1000


def median_text(values):
    return f"{statistics.median(values):.1f}" if values else "-"


def timed_sessions(runtime, created):
    """Record (part, ms, peak resident MB) for each session the pipeline creates."""
    make = runtime.session

    async def session(path, free_dimensions=None):
        t0 = time.perf_counter()
        s = await make(path, free_dimensions)
        created.append((path, ms_since(t0), gpu_host.peak_rss() / 2**20))
        return s
    runtime.session = session


def captured_feeds(session, last):
    """Keep the latest feeds a session is run with, to run it again from plain JS."""
    run = session.run

    async def capture(feeds, output_names):
        last.update(feeds=feeds, names=output_names)
        return await run(feeds, output_names)
    session.run = capture


async def stage_times(pipe, prompt, height, width, steps):
    """({stage: ms}, image) of one generate: encode prompt, each step, decode, total."""
    marks = []

    async def on_stage(stage, *_):
        marks.append((stage, time.perf_counter()))

    async def on_step(i, x, denoised):
        marks.append((f"step {i + 1}", time.perf_counter()))

    t0 = time.perf_counter()
    image = await pipe.generate(prompt, 0, steps, height, width, on_stage=on_stage, on_step=on_step)
    at = dict(marks, end=time.perf_counter())
    times = {"encode prompt": at["denoise"] - at["encode prompt"], "decode": at["end"] - at["decode"],
             "total": at["end"] - t0}
    for k in range(1, steps + 1):
        times[f"step {k}"] = at[f"step {k}"] - at["denoise" if k == 1 else f"step {k - 1}"]
    return {stage: seconds * 1000 for stage, seconds in times.items()}, image


def chosen_entry(manifest, caps, variant):
    """The entry as the app runs it on this GPU, or as `variant` when one is named."""
    if variant:
        manifest = dict(manifest, variants=[v for v in manifest["variants"] if v["id"] == variant])
        if not manifest["variants"]:
            raise SystemExit(f"the manifest has no variant {variant!r}")
    return pick_variant(manifest, caps)


def reference_table(reference, app):
    """App times beside PyTorch eager's ({stage: ms} each) as ratios."""
    print(f"\nPyTorch eager on the same weights ({reference['device']}, torch {reference['torch']}):\n"
          "| stage | app ms | PyTorch fp16 ms | PyTorch fp32 ms | app / fp16 | app / fp32 |\n|---|---|---|---|---|---|")
    for stage, ms in app.items():
        native = [reference["times"].get(dtype, {}).get(stage) for dtype in ("fp16", "fp32")]
        cells = [f"{n:.1f}" if n else "-" for n in native] + [f"{ms / n:.1f}x" if n else "-" for n in native]
        print(f"| {stage} | {ms:.1f} | " + " | ".join(cells) + " |")


async def tier(caps, pipe):
    """The device bench as a first visit runs it: on the model the site marks "bench" (this bundle, or the
    bench bundle run.mjs was given)."""
    if not pipe.entry.get("bench"):
        pipe.release()
        entry = pick_variant(json.loads(gpu_host.bench_manifest), caps)
        files = {e[0]: e[1] for e in js.Object.entries(gpu_host.bench_files)}
        pipe = await SDXLTurbo.load(WebRuntime(files, caps["backend"]), entry)
    result = await device_bench(pipe)
    print(f"device bench ({result['model']}, as on a first visit): {result['step_ms']} ms per UNet step at "
          f"{result['size']} -> tier {result['tier'].upper()}")


async def main():
    options = gpu_host.options
    caps = await capabilities()
    print(f"device: {caps.get('vendor', '')} {caps.get('architecture', '')} {caps.get('description', '')} "
          f"(backend {caps['backend']}, shader-f16 {caps.get('shader_f16')}, fallback {caps.get('fallback_adapter')})")
    entry = chosen_entry(json.loads(gpu_host.manifest), caps, options.variant)
    reason = unsuitable(entry, caps)
    if reason:
        print(f"\nbundle {entry['id']} ({entry.get('variant', '')} variant) does not run here: {reason}")
        return
    files = {e[0]: e[1] for e in js.Object.entries(gpu_host.files)}
    runtime = WebRuntime(files, caps["backend"])
    created = []
    timed_sessions(runtime, created)
    t0 = time.perf_counter()
    pipe = await SDXLTurbo.load(runtime, entry)
    load_ms = ms_since(t0)
    print(f"\nbundle {entry['id']} ({entry.get('variant', '')} variant): load {load_ms:.0f} ms")
    print("| session | create ms | peak process RSS MB |\n|---|---|---|")
    for path, ms, rss in created:
        print(f"| {path} | {ms:.0f} | {rss:.0f} |")

    last, app = {}, {}
    captured_feeds(pipe.unet, last)
    print("\n| size, steps | encode prompt ms | step 1 ms | later steps ms (median) | decode ms | total ms |\n"
          "|---|---|---|---|---|---|")
    for spec in options.sizes.split(","):
        size, steps = spec.split(":")
        height, width = (int(v) for v in size.split("x"))
        await stage_times(pipe, options.prompt, height, width, int(steps))  # warm-up: shaders, buffers
        t, image = await stage_times(pipe, options.prompt, height, width, int(steps))
        later = [v for k, v in t.items() if k.startswith("step ") and k != "step 1"]
        print(f"| {size}, {steps} | {t['encode prompt']:.1f} | {t['step 1']:.1f} | {median_text(later)} | "
              f"{t['decode']:.1f} | {t['total']:.1f} |")
        app["encode prompt"] = t["encode prompt"]
        app[f"unet step {size}"] = statistics.median(later or [t["step 1"]])
        app[f"decode {size}"] = t["decode"]

    # A wiring or precision fault shows as a flat or non-finite picture, not as a time.
    print(f"\nlast image: {image.shape[0]}x{image.shape[1]}, finite {bool(np.isfinite(image).all())}, "
          f"pixel std {float(np.nanstd(image)):.3f}")

    # The last size's UNet call through the app (numpy in, numpy out) and from plain JS on the same session
    # with the same feeds, taken in turns so that a drift of the machine touches both alike.
    runs = int(options.runs)
    feeds = _js({k: to_tensor(v) for k, v in last["feeds"].items()})
    app_ms, raw_ms = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        await pipe.unet.run(last["feeds"], last["names"])
        app_ms.append(ms_since(t0))
        raw_ms += (await gpu_host.raw_runs(pipe.unet._session, feeds, _js(last["names"]), 1)).to_py()
    app_call, raw = statistics.median(app_ms), statistics.median(raw_ms)
    print(f"\nUNet call at the last size, median of {runs}: app {app_call:.1f} ms, plain JS {raw:.1f} ms, "
          f"app - plain = {app_call - raw:.1f} ms ({app_call / raw:.2f}x)")
    if gpu_host.reference:
        reference_table(json.loads(gpu_host.reference), app)
    print(f"peak process RSS: {gpu_host.peak_rss() / 2**20:.0f} MB\n")
    await tier(caps, pipe)
