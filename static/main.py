# The page (MicroPython via PyScript): starts the GPU worker, routes its messages to the panels and
# wires the controls. All heavy work happens in the worker, so this thread stays free. The panels:
# form.py (controls), runs.py (queue, progress, recovery), result.py (previews, image, download,
# refine), welcome.py (the stage before the first image), device.py (capabilities, tier), models.py
# and gallery.py; page.py is what they share.
from pyscript import document, window
from pyscript.ffi import create_proxy

import checkpoint
import device
import form
import gallery_ui
import models_ui
import offline
import picture
import result
import runs
import welcome
from page import FIELDS, el, field_error, guarded, listen, send, set_status, show_error, start_worker, worker


def register(m, listed):
    """Take in one model the worker lists; `listed`: add it to the Model list (second-pass models are offered by
    Refine instead)."""
    resolutions = [(int(m.resolutions[j][0]), int(m.resolutions[j][1])) for j in range(m.resolutions.length)]
    d = m.defaults
    form.models[m.id] = {"defaults": {"height": d.height, "width": d.width, "steps": d.steps,
                                      "guidance": d.guidance},
                         "resolutions": resolutions, "unsuitable": m.unsuitable, "pipeline": m.pipeline,
                         "max_steps": m.max_steps,
                         "encoder": {"id": m.encoder.id, "mb": m.encoder.mb, "unsuitable": m.encoder.unsuitable}}
    result.models[m.id] = {"name": m.name, "refines": [m.refines[j] for j in range(m.refines.length)],
                           "family": m.family, "refines_family": m.refines_family, "own": m.own}
    if listed and m.pipeline == "sdxl-turbo":
        option = document.createElement("option")
        option.value = m.id
        option.textContent = m.name + (" (cannot run here)" if m.unsuitable else "")
        el("model").appendChild(option)


def on_model_added(m):
    """A checkpoint of the visitor's own was imported: listed, and chosen (a refiner is offered by Refine)."""
    register(m, True)
    if m.pipeline == "sdxl-turbo":
        el("model").value = m.id
        form.on_model_change(None)
    on_models_changed()


def on_model_removed(msg):
    for option in list(el("model").querySelectorAll("option")):
        if option.value == msg.id:
            option.remove()
    form.models.pop(msg.id, None)
    result.models.pop(msg.id, None)
    models_ui.remove_row(msg.id)
    if el("model").value not in form.models:
        form.choose_model()
        form.on_model_change(None)
    on_models_changed()


def on_ready(msg):
    first = not form.models
    caps = msg.capabilities
    for i in range(msg.models.length):
        register(msg.models[i], first)
    device.show_capabilities(caps)
    el("generate").disabled = not form.models  # an unusable model list leaves nothing to generate with
    if msg.manifest_problem:
        show_error(msg.manifest_problem)
    if not first:
        device.rerun_if_interrupted()
        runs.resend()
        return
    if not form.models:
        set_status("No model can be offered here; the message above says why.", 0)
        return
    form.choose_model()
    form.fill_resolutions(el("model").value)  # what the visitor typed meanwhile stays (form.chosen)
    form.update_picture(models_ui.state_of)
    el("status").dataset.backend = caps.backend
    if caps.backend != "webgpu":
        el("notice").textContent = (f"{caps.reason} Images are made on the CPU instead, which is much slower; "
                                    "only small models can run.")
        el("notice").hidden = False
    welcome.setup(caps)
    device.first_visit(caps)
    form.ask_tokens()
    set_status("Ready.", 0)


def on_progress(msg):
    if device.is_bench(msg.id):
        device.on_bench_progress(msg)
    else:
        runs.on_progress(msg)


def on_models_changed():
    result.update_refine()
    form.update_picture(models_ui.state_of)
    runs.on_models_changed(models_ui.state_of)
    form.on_models_changed(models_ui.state_of)
    welcome.update()


def on_error(msg):
    if msg.kind != "device-lost" and device.is_bench(msg.id):
        device.on_bench_failed(msg)
    else:
        runs.on_error(msg)
        result.show_last()


HANDLERS = {
    "ready": on_ready, "progress": on_progress, "checkpoint": runs.on_checkpoint, "queued": runs.on_queued,
    "tokens": form.on_tokens,
    "preview": result.on_preview, "result": result.on_result, "png": result.on_png, "bench": device.on_bench,
    "cancelled": result.on_cancelled, "error": on_error, "models": models_ui.on_message,
    "picture-checked": picture.on_checked, "model-removed": on_model_removed,
}
HANDLERS.update(checkpoint.HANDLERS)


def on_message(event):
    msg = event.data
    handler = HANDLERS.get(msg.type)
    if handler:
        handler(msg)
    elif msg.type.startswith("gallery-"):
        gallery_ui.on_message(msg)


offline.start()
start_worker(create_proxy(guarded(on_message)))
gallery_ui.setup(send, form.apply_settings)
models_ui.setup(send, on_models_changed, checkpoint.pick, checkpoint.is_checkpoint)
checkpoint.setup(send, on_model_added)
for id, handler in (("generate", form.generate), ("cancel", runs.cancel), ("retry", form.retry_run),
                    ("randomize", form.randomize), ("download", result.download), ("refine", result.refine),
                    ("rebench", device.run_bench), ("clear-history", form.clear_history),
                    ("upscale-1-5", result.upscale), ("upscale-2", result.upscale)):
    listen(el(id), "click", handler)
picture.setup(form.on_picture)
# Enter in a field must not submit the controls' form (which would reload the page; the CSP forbids it).
listen(el("controls"), "submit", lambda event: event.preventDefault())
listen(el("model"), "change", form.on_model_change)
listen(el("model"), "change", lambda event: form.update_picture(models_ui.state_of))
listen(el("history"), "change", form.use_history)
for field in FIELDS:
    # The visitor set it (start-up and presets leave it alone from now on); its refusal, if any, is answered.
    listen(el(field), "input", lambda event, field=field: (form.touched.add(field), field_error(field, "")))
form.tokens["proxy"] = create_proxy(guarded(form.send_tokens))
listen(el("prompt"), "input", lambda event: form.ask_tokens())
listen(el("controls"), "keydown", form.on_key)
form.load_history()
# Leaving the page ends the worker, which releases its GPU device and every buffer on it.
listen(window, "pagehide", lambda event: worker["current"].terminate())
