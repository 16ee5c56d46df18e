# The picture a run starts from (MicroPython): picked, dropped on its area or pasted anywhere; the worker
# checks it (picture-check) before it replaces the one there, so a refused file loses nothing.
import asyncio

from pyscript import window
from pyscript.ffi import to_js

from page import el, listen, new_id, send

MAX_BYTES = 100 * 2**20  # as the worker's app/worker/picture.py
TYPES = ("image/png", "image/jpeg", "image/webp")

picture = {"bytes": None, "url": None, "asked": None}  # the picture in use; "asked": (id, bytes, name) being checked
state = {"on_change": None}  # what a usable picture tells the form (its size)


def source():
    """The bytes of the picture a run starts from, or None."""
    return picture["bytes"]


def refuse(text):
    """Why a file cannot be used ("" to clear), beside the picture control; no run was started."""
    el("picture-error").textContent = text
    el("picture-error").hidden = not text
    if text:
        el("picture").setAttribute("aria-invalid", "true")
    else:
        el("picture").removeAttribute("aria-invalid")


async def take(file):
    refuse("")
    if file.size > MAX_BYTES:
        refuse(f"This file is {file.size / 2**20:.0f} MB; Lantern takes pictures up to {MAX_BYTES // 2**20} MB.")
        return
    el("picture-info").textContent = "Reading the picture…"
    buffer = await file.arrayBuffer()
    asked = new_id()
    picture["asked"] = (asked, buffer, file.name or "Pasted picture")
    send({"type": "picture-check", "id": asked, "source": buffer})


def on_checked(msg):
    asked = picture["asked"]
    if asked is None or asked[0] != msg.id:
        return  # an answer about a picture since replaced
    picture["asked"] = None
    if msg.message:
        el("picture-info").textContent = describe() if picture["bytes"] is not None else ""
        refuse(msg.message)  # the picture there, if any, stays
        return
    _, buffer, name = asked
    if picture["url"]:
        window.URL.revokeObjectURL(picture["url"])
    picture.update(bytes=buffer, url=window.URL.createObjectURL(window.Blob.new(to_js([buffer]))),
                   name=name, height=msg.height, width=msg.width,
                   notes=" ".join(msg.notes[i] for i in range(msg.notes.length)))
    el("picture-thumb").src = picture["url"]
    el("picture-thumb").alt = "The picture the next run starts from: " + name
    show(True)
    state["on_change"](msg.height, msg.width)


def describe():
    return f"{picture['name']}, {picture['width']}×{picture['height']}. {picture['notes']}".strip()


def show(on):
    el("picture-thumb").hidden = not on
    el("picture-clear").hidden = not on
    el("picture-options").hidden = not on
    el("picture-info").textContent = describe() if on else ""


def clear(event=None):
    if picture["url"]:
        window.URL.revokeObjectURL(picture["url"])
    picture.update(bytes=None, url=None, asked=None)
    el("picture").value = ""
    refuse("")
    show(False)


def first_image(files):
    for i in range(files.length):
        file = files.item(i)
        if file.type in TYPES or not file.type:
            return file
    return files.item(0) if files.length else None


def on_pick(event):
    file = el("picture").files.item(0)
    if file is not None:
        asyncio.create_task(take(file))


def on_drop(event):
    event.preventDefault()
    event.stopPropagation()  # a picture dropped here starts a run; elsewhere on the page a PNG restores settings
    el("picture-area").classList.remove("dropping")
    file = first_image(event.dataTransfer.files) if event.dataTransfer else None
    if file is not None:
        asyncio.create_task(take(file))


def on_drag(event):
    if event.dataTransfer and event.dataTransfer.types.includes("Files"):
        event.preventDefault()
        event.stopPropagation()
        event.dataTransfer.dropEffect = "copy"
        el("picture-area").classList.add("dropping")


def on_paste(event):
    data = event.clipboardData
    if data and data.types.includes("text/plain") and event.target.tagName in ("TEXTAREA", "INPUT"):
        return  # text pasted into a field stays text, even when the clipboard also holds a picture
    file = first_image(data.files) if data and data.files.length else None
    if file is not None and (file.type in TYPES or file.type.startswith("image/")):
        event.preventDefault()
        asyncio.create_task(take(file))


def update(model_id, encoder, encoder_state):
    """What the area says for the chosen model: whether it can start from a picture, and the add-on it needs."""
    hint = el("picture-addon")
    if not encoder or not encoder["id"]:
        hint.textContent = "This model cannot start from a picture."
    elif encoder["unsuitable"]:
        hint.textContent = f"Starting from a picture cannot run here: {encoder['unsuitable']}"
    elif encoder_state != "installed":
        size = f"{encoder['mb']:.1f}" if encoder["mb"] < 10 else f"{encoder['mb']:.0f}"
        hint.textContent = f"The first run from a picture installs the image-to-image add-on ({size} MB)."
    else:
        hint.textContent = ""
    hint.hidden = not hint.textContent


def setup(on_change):
    state["on_change"] = on_change
    listen(el("picture"), "change", on_pick)
    listen(el("picture-clear"), "click", clear)
    area = el("picture-area")
    listen(area, "dragover", on_drag)
    listen(area, "dragleave", lambda event: area.classList.remove("dropping"))
    listen(area, "drop", on_drop)
    listen(window.document, "paste", on_paste)
