#!/usr/bin/env python3
"""Real-size load benchmark in headless Chromium (issue #24, full-size load path): install an SDXL-size
random-weight bundle through the Models panel, generate one small image, and report per part the session
creation time and the peak resident memory of the renderer (page + worker) and of the GPU process.

    python bench/load/load_bench.py --site-root /tmp/wt-before --variant q4f16 [--bundle /tmp/bundles/sdxl]
                                    [--work /tmp/loadbench] [--json out.json] [--resolution 64x64 --steps 1]

--site-root is a checkout of the state to measure (its build/site must exist: `python build.py`), so one
script measures any commit: the offered entry is that checkout's own models_manifest/sdxl-turbo.json
variant (`--variant q4f16`: webnn's single-file graphs, as the commit loads them -- whole files, or split
at install where its entry says "convert": {"to": "external-data"}; `--variant q4`: converted at install to
fp32 activations), its files replaced by the bundle's q4f16 files (bench/gpu/make_bundle.py --config sdxl,
the real files' sizes within 0.4%), with requires.webgpu/shader_f16 false and 64x64 added to its sizes so
the app picks it here.

q4f16 runs without --enable-unsafe-webgpu (SwiftShader has no shader-f16): the app then runs onnxruntime-web's
wasm (CPU) back end, whose session parsing and memory behaviour at load are the ones in question. q4 runs on
SwiftShader WebGPU (tests/conftest.py CHROMIUM_ARGS).

How it measures
- Stages: an init script wraps the page's `Worker` constructor and records each message of the app worker
  (progress stages "load text_encoder" ..., "encode prompt", "denoise", "decode", result, error) with
  Date.now(). A part's creation time is from its "load <part>" stage to the next stage.
- Memory: the Chromium processes are the launched browser's descendants, classed by --type (renderer,
  gpu-process, ...). At every new stage the script reads each process's VmHWM (peak resident set,
  /proc/<pid>/status) -- the peak during the stage that just ended -- then resets it
  (`echo 5 > /proc/<pid>/clear_refs`, needs root or the same user). A thread also samples VmRSS every 100 ms
  (kept in the JSON). The install is measured the same way (its own peak row). Peaks are MiB; "renderer" is
  the largest renderer process (the page and its dedicated worker share it).
- Poll granularity is ~100 ms, so a stage's peak can include up to that much of the next stage.

Needs: the bundle (make_bundle.py --config sdxl: ~20 GB of disk, 21 GB RAM while it builds), per run a
fresh Chromium profile on disk holding the installed model (q4f16: ~2.7 GB before / ~2.7 GB after (split);
q4: up to ~8 GB), deleted afterwards; RAM: up to ~7 GB for the browser (BEFORE's single-file q4f16 path
peaks near the 4 GiB wasm heap in the renderer plus copies), so keep >= 10 GB free. The models folder is
hard links into the bundle (same filesystem as --work), not copies.
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

MIB = 2**20
PARTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
MODEL_ID = "sdxl-bench"

RECORD_WORKER = """(() => {
  const Base = window.Worker;
  window.__lb = [];
  window.Worker = class extends Base {
    constructor(url, options) {
      super(url, options);
      if (!String(url).includes('worker.mjs')) return;
      this.addEventListener('message', (event) => {
        const d = event.data;
        if (!d || typeof d !== 'object' || !['progress', 'error', 'result', 'png', 'ready'].includes(d.type)) return;
        window.__lb.push({t: Date.now(), type: d.type, id: d.id ?? null, stage: d.stage ?? null,
                          step: d.step ?? null, message: d.message ?? null, kind: d.kind ?? null,
                          timing: d.timing ?? null, ort_build: d.capabilities ? (d.capabilities.ort_build ?? null) : null,
                          backend: d.capabilities ? (d.capabilities.backend ?? null) : null});
      });
    }
  };
})();"""


# ---------------------------------------------------------------- processes
def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def browser_pid(profile: Path) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and b"chrom" in cmd[0] and f"--user-data-dir={profile}".encode() in cmd \
                and not any(a.startswith(b"--type=") for a in cmd):
            return int(pid)
    return None


def kind_of(pid: int) -> str:
    try:  # child processes rewrite their title: one space-joined string
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
    except OSError:
        return "gone"
    for a in cmd:
        if a.startswith(b"--type="):
            kind = a[7:].decode()
            if kind == "utility":
                sub = next((b.decode().split("=", 1)[1] for b in cmd if b.startswith(b"--utility-sub-type=")), "")
                return f"utility:{sub.rsplit('.', 1)[-1]}"
            return kind
    return "browser" if cmd and b"chrom" in cmd[0] else "other"


def status_kb(pid: int, *fields) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in fields:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def reset_peak(pids):
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


class Procs:
    """The browser's processes; peaks per stage from VmHWM, plus a 100 ms VmRSS sampler."""

    def __init__(self, root: int):
        self.root = root
        self.samples = []  # (time, {kind: max rss MiB})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def pids(self):
        return descendants(self.root)

    def peaks(self) -> dict:
        """Per process kind, the largest VmHWM (MiB) since the last reset; then reset."""
        pids = self.pids()
        by_kind: dict[str, float] = {}
        for pid in pids:
            hwm = status_kb(pid, "VmHWM").get("VmHWM")
            if hwm is not None:
                kind = kind_of(pid)
                by_kind[kind] = max(by_kind.get(kind, 0.0), hwm / 1024)
        reset_peak(pids)
        return by_kind

    def _sample(self):
        while not self.stop.is_set():
            snap: dict[str, float] = {}
            for pid in self.pids():
                rss = status_kb(pid, "VmRSS").get("VmRSS")
                if rss is not None:
                    kind = kind_of(pid)
                    snap[kind] = max(snap.get(kind, 0.0), rss / 1024)
            self.samples.append((time.time(), snap))
            time.sleep(0.1)


