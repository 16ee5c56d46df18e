# The gallery (page side, MicroPython): lists what the worker keeps in the browser's private
# storage, and opens, compares, downloads, deletes or reuses the settings of each image.
# The worker owns the storage (app/store/gallery.py has the message protocol); this module only
# builds the section, sends requests and shows the answers.
# User text (prompts) only ever goes in through textContent / alt, never innerHTML.
from pyscript import document, window
from pyscript.ffi import create_proxy, to_js

import asyncio

from page import el, listen, make, show_error, steps_text

AUTOSAVE_KEY = "lantern.gallery.autosave"
MAX_DROP_BYTES = 64 * 1024 * 1024
ZOOM_MIN, ZOOM_MAX, ZOOM_STEP = 0.5, 32, 1.25
DELETE_QUESTION = "Delete this image from the gallery?"

state = {"send": None, "apply": None, "compare": None, "search_timer": None, "search_proxy": None}
items = {}  # key -> the list entry (settings, filename, thumbnail URL, <li>)
loaded = {}  # key -> {"url", "filename", "parameters"}: full PNGs fetched for open/compare/download
waiting = {}  # key -> callbacks for when its full PNG arrives
view = {"zoom": 1.0, "x": 0.0, "y": 0.0, "drag": None}


def note(text):
    el("gallery-note").textContent = text


def settings_line(p):
    return f"Seed {p['seed']} · {steps_text(p['steps'])} · {p['height']}x{p['width']} · {p['model']}"


OPTIONAL = ("guidance", "negative_prompt", "strength")  # settings only some images have


def settings_of(js):
    # Seeds arrive as text: MicroPython reads JS numbers as 32-bit integers.
    settings = {"prompt": js.prompt, "seed": js.seed, "steps": int(js.steps), "height": int(js.height),
                "width": int(js.width), "model": js.model}
    settings.update({k: getattr(js, k) for k in OPTIONAL if getattr(js, k, None) is not None})
    return settings


def png_url(buffer):
    return window.URL.createObjectURL(window.Blob.new(to_js([buffer]), to_js({"type": "image/png"})))


# --- the list ------------------------------------------------------------------------------------

def request_list():
    state["send"]({"type": "gallery-list", "query": el("gallery-search").value})


def item_node(key, item):
    li = make("li", None, None, data_key=key)
    make("img", li, None, src=item["thumb_url"], alt=item["prompt"], data_action="open", draggable="false")
    make("p", li, item["prompt"], id="gallery-prompt-" + key, **{"class": "gallery-prompt"})
    make("p", li, settings_line(item), **{"class": "gallery-meta"})
    if item["from_size"]:
        made = make("p", li, f"Made from a {item['from_size']} picture", **{"class": "gallery-meta"})
        if item["from_key"]:
            make("button", made, "Show it", type="button", data_action="source", aria_describedby="gallery-prompt-" + key)
    actions = make("div", li, None, **{"class": "gallery-actions"})
    described = "gallery-prompt-" + key  # each button's context, without putting prompts in names
    make("button", actions, "Open", type="button", data_action="open", aria_describedby=described)
    make("button", actions, "Compare", type="button", data_action="compare", aria_pressed="false",
         aria_describedby=described)
    # A link, so it is not one more "Download" button next to the generator's own.
    make("a", actions, "Download", href="#", data_action="download", aria_describedby=described)
    make("button", actions, "Delete", type="button", data_action="delete", aria_describedby=described)
    make("button", actions, "Use settings", type="button", data_action="use", aria_describedby=described)
    item["li"] = li
    return li


def add_entry(js, first=False):
    key = js.key
    if key in items:
        return
    item = settings_of(js)
    item["filename"] = js.filename
    item["from_key"], item["from_size"] = getattr(js, "from_key", ""), getattr(js, "from_size", "")
    item["thumb_url"] = png_url(js.thumb)
    items[key] = item
    ul = el("gallery-list")
    li = item_node(key, item)
    if first and ul.firstChild:
        ul.insertBefore(li, ul.firstChild)
    else:
        ul.appendChild(li)


