# The page (MicroPython via PyScript): reads the controls, talks to the GPU worker, shows
# progress and results. All heavy work happens in the worker, so this thread stays free.
# When the GPU is lost or runs out of memory, this page replaces the worker and carries on.
import json

from pyscript import document, window
from pyscript.ffi import create_proxy, to_js

import gallery_ui
import models_ui
import offline

BENCH_KEY = "lantern.bench"
HISTORY_KEY = "lantern.history"
HISTORY_SIZE = 50
MAX_FAILED_RECOVERIES = 2

models = {}  # id -> {"defaults", "resolutions", "unsuitable"} from the worker's "ready" message
jobs = {}  # id -> {"params", "checkpoint": (step, latents) | None, "failed": int}, unfinished only
results = {}  # id -> {"url", "filename", "parameters", "timing"} for the images of the current batch
state = {"worker": None, "next_id": 1, "selected": None, "caps": None, "retry": None, "bench_id": None,
         "timing": {}, "touched": False, "generation": 0}
on_message_proxy = None


def el(id):
    return document.getElementById(id)


def show_error(text):
    box = el("error")
    box.textContent = text  # textContent, never innerHTML: prompts may hold markup
    box.hidden = not text


def count(id, name):
    """Bump a counter kept on an element as data-NAME. Counters only grow, so a script or a test can
    wait for "at least n" instead of racing a status text that may come and go between two looks."""
    node = el(id)
    node.setAttribute(f"data-{name}", str(int(node.getAttribute(f"data-{name}") or 0) + 1))


def set_status(text, fraction=None):
    el("status").textContent = text
    if fraction is not None:
        el("progress").value = fraction


def set_retry(params, label):
    state["retry"] = params
    button = el("retry")
    button.textContent = label
    button.hidden = params is None


def start_worker():
    state["generation"] += 1  # which worker a request was sent to: a replacement gets only the others
    worker = window.Worker.new("./worker.mjs", to_js({"type": "module"}))
    worker.addEventListener("message", on_message_proxy)
    state["worker"] = worker


def replace_worker():
    """A fresh worker gets a fresh GPU device and nothing allocated; unfinished jobs are re-sent
    when it says it is ready."""
    state["worker"].terminate()
    el("generate").disabled = True
    start_worker()


def send(message):
    state["worker"].postMessage(to_js(message))


def send_job(job_id):
    job = jobs[job_id]
    job["generation"] = state["generation"]
    message = {"type": "generate", "id": job_id, "params": job["params"]}
    if job.get("base_latents") is not None:
        message["type"] = "refine"
        message["latents"] = job["base_latents"]
    if job["checkpoint"]:
        step, latents = job["checkpoint"]
        message["resume"] = {"step": step, "latents": latents}
    send(message)


def fill_resolutions(model_id, resolution=None, steps=None):
    select = el("resolution")
    select.innerHTML = ""
    model = models[model_id]
    d = model["defaults"]
    wanted = resolution or f"{d['height']}x{d['width']}"
    for h, w in model["resolutions"]:
        option = document.createElement("option")
        option.value = option.textContent = f"{h}x{w}"
        option.selected = option.value == wanted
        select.appendChild(option)
    el("steps").value = str(steps or d["steps"])
    reason = model["unsuitable"]
    el("notice").textContent = reason or ""
    el("notice").hidden = not reason


def show_capabilities(caps):
    rows = [("Back end", "WebGPU" if caps.backend == "webgpu" else "CPU (wasm)")]
    if caps.backend == "webgpu":
        rows += [("Adapter", f"{caps.vendor} {caps.architecture} {caps.description}".strip() or "unnamed"),
                 ("Software adapter", "yes" if caps.fallback_adapter else "no"),
                 ("shader-f16", "yes" if caps.shader_f16 else "no"),
                 ("Largest buffer", f"{caps.max_buffer_size // 1048576} MiB"),
                 ("Largest storage binding", f"{caps.max_storage_buffer_binding_size // 1048576} MiB")]
    else:
        rows.append(("Why", caps.reason))
    dl = el("capabilities")
    dl.innerHTML = ""
    for name, value in rows:
        dt = document.createElement("dt")
        dt.textContent = name
        dd = document.createElement("dd")
        dd.textContent = str(value)
        dl.appendChild(dt)
        dl.appendChild(dd)