# ---------------------------------------------------------------- the model entry
def bench_entry(site_root: Path, bundle: Path, variant_id: str, resolution, override=None) -> dict:
    entry = json.loads((site_root / "models_manifest" / "sdxl-turbo.json").read_text())
    made = json.loads((bundle / "manifest.json").read_text())
    files = next(v for v in made["variants"] if v["id"] == "q4f16")["files"]
    files = [dict(f, url=f"/models/{MODEL_ID}/q4f16/{f['path']}") for f in files]
    variant = next(v for v in entry["variants"] if v["id"] == variant_id)
    variant = dict(variant, files=files, disk_bytes=sum(f["size"] for f in files), gpu_memory_bytes=0,
                   requires={"webgpu": False, "shader_f16": False}, **(override or {}))
    resolutions = list(entry["resolutions"])
    if list(resolution) not in resolutions:
        resolutions = [list(resolution)] + resolutions
    return dict(entry, id=MODEL_ID, name=f"SDXL-Turbo benchmark ({variant_id}, random weights)", bench=False,
                resolutions=resolutions, variants=[variant])


def models_folder(work: Path, site_root: Path, bundle: Path) -> Path:
    """Copies of the tiny models (the first visit's device bench installs one) and hard links to the bundle's
    q4f16 files (serve.py follows no symlink out of its folder)."""
    models = work / "models"
    if models.exists():
        shutil.rmtree(models)
    models.mkdir(parents=True)
    for tiny in (site_root / "models").iterdir():
        if tiny.is_dir() and not tiny.name.startswith("__"):
            shutil.copytree(tiny, models / tiny.name)
    src = bundle / "q4f16"
    for path in src.rglob("*"):
        target = models / MODEL_ID / "q4f16" / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return models


