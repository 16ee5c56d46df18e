# The Models panel (page side, MicroPython): each listed model with its size and install state,
# and Install / Cancel / Delete / Verify, plus Import of local files. The worker does the work
# (app/store/installer.py has the protocol); this module sends requests and shows its "models" reports.
from pyscript import window

from page import el, listen, make

state = {"send": None, "persist_asked": False, "on_change": None, "checkpoint": None, "is_checkpoint": None}
rows = {}  # model id -> {"row", "status", "bar", "message", "install", "cancel", "delete", "verify"}
info = {}  # model id -> {"name", "state", "variant", "total_mb"}: what other panels show of it


def state_of(model_id):
    return info[model_id]["state"] if model_id in info else ""

STATE_TEXT = {"not-installed": "Not installed", "installed": "Installed", "partial": "Paused", "damaged": "Damaged",
              "verifying": "Verifying…", "importing": "Importing…", "converting": "Converting…"}
INSTALL_LABEL = {"partial": "Resume", "damaged": "Repair"}


def size_text(mb):
    return f"{mb / 1000:.2f} GB" if mb >= 100 else f"{mb:.1f} MB"


def time_text(seconds):
    if seconds < 0:
        return ""
    if seconds < 5:
        return "a few seconds left"
    if seconds < 90:
        return f"{seconds:.0f} s left"
    return f"{seconds / 60:.0f} min left"


def ask_persistence():
    # Only the page may ask; the browser decides (and may ask the visitor). Asked once per visit.
    if not state["persist_asked"] and window.navigator.storage and window.navigator.storage.persist:
        state["persist_asked"] = True
        window.navigator.storage.persist()


def install(model_id):
    ask_persistence()
    message = {"type": "install", "model": model_id}
    stall = window.URLSearchParams.new(window.location.search).get("stall_s")
    if stall:  # a shorter wait before a silent connection is dropped and resumed
        seconds = stall_seconds(stall)
        if seconds:
            message["stall_s"] = seconds
        else:
            el("models-notice").textContent = (f"The page address asks for stall_s={stall[:20]}, which is not a "
                                               "number of seconds from 1 to 600; the usual 30 s wait is used.")
    state["send"](message)


def stall_seconds(text):
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 1 <= seconds <= 600 else None


def command(kind, model_id):
    if kind == "model-delete" and not window.confirm("Delete this model from this browser? It can be installed again."):
        return
    state["send"]({"type": kind, "model": model_id})


def add_row(m):
    row = make("li", el("models-list"), id=f"model-{m.id}")
    name = make("strong", row, m.name, id=f"model-{m.id}-name")
    make("span", row, f" · {size_text(m.total_mb)}", class_="model-size")
    status = make("span", row, "", class_="model-state", id=f"model-{m.id}-state", aria_live="polite")
    bar = make("progress", row, None, max="1", value="0", aria_labelledby=f"model-{m.id}-name")
    buttons = make("div", row, None, class_="model-buttons")
    r = {"row": row, "status": status, "bar": bar}
    for key, label, handler in (
            ("install", "Install", lambda e, i=m.id: install(i)),
            ("cancel", "Cancel install", lambda e, i=m.id: command("install-cancel", i)),
            ("delete", "Delete model", lambda e, i=m.id: command("model-delete", i)),
            ("verify", "Verify", lambda e, i=m.id: command("model-verify", i))):
        button = make("button", buttons, label, type="button", aria_describedby=name.id)
        listen(button, "click", handler)
        r[key] = button
    # What the visitor is choosing: the variant this device gets (and why, when it is not the first),
    # the kind of pictures (test models say they draw test patterns), what it needs, the licence, and
    # where the hashes its files are checked against come from.
    variant = f"{m.variant} variant, {size_text(m.total_mb)} download" if m.variant else ""
    if m.own:  # converted here from the visitor's own checkpoint: nothing to download
        variant = f"your own model, {size_text(m.total_mb)} on disk"
    if m.convert_mb and m.convert_to in ("q4f16", "q4"):  # a checkpoint, quantized here; the download is not kept
        math = " with 16-bit math" if m.convert_to == "q4f16" else ""
        variant = (f"{m.variant} variant, up to {size_text(m.total_mb)} download, converted here to 4-bit weights"
                   f"{math} ({size_text(m.convert_mb)} kept; the download is removed)")
    elif m.convert_mb and m.convert_to == "fp32-activations":
        variant += f", converted here for 32-bit math (up to {size_text(m.convert_mb)} more on disk)"
    elif m.convert_mb:  # "external-data": each graph split from its weights, so that they can stream to the GPU
        variant += f", prepared here for loading ({size_text(m.convert_mb)} more on disk)"
    facts = (variant, m.variant_reason, m.style, m.needs, f"License: {m.license}" if m.license else "", m.hashes)
    make("p", row, " · ".join(x for x in facts if x), class_="model-details", id=f"model-{m.id}-details")
    r["message"] = make("p", row, "", class_="model-message", id=f"model-{m.id}-message")
    rows[m.id] = r
    return r


