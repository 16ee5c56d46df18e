#!/usr/bin/env python3
"""Full-size checkpoint import in headless Chromium (issue #26): a random-weight SDXL checkpoint of the real
size, in the single-file (A1111/ComfyUI) layout, picked in the Models panel, converted in the worker, then loaded.

    python bench/load/checkpoint_bench.py [--work /tmp/ckbench] [--json out.json] [--keep] [--refiner]

Writes --work/sd_xl_random.safetensors (6.94 GB: every tensor the full-size templates take, SGM names, F16
normal values of std 0.02; tests/checkpoints.py single_file_shapes), unless it is there. Then, against this
checkout's build/site: pick the file, read what the page found, press "Convert and keep" (few-step kind) and
follow the import to "is ready", then press Generate (512x512, 1 step) and stop once every session is created
(SwiftShader would take hours over the UNet itself). Reports the conversion's time and MB/s (source bytes over
wall time), the converted size on disk, the peak resident memory of the renderer (page + worker) and GPU
process during the import and per load stage (bench/load/load_bench.py's Procs: VmHWM per stage), and each
part's session creation time.

With --refiner the checkpoint is the SDXL refiner's shapes instead (sd_xl_refiner_random.safetensors, 6.08 GB:
refiner UNet, bigG, VAE), imported as the refiner; only the import is measured (a refiner loads in Refine's second
pass, after a full-size base run that SwiftShader cannot finish).

Needs ~7 GB of disk for the checkpoint, ~4 GB for the profile's OPFS, and ~10 GB of free RAM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]
from load_bench import RECORD_WORKER, Procs, browser_pid, follow, stage_table  # noqa: E402

NAME = "Random SDXL"


REFINER_PARTS = ("refiner_unet", "text_encoder_2", "vae_decoder", "vae_encoder")


def write_checkpoint(path: Path, refiner: bool = False) -> int:
    from checkpoints import single_file_shapes, write_single_file

    rng = np.random.Generator(np.random.PCG64(26))
    shapes = single_file_shapes("sdxl", REFINER_PARTS, {"text_encoder_2": 0}) if refiner else single_file_shapes("sdxl")
    return write_single_file(path, shapes, lambda name, shape: rng.standard_normal(shape, dtype=np.float32) * 0.02)


def run(args) -> dict:
    from playwright.sync_api import sync_playwright

    from conftest import BOOT_TIMEOUT_MS, CHROMIUM_ARGS
    from fault_server import make_fault_server

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / ("sd_xl_refiner_random.safetensors" if args.refiner else "sd_xl_random.safetensors")
    if not checkpoint.exists():
        t0 = time.time()
        write_checkpoint(checkpoint, args.refiner)
        print(f"wrote {checkpoint} in {time.time() - t0:.0f} s", flush=True)
    size = checkpoint.stat().st_size
    result = {"checkpoint_bytes": size}
    profile = work / "profile"
    shutil.rmtree(profile, ignore_errors=True)
    server = make_fault_server(ROOT / "build" / "site", ROOT / "models")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    procs = None
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(profile), executable_path="/usr/bin/chromium",
                                                           args=CHROMIUM_ARGS, service_workers="block")
            context.add_init_script(RECORD_WORKER)
            page = context.pages[0] if context.pages else context.new_page()
            crashed = []
            page.on("crash", lambda _: crashed.append(time.time()))
            procs = Procs(browser_pid(profile))
            procs.thread.start()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.get_by_role("status").filter(has_text="Ready").wait_for(timeout=BOOT_TIMEOUT_MS)
            page.wait_for_function("!document.getElementById('tier').textContent.includes('measuring')",
                                   timeout=BOOT_TIMEOUT_MS * 2)
            procs.peaks()
            t0 = time.time()
            page.set_input_files("#checkpoint-file", str(checkpoint))
            page.locator("#checkpoint-found").filter(has_text="Found").wait_for(timeout=600_000)
            result["found"] = page.locator("#checkpoint-found").text_content()
            result["found_seconds"] = round(time.time() - t0, 1)
            print(f"  {result['found_seconds']} s  {result['found']}", flush=True)
            page.locator("#checkpoint-name").fill(NAME)
            kind = "SDXL refiner (the second pass of Refine)" if args.refiner else "Turbo or Lightning-like"
            page.get_by_label(kind).check()
            t0 = time.time()
            page.get_by_role("button", name="Convert and keep").click()
            message = page.locator("#checkpoint-message")
            shown = 0.0
            while time.time() - t0 < args.timeout and not crashed:
                text = message.text_content() or ""
                if time.time() - shown >= 15:
                    print(f"  {time.time() - t0:7.1f} s  {text}", flush=True)
                    shown = time.time()
                if "is ready" in text or message.get_attribute("role") == "alert":
                    break
                time.sleep(1)
            seconds = time.time() - t0
            result["import"] = {"seconds": round(seconds, 1), "mb_per_s": round(size / 1e6 / seconds, 1),
                                "message": message.text_content(), "peaks": procs.peaks(), "crashed": bool(crashed)}
            row = page.locator('#models-list li[id^="model-own-"] .model-details')
            result["import"]["details"] = row.text_content() if row.count() else None
            print(f"  import: {result['import']}", flush=True)
            if "is ready" not in (result["import"]["message"] or "") or args.refiner:
                return result
            page.get_by_label("Prompt", exact=True).fill("a photo of a cat")
            page.get_by_label("Steps").fill("1")
            page.get_by_label("Resolution").select_option("512x512")
            t_click = time.time()
            events, peaks_at, current, end = follow(page, procs, lambda: page.get_by_role(
                "button", name="Generate", exact=True).click(), args.timeout, crashed, "encode prompt")
            if current not in peaks_at or end is None or end.get("type") == "exception":
                peaks_at[current] = procs.peaks()
            result["load"] = {"stages": stage_table(events, peaks_at, time.time() * 1000),
                              "ended": end, "seconds": round(time.time() - t_click, 1), "crashed": bool(crashed)}
            context.close()
    finally:
        if procs:
            procs.stop.set()
        server.shutdown()
        if not args.keep:
            shutil.rmtree(profile, ignore_errors=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/ckbench")
    ap.add_argument("--json")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--keep", action="store_true", help="keep the browser profile (the converted model in OPFS)")
    ap.add_argument("--refiner", action="store_true", help="an SDXL refiner checkpoint, imported as the refiner")
    args = ap.parse_args()
    result = run(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    if args.refiner:
        return 0 if "is ready" in (result.get("import", {}).get("message") or "") else 1
    return 0 if result.get("load", {}).get("ended", {}).get("type") == "load-only" else 1


if __name__ == "__main__":
    sys.exit(main())