def device_key(caps):
    return f"{caps.backend}|{caps.vendor}|{caps.architecture}|{caps.description}"


def apply_bench(result):
    runs = ", ".join(f"{t:.0f}" for t in result["runs_ms"])
    el("tier").textContent = (f"Device tier: {result['tier'].upper()} — one UNet step of the {result['model']} "
                              f"bench model at {result['size']} takes {result['step_ms']:.0f} ms (runs: {runs} ms).")
    preset = result["presets"].get(el("model").value)
    if preset and not state["touched"]:  # never overwrite what the user already chose
        fill_resolutions(el("model").value, preset["resolution"], preset["steps"])
        el("preview-every").value = str(preset["preview_every"])


def run_bench():
    job_id = state["next_id"]
    state["next_id"] += 1
    state["bench_id"] = job_id
    el("rebench").disabled = True
    el("tier").textContent = "Device tier: measuring this device…"
    send({"type": "bench", "id": job_id})


def on_bench(msg):
    result = {"tier": msg.tier, "step_ms": msg.step_ms, "model": msg.model, "size": msg.size,
              "runs_ms": [msg.runs_ms[i] for i in range(msg.runs_ms.length)], "presets": {}}
    for model_id in models:
        p = msg.presets[model_id]
        result["presets"][model_id] = {"resolution": p.resolution, "steps": p.steps, "preview_every": p.preview_every}
    window.localStorage.setItem(BENCH_KEY, json.dumps({"device": device_key(state["caps"]), "result": result}))
    el("rebench").disabled = False
    state["bench_id"] = None
    apply_bench(result)
    count("tier", "measured")  # benchmarks finished on this page


def on_bench_failed(msg):
    # The tier stays unmeasured (the models' own defaults apply) until a re-run succeeds.
    state["bench_id"] = None
    el("rebench").disabled = False
    el("tier").textContent = f"Device tier: not measured. {msg.message} Use “Re-run benchmark” to try again."


def on_ready(msg):
    first = not models
    caps = msg.capabilities
    state["caps"] = caps
    select = el("model")
    for i in range(msg.models.length):
        m = msg.models[i]
        resolutions = [(int(m.resolutions[j][0]), int(m.resolutions[j][1])) for j in range(m.resolutions.length)]
        d = m.defaults
        models[m.id] = {"defaults": {"height": d.height, "width": d.width, "steps": d.steps},
                        "resolutions": resolutions, "unsuitable": m.unsuitable, "pipeline": m.pipeline}
        if first and m.pipeline == "sdxl-turbo":  # second-pass models are offered by Refine
            option = document.createElement("option")
            option.value = m.id
            option.textContent = m.name + (" (cannot run here)" if m.unsuitable else "")
            select.appendChild(option)
    show_capabilities(caps)
    el("generate").disabled = False
    if msg.manifest_problem:
        show_error(msg.manifest_problem)
    if first:
        fill_resolutions(select.value)
        if caps.backend != "webgpu":
            el("notice").textContent = (f"{caps.reason} Images are made on the CPU instead, which is much slower; "
                                        "only small models can run.")
            el("notice").hidden = False
        stored = window.localStorage.getItem(BENCH_KEY)
        saved = json.loads(stored) if stored else None
        if saved and saved["device"] == device_key(caps):
            apply_bench(saved["result"])
            el("rebench").disabled = False
        else:
            run_bench()
        set_status(f"Ready ({caps.backend}).", 0)
    else:
        if state["bench_id"]:
            run_bench()
        for job_id in sorted(jobs):
            if jobs[job_id].get("generation") != state["generation"]:
                send_job(job_id)


STAGE_TEXT = {"load": "Loading the model…", "encode prompt": "Encoding the prompt…", "decode": "Decoding the image…"}


