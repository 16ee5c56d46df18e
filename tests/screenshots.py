"""Screenshots of the studio's main states at a desktop and a phone width, light and dark, for review.

    python build.py && python tests/screenshots.py [--out build/screenshots]

Serves build/site (with the tiny test models), drives headless Chromium on SwiftShader WebGPU through a
first visit (welcome and bench), a refused value, a run's preview, a result (with Upscale), a batch, the
gallery viewer, the models panel, a picture to start from with guidance and a negative prompt, and a refused
picture, and writes one PNG per state and width: `<state>-<width>[-dark].png`. Not part of
the test suite; it prints the files it wrote.
"""

import argparse
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from conftest import BOOT_TIMEOUT_MS, CHROMIUM_ARGS, RUN_TIMEOUT_MS, SITE, tiny_by_default  # noqa: E402
from fault_server import make_fault_server  # noqa: E402
from pictures import encoded, gradient  # noqa: E402
from test_browser import counter, fill, wait_counter  # noqa: E402
from test_browser_img2img import give  # noqa: E402

WIDTHS = (1280, 390)
PROMPT = "a lighthouse at dusk, oil painting"


def shoot(target, out, name, width, scheme, written, **options):
    """A screenshot of `target` (the page, or one part of it as a locator)."""
    path = out / f"{name}-{width}{'-dark' if scheme == 'dark' else ''}.png"
    target.screenshot(path=path, **options)
    written.append(path)


def tour(browser, server, out, width, scheme, written):
    context = tiny_by_default(browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme,
                                                  service_workers="block"))
    page = context.new_page()
    page.goto(server)
    page.get_by_role("status").filter(has_text="Ready").wait_for(timeout=BOOT_TIMEOUT_MS)
    shoot(page, out, "1-first-visit", width, scheme, written, full_page=False)
    wait_counter(page, "measured", 1, "#tier")
    fill(page, steps="9")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#steps-error")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    shoot(page, out, "2-refused-value", width, scheme, written, full_page=False)
    fill(page, steps="4")
    page.get_by_label("Preview every").fill("1")
    steps = counter(page, "steps")
    page.get_by_role("button", name="Generate").click()
    wait_counter(page, "steps", steps + 2)
    shoot(page, out, "3-running", width, scheme, written, full_page=False)
    wait_counter(page, "finished", counter(page, "finished") + 1)
    shoot(page, out, "4-result", width, scheme, written, full_page=True)
    fill(page, seed="8", steps="1")
    page.get_by_label("Images").fill("4")
    finished = counter(page, "finished")
    page.get_by_role("button", name="Generate").click()
    wait_counter(page, "finished", finished + 4)
    shoot(page, out, "5-batch", width, scheme, written, full_page=False)
    page.locator("#gallery-list > li").first.get_by_role("button", name="Open").click()
    expect(page.locator("#gallery-viewer")).to_be_visible()
    shoot(page, out, "6-gallery-viewer", width, scheme, written, full_page=False)
    page.get_by_role("button", name="Close").click()
    page.get_by_text("Device details", exact=True).click()
    shoot(page.locator(".system"), out, "7-models-and-device", width, scheme, written)
    give(page, encoded(gradient(96, 128)), "harbour.png")
    expect(page.locator("#picture-thumb")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    page.get_by_label("Guidance").fill("2.5")
    page.get_by_label("Negative prompt").fill("blurry, low quality")
    shoot(page.locator("#controls"), out, "8-picture-and-guidance", width, scheme, written)
    give(page, b"not a picture", "notes.png")
    expect(page.locator("#picture-error")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    shoot(page.locator("#picture-area"), out, "9-picture-refused", width, scheme, written)
    context.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    httpd = make_fault_server(SITE, ROOT / "models")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = f"http://127.0.0.1:{httpd.server_address[1]}/"
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for width in WIDTHS:
            for scheme in ("light", "dark"):
                tour(browser, server, args.out, width, scheme, written)
        browser.close()
    httpd.shutdown()
    for path in written:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