# ---------------------------------------------------------------- the run
def follow(page, procs, start, timeout, crashed=(), stop_at=None, label=""):
    """Run `start()` (a click that starts one job) and follow the app worker's messages until its result or
    error: (events, peaks per stage, the last stage, the ending message). `stop_at`: end at that stage."""
    seen = len(page.evaluate("window.__lb"))
    procs.peaks()
    peaks_at: dict[str, dict] = {}
    events, current, end = [], "(before load)", None
    t0 = time.time()
    start()
    while time.time() - t0 < timeout and not crashed and end is None:
        try:
            new = page.evaluate(f"window.__lb.slice({seen})")
        except Exception as e:  # noqa: BLE001  (the page crashed or closed)
            return events, peaks_at, current, {"type": "exception", "message": str(e)}
        for e in new:
            seen += 1
            if e["type"] == "progress" and e["stage"] == current:
                continue
            stamp = procs.peaks()
            old = peaks_at.get(current, {})
            peaks_at[current] = {k: max(v, old.get(k, 0)) for k, v in stamp.items()}
            events.append(e)
            if e["type"] == "progress":
                current = e["stage"]
                print(f"  {label}{time.time() - t0:7.1f} s  {e['stage']}", flush=True)
                if current == stop_at:
                    end = {"type": "load-only", "message": f"stopped at {stop_at}"}
            elif e["type"] in ("result", "error"):
                end = e
                print(f"  {label}{time.time() - t0:7.1f} s  {e['type']} {e.get('message') or ''}", flush=True)
        time.sleep(0.1)
    return events, peaks_at, current, end


def stage_table(events, peaks_at, t_end):
    """Rows (stage, seconds, peaks) from the recorded worker messages of the generate job."""
    rows = []
    marks = [e for e in events if e["type"] == "progress"]
    for i, e in enumerate(marks):
        if marks[i - 1]["stage"] == e["stage"] and i and e["stage"] in ("denoise",):
            continue
        nxt = next((m["t"] for m in marks[i + 1:] if m["stage"] != e["stage"]), None)
        if nxt is None:
            nxt = next((x["t"] for x in events if x["t"] >= e["t"] and x["type"] in ("result", "error")), t_end)
        rows.append({"stage": e["stage"], "start": e["t"], "seconds": (nxt - e["t"]) / 1000})
    for row in rows:
        row["peaks"] = peaks_at.get(row["stage"], {})
    return rows