def forget(key):
    item = items.pop(key, None)
    if item:
        window.URL.revokeObjectURL(item["thumb_url"])
        item["li"].remove()
    got = loaded.pop(key, None)
    if got:
        window.URL.revokeObjectURL(got["url"])
    if state["compare"] == key:
        state["compare"] = None
        note("")


def count_note(total=None):
    shown = len(items)
    query = el("gallery-search").value.strip()
    if total is not None and total > shown:
        note(f"Showing the newest {shown} of {total} images; search to find older ones.")
    elif shown == 0:
        note(f"No images match “{query}”." if query else
             "No images yet. With Auto-save on, every generated image is kept here, on this device only.")
    else:
        note("")


def on_items(msg):
    if msg.query != el("gallery-search").value:
        return  # an answer to an earlier search; the latest one is on its way
    for key in list(items):
        forget(key)
    for i in range(msg.entries.length):
        add_entry(msg.entries[i])
    count_note(msg.total)


def on_saved(msg):
    if el("gallery-search").value.strip():
        request_list()  # the worker decides what matches the search
    else:
        add_entry(msg.entry, first=True)
        count_note()


# --- full images: open, compare, download ----------------------------------------------------------

def with_item(key, callback):
    if key in loaded:
        callback(loaded[key])
        return
    waiting.setdefault(key, []).append(callback)
    state["send"]({"type": "gallery-get", "key": key})  # sent again on a repeat: a replaced worker loses requests


def on_item(msg):
    key = msg.key
    if key not in loaded:
        loaded[key] = {"url": png_url(msg.png), "filename": msg.filename, "parameters": settings_of(msg.parameters)}
    for callback in waiting.pop(key, []):
        callback(loaded[key])


def apply_view():
    img = el("gallery-viewer-image")
    img.style.transform = f"translate({view['x']}px, {view['y']}px) scale({view['zoom']})"
    el("gallery-zoom-level").textContent = f"{round(view['zoom'] * 100)}%"


def zoom(factor):
    view["zoom"] = min(ZOOM_MAX, max(ZOOM_MIN, view["zoom"] * factor))
    apply_view()


def reset_view(event=None):
    view.update(zoom=1.0, x=0.0, y=0.0, drag=None)
    apply_view()


def open_item(key):
    def show(got):
        p = got["parameters"]
        img = el("gallery-viewer-image")
        img.src = got["url"]
        img.alt = p["prompt"]
        el("gallery-viewer-prompt").textContent = p["prompt"]
        el("gallery-viewer-meta").textContent = settings_line(p)
        reset_view()
        el("gallery-viewer").showModal()
    with_item(key, show)


def compare_item(key):
    first = state["compare"]
    if first is None:
        state["compare"] = key
        items[key]["li"].querySelector("[data-action=compare]").setAttribute("aria-pressed", "true")
        note("Pick a second image to compare with this one.")
        return
    items[first]["li"].querySelector("[data-action=compare]").setAttribute("aria-pressed", "false")
    state["compare"] = None
    note("")
    if first == key:
        return
    got = {}

    def ready(k):
        def done(item):
            got[k] = item
            if len(got) == 2:
                show_compare([got[first], got[key]])
        return done
    with_item(first, ready(first))
    with_item(key, ready(key))


def show_compare(pair):
    grid = el("gallery-compare-grid")
    grid.replaceChildren()
    for got in pair:
        p = got["parameters"]
        figure = make("figure", grid)
        make("img", figure, None, src=got["url"], alt=p["prompt"])
        caption = make("figcaption", figure)
        make("p", caption, p["prompt"], **{"class": "gallery-prompt"})
        dl = make("dl", caption)
        for name, value in (("Seed", p["seed"]), ("Steps", p["steps"]), ("Size", f"{p['height']}x{p['width']}"),
                            ("Model", p["model"]), ("File", got["filename"])):
            make("dt", dl, name)
            make("dd", dl, str(value))
    el("gallery-compare").showModal()


