# The page (MicroPython via PyScript): starts the GPU worker, routes its messages to the panels and
# wires the controls. All heavy work happens in the worker, so this thread stays free. The panels:
# form.py (controls), runs.py (queue, progress, recovery), result.py (previews, image, download,
# refine), device.py (capabilities, tier), models.py and gallery.py; page.py is what they share.
from pyscript import document, window
from pyscript.ffi import create_proxy

import device
import form
import gallery_ui
import models_ui
import offline
import result
import runs
from page import el, guarded, listen, send, set_status, show_error, start_worker, worker


def on_ready(msg):
    first = not form.models
    caps = msg.capabilities
    select = el("model")
    for i in range(msg.models.length):
        m = msg.models[i]
        resolutions = [(int(m.resolutions[j][0]), int(m.resolutions[j][1])) for j in range(m.resolutions.length)]
        d = m.defaults
        form.models[m.id] = {"defaults": {"height": d.height, "width": d.width, "steps": d.steps},
                             "resolutions": resolutions, "unsuitable": m.unsuitable, "pipeline": m.pipeline}
        if first and m.pipeline == "sdxl-turbo":  # second-pass models are offered by Refine
            option = document.createElement("option")
            option.value = m.id
            option.textContent = m.name + (" (cannot run here)" if m.unsuitable else "")
            select.appendChild(option)
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
    form.fill_resolutions(select.value)
    if caps.backend != "webgpu":
        el("notice").textContent = (f"{caps.reason} Images are made on the CPU instead, which is much slower; "
                                    "only small models can run.")
        el("notice").hidden = False
    device.first_visit(caps)
    set_status(f"Ready ({caps.backend}).", 0)


def on_error(msg):
    if msg.kind != "device-lost" and device.is_bench(msg.id):
        device.on_bench_failed(msg)
    else:
        runs.on_error(msg)
        result.show_last()


HANDLERS = {
    "ready": on_ready, "progress": runs.on_progress, "checkpoint": runs.on_checkpoint,
    "queued": lambda msg: set_status(f"Queued: {msg.ahead} ahead of this one…"),
    "preview": result.on_preview, "result": result.on_result, "png": result.on_png, "bench": device.on_bench,
    "cancelled": result.on_cancelled, "error": on_error, "models": models_ui.on_message,
}


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
models_ui.setup(send)
for id, handler in (("generate", form.generate), ("cancel", runs.cancel), ("retry", form.retry_run),
                    ("randomize", form.randomize), ("download", result.download), ("refine", result.refine),
                    ("rebench", device.run_bench)):
    listen(el(id), "click", handler)
# Enter in a field must not submit the controls' form (which would reload the page; the CSP forbids it).
listen(el("controls"), "submit", lambda event: event.preventDefault())
listen(el("model"), "change", form.on_model_change)
listen(el("history"), "change", form.use_history)
for field in ("steps", "resolution", "preview-every"):
    listen(el(field), "input", lambda event: form.touched.__setitem__("any", True))
form.load_history()
# Leaving the page ends the worker, which releases its GPU device and every buffer on it.
listen(window, "pagehide", lambda event: worker["current"].terminate())