def on_progress(msg):
    if msg.stage in ("denoise", "refine") and msg.step:
        count("status", "steps")  # denoising steps shown on this page
    if msg.stage == "denoise":
        text = f"Denoising: step {msg.step} of {msg.steps}…" if msg.step else "Denoising…"
    elif msg.stage == "refine":
        text = f"Refining: step {msg.step} of {msg.steps}…" if msg.step else "Refining…"
    elif msg.stage.startswith("load "):
        text = f"Loading the model ({msg.stage[5:]})…"
    else:
        text = STAGE_TEXT.get(msg.stage, msg.stage)
    set_status(text, msg.fraction)


def on_checkpoint(msg):
    job = jobs.get(msg.id)
    if job:
        job["checkpoint"] = (msg.step, msg.latents)
        job["failed"] = 0  # the run moved on: earlier recoveries worked


def draw(bitmap):
    """Show a bitmap (preview or final) scaled onto the live canvas, in place of the result image."""
    canvas = el("preview")
    canvas.getContext("2d").imageSmoothingEnabled = False
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height)
    bitmap.close()
    canvas.hidden = False
    el("result").hidden = True


def on_preview(msg):
    if msg.id in jobs:
        canvas = el("preview")
        canvas.width, canvas.height = jobs[msg.id]["size"]
        draw(msg.bitmap)
        how = "fast approximation" if msg.kind == "approx" else "decoded"
        el("preview-label").textContent = f"Preview after step {msg.step} ({how})"


def on_result(msg):
    if msg.id not in jobs:
        return
    canvas = el("preview")
    canvas.width = msg.bitmap.width
    canvas.height = msg.bitmap.height
    draw(msg.bitmap)
    el("preview-label").textContent = ""
    state["timing"][msg.id] = (msg.timing.total_ms, msg.timing.preview_ms, bool(msg.refinable))
    set_status("Saving the image…", 1)


def show_result(job_id):
    r = results[job_id]
    p = r["parameters"]
    state["selected"] = job_id
    img = el("result")
    img.src = r["url"]
    img.alt = "Generated image: " + p["prompt"]
    img.hidden = False
    el("preview").hidden = True
    total, previews, refinable = r["timing"]
    el("refine").disabled = not (refinable and r.get("latents") is not None)
    el("caption").textContent = (f"Seed {p['seed']} · {p['steps']} steps · {p['height']}x{p['width']} · {p['model']}"
                                 f" · made in {total / 1000:.1f} s (previews {previews:.0f} ms)")
    el("download").disabled = False
    for button in el("grid").children:
        button.setAttribute("aria-pressed", "true" if button.dataset.job == str(job_id) else "false")


def on_png(msg):
    p = msg.parameters
    blob = window.Blob.new(to_js([msg.png]), to_js({"type": "image/png"}))
    results[msg.id] = {"url": window.URL.createObjectURL(blob), "filename": msg.filename,
                       "parameters": {"prompt": p.prompt, "seed": msg.seed_text, "steps": p.steps, "height": p.height,
                                      "width": p.width, "model": p.model},
                       "timing": state["timing"].pop(msg.id, (0, 0, False))}
    if msg.id in jobs and jobs[msg.id]["checkpoint"]:
        results[msg.id]["latents"] = jobs[msg.id]["checkpoint"][1]  # the final latents, for Refine
    if msg.id in jobs and jobs[msg.id]["batch"] > 1:
        add_to_grid(msg.id)
    show_result(msg.id)
    finish(msg.id, "Done.")


def add_to_grid(job_id):
    grid = el("grid")
    button = document.createElement("button")
    button.type = "button"
    button.dataset.job = str(job_id)
    button.setAttribute("aria-label", f"Show the image with seed {results[job_id]['parameters']['seed']}")
    thumb = document.createElement("img")
    thumb.src = results[job_id]["url"]
    thumb.alt = ""
    button.appendChild(thumb)
    button.addEventListener("click", create_proxy(lambda event: show_result(job_id)))
    grid.appendChild(button)


def clear_results():
    for r in results.values():
        window.URL.revokeObjectURL(r["url"])
    results.clear()
    el("grid").innerHTML = ""