def run(args) -> dict:
    site_root = Path(args.site_root).resolve()
    sys.path[:0] = [str(site_root), str(site_root / "tests")]
    from playwright.sync_api import sync_playwright

    from conftest import BOOT_TIMEOUT_MS, CHROMIUM_ARGS
    from fault_server import make_fault_server

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle)
    height, width = map(int, args.resolution.split("x"))
    entry = bench_entry(site_root, bundle, args.variant, (height, width), json.loads(args.variant_override or "{}"))
    models = models_folder(work, site_root, bundle)
    site = work / "site"
    if site.exists():
        shutil.rmtree(site)
    shutil.copytree(site_root / "build" / "site", site)
    manifest = json.loads((site / "models_manifest.json").read_text())
    (site / "models_manifest.json").write_text(json.dumps(dict(manifest, models=manifest["models"] + [entry])))
    profile = work / "profile"
    if profile.exists():
        shutil.rmtree(profile)
    webgpu = args.variant != "q4f16"
    flags = CHROMIUM_ARGS if webgpu else [a for a in CHROMIUM_ARGS if a != "--enable-unsafe-webgpu"]
    result = {"site_root": str(site_root), "commit": os.popen(f"git -C {site_root} rev-parse --short HEAD").read().strip(),
              "variant": args.variant, "webgpu_flag": webgpu, "resolution": args.resolution, "steps": args.steps,
              "files": {f["path"]: f["size"] for f in entry["variants"][0]["files"]},
              "variant_fields": {k: v for k, v in entry["variants"][0].items() if k != "files"}}
    server = make_fault_server(site, models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log = open(work / f"console-{result['commit']}-{args.variant}.log", "w")
    procs = None
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(profile), executable_path="/usr/bin/chromium",
                                                           args=flags, service_workers="block", accept_downloads=True)
            context.add_init_script(RECORD_WORKER)
            ort_files = []
            context.on("request", lambda r: ort_files.append(r.url.rsplit("/", 1)[1])
                       if "/vendor/ort/" in r.url else None)
            context.on("console", lambda m: log.write(f"{time.time():.3f} {m.type}: {m.text}\n"))
            page = context.pages[0] if context.pages else context.new_page()
            crashed = []
            page.on("crash", lambda _: crashed.append(time.time()))
            root = browser_pid(profile)
            procs = Procs(root)
            procs.thread.start()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.get_by_role("status").filter(has_text="Ready").wait_for(timeout=BOOT_TIMEOUT_MS)
            page.wait_for_function("!document.getElementById('tier').textContent.includes('measuring')",
                                   timeout=BOOT_TIMEOUT_MS * 2)
            ready = next((e for e in page.evaluate("window.__lb") if e["type"] == "ready"), {})
            result["backend"], result["ort_build"] = ready.get("backend"), ready.get("ort_build")
            print(f"[{args.variant} {result['commit']}] ready: backend {result['backend']}, ort build "
                  f"{result['ort_build']}", flush=True)
            time.sleep(2)
            # ---- install
            procs.peaks()
            row = page.locator(f"#model-{MODEL_ID}")
            t0 = time.time()
            row.get_by_role("button", name="Install", exact=True).click()
            state, states = None, []
            while time.time() - t0 < args.timeout:
                state = row.get_attribute("data-state")
                if not states or states[-1][1] != state:
                    states.append((round(time.time() - t0, 1), state))
                    print(f"  install: {states[-1]}", flush=True)
                if state == "installed" or (state in ("failed", "damaged", "error", "available") and time.time() - t0 > 5):
                    break
                time.sleep(0.5)
            install_s = time.time() - t0
            result["install"] = {"seconds": round(install_s, 1), "states": states, "peaks": procs.peaks(),
                                 "message": page.locator(f"#model-{MODEL_ID}-message").text_content()
                                 if page.locator(f"#model-{MODEL_ID}-message").count() else None}
            try:
                result["install"]["opfs"] = page.evaluate("""async (model) => {
                    const models = await (await navigator.storage.getDirectory()).getDirectoryHandle('models');
                    const folder = await models.getDirectoryHandle(model);
                    return JSON.parse(await (await (await folder.getFileHandle('installed.json')).getFile()).text());
                }""", MODEL_ID)
            except Exception as e:  # noqa: BLE001
                result["install"]["opfs"] = f"{e}"
            print(f"  install: {state} in {install_s:.0f} s, peaks {result['install']['peaks']}", flush=True)
            if state != "installed":
                result["worked"] = False
                result["error"] = f"install ended {state}: {result['install']['message']}"
                return result
            # ---- generate
            page.get_by_label("Model", exact=True).select_option(MODEL_ID)
            if page.locator("#memory").count():
                page.locator("#memory").select_option("")
            page.get_by_label("Prompt", exact=True).fill("a photo of a cat")
            page.get_by_label("Seed", exact=True).fill("7")
            page.get_by_label("Steps").fill(str(args.steps))
            page.get_by_label("Resolution").select_option(args.resolution)
            t_click = time.time()
            events, peaks_at, current, end = follow(page, procs, lambda: page.get_by_role(
                "button", name="Generate", exact=True).click(), args.timeout, crashed,
                "encode prompt" if args.load_only else None)  # --load-only: every session is created by then
            t_end = time.time() * 1000
            if current not in peaks_at or end is None or end.get("type") == "exception":
                peaks_at[current] = procs.peaks()
            result["stages"] = stage_table(events, peaks_at, t_end)
            result["crashed"] = bool(crashed)
            result["ort_files"] = sorted(set(ort_files))
            result["worked"] = bool(end and end["type"] == "result") or ("loaded" if end and end["type"] == "load-only" else False)
            result["error"] = None if result["worked"] else (
                "renderer crashed" if crashed else (end or {}).get("message") or "timed out")
            result["total_s"] = round(time.time() - t_click, 1)
            try:
                result["status_text"] = page.locator("#status").text_content(timeout=5000)
                result["image_src"] = bool(page.locator("#result").get_attribute("src", timeout=5000))
            except Exception:  # noqa: BLE001
                pass
            context.close()
    finally:
        if procs:
            procs.stop.set()
            result["rss_samples"] = procs.samples
        server.shutdown()
        log.close()
        if not args.keep_profile:
            shutil.rmtree(profile, ignore_errors=True)
            shutil.rmtree(work / "site", ignore_errors=True)
            shutil.rmtree(work / "models", ignore_errors=True)
    return result


