# Import of an SDXL checkpoint (page side, MicroPython), in the Models panel: the visitor picks or drops a
# .safetensors file (or a diffusers folder's files), the worker says what it holds (app/worker/checkpoint.py),
# the visitor names it and says what kind of model it is, and the worker converts it into a model of their own.
from page import el, listen, make, new_id, worker

state = {"send": None, "files": None, "check": None, "job": None, "on_added": None}


def pick(files):
    """New files to import: ask the worker what they hold (nothing is read but their headers)."""
    if not files or not files.length:
        return
    state["files"], state["check"] = files, new_id()
    el("checkpoint-options").hidden = True
    say("Reading what the file holds…")
    el("checkpoint-found").textContent = ""
    state["send"]({"type": "checkpoint-check", "id": state["check"], "files": files})


def say(text, alert=False):
    node = el("checkpoint-message")
    node.textContent = text
    if alert:
        node.setAttribute("role", "alert")
    else:
        node.removeAttribute("role")


def size_text(mb):
    return f"{mb / 1000:.2f} GB" if mb >= 100 else f"{mb:.1f} MB"


def on_checked(msg):
    if msg.id != state["check"]:
        return
    if msg.message:
        say(msg.message, alert=True)
        return
    say("")
    math = " (16-bit math on this GPU)" if msg.precision == "q4f16" else ""
    el("checkpoint-found").textContent = (f"Found: {msg.found}. Converted here to a 4-bit model of "
                                          f"{size_text(msg.converted_mb)}{math}; only that is kept.")
    el("checkpoint-name").value = msg.name
    kinds = el("checkpoint-kinds")
    for node in list(kinds.querySelectorAll("label")):
        node.remove()
    for i in range(msg.kinds.length):
        kind = msg.kinds[i]
        label = make("label", kinds)
        make("input", label, None, type="radio", name="checkpoint-kind", value=kind.id)
        label.appendChild(label.ownerDocument.createTextNode(" " + kind.label))
        if i == 0:
            label.querySelector("input").checked = True
    el("checkpoint-options").hidden = False


def convert(event):
    chosen = el("checkpoint-kinds").querySelector("input:checked")
    name = el("checkpoint-name").value.strip()
    if not name:
        say("Give the model a name first.", alert=True)
        return
    state["job"] = new_id()
    state["send"]({"type": "checkpoint-import", "id": state["job"], "files": state["files"], "name": name,
                   "kind": chosen.value if chosen else ""})
    el("checkpoint-convert").disabled = True
    el("checkpoint-cancel").hidden = False
    el("checkpoint-progress").value = 0
    el("checkpoint-progress").hidden = False
    say("Starting the conversion…")


def cancel(event):
    if state["job"]:
        state["send"]({"type": "checkpoint-cancel", "id": state["job"]})


def on_progress(msg):
    if msg.id == state["job"]:
        el("checkpoint-progress").value = msg.fraction
        say(f"{msg.message} {100 * msg.fraction:.0f}% · {msg.mb_s:.0f} MB/s")


def finish(text, alert=False):
    state["job"] = None
    el("checkpoint-convert").disabled = False
    el("checkpoint-cancel").hidden = True
    el("checkpoint-progress").hidden = True
    say(text, alert)


def on_done(msg):
    if msg.id != state["job"]:
        return
    el("checkpoint-options").hidden = True
    el("checkpoint-found").textContent = ""
    el("checkpoint-file").value = ""
    finish(msg.message)
    state["on_added"](msg.model)


def on_error(msg):
    if msg.id == state["job"]:
        finish(msg.message, alert=True)


def on_cancelled(msg):
    if msg.id == state["job"]:
        finish("Import cancelled; nothing was kept.")


HANDLERS = {"checkpoint-checked": on_checked, "checkpoint-progress": on_progress, "checkpoint-done": on_done,
            "checkpoint-error": on_error, "checkpoint-cancelled": on_cancelled}


def on_worker_replaced():
    """The worker was restarted (after a device loss): an import it was running is gone. The new worker removes
    what it had begun to write, or offers to free it in the Models panel (a folder no model lists)."""
    if state["job"]:
        finish("The import stopped: the GPU worker had to restart after a device loss. Press Convert and keep to "
               "start again.", alert=True)


def is_checkpoint(files):
    return bool(files.length) and all(files[i].name.lower().endswith(".safetensors") for i in range(files.length))


def setup(send, on_added):
    """`on_added(row)`: a model was imported (row as the ready message lists models)."""
    state["send"], state["on_added"] = send, on_added
    worker["on_replaced"].append(on_worker_replaced)
    listen(el("checkpoint-file"), "change", lambda event: pick(event.target.files))
    listen(el("checkpoint-convert"), "click", convert)
    listen(el("checkpoint-cancel"), "click", cancel)
