# What every page module shares (MicroPython): DOM helpers, the status line and its counters, and the
# connection to the GPU worker. Prompts and other user text only ever go in through textContent.
import sys

from pyscript import document, window
from pyscript.ffi import create_proxy, to_js

worker = {"current": None, "generation": 0, "on_message": None, "next_id": 1, "used": False,
          "on_replaced": []}  # called when a fresh worker replaces one (its unfinished work is gone)
# Messages that mean the visitor has started something on this page: a new build then asks before reloading.
USES = ("generate", "refine", "picture-check", "install", "model-import", "model-delete", "model-verify",
        "checkpoint-import")
kept = []  # the proxies JS holds (made once, at setup)


def el(id):
    return document.getElementById(id)


def make(tag, parent=None, text=None, **attributes):
    node = document.createElement(tag)
    if text is not None:
        node.textContent = text
    for name, value in attributes.items():
        node.setAttribute(name.rstrip("_").replace("_", "-"), value)
    if parent is not None:
        parent.appendChild(node)
    return node


SOMETHING_WENT_WRONG = ("Something on this page went wrong, so the last action did not finish. Try it again; "
                        "reloading the page clears it if it keeps happening.")


def guarded(fn):
    """`fn` behind the page's one error boundary: an exception in a handler never reaches the page as a
    traceback; the visitor gets a sentence where errors are shown, the details go to the console."""
    def run(*args):
        try:
            return fn(*args)
        except Exception as error:
            window.console.error("Lantern page error:", repr(error))
            sys.print_exception(error)  # the details, for the console
            shown = "" if el("error").hidden else el("error").textContent  # keep what was said first
            if SOMETHING_WENT_WRONG not in shown:
                show_error((shown + " " + SOMETHING_WENT_WRONG).strip())
    return run


def listen(node, kind, fn, options=None):
    proxy = create_proxy(guarded(fn))
    kept.append(proxy)
    if options is None:
        node.addEventListener(kind, proxy)
    else:
        node.addEventListener(kind, proxy, to_js(options))


def show_error(text):
    box = el("error")  # the page's one alert line
    box.textContent = text  # textContent, never innerHTML: prompts may hold markup
    box.hidden = not text


FIELDS = ("prompt", "seed", "steps", "resolution", "count", "preview-every", "memory", "model", "guidance",
          "negative-prompt", "strength", "fit", "picture")


def field_error(field, text):
    """A refused value's message beside its field, which is marked invalid: not a failure of the page."""
    node, message = el(field), el(field + "-error")
    message.textContent = text
    message.hidden = not text
    if text:
        node.setAttribute("aria-invalid", "true")
        # The worker's answer may come while the visitor types elsewhere: focus is taken only from a button.
        if document.activeElement is None or document.activeElement.tagName in ("BODY", "BUTTON"):
            node.focus()
        set_status("Not started: see the marked field.", 0)
    else:
        node.removeAttribute("aria-invalid")


def clear_field_errors():
    for field in FIELDS:
        field_error(field, "")


def steps_text(steps):
    return "1 step" if str(steps) == "1" else f"{steps} steps"


def count(id, name):
    """Bump a counter kept on an element as data-NAME. Counters only grow, so a script or a test can
    wait for "at least n" instead of racing a status text that may come and go between two looks."""
    node = el(id)
    node.setAttribute(f"data-{name}", str(int(node.getAttribute(f"data-{name}") or 0) + 1))


def set_status(text, fraction=None):
    el("status").textContent = text
    if fraction is not None:
        el("progress").value = fraction


def new_id():
    """A request id, unique on this page (runs and benchmarks share them)."""
    job_id = worker["next_id"]
    worker["next_id"] += 1
    return job_id


def start_worker(on_message=None):
    worker["on_message"] = on_message or worker["on_message"]
    worker["generation"] += 1  # which worker a request was sent to: a replacement gets only the others
    current = window.Worker.new("./worker.mjs", to_js({"type": "module"}))
    current.addEventListener("message", worker["on_message"])
    worker["current"] = current


def replace_worker():
    """A fresh worker gets a fresh GPU device and nothing allocated; unfinished jobs are re-sent
    when it says it is ready."""
    worker["current"].terminate()
    el("generate").disabled = True
    for hook in worker["on_replaced"]:
        hook()
    start_worker()


def send(message):
    worker["used"] = worker["used"] or message["type"] in USES
    worker["current"].postMessage(to_js(message))