def finish(job_id, text):
    if job_id not in jobs:  # e.g. a queued request the page already dropped
        return
    jobs.pop(job_id)
    count("status", "finished")  # runs ended on this page (done, cancelled or stopped)
    el("cancel").disabled = not jobs
    render_queue()
    if jobs and text == "Done.":
        text = f"Done. {len(jobs)} more to go…"
    set_status(text, 1 if text.startswith("Done.") else 0)


def cancel_job(job_id):
    send({"type": "cancel", "id": job_id})
    if job_id != min(jobs):  # not started yet: gone from the queue at once
        jobs.pop(job_id, None)
        render_queue()


def render_queue():
    """Every unfinished request, oldest (running) first, each with its own cancel button."""
    queue = el("queue")
    queue.innerHTML = ""
    for n, job_id in enumerate(sorted(jobs)):
        p = jobs[job_id]["params"]
        item = document.createElement("li")
        text = document.createElement("span")
        text.textContent = f"{'Running' if n == 0 else 'Queued'}: {p['prompt']} (seed {p['seed']})"
        button = document.createElement("button")
        button.type = "button"
        button.textContent = "✕"
        # Named without the prompt (a prompt's words must not make this a "Prompt" control); described by it.
        text.id = f"queue-item-{job_id}"
        button.setAttribute("aria-label", f"Cancel request {job_id}")
        button.setAttribute("aria-describedby", text.id)
        button.addEventListener("click", create_proxy(lambda event, job_id=job_id: cancel_job(job_id)))
        item.appendChild(text)
        item.appendChild(button)
        queue.appendChild(item)


def on_device_lost(msg):
    job = jobs.get(msg.id)
    if job is None:
        replace_worker()
        return
    job["failed"] += 1
    if job["failed"] > MAX_FAILED_RECOVERIES:
        params = job["params"]
        finish(msg.id, "Stopped.")
        show_error("The GPU keeps failing (device lost again while recovering). Close other GPU-heavy tabs "
                   "or restart the browser, then press Retry.")
        set_retry(params, "Retry")
    else:
        set_status(msg.message)
    replace_worker()


def on_error(msg):
    if msg.kind == "device-lost":
        on_device_lost(msg)
        return
    if msg.id == state["bench_id"]:
        on_bench_failed(msg)
        return
    params = jobs[msg.id]["params"] if msg.id in jobs else None
    show_error(msg.message)
    finish(msg.id, "Stopped.")
    if msg.kind == "oom":
        retry = msg.retry
        if retry:
            set_retry({"prompt": retry.prompt, "seed": retry.seed, "steps": retry.steps,
                       "resolution": retry.resolution, "model": retry.model},
                      f"Retry at {retry.resolution}, {retry.steps} steps")
        else:
            set_retry(params, "Retry")
        replace_worker()  # free everything the failed run allocated


def on_message(event):
    msg = event.data
    kind = msg.type
    if kind == "ready":
        on_ready(msg)
    elif kind == "progress":
        on_progress(msg)
    elif kind == "checkpoint":
        on_checkpoint(msg)
    elif kind == "queued":
        set_status(f"Queued: {msg.ahead} ahead of this one…")
    elif kind == "preview":
        on_preview(msg)
    elif kind == "result":
        on_result(msg)
    elif kind == "png":
        on_png(msg)
    elif kind == "bench":
        on_bench(msg)
    elif kind == "cancelled":
        finish(msg.id, "Cancelled.")
    elif kind == "error":
        on_error(msg)
    elif kind == "models":
        models_ui.on_message(msg)
    elif kind.startswith("gallery-"):
        gallery_ui.on_message(msg)


def submit(params, batch=1, base_latents=None):
    show_error("")
    set_retry(None, "")
    job_id = state["next_id"]
    state["next_id"] += 1
    h, w = (params["resolution"].split("x") + ["64"])[:2]
    size = (int(w), int(h)) if h.isdigit() and w.isdigit() else (64, 64)
    jobs[job_id] = {"params": params, "checkpoint": None, "failed": 0, "batch": batch, "size": size,
                    "base_latents": base_latents}
    el("cancel").disabled = False
    render_queue()
    if len(jobs) == 1:
        set_status("Starting…", 0)
    send_job(job_id)