def download_item(key):
    def save(got):
        link = document.createElement("a")
        link.href = got["url"]
        link.download = got["filename"]
        link.click()
    with_item(key, save)


def delete_item(key):
    if window.confirm(DELETE_QUESTION):
        state["send"]({"type": "gallery-delete", "key": key})


def use_item(key):
    keys = ("prompt", "seed", "steps", "height", "width", "model") + OPTIONAL
    state["apply"](dict((k, items[key][k]) for k in keys if k in items[key]), "")


def source_item(key):
    """Open the picture an image was made from, while the gallery keeps it."""
    if items[key]["from_key"] in items:
        open_item(items[key]["from_key"])
    else:
        note("The picture it was made from is not in this list (deleted, or outside the search).")


ACTIONS = {"open": open_item, "compare": compare_item, "download": download_item, "delete": delete_item,
           "use": use_item, "source": source_item}


def on_list_click(event):
    target = event.target.closest("[data-action]")
    if target is None:
        return
    event.preventDefault()  # the Download link's "#" is not a place to go
    key = target.closest("li").dataset.key
    if key in items:
        ACTIONS[target.dataset.action](key)


# --- viewer: zoom with the wheel or the buttons, pan by dragging ------------------------------------

def on_wheel(event):
    event.preventDefault()
    zoom(ZOOM_STEP if event.deltaY < 0 else 1 / ZOOM_STEP)


def on_pointer_down(event):
    view["drag"] = (event.clientX, event.clientY, view["x"], view["y"])
    event.currentTarget.setPointerCapture(event.pointerId)


def on_pointer_move(event):
    if view["drag"]:
        x0, y0, x, y = view["drag"]
        view["x"], view["y"] = x + event.clientX - x0, y + event.clientY - y0
        apply_view()


def on_pointer_up(event):
    view["drag"] = None


# --- a dropped PNG: restore its settings --------------------------------------------------------------

def has_files(event):
    return event.dataTransfer and event.dataTransfer.types.includes("Files")


def on_dragover(event):
    if has_files(event):
        event.preventDefault()  # allow the drop (instead of the browser opening the file)
        event.dataTransfer.dropEffect = "copy"


async def read_dropped(file):
    if file.size > MAX_DROP_BYTES:
        show_error("This file is too large to be a Lantern image, so it has no settings to restore.")
        return
    buffer = await file.arrayBuffer()
    state["send"]({"type": "gallery-read", "png": buffer})


def on_drop(event):
    if not has_files(event):
        return
    event.preventDefault()
    file = event.dataTransfer.files.item(0)
    if file is not None:
        asyncio.create_task(read_dropped(file))


SOURCES = {"lantern": "Lantern", "a1111": "Automatic1111", "invokeai": "InvokeAI"}


def on_settings(msg):
    if msg.message:
        note("")  # an earlier drop's "restored" must not stand beside this refusal
        show_error(msg.message)
        return
    js = msg.parameters
    found = {k: getattr(js, k) for k in window.Object.keys(js)}  # another app's image gives only what it had
    note(state["apply"](found, SOURCES.get(msg.source, msg.source)))


def on_error(msg):
    if msg.key:
        waiting.pop(msg.key, None)
        if msg.key in items:
            forget(msg.key)
    show_error(msg.message)


# --- the section ------------------------------------------------------------------------------------

def on_search(event):
    if state["search_timer"] is not None:
        window.clearTimeout(state["search_timer"])
    state["search_timer"] = window.setTimeout(state["search_proxy"], 150)  # one request per pause in typing


def on_autosave_change(event):
    window.localStorage.setItem(AUTOSAVE_KEY, "1" if el("gallery-autosave").checked else "0")


