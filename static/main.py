# The page (MicroPython via PyScript): reads the controls, talks to the GPU worker, shows
# progress and results. All heavy work happens in the worker, so this thread stays free.
from pyscript import document, window
from pyscript.ffi import create_proxy, to_js

worker = window.Worker.new("./worker.mjs", to_js({"type": "module"}))
models = {}  # id -> {"defaults", "resolutions"} from the worker's "ready" message
jobs = []  # ids of generate requests not finished yet, oldest first
state = {"next_id": 1, "png_url": None, "filename": None}


def el(id):
    return document.getElementById(id)


def show_error(text):
    box = el("error")
    box.textContent = text  # textContent, never innerHTML: prompts may hold markup
    box.hidden = not text


def set_status(text, fraction=None):
    el("status").textContent = text
    if fraction is not None:
        el("progress").value = fraction


def fill_resolutions(model_id):
    select = el("resolution")
    select.innerHTML = ""
    model = models[model_id]
    d = model["defaults"]
    for h, w in model["resolutions"]:
        option = document.createElement("option")
        option.value = option.textContent = f"{h}x{w}"
        option.selected = h == d["height"] and w == d["width"]
        select.appendChild(option)
    el("steps").value = str(d["steps"])


def on_ready(msg):
    select = el("model")
    for i in range(msg.models.length):
        m = msg.models[i]
        resolutions = [(int(m.resolutions[j][0]), int(m.resolutions[j][1])) for j in range(m.resolutions.length)]
        d = m.defaults
        models[m.id] = {"defaults": {"height": d.height, "width": d.width, "steps": d.steps},
                        "resolutions": resolutions}
        option = document.createElement("option")
        option.value = m.id
        option.textContent = m.name
        select.appendChild(option)
    fill_resolutions(select.value)
    el("generate").disabled = False
    set_status(f"Ready ({msg.backend}).", 0)


STAGE_TEXT = {"load": "Loading the model…", "encode prompt": "Encoding the prompt…", "decode": "Decoding the image…"}


def on_progress(msg):
    if msg.stage == "denoise":
        text = f"Denoising: step {msg.step} of {msg.steps}…" if msg.step else "Denoising…"
    elif msg.stage.startswith("load "):
        text = f"Loading the model ({msg.stage[5:]})…"
    else:
        text = STAGE_TEXT.get(msg.stage, msg.stage)
    set_status(text, msg.fraction)


def on_result(msg):
    canvas = el("preview")
    canvas.width = msg.bitmap.width
    canvas.height = msg.bitmap.height
    canvas.getContext("2d").drawImage(msg.bitmap, 0, 0)
    msg.bitmap.close()
    canvas.hidden = False
    set_status("Saving the image…", 1)


def on_png(msg):
    p = msg.parameters
    if state["png_url"]:
        window.URL.revokeObjectURL(state["png_url"])
    blob = window.Blob.new(to_js([msg.png]), to_js({"type": "image/png"}))
    state["png_url"] = window.URL.createObjectURL(blob)
    state["filename"] = msg.filename
    img = el("result")
    img.src = state["png_url"]
    img.alt = "Generated image: " + p.prompt
    img.hidden = False
    el("preview").hidden = True
    el("caption").textContent = f"Seed {p.seed} · {p.steps} steps · {p.height}x{p.width} · {p.model}"
    el("download").disabled = False
    finish(msg.id, "Done.")


def finish(job_id, text):
    if job_id in jobs:
        jobs.remove(job_id)
    el("cancel").disabled = not jobs
    set_status(text, 1 if text == "Done." else 0)


def on_message(event):
    msg = event.data
    kind = msg.type
    if kind == "ready":
        on_ready(msg)
    elif kind == "progress":
        on_progress(msg)
    elif kind == "queued":
        set_status(f"Queued: {msg.position} ahead.")
    elif kind == "result":
        on_result(msg)
    elif kind == "png":
        on_png(msg)
    elif kind == "cancelled":
        finish(msg.id, "Cancelled.")
    elif kind == "error":
        show_error(msg.message)
        finish(msg.id, "Stopped.")


def generate(event):
    show_error("")
    job_id = state["next_id"]
    state["next_id"] += 1
    jobs.append(job_id)
    el("cancel").disabled = False
    params = {
        "prompt": el("prompt").value,
        "seed": el("seed").value,
        "steps": el("steps").value,
        "resolution": el("resolution").value,
        "model": el("model").value,
    }
    set_status("Starting…", 0)
    worker.postMessage(to_js({"type": "generate", "id": job_id, "params": params}))


def cancel(event):
    for job_id in jobs:
        worker.postMessage(to_js({"type": "cancel", "id": job_id}))


def randomize(event):
    el("seed").value = str(int(window.Math.floor(window.Math.random() * 4294967296)))


def download(event):
    link = document.createElement("a")
    link.href = state["png_url"]
    link.download = state["filename"]
    link.click()


def on_model_change(event):
    fill_resolutions(el("model").value)


worker.addEventListener("message", create_proxy(on_message))
el("generate").addEventListener("click", create_proxy(generate))
el("cancel").addEventListener("click", create_proxy(cancel))
el("randomize").addEventListener("click", create_proxy(randomize))
el("download").addEventListener("click", create_proxy(download))
el("model").addEventListener("change", create_proxy(on_model_change))