def refine(event):
    r = results[state["selected"]]
    p = r["parameters"]
    params = {"prompt": p["prompt"], "seed": str(p["seed"]), "steps": str(p["steps"]),
              "resolution": f"{p['height']}x{p['width']}", "model": p["model"],
              "preview_every": el("preview-every").value, "autosave": gallery_ui.autosave()}
    el("refine").disabled = True
    submit(params, base_latents=r["latents"])


def remember_prompt(prompt):
    prompt = prompt.strip()
    if not prompt:
        return
    stored = window.localStorage.getItem(HISTORY_KEY)
    history = [p for p in (json.loads(stored) if stored else []) if p != prompt]
    history = [prompt] + history[: HISTORY_SIZE - 1]
    window.localStorage.setItem(HISTORY_KEY, json.dumps(history))
    render_history(history)


def render_history(history):
    select = el("history")
    while select.options.length > 1:
        select.remove(1)
    for prompt in history:
        option = document.createElement("option")
        option.value = option.textContent = prompt  # text, never markup
        select.appendChild(option)


def use_history(event):
    if el("history").value:
        el("prompt").value = el("history").value
        el("history").value = ""


def generate(event):
    count_text = el("count").value.strip()
    if not count_text.isdigit() or not 1 <= int(count_text) <= 8:
        show_error("Images must be a whole number from 1 to 8.")
        return
    count = int(count_text)
    seed = el("seed").value.strip()
    clear_results()
    remember_prompt(el("prompt").value)
    for k in range(count):  # a batch takes consecutive seeds
        submit({
            "prompt": el("prompt").value,
            "seed": str(int(seed) + k) if seed.isdigit() else seed,
            "steps": el("steps").value,
            "resolution": el("resolution").value,
            "model": el("model").value,
            "preview_every": el("preview-every").value,
            "autosave": gallery_ui.autosave(),
        }, count)


def apply_settings(p):
    """Put saved settings (a dict: prompt, seed, steps, height, width, model) back in the controls."""
    if p["model"] not in models:
        show_error(f"This image was made with the model {p['model']!r}, which is not available here.")
        return
    el("model").value = p["model"]
    fill_resolutions(p["model"], f"{p['height']}x{p['width']}", p["steps"])
    el("prompt").value = p["prompt"]
    el("seed").value = str(p["seed"])
    show_error("")


def retry(event):
    params = state["retry"]
    el("model").value = params["model"]
    fill_resolutions(params["model"], params["resolution"], params["steps"])
    clear_results()
    submit(dict(params, preview_every=el("preview-every").value, autosave=gallery_ui.autosave()))


def cancel(event):
    for job_id in jobs:
        send({"type": "cancel", "id": job_id})


def randomize(event):
    el("seed").value = str(int(window.Math.floor(window.Math.random() * 4294967296)))


def download(event):
    r = results[state["selected"]]
    link = document.createElement("a")
    link.href = r["url"]
    link.download = r["filename"]
    link.click()


def on_model_change(event):
    fill_resolutions(el("model").value)


offline.start()
on_message_proxy = create_proxy(on_message)
start_worker()
gallery_ui.setup(send, apply_settings)
models_ui.setup(send)
el("generate").addEventListener("click", create_proxy(generate))
el("cancel").addEventListener("click", create_proxy(cancel))
el("retry").addEventListener("click", create_proxy(retry))
el("randomize").addEventListener("click", create_proxy(randomize))
el("download").addEventListener("click", create_proxy(download))
el("refine").addEventListener("click", create_proxy(refine))
el("rebench").addEventListener("click", create_proxy(lambda event: run_bench()))
el("model").addEventListener("change", create_proxy(on_model_change))
el("history").addEventListener("change", create_proxy(use_history))
touched_proxy = create_proxy(lambda event: state.__setitem__("touched", True))
for field in ("steps", "resolution", "preview-every"):
    el(field).addEventListener("input", touched_proxy)
stored_history = window.localStorage.getItem(HISTORY_KEY)
render_history(json.loads(stored_history) if stored_history else [])
# Leaving the page ends the worker, which releases its GPU device and every buffer on it.
window.addEventListener("pagehide", create_proxy(lambda event: state["worker"].terminate()))