def summary(result: dict) -> str:
    lines = [f"{result['commit']} {result['variant']} ({result.get('backend')}, ORT {result.get('ort_build')}, "
             f"{', '.join(result.get('ort_files', []))}): worked={result.get('worked')} "
             f"{'' if result.get('worked') else result.get('error')}"]
    inst = result.get("install", {})
    if inst:
        pk = inst.get("peaks", {})
        lines.append(f"  install {inst['seconds']:.0f} s  renderer {pk.get('renderer', 0):.0f} MiB  "
                     f"gpu {pk.get('gpu-process', 0):.0f} MiB  browser {pk.get('browser', 0):.0f} MiB")
    for row in result.get("stages", []):
        pk = row["peaks"]
        lines.append(f"  {row['stage']:<22} {row['seconds']:8.1f} s  renderer {pk.get('renderer', 0):7.0f} MiB  "
                     f"gpu {pk.get('gpu-process', 0):7.0f} MiB")
    return "\n".join(lines)


def table(results) -> str:
    """part x (variant, commit): creation seconds, peak renderer / GPU-process MiB, worked."""
    out = ["| part | variant | state (ORT build) | creation s | peak renderer MiB | peak GPU process MiB | worked |",
           "|---|---|---|---:|---:|---:|---|"]
    for r in results:
        state = f"{r['commit']} ({r.get('ort_build') or 'asyncify'}, {r.get('backend')})"
        inst = r.get("install", {})
        if inst:
            pk = inst.get("peaks", {})
            out.append(f"| install | {r['variant']} | {state} | {inst['seconds']:.0f} | {pk.get('renderer', 0):.0f} | "
                       f"{pk.get('gpu-process', 0):.0f} | {inst['states'][-1][1] if inst.get('states') else ''} |")
        rows = {row["stage"]: row for row in r.get("stages", [])}
        last = r.get("stages", [{}])[-1].get("stage") if r.get("stages") else None
        for part in PARTS + ("encode prompt", "denoise", "decode"):
            stage = f"load {part}" if part in PARTS else part
            row = rows.get(stage)
            if row is None:
                why = "not run (--load-only)" if r.get("worked") == "loaded" else "not reached"
                out.append(f"| {part} | {r['variant']} | {state} | – | – | – | {why} |")
                continue
            failed = not r.get("worked") and stage == last
            pk = row["peaks"]
            worked = f"**failed**: {r.get('error')}" if failed else "yes" if part in PARTS else ""
            if part == "decode" and r.get("worked"):
                worked = "image out"
            out.append(f"| {part} | {r['variant']} | {state} | {row['seconds']:.1f} | {pk.get('renderer', 0):.0f} | "
                       f"{pk.get('gpu-process', 0):.0f} | {worked} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site-root", help="checkout of the state to measure (with build/site)")
    ap.add_argument("--variant", choices=("q4f16", "q4"), default="q4f16")
    ap.add_argument("--bundle", default="/tmp/bundles/sdxl", help="make_bundle.py --config sdxl output")
    ap.add_argument("--work", default="/tmp/loadbench", help="scratch folder (same filesystem as --bundle)")
    ap.add_argument("--resolution", default="64x64")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for the install, and for the generation")
    ap.add_argument("--json", help="write the full result (stages, peaks, RSS samples) here")
    ap.add_argument("--keep-profile", action="store_true")
    ap.add_argument("--load-only", action="store_true", help="stop once every session is created (SwiftShader runs "
                    "of the full-size encoders and UNet take many minutes)")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print a markdown table of earlier --json results")
    ap.add_argument("--variant-override", help="JSON merged into the offered variant (e.g. a test bundle's outputs)")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(Path(p).read_text()) for p in args.table]))
        return 0
    if not args.site_root:
        ap.error("--site-root is required")
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