def show_row(m):
    r = rows.get(m.id) or add_row(m)
    s = m.state
    info[m.id] = {"name": m.name, "state": s, "variant": m.variant or "", "total_mb": m.total_mb}
    if s == "downloading":
        fraction = m.done_mb / m.total_mb if m.total_mb else 0
        text = f"Downloading {100 * fraction:.0f}% ({size_text(m.done_mb)} of {size_text(m.total_mb)})"
        if m.speed_mbps > 0:
            text += f" · {m.speed_mbps:.1f} MB/s · {time_text(m.eta_s)}"
    else:
        text = STATE_TEXT.get(s, s)
        fraction = m.done_mb / m.total_mb if m.total_mb else 0
    r["status"].textContent = text
    r["bar"].value = fraction
    r["bar"].hidden = s in ("installed", "not-installed")
    r["row"].dataset.state = s
    r["message"].textContent = m.message or ""
    if m.error:
        r["message"].setAttribute("role", "alert")
    else:
        r["message"].removeAttribute("role")
    busy = s in ("downloading", "converting", "verifying", "importing")
    r["install"].textContent = INSTALL_LABEL.get(s, "Install")
    r["install"].disabled = busy or s == "installed" or m.own  # its source is the visitor's file, not a host
    r["cancel"].disabled = s not in ("downloading", "converting")
    r["delete"].disabled = s == "not-installed" and not m.kept_mb  # an earlier version's files can be freed
    r["verify"].disabled = busy or s not in ("installed", "damaged")


def on_message(msg):
    for i in range(msg.models.length):
        show_row(msg.models[i])
    storage = msg.storage
    kept_text = ("kept until you delete it" if storage.persisted
                 else "the browser may clear it if the disk runs low")
    images = storage.gallery_images
    el("models-storage").textContent = (f"Storage: {size_text(storage.usage_mb)} used of {size_text(storage.quota_mb)} "
                                        f"available to this site ({kept_text}): models {size_text(storage.models_mb)}, "
                                        f"gallery {images} image{'' if images == 1 else 's'} "
                                        f"{size_text(storage.gallery_mb)} (delete images in the Gallery to free it).")
    unlisted = [msg.unlisted[i] for i in range(msg.unlisted.length)]
    if unlisted:
        kept = sum(u.mb for u in unlisted)
        names = ", ".join(u.id for u in unlisted)
        el("models-unlisted-text").textContent = (f"{len(unlisted)} model{'s' if len(unlisted) > 1 else ''} no longer "
                                                  f"offered here ({names}) still keep{'' if len(unlisted) > 1 else 's'} "
                                                  f"{size_text(kept)} in this browser.")
    el("models-unlisted").hidden = not unlisted
    rejected = [msg.rejected[i] for i in range(msg.rejected.length)]
    el("models-rejected").textContent = " ".join(rejected)
    el("models-rejected").hidden = not rejected
    if msg.notice:
        el("models-notice").textContent = msg.notice
    state["on_change"]()


def remove_row(model_id):
    r = rows.pop(model_id, None)
    if r:
        r["row"].remove()
    info.pop(model_id, None)


def import_files(files):
    if state["is_checkpoint"](files):  # a checkpoint to convert, not a bundle's files
        state["checkpoint"](files)
        return
    if files.length:
        el("models-notice").textContent = f"Checking {files.length} file(s) against the model list…"
        state["send"]({"type": "model-import", "files": files})


def on_pick(event):
    import_files(event.target.files)
    event.target.value = ""


def on_drop(event):
    event.preventDefault()
    el("models").classList.remove("dropping")
    import_files(event.dataTransfer.files)


def on_drag(event):
    event.preventDefault()
    el("models").classList.add("dropping")


def setup(send, on_change, checkpoint, is_checkpoint):
    """`on_change()` is called after each report, for the panels that depend on what is installed; dropped
    .safetensors files go to `checkpoint(files)` (checkpoint.py)."""
    state["send"], state["on_change"] = send, on_change
    state["checkpoint"], state["is_checkpoint"] = checkpoint, is_checkpoint
    listen(el("models-import"), "change", on_pick)
    listen(el("models"), "dragover", on_drag)
    listen(el("models"), "dragleave", lambda e: el("models").classList.remove("dropping"))
    listen(el("models"), "drop", on_drop)
    listen(el("models-free"), "click", lambda e: send({"type": "models-free-unlisted"}))
