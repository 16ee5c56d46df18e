# The result area (MicroPython): live previews on a canvas, the finished image with its caption,
# the batch grid, Download and Refine.
from pyscript import document, window
from pyscript.ffi import to_js

import gallery_ui
from page import el, listen, set_status
from runs import finish, jobs, submit

results = {}  # id -> {"url", "filename", "parameters", "timing", "latents"?} for the images of the current batch
# "stale": a new batch was asked for; the last one's images stay (and stay downloadable) until its first
# image arrives, so a run that is refused, fails or is cancelled leaves the last finished image as it was.
shown = {"selected": None, "timing": {}, "stale": False}


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
    shown["timing"][msg.id] = (msg.timing.total_ms, msg.timing.preview_ms, msg.refine_note)
    set_status("Saving the image…", 1)


def show_result(job_id):
    r = results[job_id]
    p = r["parameters"]
    shown["selected"] = job_id
    img = el("result")
    img.src = r["url"]
    img.alt = "Generated image: " + p["prompt"]
    img.hidden = False
    el("preview").hidden = True
    total, previews, refine_note = r["timing"]
    el("refine").disabled = bool(refine_note) or r.get("latents") is None
    el("refine-note").textContent = refine_note
    el("caption").textContent = (f"Seed {p['seed']} · {p['steps']} steps · {p['height']}x{p['width']} · {p['model']}"
                                 f" · made in {total / 1000:.1f} s (previews {previews:.0f} ms)")
    el("download").disabled = False
    for button in el("grid").children:
        button.setAttribute("aria-pressed", "true" if button.dataset.job == str(job_id) else "false")


def on_png(msg):
    if shown["stale"]:
        drop_results()
    p = msg.parameters
    blob = window.Blob.new(to_js([msg.png]), to_js({"type": "image/png"}))
    results[msg.id] = {"url": window.URL.createObjectURL(blob), "filename": msg.filename,
                       "parameters": {"prompt": p.prompt, "seed": msg.seed_text, "steps": p.steps, "height": p.height,
                                      "width": p.width, "model": p.model},
                       "timing": shown["timing"].pop(msg.id, (0, 0, ""))}
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
    listen(button, "click", lambda event: show_result(job_id))
    grid.appendChild(button)


def clear_results():
    """A new batch is on its way: the current images give way when its first one arrives."""
    shown["stale"] = True


def drop_results():
    for r in results.values():
        window.URL.revokeObjectURL(r["url"])
    results.clear()
    shown.update(selected=None, stale=False)
    el("grid").innerHTML = ""


def show_last():
    """After a run ended without an image (cancelled, refused, failed): the last finished image, not a
    preview of the run that did not finish."""
    if jobs:
        return  # the next request's previews are on their way
    el("preview-label").textContent = ""
    if shown["selected"] in results:
        show_result(shown["selected"])


def on_cancelled(msg):
    finish(msg.id, "Cancelled.")
    show_last()


def download(event):
    r = results[shown["selected"]]
    link = document.createElement("a")
    link.href = r["url"]
    link.download = r["filename"]
    link.click()


def refine(event):
    r = results[shown["selected"]]
    p = r["parameters"]
    params = {"prompt": p["prompt"], "seed": str(p["seed"]), "steps": str(p["steps"]),
              "resolution": f"{p['height']}x{p['width']}", "model": p["model"],
              "preview_every": el("preview-every").value, "autosave": gallery_ui.autosave()}
    el("refine").disabled = True
    submit(params, base_latents=r["latents"])
