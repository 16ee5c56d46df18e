# Offline use and cross-origin isolation (page side, MicroPython): registers the service worker
# (sw.js), which keeps the app in the browser's cache and adds COOP/COEP/CORP headers to what it
# serves. A page loaded before the worker controlled it lacks those headers, so on a host that
# cannot send them the page reloads once. When a new build's worker takes over, an untouched page
# reloads into it; one the visitor has used (a run, an install, an import: its results and work are
# on the page) asks instead, so a deploy never interrupts anything.
# None of this is needed to generate: any failure leaves the page as it is.
from pyscript import window
from pyscript.ffi import create_proxy

from page import el, listen, worker

RELOAD_KEY = "lantern.isolation-reload"  # sessionStorage: one isolation reload per tab, no loops
kept = []  # the proxies JS holds
controlled = {"before": False}  # did a worker control the page before this change (a first visit's did not)


def reload_for_isolation():
    storage = window.sessionStorage
    if storage.getItem(RELOAD_KEY):
        return  # reloading did not help (e.g. a hard reload bypasses the worker): run without it
    storage.setItem(RELOAD_KEY, "1")
    window.location.reload()


def on_controller_change(event):
    was_controlled, controlled["before"] = controlled["before"], True
    if was_controlled and worker["used"]:
        el("update").hidden = False  # a new build took over: the visitor reloads when it suits them
    elif was_controlled:
        window.location.reload()  # nothing here yet: show the new build instead of mixing versions
    elif not window.crossOriginIsolated:
        reload_for_isolation()


def warn(error):
    window.console.warn("Offline use is unavailable:", error)


def start():
    try:
        container = window.navigator.serviceWorker
        if not container:
            return  # not a secure context, or a browser without service workers
        was_controlled = controlled["before"] = bool(container.controller)
        kept.append(create_proxy(on_controller_change))
        kept.append(create_proxy(warn))
        container.addEventListener("controllerchange", kept[0])
        listen(el("update-reload"), "click", lambda event: window.location.reload())
        container.register("./sw.js").catch(kept[1])
        if window.crossOriginIsolated:
            window.sessionStorage.removeItem(RELOAD_KEY)
        elif was_controlled:
            reload_for_isolation()
    except Exception as error:  # e.g. storage or service workers blocked by the browser's settings
        warn(str(error))