def build(section):
    head = make("div", section, None, **{"class": "gallery-head"})
    make("h2", head, "Gallery")
    toggle = make("span", head, None, **{"class": "gallery-toggle"})
    make("input", toggle, None, type="checkbox", id="gallery-autosave")
    make("label", toggle, "Auto-save", **{"for": "gallery-autosave"})
    search = make("span", head, None, **{"class": "gallery-search"})
    make("label", search, "Search gallery", **{"for": "gallery-search"})
    make("input", search, None, type="search", id="gallery-search", autocomplete="off")
    make("p", section, "Drop a PNG made by Lantern, Automatic1111 or InvokeAI anywhere on this page to restore "
         "its settings.", **{"class": "hint"})
    make("p", section, None, id="gallery-note", aria_live="polite")
    make("ul", section, None, id="gallery-list")

    viewer = make("dialog", section, None, id="gallery-viewer", aria_label="Full-size view")
    bar = make("div", viewer, None, **{"class": "gallery-bar"})
    for label, action in (("Zoom out", "out"), ("Zoom in", "in"), ("Fit", "fit")):
        make("button", bar, label, type="button", data_zoom=action)
    make("span", bar, "100%", id="gallery-zoom-level")
    make("button", bar, "Close", type="button", data_close="gallery-viewer")
    stage = make("div", viewer, None, id="gallery-viewer-stage", title="Scroll to zoom, drag to pan")
    make("img", stage, None, id="gallery-viewer-image", alt="", draggable="false")
    make("p", viewer, None, id="gallery-viewer-prompt", **{"class": "gallery-prompt"})
    make("p", viewer, None, id="gallery-viewer-meta", **{"class": "gallery-meta"})

    compare = make("dialog", section, None, id="gallery-compare", aria_label="Side-by-side comparison")
    bar = make("div", compare, None, **{"class": "gallery-bar"})
    make("button", bar, "Close", type="button", data_close="gallery-compare")
    make("div", compare, None, id="gallery-compare-grid")
    return stage


def on_bar_click(event):
    target = event.target
    closing = target.getAttribute("data-close")
    if closing:
        el(closing).close()
        return
    action = target.getAttribute("data-zoom")
    if action == "in":
        zoom(ZOOM_STEP)
    elif action == "out":
        zoom(1 / ZOOM_STEP)
    elif action == "fit":
        reset_view()


def setup(send, apply_settings):
    """Build the section, wire it up and ask the worker for the list (it replays what it gets
    while booting). `send(dict)` posts to the current worker; `apply_settings(dict, source)` fills the
    controls with what it can and says what it did."""
    state["send"], state["apply"] = send, apply_settings
    stage = build(el("gallery"))
    el("gallery-autosave").checked = window.localStorage.getItem(AUTOSAVE_KEY) != "0"  # on unless turned off
    state["search_proxy"] = create_proxy(lambda: request_list())
    listen(el("gallery-autosave"), "change", on_autosave_change)
    listen(el("gallery-search"), "input", on_search)
    listen(el("gallery-list"), "click", on_list_click)
    listen(el("gallery-viewer"), "click", on_bar_click)
    listen(el("gallery-compare"), "click", on_bar_click)
    listen(stage, "wheel", on_wheel, {"passive": False})
    listen(stage, "pointerdown", on_pointer_down)
    listen(stage, "pointermove", on_pointer_move)
    listen(stage, "pointerup", on_pointer_up)
    listen(stage, "pointercancel", on_pointer_up)
    listen(document, "dragover", on_dragover)
    listen(document, "drop", on_drop)
    request_list()


HANDLERS = {"gallery-items": on_items, "gallery-saved": on_saved, "gallery-item": on_item,
            "gallery-deleted": lambda msg: (forget(msg.key), count_note()), "gallery-settings": on_settings,
            "gallery-error": on_error}


def on_message(msg):
    handler = HANDLERS.get(msg.type)
    if handler:
        handler(msg)


def autosave():
    return bool(el("gallery-autosave").checked)
