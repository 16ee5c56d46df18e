# The result area (MicroPython): live previews on a canvas, the finished image with its caption,
# the batch grid, Download and Refine.
from pyscript import document, window
from pyscript.ffi import to_js

import gallery_ui
import models_ui
from page import el, listen, set_status, steps_text
from runs import finish, jobs, now_ms, submit

results = {}  # id -> {"url", "filename", "parameters", "timing", "latents"?} for the images of the current batch
# "stale": a new batch was asked for; the last one's images stay (and stay downloadable) until its first
# image arrives, so a run that is refused, fails or is cancelled leaves the last finished image as it was.
shown = {"selected": None, "timing": {}, "stale": False}
models = {}  # id -> {"name", "refines"}: filled from the worker's "ready" message


def settings_text(seed, steps, size):
    return f"Seed {seed} · {steps_text(steps)} · {size}"


UPSCALE = {"upscale-1-5": "1.5", "upscale-2": "2"}
# An upscale redraws at this strength with this many steps (one step runs: SDXL-Turbo's own img2img setting).
UPSCALE_STRENGTH, UPSCALE_STEPS = "0.5", "2"


def actions(enabled):
    """Download, Refine and Upscale act on the image on show: off while a new run's previews are."""
    el("download").disabled = not enabled
    for button in UPSCALE:
        el(button).disabled = not enabled
    if enabled:
        update_refine()
    else:
        el("refine").disabled = True


def draw(bitmap):
    """Show a bitmap (preview or final) scaled onto the live canvas, in place of the result image."""
    canvas = el("preview")
    canvas.getContext("2d").imageSmoothingEnabled = False
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height)
    bitmap.close()
    canvas.hidden = False
    el("result").hidden = True


def supersede(job_id):
    """A new run's picture is on show: the caption and the actions are no longer the last image's."""
    p = jobs[job_id]["params"]
    el("stage-empty").hidden = True
    el("caption").textContent = "New image in progress: " + settings_text(p["seed"], p["steps"], p["resolution"])
    actions(False)


def on_preview(msg):
    if msg.id in jobs:
        canvas = el("preview")
        canvas.width, canvas.height = jobs[msg.id]["size"]
        draw(msg.bitmap)
        supersede(msg.id)
        how = "fast approximation" if msg.kind == "approx" else "decoded"
        el("preview-label").textContent = f"Preview after step {msg.step} ({how})"


def on_result(msg):
    if msg.id not in jobs:
        return
    canvas = el("preview")
    canvas.width = msg.bitmap.width
    canvas.height = msg.bitmap.height
    draw(msg.bitmap)
    supersede(msg.id)
    el("preview-label").textContent = ""
    # The time the visitor waited: from their click, through any queue, to the finished picture.
    shown["timing"][msg.id] = (now_ms() - jobs[msg.id]["asked"], msg.timing.preview_ms)
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
    el("stage-empty").hidden = True
    total, previews = r["timing"]
    name = models.get(p["model"], {}).get("name", p["model"])
    how = (" · refined" if p["refined"] else f" · upscaled ×{p['upscale']}" if p["upscale"]
           else f" · from a picture, strength {p['strength']}" if p["strength"] else "")
    if p["guidance"]:
        how += f" · guidance {p['guidance']}"
    size = f"{p['height']}x{p['width']}"
    el("caption").textContent = (f"{settings_text(p['seed'], p['steps'], size)} · {name}{how} · "
                                 f"made in {total / 1000:.1f} s (previews {previews:.0f} ms)")
    actions(True)
    for button in el("grid").children:
        button.setAttribute("aria-pressed", "true" if button.dataset.job == str(job_id) else "false")


def on_png(msg):
    if shown["stale"]:
        drop_results()
    p = msg.parameters
    blob = window.Blob.new(to_js([msg.png]), to_js({"type": "image/png"}))
    results[msg.id] = {"url": window.URL.createObjectURL(blob), "filename": msg.filename, "png": msg.png,
                       "parameters": {"prompt": p.prompt, "seed": msg.seed_text, "steps": p.steps, "height": p.height,
                                      "width": p.width, "model": p.model, "refined": bool(getattr(p, "refiner", "")),
                                      "guidance": getattr(p, "guidance", None),
                                      "negative_prompt": getattr(p, "negative_prompt", ""),
                                      "strength": getattr(p, "strength", None), "upscale": getattr(p, "upscale", None)},
                       "timing": shown["timing"].pop(msg.id, (0, 0))}
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
    else:  # nothing finished yet: back to the empty stage
        el("preview").hidden = True
        el("caption").textContent = ""
        el("stage-empty").hidden = False


def on_cancelled(msg):
    if msg.id in jobs:  # not one the page dropped from its queue already (that one changed nothing on show)
        finish(msg.id, "Cancelled.")
        show_last()


def download(event):
    r = results[shown["selected"]]
    link = document.createElement("a")
    link.href = r["url"]
    link.download = r["filename"]
    link.click()


def refiner_for(model_id):
    """As the worker picks it (app/store/manifest.py refiner_for): named, or for the family; the visitor's own first."""
    family = models.get(model_id, {}).get("family")
    fits = [m for m, e in models.items() if model_id in e["refines"] or (family and e["refines_family"] == family)]
    own = [m for m in fits if models[m]["own"]]
    return (own or fits or [None])[0]


def refine_note(r):
    """Why Refine cannot run on the image `r` ("" when it can)."""
    p = r["parameters"]
    if p["refined"]:
        return "This picture is already refined."
    refiner = refiner_for(p["model"])
    if refiner is None:
        return f"No refiner is offered for {models[p['model']]['name']}." if p["model"] in models else ""
    if models_ui.state_of(refiner) != "installed":
        return f"Refine needs {models[refiner]['name']}: install it in the Models panel."
    return ""


def update_refine():
    """Refine is on exactly when it can run on the image on show; called again when a model's state changes.
    Without a refiner for its model it is not offered: Upscale is, with the model itself."""
    r = results.get(shown["selected"])
    note = refine_note(r) if r else ""
    el("refine").disabled = r is None or bool(note) or r.get("latents") is None or not el("preview").hidden
    el("refine").hidden = r is not None and refiner_for(r["parameters"]["model"]) is None
    if el("refine").hidden and r is not None:
        note = f"No refiner is offered for {models.get(r['parameters']['model'], {}).get('name', 'this model')}: " \
               "Upscale makes a larger, sharper version with the model itself."
    el("refine-note").textContent = note


def upscale(event):
    """One more run on the queue: the picture on show, Lanczos-resized by the factor and redrawn (hires fix)."""
    r = results[shown["selected"]]
    p = r["parameters"]
    params = {"prompt": p["prompt"], "seed": str(p["seed"]), "steps": UPSCALE_STEPS, "strength": UPSCALE_STRENGTH,
              "resolution": f"{p['height']}x{p['width']}", "model": p["model"], "upscale": UPSCALE[event.target.id],
              "guidance": str(p["guidance"] or 1), "negative_prompt": p["negative_prompt"] or "",
              "memory": el("memory").value, "preview_every": el("preview-every").value,
              "autosave": gallery_ui.autosave()}
    submit(params, source=r["png"])


def refine(event):
    r = results[shown["selected"]]
    p = r["parameters"]
    params = {"prompt": p["prompt"], "seed": str(p["seed"]), "steps": str(p["steps"]),
              "resolution": f"{p['height']}x{p['width']}", "model": p["model"],
              "preview_every": el("preview-every").value, "autosave": gallery_ui.autosave()}
    el("refine").disabled = True
    submit(params, base_latents=r["latents"])
