"""Benchmark: how long the generator takes to say "Ready", against a bare Pyodide boot in the same run.

    python build.py && python tests/bench_startup.py [--rounds 3] [--site build/site]

Each round, in headless Chromium (WebGPU on SwiftShader) against the project's server:
- bare: a worker that only boots Pyodide with numpy and Pillow, in a blank page of the same origin;
- first visit: a new browser profile opens the app (nothing cached, the bench model not installed);
- revisit: the same profile opens the app again (HTTP cache warm, models installed).
For the visits it prints the time from navigation to "Ready." and the worker's own start-up steps
(`lanternBoot`, ms since the worker began), and the medians as ratios to the bare boot. Ratios, because
the machine is noisy; no figure here is a pass or fail.
"""

import argparse
import statistics
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from playwright.sync_api import sync_playwright  # noqa: E402

from conftest import BOOT_TIMEOUT_MS, CHROMIUM_ARGS, SITE, tiny_by_default  # noqa: E402
from fault_server import make_fault_server  # noqa: E402

BARE_WORKER = """import { loadPyodide } from "./vendor/pyodide/pyodide.mjs";
const py = await loadPyodide({ indexURL: new URL("vendor/pyodide/", import.meta.url).href });
await py.loadPackage(["numpy", "pillow"], { messageCallback: () => {} });
py.runPython("import numpy, PIL.Image");
postMessage("ready");
"""
BARE_BOOT = """() => new Promise((resolve, reject) => {
    const t0 = performance.now(), worker = new Worker("./__bare-worker.mjs", {type: "module"});
    worker.onmessage = () => { resolve(performance.now() - t0); worker.terminate(); };
    worker.onerror = (e) => reject(new Error(e.message));
})"""
READY = "document.getElementById('status')?.textContent === 'Ready.' && performance.now()"


def bare_boot(browser, server):
    context = browser.new_context()
    context.route(server + "__bench.html", lambda r: r.fulfill(body="<!doctype html><title>bench</title>",
                                                              content_type="text/html"))
    context.route(server + "__bare-worker.mjs", lambda r: r.fulfill(body=BARE_WORKER, content_type="text/javascript"))
    page = context.new_page()
    page.goto(server + "__bench.html")
    ms = page.evaluate(BARE_BOOT)
    context.close()
    return ms


def visit(page, server):
    """(ms from navigation to "Ready.", the worker's start-up steps)."""
    with page.expect_worker(lambda w: w.url.endswith("/worker.mjs")) as info:
        page.goto(server)
    ms = page.wait_for_function(READY, timeout=BOOT_TIMEOUT_MS, polling=10).json_value()
    return ms, info.value.evaluate("globalThis.lanternBoot || []")  # an older build keeps no trace


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--site", type=Path, default=SITE, help="a built site (default: build/site), e.g. an "
                                                                "older build to compare with")
    args = parser.parse_args()
    httpd = make_fault_server(args.site, ROOT / "models")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = f"http://127.0.0.1:{httpd.server_address[1]}/"
    figures = {"bare": [], "first visit": [], "revisit": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for n in range(args.rounds):
            figures["bare"].append(bare_boot(browser, server))
            context = tiny_by_default(browser.new_context(service_workers="block"))
            page = context.new_page()
            for kind in ("first visit", "revisit"):
                ms, steps = visit(page, server)
                figures[kind].append(ms)
                trace = ", ".join(f"{step} {at}" for step, at in steps)
                print(f"round {n + 1} {kind}: ready at {ms:.0f} ms; worker: {trace}")
                if kind == "first visit":  # the bench model is installed and measured before the revisit
                    page.wait_for_function("+(document.getElementById('tier').dataset.measured || 0) >= 1",
                                           timeout=BOOT_TIMEOUT_MS)
            context.close()
            print(f"round {n + 1} bare Pyodide + numpy + Pillow worker: {figures['bare'][-1]:.0f} ms")
        browser.close()
    httpd.shutdown()
    bare = statistics.median(figures["bare"])
    for kind, values in figures.items():
        median = statistics.median(values)
        print(f"{kind:12s} median {median:6.0f} ms = {median / bare:.2f} x bare  (runs: "
              f"{', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
