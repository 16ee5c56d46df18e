#!/usr/bin/env python3
"""GPU-process memory of the VAE passes of an upscale in Chromium, with SDXL's full-size VAE (random weights).

    /tmp/benchvenv/bin/python bench/load/upscale_bench.py --make     # once: SDXL's VAE encoder, as Optimum exports it
    .venv/bin/python bench/load/upscale_bench.py --json /tmp/upscale.json

The offered model is the tiny SDXL-Turbo with its VAE decoder replaced by the full-size one that
bench/gpu/make_bundle.py --config sdxl made (same seed, SDXL's exact VAE configuration), and its image-to-image
add-on by that VAE's encoder. The UNet and text encoders stay tiny: what is measured is the VAE, which is what
grows with the picture. An upscale to 1024x1024 encodes and decodes in 512-pixel tiles, one after the other: 9 of
each. The script runs the passes such a tile is: a 512x512 run from a dropped 512x512 picture (one whole 512x512
encode, then one whole 512x512 decode). With --upscale it then presses Upscale x2 on that result too: on a
software GPU (SwiftShader, 2 cores) one 512x512 pass of SDXL's VAE takes many minutes, so the whole upscale takes
hours there. For each stage it reports the seconds and
the peak resident memory (VmHWM) of the GPU process and of the renderer, read as load_bench.py reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "tests"), str(ROOT / "models")]

MODEL_ID = "upscale-bench"
ENCODER_ID = "upscale-bench-vae-encoder"


def make(bundle: Path) -> None:
    """SDXL's VAE encoder from the same seeded VAE as the bundle's decoder, exported with its sampling inside."""
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    import make_bundle
    import make_tiny_vae_encoder as enc

    make_bundle.base.prepare_torch()
    vae = make_bundle.build_part("vae_decoder", make_bundle.CONFIGS["sdxl"])
    import torch

    path = bundle / "vae" / "onnx" / "vae_encoder_model.onnx"
    axes_in = {0: "batch_size", 2: "height", 3: "width"}
    axes_out = {0: "batch_size", 2: "height_latent", 3: "width_latent"}
    make_bundle.base.export_module(enc.encoder_module(vae), (torch.rand(1, 3, 64, 64) * 2 - 1,), str(path),
                                   ["sample"], ["latent_sample"], {"sample": axes_in, "latent_sample": axes_out})
    print(f"wrote {path} ({path.stat().st_size:,} B)")


def entries(bundle: Path) -> list[dict]:
    """The hybrid model and its add-on, with files served from /models/."""
    from build import sha256_hex

    tiny = json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo.json").read_text())
    (variant,) = tiny["variants"]
    decoder = bundle / "fp32" / "vae_decoder" / "model.onnx"
    files = [f for f in variant["files"] if not f["path"].startswith("vae_decoder/")]
    files.append({"path": "vae_decoder/model.onnx", "url": f"/models/{MODEL_ID}/vae_decoder/model.onnx",
                  "size": decoder.stat().st_size, "sha256": sha256_hex(decoder.read_bytes())})
    variant = {k: v for k, v in variant.items() if k != "decode_tile"}  # the default: 512-pixel tiles
    model = dict(tiny, id=MODEL_ID, name="Upscale benchmark (SDXL VAE, random weights)", bench=False,
                 defaults={"steps": 1, "height": 512, "width": 512}, resolutions=[[512, 512], [1024, 1024]],
                 tier_resolutions={}, variants=[dict(variant, files=files, disk_bytes=sum(f["size"] for f in files))])
    encoder = bundle / "vae" / "onnx" / "vae_encoder_model.onnx"
    addon = json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo-vae-encoder.json").read_text())
    (avariant,) = addon["variants"]
    efile = {"path": "onnx/vae_encoder_model.onnx", "url": f"/models/{ENCODER_ID}/onnx/vae_encoder_model.onnx",
             "size": encoder.stat().st_size, "sha256": sha256_hex(encoder.read_bytes())}
    addon = dict(addon, id=ENCODER_ID, name="Upscale benchmark encoder", encodes_for=[MODEL_ID],
                 variants=[dict(avariant, files=[efile], disk_bytes=efile["size"])])
    return [model, addon]


def models_folder(work: Path, bundle: Path) -> Path:
    models = work / "models"
    if models.exists():
        shutil.rmtree(models)
    for tiny in (ROOT / "models").iterdir():
        if tiny.is_dir():
            shutil.copytree(tiny, models / tiny.name)
    (models / MODEL_ID / "vae_decoder").mkdir(parents=True)
    for f in json.loads((ROOT / "models_manifest" / "tiny-sdxl-turbo.json").read_text())["variants"][0]["files"]:
        if not f["path"].startswith("vae_decoder/"):
            (models / MODEL_ID / f["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / "models" / "tiny-sdxl-turbo" / f["path"], models / MODEL_ID / f["path"])
    os.link(bundle / "fp32" / "vae_decoder" / "model.onnx", models / MODEL_ID / "vae_decoder" / "model.onnx")
    (models / ENCODER_ID / "onnx").mkdir(parents=True)
    os.link(bundle / "vae" / "onnx" / "vae_encoder_model.onnx", models / ENCODER_ID / "onnx" / "vae_encoder_model.onnx")
    return models


def run(args) -> dict:
    from playwright.sync_api import sync_playwright

    import load_bench
    from conftest import BOOT_TIMEOUT_MS, CHROMIUM_ARGS
    from fault_server import make_fault_server
    from pictures import encoded, gradient
    from test_browser_img2img import give

    work, bundle = Path(args.work), Path(args.bundle)
    work.mkdir(parents=True, exist_ok=True)
    models = models_folder(work, bundle)
    site = work / "site"
    if site.exists():
        shutil.rmtree(site)
    shutil.copytree(ROOT / "build" / "site", site)
    manifest = json.loads((site / "models_manifest.json").read_text())
    (site / "models_manifest.json").write_text(json.dumps(dict(manifest, models=manifest["models"] + entries(bundle))))
    profile = work / "profile"
    shutil.rmtree(profile, ignore_errors=True)
    server = make_fault_server(site, models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    result = {"runs": []}
    procs = None
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(profile), executable_path="/usr/bin/chromium",
                                                           args=CHROMIUM_ARGS, service_workers="block",
                                                           accept_downloads=True)
            context.add_init_script(load_bench.RECORD_WORKER)
            page = context.pages[0] if context.pages else context.new_page()
            procs = load_bench.Procs(load_bench.browser_pid(profile))
            procs.thread.start()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.get_by_role("status").filter(has_text="Ready").wait_for(timeout=BOOT_TIMEOUT_MS)
            page.wait_for_function("!document.getElementById('tier').textContent.includes('measuring')",
                                   timeout=BOOT_TIMEOUT_MS * 2)
            row = page.locator(f"#model-{MODEL_ID}")
            row.get_by_role("button", name="Install", exact=True).click()
            page.wait_for_function(f"document.getElementById('model-{MODEL_ID}').dataset.state === 'installed'",
                                   timeout=args.timeout * 1000)
            page.get_by_label("Model", exact=True).select_option(MODEL_ID)
            page.locator("#memory").select_option("")
            page.get_by_label("Prompt", exact=True).fill("a photo of a cat")
            page.get_by_label("Seed", exact=True).fill("7")
            page.get_by_label("Preview every").fill("0")
            give(page, encoded(gradient(512, 512)), "gradient.png")  # dropped on the picture control, as a visitor would
            page.locator("#picture-thumb").wait_for(state="visible", timeout=BOOT_TIMEOUT_MS)
            page.get_by_label("Resolution").select_option("512x512")
            page.get_by_label("Steps").fill("2")
            page.get_by_label("Strength").fill("0.5")
            runs = [("512x512 from a picture, strength 0.5", "Generate")]
            if args.upscale:
                runs.append(("upscale x2 to 1024x1024", "Upscale ×2"))
            for name, button in runs:
                t0 = time.time()
                events, peaks_at, _, end = load_bench.follow(
                    page, procs, lambda: page.get_by_role("button", name=button, exact=True).click(), args.timeout,
                    label=f"{name}: ")
                result["runs"].append({"run": name, "worked": bool(end and end["type"] == "result"),
                                       "error": (end or {}).get("message"), "seconds": round(time.time() - t0, 1),
                                       "stages": load_bench.stage_table(events, peaks_at, time.time() * 1000)})
                print(f"  {name}: {'done' if result['runs'][-1]['worked'] else (end or {}).get('message')} in "
                      f"{time.time() - t0:.0f} s", flush=True)
            context.close()
    finally:
        if procs:
            procs.stop.set()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return result


def table(result: dict) -> str:
    lines = ["| run | stage | seconds | GPU process peak | renderer peak |", "|---|---|---:|---:|---:|"]
    for r in result["runs"]:
        for s in r["stages"]:
            peaks = s["peaks"]
            lines.append(f"| {r['run']} | {s['stage']} | {s['seconds']:.1f} | {peaks.get('gpu-process', 0):,.0f} MiB | "
                         f"{peaks.get('renderer', 0):,.0f} MiB |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make", action="store_true", help="export the full-size VAE encoder into --bundle/vae")
    ap.add_argument("--bundle", default="/tmp/bundles/sdxl", help="make_bundle.py --config sdxl output")
    ap.add_argument("--work", default="/tmp/upscalebench", help="scratch folder (same filesystem as --bundle)")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--upscale", action="store_true", help="also run Upscale x2 to 1024x1024 (hours on SwiftShader)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    if args.make:
        make(Path(args.bundle))
        return 0
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
